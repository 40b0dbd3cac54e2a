"""Conditional steering (CAST, Lee et al. 2024): apply the behaviour vector only to prompts that meet a
condition read from the model's own activations.

A *condition vector* c is read from contrast prompts (prompts that meet the condition vs prompts that do
not) at each layer, from **mean-pooled** prompt activations: the mean difference of the two groups, or the
first principal component of the paired differences (sign fixed to agree with the mean difference). A
prompt's *similarity* at layer L is the cosine between its mean-pooled, centred activation h̄ − μ and c
(μ: the mean pooled activation of the contrast prompts). Two choices differ from CAST's code and are named
here: pooling covers the user's text and the generation prompt only (not a chat template's shared system
prompt, which is the same for every prompt and would dilute the signal), and the similarity is the plain
centred cosine rather than CAST's cosine with tanh(P h). The condition is met when the similarity is
larger (or smaller: ``direction``) than a threshold; :func:`grid_search` picks layer × threshold ×
direction by F1 on a labelled prompt set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .data import DatasetError, dataset_dir
from .engine.activations import read_activations
from .engine.generation import GenerationResult, generate
from .interventions import Steering, SteeringError
from .prompts import tokenize_prompt

DIRECTIONS = ("larger", "smaller")
CONDITION_METHODS = ("mean_difference", "pca")


# ----------------------------------------------------------------------------------------------
# The built-in labelled prompt set
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledPrompts:
    """Prompts that meet a condition (label 1) and prompts that do not (label 0)."""

    condition: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def split(self, n_train: int) -> tuple[LabelledPrompts, LabelledPrompts]:
        """The first ``n_train`` of each group, and the rest (held out)."""
        if not 0 < n_train < min(len(self.positive), len(self.negative)):
            raise DatasetError(f"n_train must leave prompts of both groups on each side, got {n_train}")
        head = LabelledPrompts(self.condition, self.positive[:n_train], self.negative[:n_train])
        tail = LabelledPrompts(self.condition, self.positive[n_train:], self.negative[n_train:])
        return head, tail

    @property
    def prompts(self) -> list[str]:
        return [*self.positive, *self.negative]

    @property
    def labels(self) -> np.ndarray:
        return np.array([1] * len(self.positive) + [0] * len(self.negative))


def builtin_condition(name: str = "legal") -> LabelledPrompts:
    """A built-in labelled set: ``"legal"`` = prompts asking for legal advice vs everyday other topics."""
    path = dataset_dir() / f"condition_{name}.json"
    if not path.is_file():
        raise DatasetError(f"no built-in condition set {name!r}; available: legal")
    row = json.loads(path.read_text(encoding="utf-8"))
    return LabelledPrompts(row["condition"], tuple(row["positive"]), tuple(row["negative"]))


# ----------------------------------------------------------------------------------------------
# Condition vectors and similarities
# ----------------------------------------------------------------------------------------------
def pooled_activations(
    model: Any, prompts: Sequence[str], layers: Sequence[int], chat: bool | None = None
) -> dict[int, torch.Tensor]:
    """Mean over the user's text and the generation prompt of each prompt's block outputs, ``[n, d]``."""
    if not prompts:
        raise SteeringError("no prompts given")
    rows = [tokenize_prompt(model, p, chat) for p in prompts]
    acts = read_activations(model, [ids for ids, _ in rows], list(layers), position="all")
    out = {}
    for layer, h in acts.items():
        pooled = []
        for i, (ids, start) in enumerate(rows):
            first = max(start, 1)  # position 0 is an attention sink with a very large norm
            pooled.append(h[i, first : len(ids)].mean(0))
        out[layer] = torch.stack(pooled)
    return out


@dataclass(frozen=True)
class ConditionVector:
    """Per-layer condition directions (unit norm) and the centre μ the similarity is measured from."""

    directions: dict[int, torch.Tensor]
    centres: dict[int, torch.Tensor]
    method: str
    n_positive: int
    n_negative: int
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)


def condition_vector(
    model: Any,
    pos_prompts: Sequence[str],
    neg_prompts: Sequence[str],
    layers: int | Sequence[int] | None = None,
    *,
    method: str = "mean_difference",
    chat: bool | None = None,
) -> ConditionVector:
    """The condition direction at each layer from mean-pooled activations of contrast prompts.

    ``"pca"`` pairs prompts by index (extra ones are dropped) and takes the first principal component
    of the uncentred paired differences.
    """
    if method not in CONDITION_METHODS:
        raise SteeringError(f"method must be one of {CONDITION_METHODS}, got {method!r}")
    if not pos_prompts or not neg_prompts:
        raise SteeringError("give at least one prompt that meets the condition and one that does not")
    layer_list = (
        list(range(model.n_layers))
        if layers is None
        else ([layers] if isinstance(layers, int) else list(layers))
    )
    acts = pooled_activations(model, [*pos_prompts, *neg_prompts], layer_list, chat)
    n_pos = len(pos_prompts)
    directions, centres = {}, {}
    for layer in layer_list:
        pos, neg = acts[layer][:n_pos], acts[layer][n_pos:]
        mean_diff = pos.mean(0) - neg.mean(0)
        if method == "pca":
            k = min(len(pos), len(neg))
            diffs = pos[:k] - neg[:k]
            vec = torch.linalg.svd(diffs, full_matrices=False).Vh[0]
            vec = vec if float(vec @ mean_diff) >= 0 else -vec
        else:
            vec = mean_diff
        directions[layer] = vec / vec.norm().clamp_min(1e-12)
        centres[layer] = acts[layer].mean(0)
    return ConditionVector(directions, centres, method, n_pos, len(neg_prompts))


def condition_similarity(
    model: Any,
    prompts: Sequence[str],
    cond: ConditionVector,
    layer: int | Sequence[int],
    chat: bool | None = None,
) -> np.ndarray | dict[int, np.ndarray]:
    """Cosine between each prompt's centred pooled activation and the condition direction.

    One layer gives ``[n]``; a list of layers gives ``{layer: [n]}`` from a single pass.
    """
    layer_list = [layer] if isinstance(layer, int) else list(layer)
    missing = [x for x in layer_list if x not in cond.directions]
    if missing:
        raise SteeringError(f"the condition vector has no layer {missing}; it has {cond.layers}")
    acts = pooled_activations(model, prompts, layer_list, chat)
    out = {}
    for x in layer_list:
        h = acts[x] - cond.centres[x]
        out[x] = (h @ cond.directions[x] / h.norm(dim=1).clamp_min(1e-12)).numpy().astype(float)
    return out[layer] if isinstance(layer, int) else out


# ----------------------------------------------------------------------------------------------
# Deciding per prompt
# ----------------------------------------------------------------------------------------------
def condition_met(similarity: np.ndarray | float, threshold: float, direction: str) -> np.ndarray:
    """Similarity strictly above (``"larger"``) or below (``"smaller"``) the threshold."""
    if direction not in DIRECTIONS:
        raise SteeringError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    sim = np.asarray(similarity, dtype=float)
    return sim > threshold if direction == "larger" else sim < threshold


def describe_decision(similarity: float, threshold: float, direction: str) -> str:
    """The Playground's line, e.g. ``condition met (similarity 0.42 vs threshold 0.30)``."""
    met = bool(condition_met(similarity, threshold, direction))
    sign = ">" if direction == "larger" else "<"
    return (
        f"condition {'met' if met else 'not met'} (similarity {similarity:.2f} vs threshold {threshold:.2f}, "
        f"met when {sign})"
    )


