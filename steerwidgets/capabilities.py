"""Capability checks: does a steering vector cost the model its ordinary skills?

Four small built-in sets written for this project (``steerwidgets/datasets/capability_*.json``, generated
and answer-checked by ``scripts/make_capability_sets.py``): arithmetic, factual recall, simple instruction
following and commonsense choice. Each item is a prompt and 2–3 candidate answers, one correct. An item is
answered by likelihood, not by a generation judge: the candidate with the highest **per-token mean**
log-probability given the prompt wins. Per-token mean rather than sum because candidates differ in length
("Paris" vs "Buenos Aires", "a pen" vs "in the washing machine") and a sum favours the shorter candidate
whatever its content; the mean is the same convention as the answer-text propensity in metrics.md.
``metric="sum"`` is available and is named in every summary.

Accuracy is reported unsteered vs steered per set, each with a Wilson 95 % interval, plus a paired
bootstrap 95 % interval of the per-item difference (the same items are answered twice, so pairing removes
the item difficulty from the noise). A set "costs capability" when that difference interval lies entirely
below 0. Every candidate of every item, unsteered and steered, is scored in one batched
:func:`steerwidgets.engine.score_choices` call, which runs each prompt once for all its candidates. A caller
that varies only the steering (the Playground, ``compare``) passes ``baseline=`` an earlier result to skip
the unsteered pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import DatasetError, dataset_dir
from .engine.scoring import score_choices
from .interventions import Steering, SteeringError, as_list
from .prompts import use_chat

CAPABILITY_SETS = ("arithmetic", "factual", "instructions", "commonsense")
METRICS = ("mean", "sum")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class CapabilityItem:
    """A prompt, its candidate answers and the index of the correct one."""

    prompt: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise DatasetError("CapabilityItem: field 'prompt' is empty; give the question text")
        choices = tuple(self.choices)
        object.__setattr__(self, "choices", choices)
        if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise DatasetError("CapabilityItem: field 'choices' needs at least two non-empty strings")
        if len(set(choices)) != len(choices):
            raise DatasetError(f"CapabilityItem: field 'choices' repeats a candidate: {choices}")
        if (
            isinstance(self.answer, bool)
            or not isinstance(self.answer, int)
            or not 0 <= self.answer < len(choices)
        ):
            raise DatasetError(f"CapabilityItem: field 'answer' must index 'choices', got {self.answer!r}")


def builtin_capability(name: str) -> list[CapabilityItem]:
    """A built-in capability set by name (one of :data:`CAPABILITY_SETS`)."""
    if name not in CAPABILITY_SETS:
        raise DatasetError(f"no built-in capability set {name!r}; available: {', '.join(CAPABILITY_SETS)}")
    rows = json.loads((dataset_dir() / f"capability_{name}.json").read_text(encoding="utf-8"))
    return [CapabilityItem(row["prompt"], tuple(row["choices"]), row["answer"]) for row in rows]


# ----------------------------------------------------------------------------------------------
# Statistics (pure)
# ----------------------------------------------------------------------------------------------
def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials: sensible at 0 % and 100 %, unlike the normal one."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_ci(
    base_correct: Sequence[bool], steered_correct: Sequence[bool], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of steered − unsteered correctness and its paired bootstrap 95 % percentile interval."""
    base = np.asarray(base_correct, dtype=float)
    steered = np.asarray(steered_correct, dtype=float)
    if base.shape != steered.shape or base.ndim != 1 or base.size == 0:
        raise ValueError("base_correct and steered_correct must be equal-length non-empty sequences")
    diff = steered - base
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def cost_verdict(diff_ci: tuple[float, float] | None) -> str:
    """ "costs capability" only when the whole paired-difference interval is below 0."""
    if diff_ci is None:
        return "not steered"
    return "costs capability" if diff_ci[1] < 0 else "no detectable cost"


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CapabilitySetResult:
    """One set: accuracy unsteered vs steered, their intervals and the paired difference."""

    name: str
    n: int
    chance: float
    accuracy_base: float
    ci_base: tuple[float, float]
    accuracy_steered: float | None
    ci_steered: tuple[float, float] | None
    difference: float | None
    difference_ci: tuple[float, float] | None
    correct_base: tuple[bool, ...]
    correct_steered: tuple[bool, ...] | None

    @property
    def verdict(self) -> str:
        return cost_verdict(self.difference_ci)

    def summary(self) -> dict[str, Any]:
        return {
            "set": self.name,
            "n": self.n,
            "chance": round(self.chance, 4),
            "accuracy_unsteered": self.accuracy_base,
            "ci_unsteered": list(self.ci_base),
            "accuracy_steered": self.accuracy_steered,
            "ci_steered": None if self.ci_steered is None else list(self.ci_steered),
            "difference": self.difference,
            "difference_ci": None if self.difference_ci is None else list(self.difference_ci),
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class CapabilityResult:
    """Capability accuracy per set, unsteered vs steered, with intervals and a verdict."""

    sets: tuple[CapabilitySetResult, ...]
    metric: str
    steering: str | None
    seconds: float
    cpu_seconds: float = float("nan")  # process CPU time, all threads: honest on a shared machine
    # What a later call needs to reuse this result's unsteered pass (``capability_check(baseline=...)``):
    # the model, whether the chat template was used, and a digest of each set's items.
    model_name: str | None = None
    chat: bool | None = None
    item_digests: tuple[tuple[str, str], ...] = ()

    def __getitem__(self, name: str) -> CapabilitySetResult:
        for result in self.sets:
            if result.name == name:
                return result
        raise KeyError(name)

    @property
    def costly_sets(self) -> list[str]:
        """The sets whose paired interval of the accuracy change lies below 0 (empty when unsteered)."""
        return [r.name for r in self.sets if r.verdict == "costs capability"]

    @property
    def verdict(self) -> str:
        if self.steering is None:
            return "Unsteered capability only (no steering given)."
        costly = self.costly_sets
        if costly:
            return (
                f"The steering costs capability on {', '.join(costly)} "
                "(paired 95 % CI of the accuracy change below 0)."
            )
        return (
            "No detectable capability cost on any set "
            "(every paired 95 % CI of the accuracy change reaches 0)."
        )

    def side_effect_line(self) -> str:
        """One line for a widget: ``capability: factual 0.68→0.42 (Δ -0.26 [-0.40, -0.12]) costs …``."""
        if self.steering is None:
            parts = [f"{r.name} {r.accuracy_base:.2f}" for r in self.sets]
            return f"capability (unsteered): {', '.join(parts)}"
        parts = [
            f"{r.name} {r.accuracy_base:.2f}→{r.accuracy_steered:.2f} "
            f"(Δ {r.difference:+.2f} [{r.difference_ci[0]:+.2f}, {r.difference_ci[1]:+.2f}])"
            + (" costs capability" if r.verdict == "costs capability" else "")
            for r in self.sets
        ]
        return "capability: " + "; ".join(parts)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per set (for ``compare`` tables)."""
        return [{"steering": self.steering, "scoring": self.metric, **r.summary()} for r in self.sets]

    def summary(self) -> dict[str, Any]:
        return {
            "metric": f"accuracy; candidate chosen by per-token {self.metric} log-probability"
            if self.metric == "mean"
            else "accuracy; candidate chosen by summed log-probability",
            "scoring": self.metric,
            "intervals": "Wilson 95 % per accuracy; paired bootstrap 95 % for the difference",
            "steering": self.steering,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "sets": [r.summary() for r in self.sets],
            "verdict": self.verdict,
        }


# ----------------------------------------------------------------------------------------------
# Running the check
# ----------------------------------------------------------------------------------------------
def _pair(model: Any, item: CapabilityItem, choice: str, chat: bool | None) -> tuple[str, str]:
    use_chat = model.has_chat_template if chat is None else chat
    if use_chat:
        return item.prompt, choice
    return f"Question: {item.prompt}\nAnswer:", " " + choice


def _describe(steerings: list[Steering]) -> str | None:
    if not steerings:
        return None
    parts = []
    for s in steerings:
        unit = " × mean‖h‖" if s.relative else ""
        parts.append(f"{s.operator} at layer {s.layer}, strength {s.strength}{unit}, positions {s.positions}")
    return "; ".join(parts)


def choice_scores(
    model: Any,
    items: Sequence[CapabilityItem],
    steering: Steering | Sequence[Steering] | None = None,
    *,
    metric: str = "mean",
    chat: bool | None = None,
    batch_size: int = 32,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Each item's candidate scores, unsteered and (if given) steered, from one batched
    :func:`~steerwidgets.engine.score_choices` call (each prompt run once for all its candidates).
    """
    base, steered = _choice_scores(model, items, steering, metric, chat, batch_size, unsteered=True)
    return base, steered


def _choice_scores(
    model: Any,
    items: Sequence[CapabilityItem],
    steering: Steering | Sequence[Steering] | None,
    metric: str,
    chat: bool | None,
    batch_size: int,
    unsteered: bool,
) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    if metric not in METRICS:
        raise SteeringError(f"metric must be one of {METRICS}, got {metric!r}")
    steerings = as_list(steering)
    runs: list[list[Steering] | None] = ([None] if unsteered else []) + ([steerings] if steerings else [])
    prompts, choice_lists, row_steerings, keys = [], [], [], []
    for run, row_steering in enumerate(runs):
        for i, item in enumerate(items):
            pairs = [_pair(model, item, choice, chat) for choice in item.choices]
            prompts.append(pairs[0][0])
            choice_lists.append([comp for _, comp in pairs])
            row_steerings.append(row_steering)
            keys.append((run, i))
    logps = (
        score_choices(
            model, prompts, choice_lists, row_steerings=row_steerings, chat=chat, batch_size=batch_size
        )
        if prompts
        else []
    )
    out = [[np.zeros(len(item.choices)) for item in items] for _ in runs]
    for (run, i), per_choice in zip(keys, logps):
        for c, lp in enumerate(per_choice):
            out[run][i][c] = float(lp.mean() if metric == "mean" else lp.sum())
    base = out[0] if unsteered else None
    steered = out[-1] if steerings else None
    return base, steered


def _digest(items: Sequence[CapabilityItem]) -> str:
    """A short fingerprint of a set's items (prompts, candidates, answers), to match a baseline."""
    text = json.dumps([[it.prompt, list(it.choices), it.answer] for it in items], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_baseline(
    baseline: Any, model: Any, digests: tuple[tuple[str, str], ...], metric: str, chat: bool
) -> None:
    """Refuse a baseline that was not computed on these items, metric, chat setting and model."""
    if not isinstance(baseline, CapabilityResult):
        raise TypeError(
            "baseline must be an earlier CapabilityResult from capability_check, "
            f"got {type(baseline).__name__}"
        )
    rerun = "; compute it again with the same arguments, or drop baseline= to score the unsteered pass"
    if baseline.model_name is not None and baseline.model_name != model.name:
        raise SteeringError(f"the baseline was computed on {baseline.model_name}, not {model.name}{rerun}")
    if baseline.metric != metric:
        raise SteeringError(
            f"the baseline used metric={baseline.metric!r}; pass metric={baseline.metric!r}{rerun}"
        )
    if baseline.chat is None or baseline.chat != chat:
        raise SteeringError(
            f"the baseline used chat={baseline.chat!r} but this call uses chat={chat!r}; "
            f"pass chat={baseline.chat!r}{rerun}"
        )
    if baseline.item_digests != digests:
        names = [name for name, _ in baseline.item_digests]
        raise SteeringError(
            f"the baseline was computed on other items (sets {names}, n {[r.n for r in baseline.sets]}); "
            f"pass the same sets and n{rerun}"
        )


def capability_check(
    model: Any,
    steering: Steering | Sequence[Steering] | None = None,
    sets: Sequence[str] | dict[str, Sequence[CapabilityItem]] = CAPABILITY_SETS,
    n: int | None = 50,
    *,
    metric: str = "mean",
    chat: bool | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    batch_size: int = 32,
    baseline: CapabilityResult | None = None,
) -> CapabilityResult:
    """Accuracy on the capability sets unsteered vs under ``steering`` (all sets in one scoring call).

    ``sets`` names built-in sets (or one name) or maps names to your own items; ``n`` keeps the first n
    items of each. ``baseline`` is an earlier result on the same items, metric and chat setting: its
    unsteered correctness is reused, so a caller varying only the steering scores the steered pass alone.
    Arguments are checked before any model work.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    if isinstance(sets, str):
        sets = [sets]
    if isinstance(sets, dict):
        named = dict(sets)
    elif isinstance(sets, Sequence):
        unknown = [name for name in sets if name not in CAPABILITY_SETS]
        if unknown:
            raise SteeringError(
                f"no built-in capability set {unknown[0]!r}; use some of {list(CAPABILITY_SETS)} "
                "or pass a dict of your own items"
            )
        named = {name: builtin_capability(name) for name in sets}
    else:
        raise TypeError(
            f"sets must be a list of set names or a dict of name -> items, got {type(sets).__name__}"
        )
    if not named:
        raise SteeringError(f"no capability sets given; use e.g. sets={list(CAPABILITY_SETS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise SteeringError(f"n must be a positive int or None (all items), got {n!r}")
    if metric not in METRICS:
        raise SteeringError(f"metric must be one of {METRICS}, got {metric!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SteeringError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise SteeringError(f"n_boot must be a positive int, got {n_boot!r}")
    for item in as_list(steering):
        if not isinstance(item, Steering):
            raise TypeError(f"steering must be a Steering or a list of them, got {type(item).__name__}")
        item.validate(model)
    named = {name: list(items) if n is None else list(items)[:n] for name, items in named.items()}
    for name, items in named.items():
        if not items:
            raise SteeringError(f"the capability set {name!r} is empty; give it at least one item")
        bad = [it for it in items if not isinstance(it, CapabilityItem)]
        if bad:
            raise TypeError(f"set {name!r} holds a {type(bad[0]).__name__}; give CapabilityItem objects")
    flat = [item for items in named.values() for item in items]
    chat_used = use_chat(model, chat)
    digests = tuple((name, _digest(items)) for name, items in named.items())
    if baseline is not None:
        _check_baseline(baseline, model, digests, metric, chat_used)
    base, steered = _choice_scores(
        model, flat, steering, metric, chat, batch_size, unsteered=baseline is None
    )
    results = []
    offset = 0
    for name, items in named.items():
        idx = range(offset, offset + len(items))
        offset += len(items)
        if baseline is None:
            correct_b = tuple(bool(np.argmax(base[i]) == flat[i].answer) for i in idx)
        else:
            correct_b = baseline[name].correct_base
        k = sum(correct_b)
        chance = float(np.mean([1 / len(flat[i].choices) for i in idx]))
        if steered is None:
            acc_s = ci_s = diff = diff_ci = correct_s = None
        else:
            correct_s = tuple(bool(np.argmax(steered[i]) == flat[i].answer) for i in idx)
            acc_s = sum(correct_s) / len(items)
            ci_s = wilson_interval(sum(correct_s), len(items))
            diff, low, high = paired_difference_ci(correct_b, correct_s, n_boot=n_boot, seed=seed)
            diff_ci = (low, high)
        results.append(
            CapabilitySetResult(
                name=name,
                n=len(items),
                chance=chance,
                accuracy_base=k / len(items),
                ci_base=wilson_interval(k, len(items)),
                accuracy_steered=acc_s,
                ci_steered=ci_s,
                difference=diff,
                difference_ci=diff_ci,
                correct_base=correct_b,
                correct_steered=correct_s,
            )
        )
    return CapabilityResult(
        sets=tuple(results),
        metric=metric,
        steering=_describe(as_list(steering)),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        model_name=model.name,
        chat=chat_used,
        item_digests=digests,
    )
