"""Steerers: a steering as a function of strength, and the A/B propensities of any steerer.

A *steerer* is a function ``strength → list[Steering]``, so single-layer vectors, ICV's every-layer
norm-preserving additions, affine maps and fixed stacks are all evaluated by the same code
(:mod:`steerwidgets.baselines`, :mod:`steerwidgets.comparison`).

- :func:`vector_steerer`, :func:`affine_steerer`, :func:`stack_steerer` — build one;
  :func:`scaled` multiplies every strength (how :func:`~steerwidgets.compare` matches sizes);
- :func:`ab_propensities` — m_i(λ) = logit(y+) − logit(y−) for any steerer; :func:`propensity_matrix`
  takes the engine's faster ``propensity_sweep`` where it gives the same numbers (:func:`sweepable`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .data import ABItem
from .engine.generation import GenerationCancelled
from .engine.scoring import next_token_logprobs
from .engine.sweep import propensity_sweep
from .interventions import AffineMap, Steering, stack_label
from .prompts import ab_prompt
from .vectors import SteeringVector

SteerFn = Callable[[float], list[Steering]]


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


def scaled(steer: SteerFn, factor: float) -> SteerFn:
    """The steerer with every strength multiplied by ``factor`` (how sizes are matched)."""
    return lambda strength: steer(float(factor) * float(strength))


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


def sweepable(steer: SteerFn, strengths: np.ndarray) -> tuple[SteeringVector, int, np.ndarray] | None:
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
    fast = sweepable(steer, lam)
    if fast is not None:
        vector, layer, effective = fast
        return propensity_sweep(
            model, items, vector, [layer], effective, positions="all", null_directions=0, cancel=cancel
        ).propensity[layer]
    return ab_propensities(model, items, steer, lam, cancel=cancel)
