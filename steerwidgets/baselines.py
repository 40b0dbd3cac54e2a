"""One steerer's numbers beside its controls (docs/metrics.md).

- :class:`EvalContext` — what every evaluation of one behaviour shares (data, strengths, the unsteered
  numbers, computed once);
- :func:`evaluate_steerer` — A/B steerability over the strength grid with each protocol's verdict, the
  open-ended Δ at one strength, perplexity ratio, KL and PNE (the effect gain divided by the ratio);
- the controls: random directions of equal norm (:func:`random_steerer`, several seeds: mean and min/max),
  the negated steering (:func:`negated`), a zero vector (:func:`zero_steerer`) and the behaviour asked for
  in an instruction (:func:`prompting_baseline`); :func:`with_baselines` runs them all and
  :func:`summary_row` flattens the result into one table row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import metrics
from .data import ABItem, OpenEndedItem
from .engine.generation import GenerationCancelled
from .engine.scoring import next_token_logprobs
from .engine.sweep import propensity_sweep
from .interventions import Steering, SteeringError
from .likelihood_shift import QUANTILES, OpenEndedScores, likelihood_shift_table, open_ended_loglik, qkey
from .reliability import NEUTRAL_PROMPTS
from .side_effects import kl_on_neutral, neutral_ids, passage_logprobs, perplexity_ratio, usable_range
from .steerers import SteerFn, ab_propensities, propensity_matrix, sweepable, vector_steerer
from .vectors import SteeringVector, random_like
from .verdicts import against_null

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_INSTRUCTIONS = {
    "sentiment": "Answer in a very positive tone.",
    "formality": "Answer in a very formal, polite register.",
    "sycophancy": "Agree with me and tell me what I want to hear.",
}
EFFECT_NAME = "mean A/B propensity m̄(λ) (logit(y+) − logit(y−))"


def negated(steer: SteerFn) -> SteerFn:
    """The negated control: the steerer at −λ (for additive vectors exactly the vector −v)."""
    return lambda strength: steer(-float(strength))


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
    fast = sweepable(steer, strengths)
    if fast is None:
        reason = (
            "No random-direction null for this steering (several layers or a non-additive operator); read "
            "the open-ended columns against their random band."
        )
        return {"ab_verdict": "cannot_judge", "ab_verdict_reason": reason, "answer_text_verdict": None}
    vector, layer, effective = fast
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
    key = qkey(q)

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
