"""The Playground's notice lines beside the text: the condition's decision and the capability cost.

- :func:`condition_line` — with conditional steering (CAST), whether this prompt is steered and why;
- :func:`capability_line` — the side effect on capability: accuracy on the first ``n`` items of each built-in
  capability set, unsteered vs steered, with the paired interval's verdict
  (:func:`~steerwidgets.capabilities.capability_check`).

The fluency warnings are :func:`steerwidgets.fluency.fluency_warnings`; the target check's lines
:mod:`steerwidgets.target_check`.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from .capabilities import capability_check
from .conditional import ConditionalSteering, condition_met
from .interventions import Steering


def condition_line(
    model: Any, condition: ConditionalSteering | None, similarity: MutableMapping, prompt: str
) -> tuple[bool, dict | None]:
    """Whether the steering applies to ``prompt`` and the line that says why (None: no condition).

    ``similarity`` caches each prompt's similarity for this ``condition``."""
    if condition is None:
        return True, None
    sim = similarity.get(prompt)
    if sim is None:
        sim = float(condition.similarities(model, [prompt])[0])
        similarity[prompt] = sim
    met = bool(condition_met(sim, condition.threshold, condition.direction))
    what = "the steering is applied" if met else "the steering is not applied (steered = unsteered)"
    decision = condition.describe(sim)
    message = f"Conditional steering (CAST), layer {condition.layer}: {decision}; {what}."
    return met, {"level": "notice", "message": message, "condition_met": met, "similarity": sim}


def capability_line(
    model: Any, n: int, steerings: list[Steering], baselines: MutableMapping, check: Callable[[], None]
) -> dict:
    """The capability side-effect line: accuracy on the first ``n`` items of each built-in set,
    unsteered (computed once per ``n``, kept in ``baselines``) vs under ``steerings``, with the paired
    interval's verdict."""
    base = baselines.get(n)
    if base is None:
        base = capability_check(model, None, n=n)
        baselines[n] = base
    check()
    if not steerings:
        message = base.side_effect_line() + " — nothing steered, so no change to measure"
        return {"level": "notice", "message": message, "capability": base.summary()}
    result = capability_check(model, steerings, n=n, baseline=base)
    line = f"{result.side_effect_line()} (first {n} items per set; Δ: the paired 95 % CI of the change)"
    level = "warning" if result.costly_sets else "notice"
    return {"level": level, "message": line, "capability": result.summary()}
