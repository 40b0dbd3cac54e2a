"""Open-ended likelihood shift (Pres et al. 2024; docs/metrics.md).

The log-likelihood of a behaviour-matching and an opposing continuation under the unsteered and the steered
model (:func:`open_ended_loglik`, one batched ``score`` call); :func:`likelihood_shift_table` gives Δ+ and
Δ− on the top-25/50/75 % subsets and on all items, per-token **mean** (the default, ``"primary"``) and
**sum**, both named in the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics
from .data import OpenEndedItem
from .engine.scoring import score
from .interventions import Steering, SteeringError

QUANTILES = (0.25, 0.5, 0.75, 1.0)


def qkey(q: float) -> str:
    return str(int(round(q * 100)))


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
            table[qkey(q)] = {"delta_pos": d_pos, "delta_neg": d_neg}
        out[reduction] = table
    out["reductions"] = {"mean": "per-token mean log-likelihood", "sum": "summed log-likelihood"}
    return out
