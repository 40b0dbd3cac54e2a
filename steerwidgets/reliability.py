"""Does this vector really work, for which inputs, at which layer?

- :func:`precheck` — before steering, from the training pairs alone (Braun et al. 2025): how consistent the
  individual differences are (mean pairwise cosine) and how well the vector separates positive from negative
  activations.
- :func:`layer_sweep` — steerability and anti-steerable fraction per layer × strength (the engine's batched
  path), with a side-effect row (KL of next-token distributions on neutral prompts) and a suggested layer.
- :func:`generalisation` — relative steerability under a shifted prompt distribution (Tan et al. 2024).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from . import metrics
from .data import ABItem
from .engine.generation import GenerationCancelled
from .engine.sweep import DEFAULT_STRENGTHS, PropensityResult, check_strengths, propensity_sweep, sweep_item
from .interventions import SteeringError, position_mask
from .methods import ab_activations, both_orders, caa
from .prompts import tokenize_prompt
from .vectors import SteeringVector
from .verdicts import NULL_DIRECTIONS

# Traffic-light thresholds for the pre-check (our defaults; no standard exists — shown to the user).
COSINE_GREEN, COSINE_AMBER = 0.30, 0.10
SEPARATION_GREEN, SEPARATION_AMBER = 0.90, 0.70

NEUTRAL_PROMPTS = (
    "Explain how a bicycle gear works.",
    "List three facts about the Moon.",
    "What is the boiling point of water at sea level?",
    "Give me a short recipe for boiled rice.",
    "Translate 'good morning' into French.",
)


@dataclass
class PreCheck:
    """Reliability pre-check for one layer, computed from training activations only."""

    layer: int
    mean_cosine: float  # mean pairwise cosine similarity of the individual differences
    separation: float  # fraction of pairs whose positive projects above its negative on v
    effect_size: float  # Cohen's d of the projections (positive vs negative)
    level: str  # "green" | "amber" | "red"
    reason: str
    mean_to_single: float = float("nan")  # ‖v‖ / mean ‖d_i‖: how much of a single difference survives
    group_cosine: float | None = None  # cos(mean d of group A, mean d of group B), e.g. by matching letter
    letter_norm: float | None = None  # ½‖m_A − m_B‖: the part of the differences that follows the letter
    behaviour_norm: float | None = None  # ½‖m_A + m_B‖: the part that does not (the behaviour)
    both_orders: bool = False  # each question read in both letter orders; consistency is per question


LETTER_CONFOUND_COSINE = -0.5  # below this the two letter groups' differences point opposite ways


def precheck(
    layer: int,
    positive: torch.Tensor,
    negative: torch.Tensor,
    groups: Sequence[bool] | None = None,
    both_orders: bool = False,
) -> PreCheck:
    """Consistency of the differences and separation along v = mean difference (Braun et al. 2025).

    ``groups`` (one bool per pair, e.g. "the matching letter is A") splits the differences into their
    letter part ½(m_A − m_B) and behaviour part ½(m_A + m_B) and checks whether the two groups point
    opposite ways (then a vector from these pairs mostly encodes the answer letter). ``both_orders``: the
    second half of the pairs is the first half with the options swapped; consistency and separation are then
    measured on each question's mean over both orders (whose letter part cancels), as the vector is built.
    """
    raw = (positive - negative).double()
    if raw.shape[0] < 2 or (both_orders and raw.shape[0] % 2):
        raise SteeringError("the pre-check needs at least two training pairs (both orders: an even count)")
    if both_orders:
        n = raw.shape[0] // 2
        positive, negative = (positive[:n] + positive[n:]) / 2, (negative[:n] + negative[n:]) / 2
    diffs = (positive - negative).double()
    if diffs.shape[0] < 2:
        raise SteeringError("the pre-check needs at least two training questions")
    unit = diffs / diffs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    n = cos.shape[0]
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))
    v = diffs.mean(0)
    v_hat = v / v.norm().clamp_min(1e-12)
    p_pos, p_neg = positive.double() @ v_hat, negative.double() @ v_hat
    separation = float((p_pos > p_neg).double().mean())
    pooled = float(torch.sqrt((p_pos.var() + p_neg.var()) / 2).clamp_min(1e-12))
    effect = float((p_pos.mean() - p_neg.mean()) / pooled)
    if mean_cos >= COSINE_GREEN and separation >= SEPARATION_GREEN:
        level = "green"
    elif mean_cos >= COSINE_AMBER and separation >= SEPARATION_AMBER:
        level = "amber"
    else:
        level = "red"
    per = "questions (each read in both letter orders)" if both_orders else "pairs"
    reason = (
        f"differences agree with mean cosine {mean_cos:.2f} (green ≥ {COSINE_GREEN}, amber ≥ "
        f"{COSINE_AMBER}); {separation:.0%} of {per} separate along v (green ≥ "
        f"{SEPARATION_GREEN:.0%}, amber ≥ {SEPARATION_AMBER:.0%})"
    )
    mean_to_single = float(v.norm() / diffs.norm(dim=1).mean().clamp_min(1e-12))
    group_cos = letter_norm = behaviour_norm = None
    if groups is not None:
        g = torch.as_tensor(list(groups), dtype=torch.bool)
        if g.shape[0] != raw.shape[0]:
            raise SteeringError(
                f"groups has {g.shape[0]} entries for {raw.shape[0]} pairs; give one per pair"
            )
        if bool(g.any()) and not bool(g.all()):
            a, b = raw[g].mean(0), raw[~g].mean(0)
            group_cos = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))
            letter_norm, behaviour_norm = float((a - b).norm() / 2), float((a + b).norm() / 2)
            reason += (
                f"; letter part ½‖m_A − m_B‖ = {letter_norm:.2f}, behaviour part ½‖m_A + m_B‖ = "
                f"{behaviour_norm:.2f}"
            )
            if group_cos < LETTER_CONFOUND_COSINE and not both_orders:
                reason += (
                    ". The answer letter dominates: items whose matching letter is A and those where it "
                    f"is B give opposite differences (cosine {group_cos:.2f}), which cancel to "
                    f"{mean_to_single:.0%} of one difference's norm, so the vector is mostly the letter "
                    "direction and noise. Read each question in both letter orders (caa's default, "
                    "swap_options=True) or read activations where the behaviour itself is expressed (e.g. "
                    "mean_difference on contrast pairs read in context)"
                )
    return PreCheck(
        layer, mean_cos, separation, effect, level, reason, mean_to_single, group_cos, letter_norm,
        behaviour_norm, both_orders,
    )  # fmt: skip


def prechecks(
    model: Any,
    items: Sequence[ABItem],
    layers: int | Sequence[int] | None = None,
    *,
    swap_options: bool | None = None,
) -> dict[int, PreCheck]:
    """:func:`precheck` at each layer from one pass over the training items, read as :func:`~.methods.caa`
    reads them (by default in both letter orders)."""
    read, swapped = both_orders(items, swap_options)
    acts = ab_activations(model, read, layers)
    letters = [item.matching == "A" for item in read]
    return {layer: precheck(layer, pos, neg, letters, swapped) for layer, (pos, neg) in acts.items()}


@dataclass
class LayerSweepResult:
    """Layer × strength grids of the literature's numbers, plus side effects and a suggestion."""

    layers: list[int]
    strengths: list[float]
    positions: Any
    steerability: list[float]
    anti_steerable_fraction: list[float]
    mean_propensity: list[list[float]]  # [layer][strength]
    kl: list[list[float]]  # [layer][strength], mean KL(steered ‖ unsteered) on neutral prompts
    suggested_layer: int | None
    reason: str
    backfire_fraction: list[float] = field(default_factory=list)  # items below their null band
    verdicts: list[str] = field(default_factory=list)  # the letter protocol's verdict per layer
    verdict_reasons: list[str] = field(default_factory=list)
    steerability_ci95: list[list[float]] = field(default_factory=list)
    option_dependence: float | None = None
    propensity: PropensityResult | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("propensity")
        data["kl_definition"] = "mean over neutral prompts of KL(steered || unsteered), next token"
        return data


