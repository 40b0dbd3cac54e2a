"""Fluency verdict: distinct-n by hand, each verdict class on constructed log-probs / token ids, and the
quickstart's sentiment vector on the real model (degraded at λ = −13, fluent at λ = 4)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import steerwidgets as sw
from steerwidgets import fluency as F
from steerwidgets.fluency import fluency_warnings

FLUENT_IDS = list(range(100, 124))  # 24 distinct tokens


def test_distinct_n_by_hand():
    assert F.distinct_n([1, 2, 3, 4], 1) == 1.0
    assert F.distinct_n([1, 2, 1, 2, 1], 2) == 2 / 4  # (1,2) (2,1) (1,2) (2,1)
    assert F.distinct_n([7, 7, 7, 7], 1) == 0.25
    assert F.distinct_n([5, 6, 5, 6, 5, 6], 3) == 2 / 4
    assert math.isnan(F.distinct_n([1], 2))
    with pytest.raises(ValueError):
        F.distinct_n([1, 2], 0)


def test_fluent_text_is_not_degraded():
    v = F.fluency_verdict([-1.5] * 20, [-2.5] * 24, FLUENT_IDS)
    assert not v.degraded and v.kind == "fluent"
    assert v.logprob_drop == pytest.approx(1.0) and v.distinct == 1.0 and v.n_tokens == 24
    assert "1.00 ≤ 2 nats/token" in v.reason and "distinct-2 1.00 ≥ 0.5" in v.reason


def test_low_likelihood_is_degraded_and_says_the_numbers():
    v = F.fluency_verdict([-1.9] * 20, [-6.1] * 24, FLUENT_IDS)
    assert v.degraded and v.kind == "low_likelihood"
    assert v.logprob_drop == pytest.approx(4.2)
    assert "-6.10 vs -1.90" in v.reason and "drop 4.20 > 2 nats/token" in v.reason


def test_the_threshold_is_configurable():
    v = F.fluency_verdict([-1.9] * 20, [-6.1] * 24, FLUENT_IDS, max_drop=5.0)
    assert not v.degraded and v.max_drop == 5.0 and "≤ 5 nats/token" in v.reason


def test_collapsed_repetition_is_degraded_even_when_likely():
    # "you are you you are you …": likely under the base model once it starts, but a loop
    loop = [10, 11, 10] * 8
    v = F.fluency_verdict([-1.0] * 20, [-0.5] * 24, loop)
    assert v.degraded and v.kind == "repetition"
    assert v.distinct == pytest.approx(3 / 23) and "distinct-2 0.13 < 0.5" in v.reason


def test_a_loop_at_the_end_is_caught_by_the_second_half():
    ids = list(range(200, 216)) + [10, 11, 10] * 6  # 16 fresh tokens, then a loop of 18
    whole = F.distinct_n(ids, 2)
    assert whole > F.MIN_DISTINCT
    v = F.fluency_verdict([-1.0] * 20, [-1.5] * len(ids), ids)
    assert v.degraded and v.kind == "repetition" and "second half" in v.reason
    assert v.distinct == pytest.approx(F.distinct_n(ids[len(ids) // 2 :], 2))


def test_too_short_to_judge_is_not_degraded_and_says_so():
    v = F.fluency_verdict([-1.0] * 20, [-9.0] * 3, [1, 1, 1])
    assert not v.degraded and v.kind == "too_short" and "too short to judge: 3 tokens < 8" in v.reason
    assert v.logprob_drop is None and v.distinct is None


def test_a_short_unsteered_text_skips_only_the_likelihood_check():
    v = F.fluency_verdict([-1.0] * 2, [-9.0] * 24, FLUENT_IDS)
    assert not v.degraded and v.logprob_drop is None and "no unsteered text long enough" in v.reason
    assert F.fluency_verdict([-1.0] * 2, [-9.0] * 24, [3, 4] * 12).kind == "repetition"


def test_verdict_is_frozen_and_serialisable():
    v = F.fluency_verdict([-1.0] * 20, [-1.0] * 24, FLUENT_IDS)
    with pytest.raises(AttributeError):
        v.degraded = True  # type: ignore[misc]
    assert v.to_json()["kind"] == "fluent" and v.to_json()["min_tokens"] == F.MIN_TOKENS


def test_generation_fluency_scores_both_texts_under_the_base_model(tiny_llama):
    vec = sw.SteeringVector({1: torch.zeros(tiny_llama.d_model)}, method="zero")
    result = sw.generate(tiny_llama, "Hello there", sw.Steering(vec, 1, 1.0), max_new_tokens=12)
    v = F.generation_fluency(tiny_llama, result)
    # a zero vector changes nothing: same text, same log-probs, no drop
    assert result.base.text == result.steered.text
    if v.kind != "too_short":
        assert v.logprob_drop == pytest.approx(0.0, abs=1e-5)
    ids = tiny_llama.tokenizer(result.steered.text, add_special_tokens=False)["input_ids"]
    assert v.n_tokens == len(ids)


@pytest.mark.model
def test_quickstart_vector_degrades_at_minus_13_not_at_4(smol):
    vector = sw.mean_difference(smol, sw.builtin_pairs("sentiment"), [10])
    prompt = "Tell me about your day."
    verdicts = {}
    for strength in (-13.0, 4.0):
        result = sw.generate(smol, prompt, sw.Steering(vector, 10, strength, "all"), max_new_tokens=32)
        verdicts[strength] = F.generation_fluency(smol, result)
    bad, good = verdicts[-13.0], verdicts[4.0]
    assert bad.degraded, bad.reason  # "… you are you you are you …"; measured drop 2.7, tail distinct-2 0.27
    assert not good.degraded, good.reason  # measured drop 0.6, distinct-2 0.81
    assert bad.logprob_drop > good.logprob_drop


def test_fluency_warning_from_the_colouring_rows():
    ids = [5, 6] * 10
    base = SimpleNamespace(token_ids=[list(range(20))], token_logprobs=[[-1.0] * 20])
    tok = SimpleNamespace(eos_token_id=0, pad_token_id=0)
    loop = SimpleNamespace(token_ids=[ids])
    (warning,) = fluency_warnings(base, loop, [{"lp_base": -1.0}] * 20, tok)
    assert warning["fluency"] == "repetition" and "distinct-2" in warning["message"]
    unlikely = SimpleNamespace(token_ids=[list(range(30, 50))])
    (warning,) = fluency_warnings(base, unlikely, [{"lp_base": -6.0}] * 20, tok)
    assert warning["fluency"] == "low_likelihood"
    assert fluency_warnings(base, unlikely, [{"lp_base": -1.5}] * 20, tok) == []
