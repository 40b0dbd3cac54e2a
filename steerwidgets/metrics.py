"""Steering metrics exactly as defined in the literature (see shared docs/metrics.md).

Pure numpy functions on propensity matrices ``m[i, k] = m_i(λ_k)``, so they can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Suggested, configurable thresholds for the anti-steerable fraction (no standard exists).
NOTICE_AT = 0.10
WARNING_AT = 0.30
# Relative steerability is skipped where the in-distribution steerability is below this (Tan et al.).
MIN_REFERENCE_STEERABILITY = 0.25


def propensity(logit_pos: np.ndarray, logit_neg: np.ndarray) -> np.ndarray:
    """m = logit(y+) − logit(y−), equal to the log-probability difference of the two letters."""
    return np.asarray(logit_pos, dtype=float) - np.asarray(logit_neg, dtype=float)


def p_match(m: np.ndarray) -> np.ndarray:
    """CAA's normalised p(y+) / (p(y+) + p(y−)) = σ(m)."""
    m = np.asarray(m, dtype=float)
    return 0.5 * (1.0 + np.tanh(0.5 * m))  # numerically stable sigmoid


def slopes(m: np.ndarray, strengths: Sequence[float]) -> np.ndarray:
    """Per-example steerability: the OLS slope of m_i(λ) over λ, one per row of ``m``."""
    m = np.atleast_2d(np.asarray(m, dtype=float))
    lam = np.asarray(strengths, dtype=float)
    if m.shape[1] != lam.size:
        raise ValueError(f"m has {m.shape[1]} columns but {lam.size} strengths were given")
    centred = lam - lam.mean()
    denom = float((centred**2).sum())
    if denom == 0:
        raise ValueError("strengths must not all be equal")
    return (m - m.mean(axis=1, keepdims=True)) @ centred / denom


def steerability(m: np.ndarray, strengths: Sequence[float]) -> float:
    """Dataset steerability s̄: the mean per-example slope (= slope of the mean curve)."""
    return float(slopes(m, strengths).mean())


def anti_steerable(slope_values: np.ndarray) -> np.ndarray:
    """Anti-steerable inputs: s_i ≤ 0 (steering does nothing or moves them the wrong way)."""
    return np.asarray(slope_values, dtype=float) <= 0


def anti_steerable_fraction(slope_values: np.ndarray) -> float:
    return float(anti_steerable(slope_values).mean())


def non_monotonic(m: np.ndarray) -> np.ndarray:
    """True where the sign of m(λ_{k+1}) − m(λ_k) changes along Λ (exact zeros carry no sign)."""
    m = np.atleast_2d(np.asarray(m, dtype=float))
    signs = np.sign(np.diff(m, axis=1))
    out = np.zeros(m.shape[0], dtype=bool)
    for i, row in enumerate(signs):
        nonzero = row[row != 0]
        out[i] = bool(nonzero.size > 1 and np.any(nonzero != nonzero[0]))
    return out


def ab_bias_r2(slope_values: np.ndarray, matching_is_a: np.ndarray) -> float | None:
    """R² of s_i regressed on 1[y+ is "A"]; large means the vector encodes the letter, not the behaviour.

    ``None`` when every item has the same letter (the regression is undefined).
    """
    s = np.asarray(slope_values, dtype=float)
    x = np.asarray(matching_is_a, dtype=float)
    if x.min() == x.max():
        return None
    total = float(((s - s.mean()) ** 2).sum())
    if total == 0:
        return 0.0
    fitted = np.where(x == 1, s[x == 1].mean(), s[x == 0].mean())
    return float(1.0 - ((s - fitted) ** 2).sum() / total)


def relative_steerability(
    s_other: float, s_reference: float, minimum: float = MIN_REFERENCE_STEERABILITY
) -> float | None:
    """s(v_A, D_B) / s(v_B, D_B); ``None`` where the reference s(v_B, D_B) is below ``minimum``."""
    if s_reference < minimum:
        return None
    return float(s_other / s_reference)


def warning_level(fraction: float, notice_at: float = NOTICE_AT, warning_at: float = WARNING_AT) -> str:
    """ "ok", "notice" or "warning" for an anti-steerable fraction."""
    if fraction >= warning_at:
        return "warning"
    if fraction >= notice_at:
        return "notice"
    return "ok"


# --- open-ended likelihood shift (Pres et al. 2024) and side effects ---------------------------
def likelihood_shift(
    ll_base_pos: np.ndarray,
    ll_steered_pos: np.ndarray,
    ll_base_neg: np.ndarray,
    ll_steered_neg: np.ndarray,
    q: float = 1.0,
) -> tuple[float, float]:
    """(Δ+, Δ−) on the top-q subsets: the least likely positives and most likely negatives under the base.

    Δ+ = mean(LL_steered − LL_base) over positives, Δ− = mean(LL_base − LL_steered) over negatives.
    """
    if not 0 < q <= 1:
        raise ValueError("q is a fraction in (0, 1]")
    bp, sp = np.asarray(ll_base_pos, float), np.asarray(ll_steered_pos, float)
    bn, sn = np.asarray(ll_base_neg, float), np.asarray(ll_steered_neg, float)
    k_pos = max(1, int(round(q * bp.size)))
    k_neg = max(1, int(round(q * bn.size)))
    pos_idx = np.argsort(bp, kind="stable")[:k_pos]
    neg_idx = np.argsort(-bn, kind="stable")[:k_neg]
    return float((sp - bp)[pos_idx].mean()), float((bn - sn)[neg_idx].mean())


def perplexity(token_logprobs: Sequence[np.ndarray]) -> float:
    """exp of the mean negative log-likelihood over all tokens of all passages."""
    flat = np.concatenate([np.asarray(t, dtype=float).ravel() for t in token_logprobs])
    return float(np.exp(-flat.mean()))


def kl_divergence(logp_steered: np.ndarray, logp_base: np.ndarray) -> np.ndarray:
    """KL(steered ‖ unsteered) per row of next-token log-distributions."""
    ps = np.asarray(logp_steered, dtype=float)
    pb = np.asarray(logp_base, dtype=float)
    return (np.exp(ps) * (ps - pb)).sum(-1)


def perplexity_normalised_effect(
    effect: np.ndarray, effect_at_zero: float, ppl_ratio: np.ndarray
) -> np.ndarray:
    """PNE(λ) = (effect(λ) − effect(0)) / (ppl(λ) / ppl(0)) (von Rütte et al. 2024)."""
    return (np.asarray(effect, float) - effect_at_zero) / np.asarray(ppl_ratio, float)