def kl_side_effects(
    model: Any,
    vector: SteeringVector,
    layers: list[int],
    strengths: np.ndarray,
    positions: Any = "all",
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
) -> np.ndarray:
    """[layers × strengths] mean KL(steered ‖ unsteered) of next-token distributions on neutral prompts."""
    lam = np.asarray(strengths, dtype=float)
    with_zero = np.unique(np.append(lam, 0.0))
    zero = int(np.flatnonzero(with_zero == 0.0)[0])
    total = np.zeros((len(layers), len(lam)))
    for prompt in prompts:
        ids, _ = tokenize_prompt(model, prompt)
        mask = position_mask(positions, len(ids), len(ids))
        first = int(mask.float().argmax())
        out = sweep_item(model, ids, mask, first, vector, layers, with_zero, "add", False, None)
        for row, layer in enumerate(layers):
            logp = out[layer][0][: len(with_zero), -1].log_softmax(-1).double().cpu().numpy()
            kl = metrics.kl_divergence(logp, logp[zero][None])
            total[row] += np.array([kl[int(np.flatnonzero(with_zero == s)[0])] for s in lam])
    return total / len(prompts)


def suggest_layer(
    layers: list[int],
    steerability: list[float],
    backfire: list[float],
    kl_at_max: list[float],
    max_kl: float = 1.0,
    verdicts: list[str] | None = None,
) -> tuple[int | None, str]:
    """Highest steerability among layers whose verdict is "steers" (when given), with fewer than 30 % of
    items backfiring and KL at the top strength ≤ max_kl."""
    ok = [
        i
        for i in range(len(layers))
        if backfire[i] < metrics.WARNING_AT
        and kl_at_max[i] <= max_kl
        and steerability[i] > 0
        and (verdicts is None or verdicts[i] == "steers")
    ]
    if not ok:
        best = int(np.argmax(steerability))
        tally = ""
        if verdicts is not None:
            counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
            tally = " Verdicts per layer: " + ", ".join(
                f"{n} {v.replace('_', ' ')}" for v, n in counts.items()
            )
            tally += "."
            if counts.get("cannot_judge"):
                tally += " Where the letter protocol cannot judge, check the candidate layers with the "
                tally += "answer-text protocol (ReliabilityReport)."
        return None, (
            f"no layer passes (verdict 'steers' against random directions, backfiring < "
            f"{metrics.WARNING_AT:.0%}, KL ≤ {max_kl} nats at the largest strength, steerability > 0); the "
            f"highest steerability is at layer {layers[best]} ({steerability[best]:.2f}) — treat this vector "
            f"as unreliable.{tally}"
        )
    best = max(ok, key=lambda i: steerability[i])
    beats = " beyond random directions" if verdicts is not None else ""
    return layers[best], (
        f"layer {layers[best]}: highest steerability{beats} ({steerability[best]:.2f} per unit λ) with "
        f"{backfire[best]:.0%} of items backfiring and KL {kl_at_max[best]:.2f} nats on neutral prompts at "
        f"the largest strength"
    )


