"""What a steering number means: a random-direction null, per-item classes and one dataset verdict.

A slope means nothing until it is set against what *no real direction* does (metrics.md, "Verdicts"). For the
same items, layer, positions and strengths, K random directions of the vector's norm give each item a null
distribution of slopes and the dataset a null distribution of mean slopes. Then:

- per item: ``steers`` (slope above the null's 97.5 % point), ``backfires`` (below its 2.5 % point) or
  ``no_detectable_effect``; Tan et al.'s raw anti-steerable flag (s_i ≤ 0) is kept beside it, named as such;
- per dataset, one of :data:`VERDICTS` with a 95 % bootstrap CI of the mean slope and a one-sentence reason.

Everything here is pure numpy on slope arrays, so each class is tested on constructed cases. The thresholds
are module constants (our choices; no standard exists), shown in every reason and overridable per call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics

VERDICTS = ("steers", "backfires", "no_detectable_effect", "letter_driven", "cannot_judge")
ITEM_CLASSES = ("steers", "backfires", "no_detectable_effect")

#: Random directions in the null (Gaussian, scaled to the vector's norm, seeded). With the engine's default
#: first-order null each costs one dot product, so K is large enough for steady 2.5 % / 97.5 % bands.
NULL_DIRECTIONS = 200
#: Per item and per dataset, the null band is a normal-theory 95 % prediction interval from the K samples.
NULL_COVERAGE = 0.95
#: A/B-bias R² at or above which slopes that do not beat the null are called letter-driven.
LETTER_R2 = 0.5
#: The letter protocol can judge only when the option swap keeps the unsteered preference on clearly more
#: than half the items: the Wilson 95 % lower bound of that fraction must exceed this.
OPTION_DEPENDENCE_MIN = 0.5
#: Bootstrap resamples for the CI of the mean slope.
BOOTSTRAP = 2000


def t_quantile(p: float, dof: int) -> float:
    """Student-t quantile (``scipy.stats.t.ppf``); infinite when there is no degree of freedom."""
    if dof <= 0:
        return float("inf")
    from scipy import stats  # imported here: scipy.stats takes about a second to import

    return float(stats.t.ppf(p, dof))


def normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (``scipy.stats.norm.ppf``)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    from scipy import stats

    return float(stats.norm.ppf(p))


def null_band(samples: np.ndarray, coverage: float = NULL_COVERAGE) -> tuple[np.ndarray, np.ndarray]:
    """Where a new random direction's value falls with probability ``coverage``, per column.

    ``samples`` is ``[K, ...]`` (K random directions). A normal-theory prediction interval
    mean ± t·sd·√(1 + 1/K): a random direction's slope is (to first order) a linear functional of an
    isotropic vector, close to normal in high dimension, and for small K (the sampled null) this is steadier
    than empirical 2.5 % / 97.5 % points.
    """
    x = np.asarray(samples, dtype=float)
    k = x.shape[0]
    if k < 2:
        raise ValueError("the null needs at least two random directions")
    mean, sd = x.mean(0), x.std(0, ddof=1)
    half = t_quantile(0.5 + coverage / 2, k - 1) * sd * math.sqrt(1 + 1 / k)
    return mean - half, mean + half


def bootstrap_ci(values: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % CI of the mean over items (items resampled with replacement, fixed seed)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion at ±``z`` (95 %), by ``scipy.stats.binomtest``."""
    if n == 0:
        return 0.0, 1.0
    from scipy import stats

    confidence = 2 * float(stats.norm.cdf(z)) - 1
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def option_dependence(original: np.ndarray, swapped: np.ndarray) -> float:
    """Fraction of items whose unsteered preference survives swapping the options' texts (same sign).

    ``original[i]`` and ``swapped[i]`` are propensities towards the *same behaviour* (the swapped item is
    relabelled), so a model that reads the options keeps the sign; one that picks letters flips it.
    """
    a, b = np.asarray(original, dtype=float), np.asarray(swapped, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("give one original and one swapped propensity per item")
    return float((np.sign(a) == np.sign(b)).mean())


def item_classes(slopes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``"steers"`` above the item's null band, ``"backfires"`` below it, else ``"no_detectable_effect"``."""
    s = np.asarray(slopes, dtype=float)
    out = np.full(s.shape, "no_detectable_effect", dtype=object)
    out[s > np.asarray(hi)] = "steers"
    out[s < np.asarray(lo)] = "backfires"
    return out


@dataclass(frozen=True)
class Verdict:
    """One protocol's verdict on one vector at one layer: numbers, classes and a one-sentence reason."""

    protocol: str  # "letter" (Tan et al.'s A/B letter propensity) or "answer_text"
    verdict: str  # one of VERDICTS
    reason: str
    steerability: float  # mean per-item OLS slope
    steerability_ci95: tuple[float, float]
    null_method: str
    n_directions: int
    null_q025: float  # the null band of the dataset mean slope
    null_q975: float
    classes: tuple[str, ...]  # per item, one of ITEM_CLASSES
    item_lo: tuple[float, ...]  # per-item null band
    item_hi: tuple[float, ...]
    anti_steerable_fraction: float  # Tan et al.: mean 1[s_i ≤ 0], kept and named as such
    ab_bias_r2: float | None = None
    option_dependence: float | None = None
    positions: Any = None
    mean_propensity: tuple[float, ...] = ()
    thresholds: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {name: int(sum(c == name for c in self.classes)) for name in ITEM_CLASSES}

    @property
    def backfire_fraction(self) -> float:
        return self.counts["backfires"] / max(1, len(self.classes))

    @property
    def warning_level(self) -> str:
        """Follows backfires beyond the null (not raw s_i ≤ 0): metrics.md's notice/warning thresholds."""
        if self.verdict == "backfires":
            return "warning"
        if self.verdict in ("letter_driven", "cannot_judge"):
            return "notice"  # per-item "backfires" are then the letter's doing, not the behaviour's
        return metrics.warning_level(self.backfire_fraction)

    def summary(self) -> dict[str, Any]:
        """The CLI contract's fields for this protocol (JSON-ready)."""
        return {
            "protocol": self.protocol,
            "verdict": self.verdict,
            "verdict_reason": self.reason,
            "steerability": self.steerability,
            "steerability_ci95": list(self.steerability_ci95),
            "null": {
                "method": self.null_method,
                "n_directions": self.n_directions,
                "steerability_q025": self.null_q025,
                "steerability_q975": self.null_q975,
            },
            "item_classes": self.counts,
            "anti_steerable_fraction": self.anti_steerable_fraction,
            "ab_bias_r2": self.ab_bias_r2,
            "option_dependence": self.option_dependence,
            "positions": self.positions,
            "mean_propensity": list(self.mean_propensity),
            "warning_level": self.warning_level,
            "thresholds": dict(self.thresholds),
        }


def _fmt_band(lo: float, hi: float) -> str:
    return f"{lo:+.3f}..{hi:+.3f}"


def judge(
    slopes: np.ndarray,
    null_slopes: np.ndarray,
    *,
    protocol: str = "letter",
    matching_is_a: Sequence[bool] | None = None,
    option_dependence: float | None = None,
    n_option_items: int | None = None,
    null_method: str = "sampled",
    positions: Any = None,
    mean_propensity: Sequence[float] = (),
    letter_r2: float = LETTER_R2,
    option_dependence_min: float = OPTION_DEPENDENCE_MIN,
    coverage: float = NULL_COVERAGE,
    n_boot: int = BOOTSTRAP,
) -> Verdict:
    """The dataset verdict from per-item slopes ``[n]`` and the null's slopes ``[K, n]``.

    In order: ``cannot_judge`` (letter protocol, the unsteered choice does not follow the options' texts);
    ``steers`` / ``backfires`` (the mean slope lies outside the null band of mean slopes *and* its bootstrap
    CI excludes 0); ``letter_driven`` (the slopes follow the matching letter, R² ≥ ``letter_r2``); else
    ``no_detectable_effect``.
    """
    s = np.asarray(slopes, dtype=float)
    null = np.asarray(null_slopes, dtype=float)
    if null.ndim != 2 or null.shape[1] != s.size:
        raise ValueError(f"null_slopes must be [K, {s.size}], got {null.shape}")
    item_lo, item_hi = null_band(null, coverage)
    mean_lo, mean_hi = (float(x) for x in null_band(null.mean(1), coverage))
    classes = item_classes(s, item_lo, item_hi)
    mean = float(s.mean())
    ci = bootstrap_ci(s, n_boot)
    r2 = None
    if matching_is_a is not None:
        r2 = metrics.ab_bias_r2(s, np.asarray(list(matching_is_a), dtype=bool))
    band = (
        f"random directions of the same norm give {_fmt_band(mean_lo, mean_hi)} (95 %, K = {null.shape[0]})"
    )
    stated = f"mean slope {mean:+.3f} (95 % CI {_fmt_band(*ci)})"
    n_dep = s.size if n_option_items is None else n_option_items
    dep_lo = None
    if option_dependence is not None:
        dep_lo = wilson_interval(int(round(option_dependence * n_dep)), n_dep)[0]
    if protocol == "letter" and dep_lo is not None and dep_lo <= option_dependence_min:
        verdict = "cannot_judge"
        reason = (
            "The model does not read the options here: swapping the two options' texts keeps its unsteered "
            f"preference on only {option_dependence:.0%} of items (Wilson lower bound {dep_lo:.2f} ≤ "
            f"{option_dependence_min}), so the letter protocol measures letter preference, not behaviour; "
            "use the answer-text (open-ended) check."
        )
    elif mean > mean_hi and ci[0] > 0:
        verdict = "steers"
        reason = f"The vector steers: {stated} is above what {band}."
    elif mean < mean_lo and ci[1] < 0:
        verdict = "backfires"
        reason = f"The vector backfires: {stated} is below what {band}."
    elif r2 is not None and r2 >= letter_r2:
        verdict = "letter_driven"
        reason = (
            f"The slopes follow the answer letter (R² {r2:.2f} ≥ {letter_r2}) and the {stated} does not "
            f"beat the null ({band}): this vector moves the letter, not the behaviour."
        )
    else:
        verdict = "no_detectable_effect"
        reason = f"No detectable effect: the {stated} is within or not clearly beyond what {band}."
    return Verdict(
        protocol=protocol,
        verdict=verdict,
        reason=reason,
        steerability=mean,
        steerability_ci95=ci,
        null_method=null_method,
        n_directions=int(null.shape[0]),
        null_q025=mean_lo,
        null_q975=mean_hi,
        classes=tuple(str(c) for c in classes),
        item_lo=tuple(float(x) for x in item_lo),
        item_hi=tuple(float(x) for x in item_hi),
        anti_steerable_fraction=metrics.anti_steerable_fraction(s),
        ab_bias_r2=r2,
        option_dependence=option_dependence,
        positions=positions,
        mean_propensity=tuple(float(x) for x in mean_propensity),
        thresholds={
            "null_coverage": coverage,
            "letter_r2": letter_r2,
            "option_dependence_min": option_dependence_min,
            "backfire_notice_at": metrics.NOTICE_AT,
            "backfire_warning_at": metrics.WARNING_AT,
        },
    )


def cannot_judge(protocol: str, reason: str, positions: Any = None) -> Verdict:
    """A verdict for when the protocol has nothing to measure (e.g. no question lists its options)."""
    nan = float("nan")
    return Verdict(
        protocol,
        "cannot_judge",
        reason,
        nan,
        (nan, nan),
        "none",
        0,
        nan,
        nan,
        (),
        (),
        (),
        nan,
        positions=positions,
    )


def against_null(value: float, null_values: Sequence[float], what: str) -> tuple[str, str]:
    """A single number against K random directions' values of it (higher is better): ``steers`` above
    their 95 % prediction band, ``backfires`` below, else ``no_detectable_effect``; ``cannot_judge`` with
    fewer than two. Returns (verdict, one-sentence reason)."""
    null = np.asarray(list(null_values), dtype=float)
    if null.size < 2 or not np.isfinite(value):
        return "cannot_judge", f"Fewer than two random directions to compare {what} with."
    lo, hi = (float(x) for x in null_band(null))
    band = f"{null.size} random directions of the same norm give {_fmt_band(lo, hi)} (95 % prediction band)"
    if value > hi:
        return "steers", f"{what} {value:+.3f} is above what {band}."
    if value < lo:
        return "backfires", f"{what} {value:+.3f} is below what {band}."
    return "no_detectable_effect", f"{what} {value:+.3f} is within what {band}."


def _protocol_name(verdict: Verdict) -> str:
    return "letter" if verdict.protocol == "letter" else "answer-text"


#: How loud each dataset verdict is in a view (a backfiring share of items can raise it, see below).
VERDICT_LEVELS = {
    "steers": "ok",
    "backfires": "warning",
    "no_detectable_effect": "notice",
    "letter_driven": "notice",
    "cannot_judge": "notice",
}


def warnings_for(
    verdict: Verdict,
    questions: Sequence[str] = (),
    slopes: Sequence[float] = (),
    layer: int | None = None,
    limit: int = 10,
) -> list[dict[str, Any]]:
    """What every view shows for a verdict, in the same words: the verdict line, then the items that backfire.

    Each is ``{"level", "message", "items", "verdict", "protocol"}``; the verdict line reads
    ``"<protocol> protocol (layer L, positions P, n items): <verdict> — <reason>"``. Levels follow backfires
    beyond the null, never raw s_i ≤ 0; a letter-driven or cannot-judge verdict lists no backfiring items
    (their "backfires" are the letter's doing).
    """
    where = [f"layer {layer}"] if layer is not None else []
    if verdict.positions is not None:
        where.append(f"positions {verdict.positions!r}")
    n = len(verdict.classes)
    if n:
        where.append(f"{n} items")
    context = f" ({', '.join(where)})" if where else ""
    name = _protocol_name(verdict)
    tag = {"verdict": verdict.verdict, "protocol": verdict.protocol}
    out: list[dict[str, Any]] = [
        {
            "level": VERDICT_LEVELS[verdict.verdict],
            "message": f"{name.capitalize()} protocol{context}: {verdict.verdict.replace('_', ' ')} — "
            f"{verdict.reason}",
            "items": [],
            **tag,
        }
    ]
    counts = verdict.counts if n else {}
    if n and counts["backfires"] and verdict.verdict not in ("letter_driven", "cannot_judge"):
        order = [i for i in np.argsort(np.asarray(slopes, float)) if verdict.classes[i] == "backfires"]
        items = [questions[i].replace("\n", " ")[:80] for i in order] if questions else []
        shown = "\n".join(f"  • {q} (slope {slopes[i]:+.2f})" for q, i in zip(items[:limit], order))
        more = f"\n  … and {len(items) - limit} more" if len(items) > limit else ""
        level = verdict.warning_level if verdict.warning_level != "ok" else "notice"
        out.append(
            {
                "level": level,
                "message": f"{counts['backfires']} of {n} items backfire beyond what random directions do "
                f"({name} protocol; about {n * (1 - NULL_COVERAGE) / 2:.1f} expected by chance)"
                + (f":\n{shown}{more}" if shown else ""),
                "items": items,
                **tag,
            }
        )
    return out


def ab_check_lines(result: Any, layer: int, answer_text: Any = None, limit: int = 10) -> list[dict]:
    """An A/B check's verdict lines and backfiring items for both protocols (the Playground's check).

    ``result`` is the letter protocol's :class:`~steerwidgets.engine.PropensityResult`, ``answer_text``
    the answer-text protocol's; where the letter protocol cannot judge, the answer-text verdict leads.
    """
    parts = []
    for res in (result, answer_text):
        if res is None:
            continue
        verdict = res.verdict(layer)
        questions = [item.question for item in res.items]
        parts.append((verdict, warnings_for(verdict, questions, res.slopes(layer), layer, limit)))
    if len(parts) == 2 and parts[0][0].verdict == "cannot_judge":
        parts.reverse()
    return [w for _, lines in parts for w in lines]
