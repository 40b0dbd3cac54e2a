"""Beyond multiple choice: open-ended likelihood shift, side effects, baselines, and method comparison.

Everything follows shared docs/metrics.md:

- :func:`open_ended_loglik` / :func:`likelihood_shift_table` — Pres et al. (2024): log-likelihood of a
  behaviour-matching and an opposing continuation under the unsteered and the steered model; Δ+ and Δ− on
  the top-25/50/75 % subsets and on all items. Reported per-token **mean** (the default, ``"primary"``)
  and **sum**, both named in the output.
- :func:`perplexity_ratio`, :func:`kl_on_neutral` — side effects: ppl(λ)/ppl(0) on reference passages and
  KL(steered ‖ unsteered) of next-token distributions on neutral prompts; :func:`usable_range` keeps the
  strengths whose perplexity ratio stays below 10 (von Rütte et al. 2024), and PNE(λ) is the effect
  gain divided by the perplexity ratio.
- Baselines in every result: random vectors of equal norm (several seeds: mean and min/max), the negated
  steering, a zero vector, and a prompting baseline (the behaviour asked for in an instruction).
- :func:`compare` — one table over methods × behaviours (the CompareWidget shows it).

A *steerer* is a function ``strength → list[Steering]``, so single-layer vectors, ICV's every-layer
norm-preserving additions and affine maps are all evaluated by the same code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import metrics
from .data import ABItem, OpenEndedItem
from .engine.activations import read_activations
from .engine.generation import GenerationCancelled, generate
from .engine.scoring import next_token_logprobs, score
from .engine.sweep import DEFAULT_STRENGTHS, _check_strengths, propensity_sweep
from .interventions import AffineMap, Steering, SteeringError, check_steerings, require_model, stack_label
from .prompts import ab_prompt, tokenize_prompt
from .reliability import NEUTRAL_PROMPTS
from .stack import describe_steerings
from .vectors import SteeringVector, random_like
from .verdicts import against_null

SteerFn = Callable[[float], list[Steering]]
ProgressFn = Callable[[int, int, str], None]

QUANTILES = (0.25, 0.5, 0.75, 1.0)
USABLE_PPL_RATIO = 10.0  # von Rütte et al. (2024): the usable range keeps ppl(λ)/ppl(0) below this
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_INSTRUCTIONS = {
    "sentiment": "Answer in a very positive tone.",
    "formality": "Answer in a very formal, polite register.",
    "sycophancy": "Agree with me and tell me what I want to hear.",
}
EFFECT_NAME = "mean A/B propensity m̄(λ) (logit(y+) − logit(y−))"


def _qkey(q: float) -> str:
    return str(int(round(q * 100)))


# ----------------------------------------------------------------------------------------------
# Steerers
# ----------------------------------------------------------------------------------------------
def vector_steerer(
    vector: SteeringVector,
    layers: int | Sequence[int] | None = None,
    operator: str = "add",
    positions: Any = "all",
) -> SteerFn:
    """``λ ↦ [Steering(vector, L, λ, positions, operator) for L in layers]`` (all the vector's layers)."""
    chosen = vector.layers if layers is None else ([layers] if isinstance(layers, int) else list(layers))

    def steer(strength: float) -> list[Steering]:
        return [Steering(vector, layer, float(strength), positions, operator) for layer in chosen]

    return steer


def affine_steerer(amap: AffineMap, layer: int, positions: Any = "all") -> SteerFn:
    """``λ ↦ [Steering(amap, layer, λ, operator="affine")]`` (λ interpolates towards the mapped h)."""

    def steer(strength: float) -> list[Steering]:
        return [Steering(amap, layer, float(strength), positions, operator="affine")]

    return steer


def negated(steer: SteerFn) -> SteerFn:
    """The negated control: the steerer at −λ (for additive vectors exactly the vector −v)."""
    return lambda strength: steer(-float(strength))


# ----------------------------------------------------------------------------------------------
# Forward passes
# ----------------------------------------------------------------------------------------------
def ab_propensities(
    model: Any,
    items: Sequence[ABItem],
    steer: SteerFn | None,
    strengths: Sequence[float],
    *,
    chat: bool | None = None,
    prefix: str = "",
    batch_size: int = 16,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Propensity m_i(λ) = logit(y+) − logit(y−) for any steerer, ``[n_items, n_strengths]``.

    The general path (every operator, several layers); single-layer additive vectors can use the
    engine's faster ``propensity_sweep``, which gives the same numbers. ``prefix`` is prepended to each
    question (the prompting baseline); ``steer=None`` runs unsteered.
    """
    rows = [
        ab_prompt(model, ABItem(prefix + it.question, it.matching, it.not_matching), chat) for it in items
    ]
    seqs = [ids for ids, _, _ in rows]
    pos = torch.tensor([p for _, p, _ in rows])
    neg = torch.tensor([n for _, _, n in rows])
    out = np.zeros((len(rows), len(strengths)))
    base = None
    for k, strength in enumerate(strengths):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")
        if steer is None:
            base = base if base is not None else next_token_logprobs(model, seqs, (), batch_size)
            logp = base
        else:
            logp = next_token_logprobs(model, seqs, steer(strength), batch_size)
        index = torch.arange(len(rows))
        out[:, k] = (logp[index, pos] - logp[index, neg]).double().numpy()
    return out


def _sweepable(steer: SteerFn, strengths: np.ndarray) -> tuple[SteeringVector, int, np.ndarray] | None:
    """(vector, layer, effective strengths) when every λ gives one additive [d] steering of one vector at
    one layer on all positions: then the engine's ``propensity_sweep`` computes the same matrix faster."""
    first: Steering | None = None
    effective = []
    for strength in strengths:
        items = steer(float(strength))
        if len(items) != 1:
            return None
        item = items[0]
        if first is None:
            first = item
        same = item.vector is first.vector and item.layer == first.layer
        if not same or item.operator != "add" or item.relative or item.positions != "all":
            return None
        if not isinstance(item.vector, SteeringVector) or item.vector[item.layer].ndim != 1:
            return None
        effective.append(float(item.strength))
    if first is None or np.ptp(effective) == 0:
        return None
    return first.vector, first.layer, np.array(effective)


def propensity_matrix(
    model: Any,
    items: Sequence[ABItem],
    steer: SteerFn,
    strengths: Sequence[float],
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """``[n_items, n_strengths]`` propensities: ``propensity_sweep`` where it applies, else
    :func:`ab_propensities` (both give the same numbers for a single-layer additive vector)."""
    lam = np.asarray(strengths, dtype=float)
    sweepable = _sweepable(steer, lam)
    if sweepable is not None:
        vector, layer, effective = sweepable
        return propensity_sweep(
            model, items, vector, [layer], effective, positions="all", null_directions=0, cancel=cancel
        ).propensity[layer]
    return ab_propensities(model, items, steer, lam, cancel=cancel)


# ----------------------------------------------------------------------------------------------
# Open-ended likelihood shift (Pres et al. 2024)
# ----------------------------------------------------------------------------------------------
@dataclass
class OpenEndedScores:
    """Per-item log-likelihoods of the positive and negative continuations (sum and per-token mean)."""

    sum_pos: np.ndarray
    sum_neg: np.ndarray
    mean_pos: np.ndarray
    mean_neg: np.ndarray

    def get(self, reduction: str) -> tuple[np.ndarray, np.ndarray]:
        if reduction not in ("mean", "sum"):
            raise SteeringError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        return (self.mean_pos, self.mean_neg) if reduction == "mean" else (self.sum_pos, self.sum_neg)


def open_ended_loglik(
    model: Any,
    items: Sequence[OpenEndedItem],
    steerings: Sequence[Steering] | None = None,
    *,
    prefix: str = "",
    chat: bool | None = None,
    batch_size: int = 16,
) -> OpenEndedScores:
    """Log-likelihood of each item's positive and negative continuation given its query (one batched
    ``score`` call). ``prefix`` is prepended to the query (the prompting baseline)."""
    items = list(items)
    if not items:
        raise SteeringError("no open-ended items given")
    prompts = [prefix + it.query for it in items for _ in (0, 1)]
    completions = [c for it in items for c in (it.positive, it.negative)]
    lps = score(model, prompts, completions, list(steerings or []), chat=chat, batch_size=batch_size)
    sums = np.array([float(lp.double().sum()) for lp in lps])
    means = np.array([float(lp.double().mean()) for lp in lps])
    return OpenEndedScores(sums[0::2], sums[1::2], means[0::2], means[1::2])


def likelihood_shift_table(
    base: OpenEndedScores, steered: OpenEndedScores, quantiles: Sequence[float] = QUANTILES
) -> dict[str, Any]:
    """Δ+ and Δ− (metrics.likelihood_shift) for each top-q subset, for the per-token mean and the sum.

    Keys are percentages (``"25"``, ``"50"``, ``"75"``, ``"100"``); ``"primary"`` names the default.
    """
    out: dict[str, Any] = {
        "primary": "mean",
        "definition": "Δ+ = mean(LL_steered − LL_base) over positives, Δ− = mean(LL_base − LL_steered) "
        "over negatives, on the least likely positives / most likely negatives under the base (top q)",
        "n_items": int(base.sum_pos.size),
    }
    for reduction in ("mean", "sum"):
        bp, bn = base.get(reduction)
        sp, sn = steered.get(reduction)
        table = {}
        for q in quantiles:
            d_pos, d_neg = metrics.likelihood_shift(bp, sp, bn, sn, q)
            table[_qkey(q)] = {"delta_pos": d_pos, "delta_neg": d_neg}
        out[reduction] = table
    out["reductions"] = {"mean": "per-token mean log-likelihood", "sum": "summed log-likelihood"}
    return out


# ----------------------------------------------------------------------------------------------
# Side effects
# ----------------------------------------------------------------------------------------------
def _passage_split(text: str) -> tuple[str, str]:
    text = text.strip()
    head, sep, rest = text.partition(" ")
    if not sep or not rest:
        raise SteeringError(f"a reference passage needs at least two words: {text[:40]!r}")
    return head, " " + rest


def passage_logprobs(
    model: Any, passages: Sequence[str], steerings: Sequence[Steering] | None = None, batch_size: int = 8
) -> list[torch.Tensor]:
    """Token log-probabilities of each passage after its first word (raw text, no chat template)."""
    heads, rests = zip(*(_passage_split(p) for p in passages))
    return score(model, list(heads), list(rests), list(steerings or []), chat=False, batch_size=batch_size)


def perplexity_ratio(
    model: Any,
    steer: SteerFn,
    strengths: Sequence[float],
    passages: Sequence[str],
    *,
    base_ppl: float | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, float]:
    """ppl(λ)/ppl(0) on reference passages for each strength; ppl(0) is the unsteered model's."""
    if not passages:
        raise SteeringError("no reference passages given")
    if base_ppl is None:
        base_ppl = metrics.perplexity([t.numpy() for t in passage_logprobs(model, passages)])
    ratios = []
    for strength in strengths:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")
        lps = passage_logprobs(model, passages, steer(strength))
        ratios.append(metrics.perplexity([t.numpy() for t in lps]) / base_ppl)
    return np.array(ratios), float(base_ppl)


def neutral_ids(model: Any, prompts: Sequence[str] = NEUTRAL_PROMPTS) -> list[list[int]]:
    return [tokenize_prompt(model, p)[0] for p in prompts]


def kl_on_neutral(
    model: Any,
    steer: SteerFn,
    strengths: Sequence[float],
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    *,
    base: torch.Tensor | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Mean over neutral prompts of KL(steered ‖ unsteered) of the next-token distribution, per strength.

    Any steerer (the reliability module's ``kl_side_effects`` covers single-layer additive vectors).
    """
    ids = neutral_ids(model, prompts)
    if base is None:
        base = next_token_logprobs(model, ids)
    base_np = base.double().numpy()
    out = []
    for strength in strengths:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")
        steered = next_token_logprobs(model, ids, steer(strength)).double().numpy()
        out.append(float(metrics.kl_divergence(steered, base_np).mean()))
    return np.array(out)


def usable_range(
    strengths: Sequence[float], ppl_ratio: Sequence[float], limit: float = USABLE_PPL_RATIO
) -> dict[str, Any]:
    """Strengths whose perplexity ratio stays below ``limit``, and the contiguous interval around λ = 0."""
    lam = np.asarray(strengths, dtype=float)
    ratio = np.asarray(ppl_ratio, dtype=float)
    order = np.argsort(lam)
    lam, ratio = lam[order], ratio[order]
    ok = ratio < limit
    usable = [float(x) for x in lam[ok]]
    centre = int(np.argmin(np.abs(lam)))
    if not ok[centre]:
        return {"limit": limit, "usable_strengths": usable, "range": None}
    lo = hi = centre
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < lam.size - 1 and ok[hi + 1]:
        hi += 1
    return {"limit": limit, "usable_strengths": usable, "range": [float(lam[lo]), float(lam[hi])]}


# ----------------------------------------------------------------------------------------------
# One steerer, all numbers
# ----------------------------------------------------------------------------------------------
@dataclass
class EvalContext:
    """What every evaluation of one behaviour shares: data, unsteered numbers, strengths."""

    model: Any
    ab_items: list[ABItem]
    open_items: list[OpenEndedItem]
    passages: list[str]
    strengths: np.ndarray
    open_strength: float
    neutral_prompts: Sequence[str] = NEUTRAL_PROMPTS
    quantiles: Sequence[float] = QUANTILES
    cancel: threading.Event | None = None
    _base_open: OpenEndedScores | None = field(default=None, repr=False)
    _base_ppl: float | None = field(default=None, repr=False)
    _base_neutral: torch.Tensor | None = field(default=None, repr=False)
    _base_propensity: np.ndarray | None = field(default=None, repr=False)

    @property
    def base_open(self) -> OpenEndedScores:
        if self._base_open is None:
            self._base_open = open_ended_loglik(self.model, self.open_items)
        return self._base_open

    @property
    def base_ppl(self) -> float:
        if self._base_ppl is None:
            lps = passage_logprobs(self.model, self.passages)
            self._base_ppl = metrics.perplexity([t.numpy() for t in lps])
        return self._base_ppl

    @property
    def base_neutral(self) -> torch.Tensor:
        if self._base_neutral is None:
            self._base_neutral = next_token_logprobs(
                self.model, neutral_ids(self.model, self.neutral_prompts)
            )
        return self._base_neutral

    @property
    def base_propensity(self) -> np.ndarray:
        """Unsteered m_i, ``[n_items]``."""
        if self._base_propensity is None:
            self._base_propensity = ab_propensities(self.model, self.ab_items, None, [0.0])[:, 0]
        return self._base_propensity

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")


def evaluate_steerer(ctx: EvalContext, steer: SteerFn, *, full: bool = True) -> dict[str, Any]:
    """A/B steerability over the strength grid, open-ended Δ at ``ctx.open_strength`` and side effects.

    ``full=True`` also gives perplexity ratio, KL and PNE at every strength (the usable range);
    ``full=False`` (baselines) computes side effects at the open-ended strength only.
    """
    model, lam = ctx.model, ctx.strengths
    ctx.check()
    m = propensity_matrix(model, ctx.ab_items, steer, lam, ctx.cancel)
    slopes = metrics.slopes(m, lam)
    ctx.check()
    steered_open = open_ended_loglik(model, ctx.open_items, steer(ctx.open_strength))
    shift = likelihood_shift_table(ctx.base_open, steered_open, ctx.quantiles)
    side_lam = lam if full else np.array([ctx.open_strength])
    ctx.check()
    ratio, _ = perplexity_ratio(
        model, steer, side_lam, ctx.passages, base_ppl=ctx.base_ppl, cancel=ctx.cancel
    )
    kl = kl_on_neutral(model, steer, side_lam, ctx.neutral_prompts, base=ctx.base_neutral, cancel=ctx.cancel)
    result: dict[str, Any] = {
        "strengths": [float(x) for x in lam],
        "steerability": float(slopes.mean()),
        "item_slopes": [float(x) for x in slopes],  # per held-out item, paired with compare's contexts
        **(ab_verdicts(ctx, steer, lam) if full else {}),
        "anti_steerable_fraction": metrics.anti_steerable_fraction(slopes),
        "mean_propensity": [float(x) for x in m.mean(0)],
        "open_strength": float(ctx.open_strength),
        "likelihood_shift": shift,
        "side_strengths": [float(x) for x in side_lam],
        "ppl_ratio": [float(x) for x in ratio],
        "kl": [float(x) for x in kl],
    }
    at = int(np.argmin(np.abs(side_lam - ctx.open_strength)))
    result["ppl_ratio_at_open"] = float(ratio[at])
    result["kl_at_open"] = float(kl[at])
    if full:
        effect = m.mean(0)
        effect0 = float(ctx.base_propensity.mean())
        result["pne"] = [float(x) for x in metrics.perplexity_normalised_effect(effect, effect0, ratio)]
        result["pne_effect"] = EFFECT_NAME
        result["usable"] = usable_range(lam, ratio)
    return result


def ab_verdicts(ctx: EvalContext, steer: SteerFn, strengths: np.ndarray) -> dict[str, Any]:
    """Each A/B protocol's verdict against random directions of the vector's norm (docs/verdicts.md), at the
    protocol's own positions. Only a single-layer additive vector has such a null; others say so."""
    sweepable = _sweepable(steer, strengths)
    if sweepable is None:
        reason = (
            "No random-direction null for this steering (several layers or a non-additive operator); read "
            "the open-ended columns against their random band."
        )
        return {"ab_verdict": "cannot_judge", "ab_verdict_reason": reason, "answer_text_verdict": None}
    vector, layer, effective = sweepable
    out: dict[str, Any] = {}
    for protocol, prefix in (("letter", "ab"), ("answer_text", "answer_text")):
        try:
            res = propensity_sweep(ctx.model, ctx.ab_items, vector, [layer], effective, protocol=protocol,
                                   cancel=ctx.cancel)  # fmt: skip
        except SteeringError as exc:
            out.update({f"{prefix}_verdict": "cannot_judge", f"{prefix}_verdict_reason": str(exc)})
            continue
        verdict = res.verdict(layer)
        out.update(
            {
                f"{prefix}_verdict": verdict.verdict,
                f"{prefix}_verdict_reason": verdict.reason,
                f"{prefix}_positions": res.positions,
                f"{prefix}_steerability_ci95": list(verdict.steerability_ci95),
            }
        )
    return out


def prompting_baseline(ctx: EvalContext, instruction: str) -> dict[str, Any]:
    """The behaviour asked for in words: ``instruction`` before each query / question, no steering."""
    prefix = instruction.strip() + "\n\n"
    prompted_open = open_ended_loglik(ctx.model, ctx.open_items, prefix=prefix)
    prompted_m = ab_propensities(ctx.model, ctx.ab_items, None, [0.0], prefix=prefix)[:, 0]
    return {
        "instruction": instruction,
        "likelihood_shift": likelihood_shift_table(ctx.base_open, prompted_open, ctx.quantiles),
        "delta_propensity": float(prompted_m.mean() - ctx.base_propensity.mean()),
        "delta_propensity_definition": "mean m_i with the instruction − mean m_i without",
    }


def _reference_norms(steerings: list[Steering]) -> list[tuple[int, torch.Tensor]]:
    return [(s.layer, s.direction()) for s in steerings]


def random_steerer(steer: SteerFn, seed: int) -> SteerFn:
    """Random directions with the norm of each layer's direction, applied with the same operator.

    For an affine map the random vector has the norm of its mean shift and is added (operator ``add``).
    """
    probe = steer(1.0)
    dirs = {}
    for layer, vec in _reference_norms(probe):
        dirs[layer] = dirs.get(layer, 0) + vec
    like = SteeringVector(dirs, method="reference")
    rnd = random_like(like, seed)
    ops = {s.layer: ("add" if s.operator == "affine" else s.operator) for s in probe}
    positions = probe[0].positions

    def run(strength: float) -> list[Steering]:
        return [Steering(rnd, layer, float(strength), positions, ops[layer]) for layer in rnd.layers]

    return run


def zero_steerer(layers: Sequence[int], d_model: int) -> SteerFn:
    """A zero vector added at ``layers``: must reproduce the unsteered numbers exactly (a pipeline check)."""
    zero = SteeringVector({layer: torch.zeros(d_model) for layer in layers}, method="zero")
    return vector_steerer(zero)


def _band(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def with_baselines(
    ctx: EvalContext,
    steer: SteerFn,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    instruction: str | None = None,
    prompting: dict[str, Any] | None = None,
    zero: dict[str, Any] | None = None,
    tick: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The steerer's numbers beside its controls: random (per seed, band), negated, zero, prompting."""
    tick = tick or (lambda _label: None)
    out: dict[str, Any] = {"method": evaluate_steerer(ctx, steer, full=True)}
    tick("evaluated")
    randoms = []
    for seed in seeds:
        randoms.append(evaluate_steerer(ctx, random_steerer(steer, seed), full=False))
        tick(f"random seed {seed}")
    out["random"] = {"seeds": list(seeds), "runs": randoms}
    out["negated"] = evaluate_steerer(ctx, negated(steer), full=False)
    tick("negated")
    if zero is None:
        layers = sorted({s.layer for s in steer(1.0)})
        zero = evaluate_steerer(ctx, zero_steerer(layers, ctx.model.d_model), full=False)
    out["zero"] = zero
    if prompting is None and instruction:
        prompting = prompting_baseline(ctx, instruction)
    out["prompting"] = prompting
    return out


def summary_row(result: dict[str, Any], q: float = 0.5) -> dict[str, Any]:
    """Flatten :func:`with_baselines` into one table row (top-q open-ended shift, per-token mean)."""
    key = _qkey(q)

    def shift(entry: dict[str, Any], which: str) -> float:
        return entry["likelihood_shift"]["mean"][key][which]

    main = result["method"]
    row: dict[str, Any] = {
        "steerability": main["steerability"],
        **{k: v for k, v in main.items() if k.startswith(("ab_", "answer_text_"))},
        "anti_steerable_fraction": main["anti_steerable_fraction"],
        f"delta_pos_{key}": shift(main, "delta_pos"),
        f"delta_neg_{key}": shift(main, "delta_neg"),
        "ppl_ratio": main["ppl_ratio_at_open"],
        "kl": main["kl_at_open"],
        "usable_range": main.get("usable", {}).get("range"),
    }
    at = int(np.argmin(np.abs(np.asarray(main["strengths"]) - main["open_strength"])))
    row["pne"] = main["pne"][at] if "pne" in main else None
    runs = result["random"]["runs"]
    row["open_verdict"], row["open_verdict_reason"] = against_null(
        row[f"delta_pos_{key}"], [shift(r, "delta_pos") for r in runs], f"Open-ended Δ+ (top {key} %)"
    )
    for name, get in (
        ("steerability", lambda r: r["steerability"]),
        (f"delta_pos_{key}", lambda r: shift(r, "delta_pos")),
        (f"delta_neg_{key}", lambda r: shift(r, "delta_neg")),
        ("ppl_ratio", lambda r: r["ppl_ratio_at_open"]),
        ("kl", lambda r: r["kl_at_open"]),
    ):
        band = _band([get(r) for r in runs])
        for stat, value in band.items():
            row[f"random_{name}_{stat}"] = value
    for label in ("negated", "zero"):
        entry = result[label]
        row[f"{label}_steerability"] = entry["steerability"]
        row[f"{label}_delta_pos_{key}"] = shift(entry, "delta_pos")
        row[f"{label}_delta_neg_{key}"] = shift(entry, "delta_neg")
    prompting = result.get("prompting")
    if prompting is not None:
        row[f"prompting_delta_pos_{key}"] = shift(prompting, "delta_pos")
        row[f"prompting_delta_neg_{key}"] = shift(prompting, "delta_neg")
        row["prompting_delta_propensity"] = prompting["delta_propensity"]
    return row


# ----------------------------------------------------------------------------------------------
# Methods for compare()
# ----------------------------------------------------------------------------------------------
@dataclass
class BehaviourData:
    """Training data for building vectors and held-out data for evaluating them.

    Build one for your own behaviour from :func:`~steerwidgets.load_ab_items`,
    :func:`~steerwidgets.load_pairs` and :func:`~steerwidgets.load_open_ended`; keep the test items
    out of the training items. ``pairs`` may be empty (pair-based methods then say they were skipped).
    """

    name: str
    train_items: list[ABItem]
    test_items: list[ABItem]
    pairs: list[Any] = field(default_factory=list)
    open_items: list[OpenEndedItem] = field(default_factory=list)
    instruction: str | None = None  # the prompting baseline: the behaviour asked for in words

    def check(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SteeringError("BehaviourData needs a name (it labels the table's rows)")
        if len(self.train_items) < 2:
            raise SteeringError(f"{self.name}: give at least 2 training A/B items to build vectors from")
        if len(self.test_items) < 2:
            raise SteeringError(f"{self.name}: give at least 2 held-out A/B items to measure steerability on")
        if not self.open_items:
            raise SteeringError(f"{self.name}: give at least one open-ended item for the likelihood shift")
        overlap = {i.question for i in self.train_items} & {i.question for i in self.test_items}
        if overlap:
            raise SteeringError(
                f"{self.name}: {len(overlap)} test item(s) also appear in training; hold them out"
            )


@dataclass
class Built:
    """A built method: its steerer, and the additive vector where there is one."""

    steer: SteerFn
    vector: SteeringVector | None = None
    note: str = ""


MethodBuilder = Callable[[Any, BehaviourData, int], Built]


def registered_builder(name: str) -> MethodBuilder:
    """compare's builder for an estimator of :data:`steerwidgets.methods.ESTIMATORS`, fed what it reads:
    the training A/B items (``"ab_items"``), the contrast pairs (``"pairs"``), or the pairs when there are
    any and else the A/B items (``"ab_items_or_pairs"``), at ``[layer]``. An :class:`AffineMap` result is
    applied with the ``"affine"`` operator, a vector added."""

    def build(model: Any, data: BehaviourData, layer: int) -> Built:
        from .methods import get_estimator

        estimator = get_estimator(name)
        note = ""
        if estimator.reads == "ab_items":
            source = data.train_items
        elif estimator.reads == "pairs":
            _needs_pairs(data, name)
            source = data.pairs
        elif estimator.reads == "ab_items_or_pairs":
            # PCA on A/B answer-letter differences finds the *letter* direction (y+ is "A" for half the items,
            # "B" for the rest, so that part flips sign and dominates the variance): pairs come first.
            source = data.pairs or data.train_items
            note = "" if data.pairs else "built from A/B items (no contrast pairs): may encode the letter"
        else:
            raise SteeringError(
                f"{name} reads {estimator.reads}, which compare cannot derive from a behaviour's data; "
                "pass (name, builder) instead"
            )
        built = estimator(model, source, [layer])
        if isinstance(built, AffineMap):
            return Built(affine_steerer(built, layer), None, note)
        return Built(vector_steerer(built), built, note)

    return build


def _build_caa(model: Any, data: BehaviourData, layer: int) -> Built:
    return registered_builder("caa")(model, data, layer)


def generic_corpus() -> list[str]:
    """Mean-centring's "all activations" (Jorgensen et al. 2023 centre on generic text, not on the
    behaviour's own data): the built-in reference passages, plain prose unrelated to any behaviour."""
    from .data import reference_passages

    return list(reference_passages())


def _build_mean_centring(model: Any, data: BehaviourData, layer: int) -> Built:
    _needs_pairs(data, "mean_centring")
    from .methods import mean_centring

    corpus = generic_corpus()
    vec = mean_centring(model, [p.positive for p in data.pairs], corpus, [layer])
    return Built(vector_steerer(vec), vec, f"centred on {len(corpus)} generic reference passages")


def _build_icv(model: Any, data: BehaviourData, layer: int) -> Built:
    _needs_pairs(data, "icv")
    from .methods import icv

    vec = icv(model, [(p.negative, p.positive) for p in data.pairs], None)
    steer = vector_steerer(vec, operator="add_norm_preserving")
    return Built(steer, None, "every layer, norm-preserving; one PCA across layers")


def _build_affine(model: Any, data: BehaviourData, layer: int) -> Built:
    from .methods import affine

    # Fitted on every token of the contrast pairs, since it is applied at every position; with only
    # A/B items, on the answer-letter activations (which meet other positions' activations badly).
    if data.pairs:
        amap = affine(model, data.pairs, layer, tokens="all")
    else:
        amap = affine(model, data.train_items, layer)
    n_src, n_tgt = amap.meta["n_samples"]
    where = amap.meta["read_position"]
    note = f"shrinkage {amap.meta['shrinkage_source']:.2f}, {n_src}+{n_tgt} samples ({where})"
    return Built(affine_steerer(amap, layer), None, note)


#: compare's own recipes for methods it builds differently from :func:`registered_builder`: mean-centring on
#: a generic corpus, ICV on every layer (norm-preserving), affine on every token of the pairs. Every other
#: name is looked up in :data:`steerwidgets.methods.ESTIMATORS`.
METHODS: dict[str, MethodBuilder] = {
    "mean_centring": _build_mean_centring,
    "icv": _build_icv,
    "affine": _build_affine,
}
_FED = ("ab_items", "pairs", "ab_items_or_pairs")  # what registered_builder can feed an estimator


def method_names() -> list[str]:
    """The names :func:`compare` accepts: its own recipes and every registered estimator it can feed."""
    from .methods import ESTIMATORS

    return sorted(set(METHODS) | {name for name, est in ESTIMATORS.items() if est.reads in _FED})


def method_builder(name: str) -> MethodBuilder:
    """compare's builder for a method name (its own recipe first, else the registered estimator)."""
    if name in METHODS:
        return METHODS[name]
    if name in method_names():
        return registered_builder(name)
    raise SteeringError(f"unknown method {name!r}; choose from {method_names()}")


def stack_steerer(steerings: Sequence[Steering]) -> tuple[SteerFn, SteeringVector | None]:
    """``λ ↦`` the stack with every part at λ × its own strength (λ = 1 is the stack as given).

    An additive, absolute part is rescaled into its vector once (``s·v`` at strength λ), so the stack's
    controls are built as for any method: the random vectors take each layer's ‖Σ s·v‖, the negated
    control is −λ, and a one-part stack at one layer on all positions keeps the engine's fast sweep and
    its verdicts. Relative or non-additive parts keep their vector and take strength λ·s.
    Returns the steerer and, for a one-part stack, the rescaled vector.
    """
    parts: list[tuple[Steering, float]] = []
    for item in steerings:
        if item.operator == "add" and not item.relative and not isinstance(item.vector, AffineMap):
            vec = SteeringVector(
                {item.layer: float(item.strength) * item.direction()}, method=stack_label([item])
            )
            parts.append((Steering(vec, item.layer, 1.0, item.positions, "add"), 1.0))
        else:
            parts.append((item, float(item.strength)))

    def steer(strength: float) -> list[Steering]:
        out = []
        for item, unit in parts:
            out.append(
                Steering(item.vector, item.layer, float(strength) * unit, item.positions, item.operator,
                         item.relative)
            )  # fmt: skip
        return out

    single = (
        parts[0][0].vector if len(parts) == 1 and isinstance(parts[0][0].vector, SteeringVector) else None
    )
    return steer, single


def _stack_method(spec: Any) -> tuple[str, list[Steering]] | None:
    """A compare() row that is a fixed stack: ``Steering``, a list of them, or ``(label, stack)``."""
    if isinstance(spec, Steering):
        return stack_label([spec]), [spec]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(x, Steering) for x in spec):
        return stack_label(list(spec)), list(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        inner = _stack_method(spec[1])
        if inner is not None:
            return spec[0], inner[1]
    return None


def behaviour_data(name: str, n_items: int, n_train: int | None = None) -> BehaviourData:
    """Built-in data for a behaviour: the first ``n_items`` A/B items are held out for evaluation, the
    rest (at most ``n_train``) train the vectors; ``n_items`` open-ended items; all contrast pairs."""
    from .data import DatasetError, builtin_ab, builtin_open_ended, builtin_pairs

    items = list(builtin_ab(name))
    if len(items) < n_items + 2:
        raise SteeringError(
            f"{name!r} has {len(items)} A/B items: too few to hold out {n_items} and train on the rest; "
            "lower n_items"
        )
    train = items[n_items:]
    if n_train is not None:
        train = train[:n_train]
    try:
        pairs = list(builtin_pairs(name))
    except DatasetError:
        pairs = []  # the pair-based methods say so in their row
    return BehaviourData(
        name=name,
        train_items=train,
        test_items=items[:n_items],
        pairs=pairs,
        open_items=list(builtin_open_ended(name))[:n_items],
    )


def _needs_pairs(data: BehaviourData, method: str) -> None:
    if not data.pairs:
        raise SteeringError(f"{method} is built from contrast pairs and {data.name!r} has none")


@dataclass
class CompareResult:
    """One row per (method, behaviour), and everything behind each row."""

    rows: list[dict[str, Any]]
    details: dict[str, dict[str, Any]]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "details": self.details, "settings": self.settings}


def _passages(n_passages: int | None) -> list[str]:
    from .data import reference_passages

    passages = list(reference_passages())
    return passages if n_passages is None else passages[:n_passages]


# ----------------------------------------------------------------------------------------------
# Fair comparison: matched intervention size, and a fluency verdict per row
# ----------------------------------------------------------------------------------------------
MATCH_MODES = ("norm", "kl", None)
FLUENCY_QUERIES = 3  # open-ended queries continued per row (greedy)
FLUENCY_TOKENS = 24  # new tokens per continuation


def residual_norms(
    model: Any, layers: Sequence[int], prompts: Sequence[str] = NEUTRAL_PROMPTS
) -> dict[int, float]:
    """mean‖h_L‖ of the unsteered model on the neutral prompts (chat template), per layer: each prompt's
    mean over its tokens except the first (an attention sink with a huge norm), then the mean over prompts."""
    seqs = neutral_ids(model, prompts)
    acts = read_activations(model, seqs, sorted(set(layers)), position="all")
    out = {}
    for layer, a in acts.items():
        rows = [float(a[i, 1 : len(seq)].norm(dim=-1).mean()) for i, seq in enumerate(seqs) if len(seq) > 1]
        out[layer] = float(np.mean(rows))
    return out


def steering_norm_ratio(steerings: Sequence[Steering], norms: dict[int, float]) -> float:
    """Intervention size: Σ over the steerings of ‖λv‖ / mean‖h‖ at each one's layer.

    One layer: the engine's ‖λv‖ / mean‖h‖. Several layers (ICV): the sum, the total displacement
    if nothing cancels, so an every-layer method is not allowed 30 times the budget of a one-layer one.
    An affine map counts its mean shift μ_tgt − μ_src (as the engine does); a relative strength is
    already the ratio.
    """
    total = 0.0
    for item in steerings:
        if item.relative:
            total += abs(float(item.strength))
            continue
        vnorm = float(item.direction().norm(dim=-1).mean())
        total += abs(float(item.strength)) * vnorm / max(norms[item.layer], 1e-12)
    return total


def scaled(steer: SteerFn, factor: float) -> SteerFn:
    """The steerer with every strength multiplied by ``factor`` (how sizes are matched)."""
    return lambda strength: steer(float(factor) * float(strength))


def kl_matched_scale(
    ctx: EvalContext,
    steer: SteerFn,
    at: float,
    target: float,
    start: float = 1.0,
    *,
    tol: float = 0.05,
    max_evals: int = 12,
) -> tuple[float, float]:
    """Factor c with KL(steer(c·at) ‖ unsteered) on the neutral prompts ≈ ``target`` (relative ``tol``).

    Doubles or halves c from ``start`` until the target is bracketed, then bisects log c. Returns the
    c whose KL came closest and that KL (each evaluation is one batched pass over the neutral prompts).
    """
    if not target > 0:
        raise SteeringError(f"the KL to match must be > 0, got {target}")
    seen: list[tuple[float, float]] = []

    def kl(c: float) -> float:
        value = float(
            kl_on_neutral(ctx.model, steer, [c * at], ctx.neutral_prompts, base=ctx.base_neutral)[0]
        )
        seen.append((c, value))
        ctx.check()
        return value

    c = max(float(start), 1e-6)
    lo, hi = (c, None) if kl(c) < target else (None, c)
    while (lo is None or hi is None) and len(seen) < max_evals:
        c = c * 2 if hi is None else c / 2
        if kl(c) < target:
            lo = c
        else:
            hi = c
    while lo is not None and hi is not None and len(seen) < max_evals:
        if abs(seen[-1][1] - target) <= tol * target:
            break
        mid = float(np.sqrt(lo * hi))
        if kl(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min(seen, key=lambda pair: abs(pair[1] - target))
    return best


@dataclass
class FluencyCheck:
    """Greedy continuations of a few open-ended queries, each judged by
    :func:`~steerwidgets.fluency.fluency_verdict` against the unsteered continuation (generated and
    scored once per behaviour)."""

    model: Any
    queries: list[str]
    max_new_tokens: int = FLUENCY_TOKENS
    thresholds: dict[str, Any] = field(default_factory=dict)
    _base: list[list[float]] | None = field(default=None, repr=False)

    def _texts(self, steerings: list[Steering] | None, cancel: threading.Event | None) -> list[str]:
        common = dict(max_new_tokens=self.max_new_tokens, cancel=cancel)
        if not steerings:
            return generate(self.model, self.queries, None, **common).base.texts
        return generate(self.model, self.queries, steerings, baseline=False, **common).steered.texts

    def _logprobs(self, texts: list[str]) -> list[list[float]]:
        todo = [i for i, text in enumerate(texts) if text]
        out: list[list[float]] = [[] for _ in texts]
        if todo:
            lps = score(self.model, [self.queries[i] for i in todo], [texts[i] for i in todo])
            for i, lp in zip(todo, lps):
                out[i] = lp.tolist()
        return out

    def judge(self, steerings: list[Steering], cancel: threading.Event | None = None) -> dict[str, Any]:
        from .fluency import fluency_verdict

        if self._base is None:
            self._base = self._logprobs(self._texts(None, cancel))
        texts = self._texts(steerings, cancel)
        lps = self._logprobs(texts)
        tok = self.model.tokenizer
        verdicts = []
        for base_lp, lp, text in zip(self._base, lps, texts):
            ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
            verdict = fluency_verdict(base_lp, lp, ids, **self.thresholds)
            verdicts.append({**verdict.to_json(), "text": text})
        bad = [v for v in verdicts if v["degraded"]]
        kinds = sorted({v["kind"].replace("_", " ") for v in bad})
        summary = f"{len(bad)}/{len(verdicts)} degraded" + (f" ({', '.join(kinds)})" if kinds else "")
        return {
            "degraded_fraction": len(bad) / len(verdicts),
            "summary": summary,
            "reason": bad[0]["reason"] if bad else verdicts[0]["reason"],
            "verdicts": verdicts,
        }


def compare(
    methods: Sequence[str | tuple[str, MethodBuilder]] = ("caa", "pca", "mean_centring", "icv", "affine"),
    behaviours: Sequence[str | BehaviourData] = ("sentiment",),
    *,
    model: Any = None,
    layer: int = 12,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    n_items: int = 8,
    n_train: int | None = None,
    open_strength: float | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    n_passages: int | None = 3,
    instructions: dict[str, str] | None = None,
    quantile: float = 0.5,
    match: str | None = "norm",
    target_ratio: float | None = None,
    target_kl: float | None = None,
    fluency: bool = True,
    fluency_queries: int = FLUENCY_QUERIES,
    fluency_tokens: int = FLUENCY_TOKENS,
    fluency_thresholds: dict[str, Any] | None = None,
    contexts: bool = False,
    capability: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> CompareResult:
    """Every method on every behaviour, with random / negated / zero / prompting baselines, as one table.

    Vectors are built at ``layer`` from the training split; A/B steerability and the anti-steerable
    fraction come from the held-out items over ``strengths``; the open-ended Δ+/Δ− (top ``quantile``,
    per-token mean), perplexity ratio and KL are read at ``open_strength`` (default: the largest
    strength). ``behaviours`` are built-in names or your own :class:`BehaviourData` (A/B items to train
    and test on, contrast pairs, open-ended items; its ``instruction`` is the prompting baseline's).
    ``methods`` are names from :func:`method_names`, ``(name, builder)`` pairs, or fixed steerings: a
    ``sw.Steering``, a list of them (a *stack*, one row labelled ``"sentiment@10 + formality@14"``) or
    ``(label, stack)``. A stack row is the same on every behaviour; strength λ multiplies each part's own
    strength (λ = 1 is the stack as given; see :func:`stack_steerer`), and matching scales the whole stack;
    its row also has ``stack`` (the parts, as :func:`~steerwidgets.describe_steerings` gives them) and its
    ``layer`` lists the parts' layers;
    ``progress(done, total, label)`` is called after each step; setting ``cancel`` stops between steps
    (and inside sweeps) with ``GenerationCancelled``.

    Methods are compared at a matched intervention size, since a bigger push moves every number:
    ``match="norm"`` (default) scales each method's strengths so that at ``open_strength`` its
    :func:`steering_norm_ratio` (‖λv‖ / mean‖h‖ on the neutral prompts, summed over layers) equals
    ``target_ratio`` (default: the CAA vector's at ``open_strength``); ``match="kl"`` instead equalises
    KL(steered ‖ unsteered) on the neutral prompts with ``target_kl`` (default: CAA's), by a bracketing
    search; ``match=None`` uses the strengths as given. Every row reports ``strength_scale``,
    ``norm_ratio`` and ``kl``; ``norm_ratio`` is the sum over the row's steerings (what matching equalises,
    so a two-vector stack is allowed the size of one vector, as ICV's every-layer rows are), and
    ``norm_ratio_parts`` lists each steering's own ratio in the row's order. With ``fluency``, each row
    also judges greedy continuations of the first
    ``fluency_queries`` open-ended queries (``fluency_tokens`` tokens) at ``open_strength`` with
    :func:`~steerwidgets.fluency.fluency_verdict` (``fluency_thresholds`` are its keywords).

    Realistic use: ``contexts=True`` also measures each row's A/B steerability (same steerer, matched
    strengths) on the held-out items asked as the last turn of the built-in dialogues and tool-use contexts
    (:func:`~steerwidgets.contexts.embed_all`), paired by item with the bare numbers the row already has:
    ``context_<kind>_effect``, ``_ratio`` (None when the bare effect < ``MIN_BARE_EFFECT``), ``_difference``,
    ``_difference_ci`` and ``_verdict`` for ``kind`` in ``dialogue``, ``tool_use``, beside
    ``context_bare_effect`` (the row's steerability) and ``context_caveat`` ("too small to compare" when the
    bare effect is below ``MIN_BARE_EFFECT``, else None); contexts a model's chat template cannot hold are
    refused before any forward pass. ``capability=n`` runs
    :func:`~steerwidgets.capabilities.capability_check` on the first ``n`` items of each capability set
    with the row's steering at its matched ``open_strength``: ``capability`` (one line),
    ``capability_change`` (mean accuracy change over the sets) and ``capability_verdict``; the full summary
    goes to ``details``.
    """
    _check_realistic_args(contexts, capability)
    if match not in MATCH_MODES:
        raise SteeringError(f"match must be 'norm', 'kl' or None, got {match!r}")
    if model is None:
        from .models import load_model

        model = load_model()
    require_model(model, "compare")
    model.check_layer(layer)
    lam = _check_strengths(strengths)
    open_at = float(lam.max()) if open_strength is None else float(open_strength)
    resolved: list[tuple[str, MethodBuilder]] = []
    stacks: dict[str, list[Steering]] = {}
    for index, spec in enumerate(methods):
        stack = _stack_method(spec)
        if isinstance(spec, str):
            resolved.append((spec, method_builder(spec)))
        elif stack is not None:
            label, items = stack
            try:
                check_steerings(items, model)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"methods[{index}] ({label}): {exc}") from exc
            steer, single = stack_steerer(items)
            note = "a fixed stack: each part at λ × its strength (λ = 1 is the stack as given)"
            resolved.append((label, lambda _m, _d, _l, s=steer, v=single, n=note: Built(s, v, n)))
            stacks[label] = items
        elif isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1]):
            resolved.append((spec[0], spec[1]))
        else:
            raise SteeringError(
                f"methods[{index}] is {spec!r:.80}; give a method name, a (name, builder) pair, a "
                "sw.Steering, a list of them (a stack) or a (label, stack) pair"
            )
    instr = dict(DEFAULT_INSTRUCTIONS)
    instr.update(instructions or {})
    datas = [b if isinstance(b, BehaviourData) else behaviour_data(b, n_items, n_train) for b in behaviours]
    for data in datas:
        data.check()
    # the chat template is checked here, before any forward pass: a template that cannot hold fails first
    in_context = {data.name: _context_items(model, data.test_items) for data in datas} if contexts else {}
    kinds = sorted({kind for by_kind in in_context.values() for kind in by_kind})
    passages = _passages(n_passages)
    per_row = 3 + len(seeds) + len(kinds) + (1 if capability else 0)
    total = len(behaviours) * (1 + len(resolved) * per_row)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total, label)
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("comparison cancelled")

    rows, details = [], {}
    used_instructions: dict[str, str | None] = {}
    norms: dict[int, float] = {}  # mean‖h‖ per layer on the neutral prompts, filled as needed
    targets: dict[str, dict[str, Any]] = {}
    capability_base: list[Any] = []  # the unsteered capability result, scored once, at the first row
    for data in datas:
        behaviour = data.name
        ctx = EvalContext(model, data.test_items, data.open_items, passages, lam, open_at, cancel=cancel)
        instruction = data.instruction or instr.get(behaviour)
        used_instructions[behaviour] = instruction
        prompting = prompting_baseline(ctx, instruction) if instruction else None
        zero = evaluate_steerer(ctx, zero_steerer([layer], model.d_model), full=False)
        caa_built, caa_is_row = _reference_caa(model, data, layer, resolved) if match else (None, False)
        target = _match_target(ctx, caa_built, match, open_at, norms, target_ratio, target_kl)
        targets[behaviour] = target
        judge = None
        if fluency:
            queries = [it.query for it in data.open_items[:fluency_queries]]
            judge = FluencyCheck(model, queries, fluency_tokens, dict(fluency_thresholds or {}))
        tick(f"{behaviour}: baselines")
        for name, builder in resolved:
            started = time.perf_counter()
            row = {"method": name, "behaviour": behaviour, "layer": layer, "open_strength": open_at}
            try:
                reuse = name == "caa" and caa_is_row
                built = caa_built if reuse else builder(model, data, layer)
            except SteeringError as exc:  # e.g. no contrast pairs for this behaviour: say so, go on
                row.update(error=str(exc), note=f"not built: {exc}")
                rows.append(row)
                for _ in range(per_row):
                    tick(f"{behaviour}: {name} skipped")
                continue
            tick(f"{behaviour}: {name} built")
            factor = _match_scale(ctx, built.steer, match, open_at, norms, target)
            steer = scaled(built.steer, factor)
            result = with_baselines(
                ctx,
                steer,
                seeds=seeds,
                prompting=prompting,
                zero=zero,
                tick=lambda label, n=name, b=behaviour: tick(f"{b}: {n} {label}"),
            )
            row.update(summary_row(result, quantile))
            row["match"] = match or "none"
            row["strength_scale"] = factor
            row["matched_strength"] = factor * open_at
            parts = steer(open_at)
            row["norm_ratio"] = steering_norm_ratio(parts, _norms_for(model, norms, parts))
            row["norm_ratio_parts"] = [steering_norm_ratio([part], norms) for part in parts]
            if name in stacks:
                layers = [item.layer for item in stacks[name]]
                row["layer"] = layers[0] if len(set(layers)) == 1 else ", ".join(map(str, layers))
                row["stack"] = describe_steerings(stacks[name])
            if judge is not None:
                check = judge.judge(steer(open_at), cancel)
                result["fluency"] = check
                row["fluency"] = check["summary"]
                row["fluency_degraded_fraction"] = check["degraded_fraction"]
                row["fluency_reason"] = check["reason"]
            if contexts:
                effect = _context_effect(
                    ctx, steer, in_context[behaviour], result["method"]["item_slopes"],
                    tick=lambda kind, n=name, b=behaviour: tick(f"{b}: {n} in {kind}"),
                )  # fmt: skip
                per_item = {kind: list(values) for kind, values in effect.effect.items()}
                result["contexts"] = {**effect.summary(), "items": per_item}
                row.update(_context_fields(effect))
            if capability:
                checked = _row_capability(model, steer(open_at), capability, capability_base)
                result["capability"] = checked.summary()
                row.update(_capability_fields(checked))
                tick(f"{behaviour}: {name} capability")
            row["note"] = built.note
            row["seconds"] = round(time.perf_counter() - started, 2)
            rows.append(row)
            details[f"{name}/{behaviour}"] = result
    settings = {
        "model": getattr(model, "name", ""),
        "layer": layer,
        "strengths": [float(x) for x in lam],
        "open_strength": open_at,
        "n_items": n_items,
        "n_passages": len(passages),
        "seeds": list(seeds),
        "quantile": quantile,
        "reduction": "per-token mean log-likelihood",
        "instructions": used_instructions,
        "pne_effect": EFFECT_NAME,
        "usable_ppl_ratio": USABLE_PPL_RATIO,
        "negated": "the method at −λ (for additive vectors: the vector −v)",
        "match": match or "none",
        "match_targets": targets,
        "norm_ratio": "Σ over steered layers of ‖λv‖ / mean‖h‖ (neutral prompts, first token left out)",
        "norm_ratio_parts": "each steering's own ‖λv‖ / mean‖h‖, in the row's order (their sum: norm_ratio)",
        "fluency": _fluency_settings(fluency, fluency_queries, fluency_tokens, fluency_thresholds),
        "contexts": _contexts_settings(in_context),
        "capability": _capability_settings(capability),
    }
    return CompareResult(rows, details, settings)


def _norms_for(model: Any, norms: dict[int, float], steerings: Sequence[Steering]) -> dict[int, float]:
    """Fill ``norms`` (a cache) for the steerings' layers and return it."""
    missing = sorted({item.layer for item in steerings} - set(norms))
    if missing:
        norms.update(residual_norms(model, missing))
    return norms


def _reference_caa(
    model: Any, data: BehaviourData, layer: int, methods: Sequence[tuple[str, MethodBuilder]]
) -> tuple[Built, bool]:
    """The CAA steerer sizes are matched to, and whether it is the compared method named "caa" (built
    once, reused for its row); else a CAA vector from the training items."""
    for name, builder in methods:
        if name == "caa":
            try:
                return builder(model, data, layer), True
            except SteeringError:
                break
    return _build_caa(model, data, layer), False


def _match_target(
    ctx: EvalContext,
    caa_built: Built | None,
    match: str | None,
    at: float,
    norms: dict[int, float],
    target_ratio: float | None,
    target_kl: float | None,
) -> dict[str, Any]:
    """What every method is matched to: the given value, or the CAA vector's at strength ``at``."""
    if match is None:
        return {"match": "none"}
    if match == "norm":
        if target_ratio is not None:
            return {"match": "norm", "norm_ratio": float(target_ratio), "from": "given"}
        probe = caa_built.steer(at)
        value = steering_norm_ratio(probe, _norms_for(ctx.model, norms, probe))
        return {"match": "norm", "norm_ratio": value, "from": f"caa at λ = {at:g}"}
    if target_kl is not None:  # each method's search starts at its own strength
        return {"match": "kl", "kl": float(target_kl), "from": "given"}
    probe = caa_built.steer(at)
    start = steering_norm_ratio(probe, _norms_for(ctx.model, norms, probe))  # the search starts here
    value = float(
        kl_on_neutral(ctx.model, caa_built.steer, [at], ctx.neutral_prompts, base=ctx.base_neutral)[0]
    )
    return {"match": "kl", "kl": value, "from": f"caa at λ = {at:g}", "start_ratio": start}


def _match_scale(
    ctx: EvalContext, steer: SteerFn, match: str | None, at: float, norms: dict[int, float], target: dict
) -> float:
    """The strength factor that gives this steerer the target size at ``at`` (1 when nothing to match)."""
    if match is None or at == 0:
        return 1.0
    probe = steer(at)
    size = steering_norm_ratio(probe, _norms_for(ctx.model, norms, probe))
    if size == 0:
        return 1.0  # a zero intervention cannot be scaled to any size
    if match == "norm":
        return float(target["norm_ratio"]) / size
    start = float(target.get("start_ratio", 0.0)) / size if target.get("start_ratio") else 1.0
    factor, _ = kl_matched_scale(ctx, steer, at, float(target["kl"]), start)
    return factor


def _fluency_settings(
    on: bool, queries: int, tokens: int, thresholds: dict[str, Any] | None
) -> dict[str, Any]:
    from . import fluency as F

    if not on:
        return {"on": False}
    values = dict(
        max_drop=F.MAX_LOGPROB_DROP, min_distinct=F.MIN_DISTINCT, n=F.DISTINCT_N, min_tokens=F.MIN_TOKENS
    )
    values.update(thresholds or {})
    return {
        "on": True,
        "queries": queries,
        "max_new_tokens": tokens,
        "decoding": "greedy",
        "at": "open_strength (matched)",
        **values,
    }


# ----------------------------------------------------------------------------------------------
# Realistic use in compare: the effect in dialogue / tool-use contexts, and the capability cost
# ----------------------------------------------------------------------------------------------
CONTEXT_MEASURE = (
    "A/B steerability: per-item OLS slope of m_i(λ) over the row's strengths (matched), held-out items"
)


def _check_realistic_args(contexts: Any, capability: Any) -> None:
    """compare's ``contexts`` and ``capability`` arguments, checked before any model work."""
    if not isinstance(contexts, bool):
        raise SteeringError(
            f"contexts must be True or False, got {contexts!r}; pass contexts=True to measure each row in "
            "the built-in dialogue and tool-use contexts"
        )
    positive = isinstance(capability, int) and not isinstance(capability, bool) and capability >= 1
    if capability is not None and not positive:
        raise SteeringError(
            f"capability must be a positive int (items per capability set) or None, got {capability!r}; "
            "e.g. capability=20, or leave it out to skip the capability check"
        )


def _context_items(model: Any, items: Sequence[ABItem]) -> dict[str, list[ABItem]]:
    """The held-out items asked as the last turn of each built-in context kind (chat template only, no
    forward pass), so a template that cannot hold the conversations fails before compare runs anything."""
    from .contexts import embed_all

    try:
        embedded = embed_all(model, items)
    except SteeringError as exc:
        raise SteeringError(
            f"contexts=True cannot put the items into multi-turn conversations on "
            f"{getattr(model, 'name', 'this model')}: {exc}. Run compare with contexts=False, or use a chat "
            "model whose template renders several user/assistant turns"
        ) from exc
    embedded.pop("bare")
    return embedded


def _context_effect(
    ctx: EvalContext,
    steer: SteerFn,
    items_by_kind: dict[str, list[ABItem]],
    bare_slopes: Sequence[float],
    tick: Callable[[str], None],
) -> Any:
    """The row's per-item steerability in each context kind beside its bare slopes (already measured by
    :func:`evaluate_steerer` with the same steerer and strengths), as a paired ``ContextEffect``."""
    from .contexts import paired_context_effect

    per_kind = {"bare": np.asarray(bare_slopes, dtype=float)}
    for kind, items in items_by_kind.items():
        ctx.check()
        m = propensity_matrix(ctx.model, items, steer, ctx.strengths, ctx.cancel)
        per_kind[kind] = metrics.slopes(m, ctx.strengths)
        tick(kind)
    settings = {"strengths": [float(x) for x in ctx.strengths], "positions": "as the row's steering"}
    return paired_context_effect(CONTEXT_MEASURE, per_kind, settings)


def _context_fields(effect: Any) -> dict[str, Any]:
    """Flat row fields ``context_<kind>_…`` from a ``ContextEffect`` (plus the bare effect and a caveat)."""
    from .contexts import MIN_BARE_EFFECT, context_verdict

    bare = effect.mean("bare")
    row: dict[str, Any] = {"context_bare_effect": bare}
    for kind in effect.kinds:
        ci = effect.difference_ci[kind]
        row[f"context_{kind}_effect"] = effect.mean(kind)
        row[f"context_{kind}_ratio"] = effect.ratio(kind)
        row[f"context_{kind}_difference"] = effect.mean(kind) - bare
        row[f"context_{kind}_difference_ci"] = [float(ci[0]), float(ci[1])]
        row[f"context_{kind}_verdict"] = context_verdict(ci, bare)
    small = bare < MIN_BARE_EFFECT
    caveat = f"bare effect {bare:.3g} < {MIN_BARE_EFFECT}: too small to compare"
    row["context_caveat"] = caveat if small else None
    return row


def _row_capability(model: Any, steerings: list[Steering], n: int, base: list[Any]) -> Any:
    """``capability_check`` of one row's steering (at its matched strength), first ``n`` items per set;
    the unsteered pass is scored once per comparison (kept in ``base``) and reused by every row."""
    from .capabilities import capability_check

    if not base:
        base.append(capability_check(model, None, n=n))
    return capability_check(model, steerings, n=n, baseline=base[0])


def _capability_fields(result: Any) -> dict[str, Any]:
    """Row fields: the one-line side effect, the mean accuracy change over sets, and one verdict."""
    changes = [r.difference for r in result.sets]
    costly = bool(result.costly_sets)
    return {
        "capability": result.side_effect_line(),
        "capability_change": float(np.mean(changes)),
        "capability_verdict": "costs capability" if costly else "no detectable cost",
    }


def _contexts_settings(in_context: dict[str, dict[str, list[ABItem]]]) -> dict[str, Any]:
    if not in_context:
        return {"on": False}
    from .contexts import MIN_BARE_EFFECT, builtin_contexts

    kinds = sorted({kind for by_kind in in_context.values() for kind in by_kind})
    return {
        "on": True,
        "measure": CONTEXT_MEASURE,
        "kinds": kinds,
        "contexts": {kind: [c.name for c in builtin_contexts(kind)] for kind in kinds},
        "pairing": "item i is the same held-out question bare and in each kind (contexts cycled over items)",
        "bare": "the row's own per-item slopes (steerability), not recomputed",
        "ratio_rule": f"ratio = mean effect in context / mean bare effect, None where the bare effect < "
        f"{MIN_BARE_EFFECT}",
        "verdict_rule": "'weaker in context' / 'stronger in context' when the paired bootstrap 95 % interval "
        "of mean(context − bare) excludes 0, else 'no detectable change'",
        "positions": "the row's steering as built (compare's vectors: all positions, earlier turns too)",
    }


def _capability_settings(n: int | None) -> dict[str, Any]:
    if not n:
        return {"on": False}
    from .capabilities import CAPABILITY_SETS

    return {
        "on": True,
        "n": n,
        "sets": list(CAPABILITY_SETS),
        "at": "open_strength (matched)",
        "scoring": "candidate with the highest per-token mean log-probability",
        "change": "capability_change = mean over sets of (steered − unsteered accuracy)",
        "verdict_rule": "'costs capability' when any set's paired bootstrap 95 % CI of the change is below 0",
        "unsteered": "scored again in every row's check (the same numbers each time)",
    }
