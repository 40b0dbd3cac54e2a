"""The target check: does the steering move log p(target) − log p(contrast) beyond what random
directions of the same norm do, and in the strength's direction?

The Playground scores a small grid of strengths for the vector and for random directions of its norm
(one drawn as the chart's reference curve, more scored at the current strength only for the null).
:class:`TargetChart` names those points so they can be cached across slider moves; the functions
below turn the curves into the check's verdict and warnings (pure, tested without a model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from .verdicts import null_band

SWEEP_GRID = (-2.0, -1.0, 0.0, 1.0, 2.0)  # times the chart's unit (the strength it was first drawn at)
AGAINST_EPS = 0.05  # log-odds changes smaller than this are noise, not "against the sign"


@dataclass
class TargetChart:
    """The chart's points for one setting: cache keys and the steering behind each.

    Besides the grid's vector and random curves, ``nulls`` more random directions of the vector's norm
    are scored at the current strength only: the null the check's verdict needs. ``steer(vector,
    strength)`` builds the steering of a point (the request's layer, positions and relative flag).
    ``background`` are steerings on at every point, the unsteered one too (the Playground's other stack
    rows); ``background_key`` identifies them in the cache keys.
    """

    setting: tuple
    grid: list[float]
    strength: float
    vector: Any
    random: Any
    steer: Callable[[Any, float], Any]
    nulls: list[Any] = field(default_factory=list)
    background: list[Any] = field(default_factory=list)
    background_key: tuple = ()

    @classmethod
    def around(
        cls, setting: tuple, unit: float, strength: float, vector: Any, random: Any, nulls: list, steer: Any
    ) -> TargetChart:
        grid = sorted({k * unit + 0.0 for k in SWEEP_GRID} | {strength + 0.0})  # + 0.0: no -0
        return cls(setting, grid, float(strength), vector, random, steer, nulls)

    def key(self, series: str, strength: float) -> tuple:
        # every series shares the unsteered point at strength 0 (with the same background)
        if strength == 0:
            return (*self.setting[:2], self.background_key) if self.background_key else self.setting[:2]
        return (*self.setting, series, strength)

    def _vector(self, series: str) -> Any:
        if series == "vector":
            return self.vector
        if series == "random":
            return self.random
        return self.nulls[int(series.removeprefix("null")) - 1]

    def steering(self, series: str, strength: float) -> Any:
        own = None if strength == 0 else self.steer(self._vector(series), strength)
        if not self.background:
            return own
        return [*([] if own is None else [own]), *self.background]

    def missing(self, cache: Mapping[tuple, Any]) -> list[tuple[tuple, Any]]:
        """The points not in ``cache`` yet, with their steerings (None: unsteered)."""
        out: dict[tuple, Any] = {}
        wanted = [(series, s) for series in ("vector", "random") for s in self.grid]
        wanted += [(f"null{k}", self.strength) for k in range(1, len(self.nulls) + 1)]
        for series, s in wanted:
            key = self.key(series, s)
            if key not in cache and key not in out:
                out[key] = self.steering(series, s)
        return list(out.items())

    def curve(self, series: str, cache: Mapping[tuple, tuple[float, float]]) -> list[float]:
        """log p(target) − log p(contrast) at each grid strength."""
        return [target - contrast for target, contrast in (cache[self.key(series, s)] for s in self.grid)]

    def null_effects(self, cache: Mapping[tuple, tuple[float, float]]) -> list[float]:
        """How much each random direction (the random curve's and the nulls) moves the log-odds at the
        current strength, relative to the unsteered point."""
        t0, c0 = cache[self.key("vector", 0.0)]
        series = ["random", *(f"null{k}" for k in range(1, len(self.nulls) + 1))]
        return [cache[self.key(name, self.strength)][0] - cache[self.key(name, self.strength)][1] - (t0 - c0)
                for name in series]  # fmt: skip


def target_verdict(effect: float, null_effects: Sequence[float], strength: float, where: str) -> dict:
    """The target check's verdict line: the vector's log-odds change at this strength against what random
    directions of its norm do there (their 95 % prediction band, docs/verdicts.md). "Steers" means moved
    beyond the band in the strength's direction, "backfires" beyond it the other way."""
    lo, hi = (float(x) for x in null_band(np.asarray(null_effects, dtype=float)))
    sign = 1.0 if strength > 0 else -1.0
    band = f"{len(null_effects)} random directions of the same norm move them {lo:+.2f}..{hi:+.2f} (95 %)"
    if effect > hi or effect < lo:
        verdict = "steers" if (effect - (hi if effect > hi else lo)) * sign > 0 else "backfires"
    else:
        verdict = "no_detectable_effect"
    words = {"steers": "steers", "backfires": "backfires", "no_detectable_effect": "no detectable effect"}
    level = {"steers": "ok", "backfires": "warning", "no_detectable_effect": "notice"}[verdict]
    return {
        "level": level,
        "message": f"Target check ({where}): {words[verdict]} — the target's log-odds moved "
        f"{effect:+.2f}; {band}.",
        "verdict": verdict,
        "protocol": "target",
    }


def target_warnings(
    strengths: Sequence[float],
    vector_curve: Sequence[float],
    random_curve: Sequence[float] | None,
    strength: float,
    targets: Sequence[str],
) -> list[dict]:
    """Warnings from the log-odds of target over contrast across strengths (sorted ascending)."""
    lam = np.asarray(strengths, dtype=float)
    d = np.asarray(vector_curve, dtype=float)
    target, contrast = targets
    out = []
    zero = int(np.argmin(np.abs(lam)))
    here = int(np.argmin(np.abs(lam - strength)))
    effect = float(d[here] - d[zero])
    if strength != 0 and abs(effect) > AGAINST_EPS and math.copysign(1, effect) != math.copysign(1, strength):
        moved = "more" if effect > 0 else "less"
        out.append(
            {
                "level": "warning",
                "message": f"At strength {strength:+g} the target {target!r} became {moved} likely "
                f"relative to {contrast!r} (log-odds {effect:+.2f}), against the sign of the "
                "strength: this vector pushes the other way here. Flip the sign, try another "
                "layer, or check that the vector was built with the positive side first.",
            }
        )
    if bool(metrics.non_monotonic(d[None, :])[0]):
        values = ", ".join(f"{s:+g}: {v:+.2f}" for s, v in zip(lam, d))
        out.append(
            {
                "level": "notice",
                "message": "The effect is non-monotonic across strengths (log-odds by strength "
                f"{values}): more steering does not simply mean more effect, so a larger strength "
                "may backfire. Prefer strengths where the curve still rises.",
            }
        )
    if random_curve is not None and strength != 0:
        r = np.asarray(random_curve, dtype=float)
        rnd = float(r[here] - r[zero])
        if abs(effect) <= abs(rnd):
            out.append(
                {
                    "level": "notice",
                    "message": f"At strength {strength:+g} the vector moves the log-odds by "
                    f"{effect:+.2f}, no more than a random vector of equal norm ({rnd:+.2f}): the "
                    "change may be noise from the perturbation, not the direction.",
                }
            )
    return out