@dataclass(frozen=True)
class ConditionalSteering:
    """Apply ``behaviour`` only to prompts whose similarity at ``layer`` passes ``threshold``."""

    condition: ConditionVector
    layer: int
    threshold: float
    direction: str
    behaviour: Steering

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise SteeringError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.layer not in self.condition.directions:
            raise SteeringError(
                f"the condition vector has no layer {self.layer}; it has {self.condition.layers}"
            )

    def similarities(self, model: Any, prompts: Sequence[str], chat: bool | None = None) -> np.ndarray:
        return condition_similarity(model, prompts, self.condition, self.layer, chat)

    def decide(self, model: Any, prompts: Sequence[str], chat: bool | None = None) -> np.ndarray:
        """One boolean per prompt: does the behaviour steering apply?"""
        return condition_met(self.similarities(model, prompts, chat), self.threshold, self.direction)

    def describe(self, similarity: float) -> str:
        return describe_decision(similarity, self.threshold, self.direction)


def f1_score(predicted: Sequence[bool], labels: Sequence[int]) -> tuple[float, float, float]:
    """Precision, recall and F1 of ``predicted`` against 0/1 ``labels`` (0 where undefined)."""
    pred = np.asarray(predicted, dtype=bool)
    true = np.asarray(labels).astype(bool)
    if pred.shape != true.shape:
        raise ValueError("predicted and labels must have the same length")
    tp = float(np.sum(pred & true))
    precision = tp / pred.sum() if pred.sum() else 0.0
    recall = tp / true.sum() if true.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# ----------------------------------------------------------------------------------------------
