"""Matched intervention size: how :func:`~steerwidgets.compare` makes methods comparable.

A bigger push moves every number, so methods are compared at one size: ``match="norm"`` equalises
:func:`steering_norm_ratio` (Σ ‖λv‖ / mean‖h‖ over the steered layers, :func:`residual_norms` on the
neutral prompts), ``match="kl"`` equalises KL(steered ‖ unsteered) on the neutral prompts by a bracketing
search (:func:`kl_matched_scale`). :func:`match_target` is what every method is matched to (a given value,
or the CAA vector's), :func:`match_scale` the strength factor that gives one steerer that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .baselines import EvalContext
from .compare_methods import Built
from .engine.activations import read_activations
from .interventions import Steering, SteeringError
from .reliability import NEUTRAL_PROMPTS
from .side_effects import kl_on_neutral, neutral_ids
from .steerers import SteerFn

MATCH_MODES = ("norm", "kl", None)


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


def norms_for(model: Any, norms: dict[int, float], steerings: Sequence[Steering]) -> dict[int, float]:
    """Fill ``norms`` (a cache) for the steerings' layers and return it."""
    missing = sorted({item.layer for item in steerings} - set(norms))
    if missing:
        norms.update(residual_norms(model, missing))
    return norms


def match_target(
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
        value = steering_norm_ratio(probe, norms_for(ctx.model, norms, probe))
        return {"match": "norm", "norm_ratio": value, "from": f"caa at λ = {at:g}"}
    if target_kl is not None:  # each method's search starts at its own strength
        return {"match": "kl", "kl": float(target_kl), "from": "given"}
    probe = caa_built.steer(at)
    start = steering_norm_ratio(probe, norms_for(ctx.model, norms, probe))  # the search starts here
    value = float(
        kl_on_neutral(ctx.model, caa_built.steer, [at], ctx.neutral_prompts, base=ctx.base_neutral)[0]
    )
    return {"match": "kl", "kl": value, "from": f"caa at λ = {at:g}", "start_ratio": start}


def match_scale(
    ctx: EvalContext, steer: SteerFn, match: str | None, at: float, norms: dict[int, float], target: dict
) -> float:
    """The strength factor that gives this steerer the target size at ``at`` (1 when nothing to match)."""
    if match is None or at == 0:
        return 1.0
    probe = steer(at)
    size = steering_norm_ratio(probe, norms_for(ctx.model, norms, probe))
    if size == 0:
        return 1.0  # a zero intervention cannot be scaled to any size
    if match == "norm":
        return float(target["norm_ratio"]) / size
    start = float(target.get("start_ratio", 0.0)) / size if target.get("start_ratio") else 1.0
    factor, _ = kl_matched_scale(ctx, steer, at, float(target["kl"]), start)
    return factor
