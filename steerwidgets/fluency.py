"""Fluency verdict: is a steered continuation degraded text, whatever the target says?

docs/metrics.md ("Fluency"): a steered continuation whose mean per-token log-probability under the
*unsteered* model falls far below the unsteered continuation's, or whose repetition collapses, is degraded.
The thresholds are our choices (no paper fixes them); each is a module constant, a keyword argument and
printed in the verdict's reason. Measured on SmolLM2-135M-Instruct, quickstart sentiment vector, layer 10,
positions all, 32 greedy tokens of "Tell me about your day.": λ = 4 drops 0.6 nats/token with distinct-2
0.81 (fluent); λ = −13 drops 2.7 nats/token and ends in "you are you you are you…" (tail distinct-2 0.27).

The judging functions are pure (lists of numbers in, a verdict out); :func:`generation_fluency` is the one
helper that runs the model, scoring a :class:`~steerwidgets.engine.GenerationResult`'s texts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_LOGPROB_DROP = 2.0  # nats/token: e^2 ≈ 7× less likely per token than the unsteered text is
MIN_DISTINCT = 0.5  # distinct-n below this (over the text or its second half) is a repetition collapse
DISTINCT_N = 2  # bigrams: "you are you you are you" has distinct-2 0.4, a normal sentence ≈ 1
MIN_TOKENS = 8  # fewer steered tokens than this cannot be judged (too few n-grams, a noisy mean)


def distinct_n(token_ids: Sequence[int], n: int = DISTINCT_N) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams; 1 = no repeats. NaN if no n-gram fits."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    ids = list(token_ids)
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@dataclass(frozen=True)
class FluencyVerdict:
    """Whether a steered text is degraded, why (one sentence with the numbers) and the numbers."""

    degraded: bool
    reason: str
    kind: str  # "fluent", "low_likelihood", "repetition", "too_short"
    n_tokens: int
    base_mean_logprob: float | None  # unsteered text under the unsteered model, per-token mean
    steered_mean_logprob: float | None  # steered text under the unsteered model, per-token mean
    logprob_drop: float | None  # base_mean_logprob − steered_mean_logprob
    distinct: float | None  # distinct-n of the steered text: min of the whole text and its second half
    distinct_n: int = DISTINCT_N
    max_drop: float = MAX_LOGPROB_DROP
    min_distinct: float = MIN_DISTINCT
    min_tokens: int = MIN_TOKENS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else None


def fluency_verdict(
    base_logprobs_of_base_text: Sequence[float],
    base_logprobs_of_steered_text: Sequence[float],
    steered_token_ids: Sequence[int],
    *,
    max_drop: float = MAX_LOGPROB_DROP,
    min_distinct: float = MIN_DISTINCT,
    n: int = DISTINCT_N,
    min_tokens: int = MIN_TOKENS,
) -> FluencyVerdict:
    """Judge a steered continuation against the unsteered one, both scored by the *unsteered* model.

    Degraded when the steered text's mean log-prob is more than ``max_drop`` nats/token below the
    unsteered text's, or when its distinct-``n`` (over the whole text, or over its second half, where
    a collapse into a loop shows first) is below ``min_distinct``. Texts shorter than ``min_tokens``
    are not judged (``degraded=False``, kind ``"too_short"``); an unsteered text that short only skips
    the likelihood comparison. Repetition is reported before likelihood when both fail.
    """
    ids = list(steered_token_ids)
    steered_lp = [float(x) for x in base_logprobs_of_steered_text]
    base_lp = [float(x) for x in base_logprobs_of_base_text]
    thresholds = dict(distinct_n=n, max_drop=max_drop, min_distinct=min_distinct, min_tokens=min_tokens)
    if len(ids) < min_tokens:
        return FluencyVerdict(
            False,
            f"the steered text is too short to judge: {len(ids)} tokens < {min_tokens}",
            "too_short",
            len(ids),
            _mean(base_lp),
            _mean(steered_lp),
            None,
            None,
            **thresholds,
        )
    whole = distinct_n(ids, n)
    tail = distinct_n(ids[len(ids) // 2 :], n)
    tail = whole if math.isnan(tail) else tail
    distinct = min(whole, tail)
    where = "its second half's" if tail < whole else "its"
    steered_mean = _mean(steered_lp)
    base_mean = _mean(base_lp) if len(base_lp) >= min_tokens else None
    drop = None if base_mean is None or steered_mean is None else base_mean - steered_mean
    common = (len(ids), base_mean, steered_mean, drop, distinct)
    if distinct < min_distinct:
        reason = (
            f"the steered text is degraded: it repeats itself ({where} distinct-{n} "
            f"{distinct:.2f} < {min_distinct:g})"
        )
        return FluencyVerdict(True, reason, "repetition", *common, **thresholds)
    if drop is not None and drop > max_drop:
        reason = (
            f"the steered text is degraded: its mean log-prob under the unsteered model is "
            f"{steered_mean:.2f} vs {base_mean:.2f} for the unsteered text "
            f"(drop {drop:.2f} > {max_drop:g} nats/token)"
        )
        return FluencyVerdict(True, reason, "low_likelihood", *common, **thresholds)
    if drop is None:
        likelihood = "no unsteered text long enough to compare likelihoods with"
    else:
        likelihood = f"log-prob drop {drop:.2f} ≤ {max_drop:g} nats/token"
    reason = f"the steered text reads as fluent: {likelihood}, distinct-{n} {distinct:.2f} ≥ {min_distinct:g}"
    return FluencyVerdict(False, reason, "fluent", *common, **thresholds)


def generation_fluency(
    model: Any,
    result: Any,
    row: int = 0,
    *,
    chat: bool | None = None,
    **thresholds: Any,
) -> FluencyVerdict:
    """The fluency verdict for one row of a :class:`~steerwidgets.engine.GenerationResult`.

    Both continuations' decoded texts are scored under the unsteered model in one batched ``score``
    pass (as the Playground colours tokens: the text re-tokenised, end-of-sequence tokens dropped), so
    the two means are over the same kind of tokens. ``chat`` must match the ``generate`` call's.
    """
    from .engine.scoring import score

    if result.base is None or result.steered is None:
        raise ValueError("the fluency verdict needs both the unsteered and the steered continuation")
    tok = model.tokenizer
    prompt = result.prompts[row]
    texts = [result.base.texts[row], result.steered.texts[row]]
    ids = [tok(text, add_special_tokens=False)["input_ids"] if text else [] for text in texts]
    todo = [i for i, text in enumerate(texts) if text]
    scored = score(model, [prompt] * len(todo), [texts[i] for i in todo], chat=chat) if todo else []
    lps: list[list[float]] = [[], []]
    for i, lp in zip(todo, scored):
        lps[i] = lp.tolist()
    return fluency_verdict(lps[0], lps[1], ids[1], **thresholds)


def fluency_warnings(base: Any, steered: Any, tokens: list[dict], tok: Any) -> list[dict]:
    """The Playground's warning when its steered text is degraded (this module's thresholds).

    ``base``/``steered`` are single-prompt continuations; ``tokens`` are the colouring rows, whose
    ``lp_base`` is each steered token under the unsteered model, so no extra pass is needed.
    """
    stop = {tok.eos_token_id, tok.pad_token_id} - {None}
    base_lp = [lp for t, lp in zip(base.token_ids[0], base.token_logprobs[0]) if t not in stop]
    steered_ids = [t for t in steered.token_ids[0] if t not in stop]
    steered_lp = [row["lp_base"] for row in tokens if row.get("lp_base") is not None]
    verdict = fluency_verdict(base_lp, steered_lp, steered_ids)
    if not verdict.degraded:
        return []
    return [{"level": "warning", "message": f"Degraded text: {verdict.reason}", "fluency": verdict.kind}]