# Grid search
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridSearchResult:
    """The best (layer, threshold, direction) by F1 and every cell tried."""

    layer: int
    threshold: float
    direction: str
    f1: float
    precision: float
    recall: float
    n: int
    table: tuple[dict, ...]

    def steering(self, condition: ConditionVector, behaviour: Steering) -> ConditionalSteering:
        return ConditionalSteering(condition, self.layer, self.threshold, self.direction, behaviour)

    @property
    def verdict(self) -> str:
        return (
            f"Best condition: layer {self.layer}, similarity {'>' if self.direction == 'larger' else '<'} "
            f"{self.threshold:.3f}, F1 {self.f1:.2f} on {self.n} labelled prompts (chance F1 with all "
            "prompts flagged is 2p/(1+p), p the positive share)."
        )

    def summary(self) -> dict[str, Any]:
        best_per_layer: dict[int, float] = {}
        for row in self.table:
            best_per_layer[row["layer"]] = max(best_per_layer.get(row["layer"], 0.0), row["f1"])
        return {
            "layer": self.layer,
            "threshold": self.threshold,
            "direction": self.direction,
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "n": self.n,
            "best_f1_per_layer": {str(k): v for k, v in sorted(best_per_layer.items())},
            "similarity": "cosine of centred mean-pooled activation with the condition direction",
            "verdict": self.verdict,
        }


def _candidate_thresholds(sims: np.ndarray) -> np.ndarray:
    """Midpoints between sorted distinct similarities, plus one below and one above all of them."""
    values = np.unique(sims)
    mids = (values[1:] + values[:-1]) / 2
    return np.concatenate([[values[0] - 1e-6], mids, [values[-1] + 1e-6]])


