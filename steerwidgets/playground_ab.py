"""The Playground's attached A/B check: each protocol's verdict against random directions.

With A/B items attached, every Playground run ends with :func:`ab_check`: the letter and the answer-text
protocols (:func:`~steerwidgets.propensity_sweep`) over a three-point grid around the strength, each judged
against :data:`AB_NULL_DIRECTIONS` random directions of the vector's norm (:mod:`steerwidgets.verdicts`),
with the stack's other rows on as fixed background. The letter protocol's lines arrive first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from .engine import propensity_sweep
from .interventions import Steering, SteeringError
from .playground_request import Request, n_rows
from .vectors import SteeringVector
from .verdicts import ab_check_lines

AB_LIMIT = 20
AB_GRID = (-1.0, 0.0, 1.0)  # times the strength: a slope needs no more (each point is a batch row)
AB_NULL_DIRECTIONS = 16  # random directions of the vector's norm behind the A/B check's verdicts


def ab_check(
    model: Any,
    request: Request,
    vector: SteeringVector,
    extra: list[Steering],
    cancel: threading.Event,
    cache: MutableMapping,
    prefixes: MutableMapping | None = None,
    letter_first: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """The attached A/B check: each protocol's verdict against random directions, at the protocol's
    own positions (the letter from the last prompt token on; the answer text through the answer).
    The stack's other rows are on throughout as fixed background (absolute rows only).
    ``letter_first(lines)`` receives the letter protocol's lines as soon as they exist. ``cache`` keeps the
    lines per (vector, layer, grid, relative, items, stack); ``prefixes`` the items' unsteered prefixes
    (the engine's ``propensity_sweep(cache=...)``), so a strength or layer change runs suffixes only."""
    strength = float(request.strength)
    unit = abs(strength) if strength != 0 else 1.0
    grid = tuple(k * unit for k in AB_GRID)
    key = (request.vector_key, request.layer, grid, request.relative, request.ab_items, request.stack)
    hit = cache.get(key)
    if hit is not None:
        return hit
    relative = [i for i, row in enumerate(request.stack) if row.relative]
    if relative:
        i = relative[0]
        out = [
            {
                "level": "notice",
                "message": f"A/B check skipped: {request.stack[i].where(i)} has a relative "
                "strength, and the check holds the stack's rows on as fixed background at absolute "
                "strengths only. Untick 'relative' on that row (strength = ratio × mean‖h‖ / ‖v‖) to "
                "get the check.",
            }
        ]
        cache[key] = out
        return out
    if vector[request.layer].ndim != 1:
        out = [
            {
                "level": "notice",
                "message": "A/B check skipped: it needs one [d_model] direction per layer, "
                "and an ActAdd vector is per position. Pick a built-in or CAA vector for it.",
            }
        ]
        cache[key] = out
        return out
    results = []
    try:
        for protocol in ("letter", "answer_text"):
            results.append(
                propensity_sweep(
                    model,
                    list(request.ab_items),
                    vector,
                    request.layer,
                    grid,
                    protocol=protocol,
                    relative=request.relative,
                    null_directions=AB_NULL_DIRECTIONS,
                    cancel=cancel,
                    cache=prefixes,
                    background=extra,
                )
            )
            if protocol == "letter" and letter_first is not None:
                letter_first(ab_check_lines(results[0], request.layer))
    except SteeringError as exc:
        if not results:
            out = [{"level": "notice", "message": f"A/B check skipped: {exc}"}]
            cache[key] = out
            return out
    out = ab_check_lines(results[0], request.layer, results[1] if len(results) > 1 else None)
    if extra:
        labels = ", ".join(row.label for row in request.stack)
        out.insert(0, {
            "level": "notice",
            "message": f"A/B check of the main vector with {n_rows(len(extra))} of the stack held on at "
            f"fixed strength as background ({labels}).",
        })  # fmt: skip
    cache[key] = out
    return out
