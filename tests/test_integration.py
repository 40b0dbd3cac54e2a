"""Steering the real default model (SmolLM2-135M-Instruct): does it do what the numbers say?"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerwidgets as sw
from steerwidgets.prompts import tokenize_prompt

pytestmark = pytest.mark.model

LAYER = 9
QUERIES = [
    "Write one sentence about your day.",
    "How was the movie you watched?",
    "Describe the food at the new restaurant.",
    "What do you think of the weather this week?",
]
POSITIVE = " It was wonderful, I loved it and I am so happy."
NEGATIVE = " It was terrible, I hated it and I am so sad."


CONTEXT = "Tell me about something that happened recently."
STRENGTHS = [0.0, 0.1, 0.2, 0.4]  # relative: ‖λv‖ / mean‖h‖


@pytest.fixture(scope="module")
def sentiment(smol):
    """Sentiment direction read in context: the pairs as assistant replies, mean over their tokens."""
    return sw.mean_difference(
        smol, sw.builtin_pairs("sentiment"), layers=[LAYER], context=CONTEXT, read="mean"
    )


def _shift(smol, vector, strength):
    """Mean per-token log-likelihood of the positive and the negative continuation."""
    steering = (
        sw.Steering(vector, LAYER, strength, positions="generated", relative=True) if strength else None
    )
    pos = sw.score(smol, QUERIES, [POSITIVE] * len(QUERIES), steering)
    neg = sw.score(smol, QUERIES, [NEGATIVE] * len(QUERIES), steering)
    return (
        float(np.mean([p.mean().item() for p in pos])),
        float(np.mean([n.mean().item() for n in neg])),
    )


def _increasing(values):
    return all(b > a for a, b in zip(values, values[1:]))


def test_sentiment_vector_moves_likelihoods_monotonically(smol, sentiment):
    """The vector lowers the negative continuation and widens log p(pos) − log p(neg) monotonically;
    the negated vector raises the negative continuation monotonically and narrows the gap.
    (On this 135M model the positive continuation's own likelihood also drops slightly: steering
    costs fluency, which the side-effect meters report.)"""
    curves = [_shift(smol, sentiment, s) for s in STRENGTHS]
    gap = [p - n for p, n in curves]
    assert _increasing(gap), curves
    assert _increasing([-n for _, n in curves]), curves
    negated = [_shift(smol, -sentiment, s) for s in STRENGTHS]
    assert _increasing([n for _, n in negated]), negated  # the negative continuation gains
    assert negated[-1][0] - negated[-1][1] < gap[0] < gap[-1], (negated, curves)


def test_random_vector_of_equal_norm_does_much_less(smol, sentiment):
    pos0, neg0 = _shift(smol, sentiment, 0.0)
    pos, neg = _shift(smol, sentiment, 0.4)
    rpos, rneg = _shift(smol, sw.random_like(sentiment, seed=1), 0.4)
    effect = (pos - pos0) - (neg - neg0)
    random_effect = (rpos - pos0) - (rneg - neg0)
    assert effect > 3 * abs(random_effect)


def test_strength_zero_reproduces_unsteered_generation(smol, sentiment):
    result = sw.generate(smol, QUERIES[0], sw.Steering(sentiment, LAYER, 0.0), max_new_tokens=24)
    assert result.steered.token_ids == result.base.token_ids
    assert result.steered.token_logprobs == result.base.token_logprobs


def test_generated_positions_leave_prompt_logits_untouched(smol, sentiment):
    ids, _ = tokenize_prompt(smol, QUERIES[1])
    steering = sw.Steering(sentiment, LAYER, 8.0, positions="generated")
    completion = " It was fine."
    base = sw.score(smol, QUERIES[1], completion)[0]
    steered = sw.score(smol, QUERIES[1], completion, steering)[0]
    # the first completion token is predicted from the last prompt position: unchanged, bit for bit
    assert steered[0] == base[0]
    assert not torch.allclose(steered[1:], base[1:])
    prompt_only = sw.Steering(sentiment, LAYER, 8.0, positions="prompt")
    assert sw.score(smol, QUERIES[1], completion, prompt_only)[0][0] != base[0]
    assert len(ids) > 5


def test_exception_inside_steered_call_leaves_model_clean(smol, sentiment):
    ids = torch.tensor([tokenize_prompt(smol, QUERIES[2])[0]])
    with torch.no_grad():
        before = smol.hf(ids).logits

    def explode(run, step, token_ids):
        if run == "steered":
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        sw.generate(
            smol,
            QUERIES[2],
            sw.Steering(sentiment, LAYER, 10.0),
            max_new_tokens=8,
            on_token=explode,
        )
    with torch.no_grad():
        assert torch.equal(smol.hf(ids).logits, before)
    again = sw.generate(smol, QUERIES[2], None, max_new_tokens=4)
    assert again.base.text


def test_builtin_ab_set_gives_finite_reproducible_numbers(smol):
    items = sw.builtin_ab("sentiment")
    train, test = items[:24], items[24:36]
    vector = sw.caa(smol, train, [LAYER])
    first = sw.propensity_sweep(smol, test, vector, [LAYER], [-1.0, 0.0, 1.0], positions="last")
    second = sw.propensity_sweep(smol, test, vector, [LAYER], [-1.0, 0.0, 1.0], positions="last")
    m = first.propensity[LAYER]
    assert np.isfinite(m).all()
    np.testing.assert_array_equal(m, second.propensity[LAYER])
    summary = first.summary(LAYER)
    assert 0.0 <= summary["anti_steerable_fraction"] <= 1.0
    assert summary["steerability"] > 0, summary