def search_thresholds(
    sims: dict[int, np.ndarray],
    labels: Sequence[int],
    thresholds: Sequence[float] | None = None,
    directions: Sequence[str] = DIRECTIONS,
) -> GridSearchResult:
    """The grid search on precomputed similarities (pure): max F1, ties to the earlier layer, then the
    threshold with the widest margin (the middle of the tied run)."""
    labels = np.asarray(labels)
    table = []
    for layer in sorted(sims):
        grid = _candidate_thresholds(sims[layer]) if thresholds is None else np.asarray(thresholds, float)
        for direction in directions:
            for t in grid:
                p, r, f = f1_score(condition_met(sims[layer], float(t), direction), labels)
                table.append(
                    {
                        "layer": layer,
                        "threshold": float(t),
                        "direction": direction,
                        "precision": p,
                        "recall": r,
                        "f1": f,
                    }
                )
    if not table:
        raise SteeringError("nothing to search: give layers and thresholds")
    best_f1 = max(row["f1"] for row in table)
    first = next(row for row in table if row["f1"] == best_f1)
    tied = [
        row
        for row in table
        if row["f1"] == best_f1 and row["layer"] == first["layer"] and row["direction"] == first["direction"]
    ]
    best = tied[len(tied) // 2]
    return GridSearchResult(
        layer=best["layer"],
        threshold=best["threshold"],
        direction=best["direction"],
        f1=best["f1"],
        precision=best["precision"],
        recall=best["recall"],
        n=len(labels),
        table=tuple(table),
    )


def grid_search(
    model: Any,
    cond: ConditionVector,
    prompts: Sequence[str],
    labels: Sequence[int],
    layers: Sequence[int] | None = None,
    thresholds: Sequence[float] | None = None,
    directions: Sequence[str] = DIRECTIONS,
    chat: bool | None = None,
) -> GridSearchResult:
    """Layer × threshold × direction maximising F1 on a labelled prompt set (one activation pass).

    Without ``thresholds``, every midpoint between observed similarities is tried (the exact optimum).
    """
    if len(prompts) != len(labels):
        raise SteeringError(f"got {len(prompts)} prompts but {len(labels)} labels")
    if not set(np.asarray(labels).tolist()) <= {0, 1}:
        raise SteeringError("labels must be 0 or 1")
    layer_list = cond.layers if layers is None else list(layers)
    sims = condition_similarity(model, prompts, cond, layer_list, chat)
    return search_thresholds(sims, labels, thresholds, directions)


def evaluate_condition(
    model: Any, cond_steering: ConditionalSteering, prompts: Sequence[str], labels: Sequence[int]
) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of the decisions on (held-out) labelled prompts."""
    met = cond_steering.decide(model, prompts)
    p, r, f = f1_score(met, labels)
    return {
        "precision": p,
        "recall": r,
        "f1": f,
        "accuracy": float(np.mean(met == np.asarray(labels).astype(bool))),
    }


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConditionalGeneration:
    """Per prompt: the similarity, whether the condition was met, and the text the user gets."""

    prompts: tuple[str, ...]
    similarity: tuple[float, ...]
    met: tuple[bool, ...]
    texts: tuple[str, ...]
    unsteered_texts: tuple[str, ...]
    lines: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return f"Behaviour steering applied to {sum(self.met)} of {len(self.met)} prompts (condition met)."

    def summary(self) -> dict[str, Any]:
        return {
            "n": len(self.prompts),
            "n_steered": int(sum(self.met)),
            "per_prompt": [
                {"prompt": p, "similarity": s, "condition_met": m, "text": t, "decision": line}
                for p, s, m, t, line in zip(self.prompts, self.similarity, self.met, self.texts, self.lines)
            ],
            "verdict": self.verdict,
        }


def conditional_generate(
    model: Any, prompts: str | Sequence[str], cond_steering: ConditionalSteering, **kwargs: Any
) -> ConditionalGeneration:
    """Generate for every prompt, steering only those that meet the condition (one ``generate`` per group).

    ``kwargs`` go to :func:`steerwidgets.generate` (max_new_tokens, seed, ...).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    baseline = kwargs.pop("baseline", True)
    sims = cond_steering.similarities(model, prompts, kwargs.get("chat"))
    met = condition_met(sims, cond_steering.threshold, cond_steering.direction)
    texts: list[str] = [""] * len(prompts)
    base_texts: list[str] = [""] * len(prompts)
    groups = {
        True: [i for i in range(len(prompts)) if met[i]],
        False: [i for i in range(len(prompts)) if not met[i]],
    }
    for is_met, idx in groups.items():
        if not idx:
            continue
        steering = cond_steering.behaviour if is_met else None
        result: GenerationResult = generate(
            model, [prompts[i] for i in idx], steering, baseline=baseline or not is_met, **kwargs
        )
        for j, i in enumerate(idx):
            base_texts[i] = result.base.texts[j] if result.base is not None else ""
            texts[i] = (result.steered if is_met else result.base).texts[j]
    return ConditionalGeneration(
        prompts=tuple(prompts),
        similarity=tuple(float(s) for s in sims),
        met=tuple(bool(m) for m in met),
        texts=tuple(texts),
        unsteered_texts=tuple(base_texts),
        lines=tuple(cond_steering.describe(float(s)) for s in sims),
    )
