"""Side effects of a steering, for any steerer (docs/metrics.md).

- :func:`perplexity_ratio` — ppl(λ)/ppl(0) on reference passages (:func:`passage_logprobs`);
  :func:`usable_range` keeps the strengths whose ratio stays below :data:`USABLE_PPL_RATIO` (10, von Rütte
  et al. 2024);
- :func:`kl_on_neutral` — KL(steered ‖ unsteered) of next-token distributions on neutral prompts
  (the reliability module's ``kl_side_effects`` is the single-layer additive special case).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import metrics
from .engine.generation import GenerationCancelled
from .engine.scoring import next_token_logprobs, score
from .interventions import Steering, SteeringError
from .prompts import tokenize_prompt
from .reliability import NEUTRAL_PROMPTS
from .steerers import SteerFn

USABLE_PPL_RATIO = 10.0  # von Rütte et al. (2024): the usable range keeps ppl(λ)/ppl(0) below this


def _passage_split(text: str) -> tuple[str, str]:
    text = text.strip()
    head, sep, rest = text.partition(" ")
    if not sep or not rest:
        raise SteeringError(f"a reference passage needs at least two words: {text[:40]!r}")
    return head, " " + rest


def passage_logprobs(
    model: Any, passages: Sequence[str], steerings: Sequence[Steering] | None = None, batch_size: int = 8
) -> list[torch.Tensor]:
    """Token log-probabilities of each passage after its first word (raw text, no chat template)."""
    heads, rests = zip(*(_passage_split(p) for p in passages))
    return score(model, list(heads), list(rests), list(steerings or []), chat=False, batch_size=batch_size)


def perplexity_ratio(
    model: Any,
    steer: SteerFn,
    strengths: Sequence[float],
    passages: Sequence[str],
    *,
    base_ppl: float | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, float]:
    """ppl(λ)/ppl(0) on reference passages for each strength; ppl(0) is the unsteered model's."""
    if not passages:
        raise SteeringError("no reference passages given")
    if base_ppl is None:
        base_ppl = metrics.perplexity([t.numpy() for t in passage_logprobs(model, passages)])
    ratios = []
    for strength in strengths:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")
        lps = passage_logprobs(model, passages, steer(strength))
        ratios.append(metrics.perplexity([t.numpy() for t in lps]) / base_ppl)
    return np.array(ratios), float(base_ppl)


def neutral_ids(model: Any, prompts: Sequence[str] = NEUTRAL_PROMPTS) -> list[list[int]]:
    return [tokenize_prompt(model, p)[0] for p in prompts]


def kl_on_neutral(
    model: Any,
    steer: SteerFn,
    strengths: Sequence[float],
    prompts: Sequence[str] = NEUTRAL_PROMPTS,
    *,
    base: torch.Tensor | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Mean over neutral prompts of KL(steered ‖ unsteered) of the next-token distribution, per strength.

    Any steerer (the reliability module's ``kl_side_effects`` covers single-layer additive vectors).
    """
    ids = neutral_ids(model, prompts)
    if base is None:
        base = next_token_logprobs(model, ids)
    base_np = base.double().numpy()
    out = []
    for strength in strengths:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")
        steered = next_token_logprobs(model, ids, steer(strength)).double().numpy()
        out.append(float(metrics.kl_divergence(steered, base_np).mean()))
    return np.array(out)


def usable_range(
    strengths: Sequence[float], ppl_ratio: Sequence[float], limit: float = USABLE_PPL_RATIO
) -> dict[str, Any]:
    """Strengths whose perplexity ratio stays below ``limit``, and the contiguous interval around λ = 0."""
    lam = np.asarray(strengths, dtype=float)
    ratio = np.asarray(ppl_ratio, dtype=float)
    order = np.argsort(lam)
    lam, ratio = lam[order], ratio[order]
    ok = ratio < limit
    usable = [float(x) for x in lam[ok]]
    centre = int(np.argmin(np.abs(lam)))
    if not ok[centre]:
        return {"limit": limit, "usable_strengths": usable, "range": None}
    lo = hi = centre
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < lam.size - 1 and ok[hi + 1]:
        hi += 1
    return {"limit": limit, "usable_strengths": usable, "range": [float(lam[lo]), float(lam[hi])]}