def layer_sweep(
    model: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layers: Sequence[int] | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    positions: Any = "last",
    neutral_prompts: Sequence[str] = NEUTRAL_PROMPTS,
    null_directions: int = NULL_DIRECTIONS,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> LayerSweepResult:
    """Steerability, its verdict against random directions, backfiring and anti-steerable fractions and KL
    side effects for every layer × strength (letter protocol)."""
    layer_list = list(range(model.n_layers)) if layers is None else list(layers)
    lam = check_strengths(strengths)
    n_total = len(items) + len(neutral_prompts)

    def item_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(done, n_total)

    result = propensity_sweep(
        model,
        items,
        vector,
        layer_list,
        lam,
        positions=positions,
        null_directions=null_directions,
        progress=item_progress,
        cancel=cancel,
    )
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("sweep cancelled")
    kl = (
        kl_side_effects(model, vector, layer_list, lam, positions, neutral_prompts)
        if neutral_prompts
        else np.zeros((len(layer_list), len(lam)))
    )
    if progress is not None:
        progress(n_total, n_total)
    steer = [float(result.slopes(layer).mean()) for layer in layer_list]
    anti = [metrics.anti_steerable_fraction(result.slopes(layer)) for layer in layer_list]
    judged = [result.verdict(layer) for layer in layer_list]
    backfire = [v.backfire_fraction for v in judged]
    top = int(np.argmax(np.abs(lam)))
    names = [v.verdict for v in judged] if null_directions >= 2 else None
    kl_top = [float(k[top]) for k in kl]
    suggested, reason = suggest_layer(layer_list, steer, backfire, kl_top, verdicts=names)
    return LayerSweepResult(
        layers=layer_list,
        strengths=[float(x) for x in lam],
        positions=positions,
        steerability=steer,
        anti_steerable_fraction=anti,
        backfire_fraction=backfire,
        verdicts=[v.verdict for v in judged],
        verdict_reasons=[v.reason for v in judged],
        steerability_ci95=[list(v.steerability_ci95) for v in judged],
        option_dependence=result.option_dependence(),
        mean_propensity=[[float(x) for x in result.propensity[layer].mean(0)] for layer in layer_list],
        kl=[[float(x) for x in row] for row in kl],
        suggested_layer=suggested,
        reason=reason,
        propensity=result,
    )


def shift_items(items: Sequence[ABItem], prefix: str) -> list[ABItem]:
    """The same items under a shifted prompt distribution: ``prefix`` prepended to each question."""
    return [ABItem(prefix + item.question, item.matching, item.not_matching) for item in items]


def generalisation(
    model: Any,
    train: Sequence[ABItem],
    test: Sequence[ABItem],
    layer: int,
    prefix: str,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    positions: Any = "last",
) -> dict[str, Any]:
    """Relative steerability s(v_A, D_B) / s(v_B, D_B) with D_B the shifted test set (metrics.md).

    v_A is trained on the original items, v_B on the shifted ones; the ratio is skipped (None) where
    s(v_B, D_B) < 0.25.
    """
    v_a = caa(model, train, [layer])
    v_b = caa(model, shift_items(train, prefix), [layer])
    shifted = shift_items(test, prefix)
    in_shift = propensity_sweep(model, shifted, v_a, [layer], strengths, positions=positions)
    s_ab = float(in_shift.slopes(layer).mean())
    verdict = in_shift.verdict(layer)
    s_bb = float(
        propensity_sweep(model, shifted, v_b, [layer], strengths, positions=positions, null_directions=0)
        .slopes(layer)
        .mean()
    )
    s_aa = float(
        propensity_sweep(model, test, v_a, [layer], strengths, positions=positions, null_directions=0)
        .slopes(layer)
        .mean()
    )
    return {
        "layer": layer,
        "prefix": prefix,
        "steerability_in_distribution": s_aa,
        "steerability_shifted_vA": s_ab,
        "steerability_shifted_vB": s_bb,
        "relative_steerability": metrics.relative_steerability(s_ab, s_bb),
        "verdict_shifted_vA": verdict.verdict,
        "verdict_reason_shifted_vA": verdict.reason,
        "definition": "s(v_A, D_B) / s(v_B, D_B); None where s(v_B, D_B) < 0.25",
    }
