"""Capability checks: the built-in sets are well formed and correct, the intervals match hand-computed
values, batched scoring equals one-by-one scoring on a tiny model, and on the default model the sets are
answered above chance and a big random steering costs capability."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import capabilities as C


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", C.CAPABILITY_SETS)
def test_builtin_sets_are_well_formed(name):
    items = C.builtin_capability(name)
    assert 50 <= len(items) <= 100
    assert len({it.prompt for it in items}) == len(items)
    assert all(2 <= len(it.choices) <= 4 for it in items)
    positions = {it.answer for it in items}
    assert len(positions) >= 2  # the correct answer is not always in the same slot


def test_arithmetic_answers_are_correct():
    for item in C.builtin_capability("arithmetic"):
        a, op, b = item.prompt.removeprefix("What is ").split("?")[0].split()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert item.choices[item.answer] == str(value), item
        assert sum(c == str(value) for c in item.choices) == 1


def test_instruction_answers_follow_the_instruction():
    for item in C.builtin_capability("instructions"):
        right = item.choices[item.answer]
        p = item.prompt
        if "capital letters" in p:
            assert right == p.split("'")[1].upper()
        elif p.startswith("Repeat this word"):
            assert right == p.rsplit(": ", 1)[1]
        elif "first letter" in p:
            assert right == p.split("'")[1][0]
        elif "first of these two words" in p:
            assert right == p.rsplit(": ", 1)[1].split(", ")[0]
        else:
            assert right == p.rstrip(".").split()[-1]


def test_unknown_set_and_bad_items_are_refused():
    with pytest.raises(sw.DatasetError, match="available"):
        C.builtin_capability("chess")
    with pytest.raises(sw.DatasetError, match="answer"):
        C.CapabilityItem("q?", ("a", "b"), 2)
    with pytest.raises(sw.DatasetError, match="repeats"):
        C.CapabilityItem("q?", ("a", "a"), 0)


# ----------------------------------------------------------------------------------------------
# Statistics, by hand
# ----------------------------------------------------------------------------------------------
def test_wilson_interval_matches_hand_values():
    low, high = C.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = C.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = C.wilson_interval(50, 100)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(2 * 0.0962, abs=2e-4)


def test_paired_difference_and_verdicts():
    same = [True, False] * 10
    assert C.paired_difference_ci(same, same) == (0.0, 0.0, 0.0)
    assert C.cost_verdict((0.0, 0.0)) == "no detectable cost"
    # Half of 20 correct answers lost, none gained: every resample loses.
    base = [True] * 20
    steered = [True] * 10 + [False] * 10
    mean, low, high = C.paired_difference_ci(base, steered)
    assert mean == -0.5 and high < 0 and low >= -1
    assert C.cost_verdict((low, high)) == "costs capability"
    # One gained, one lost out of 20: the interval straddles 0.
    steered = [False] + [True] * 19
    base = [True] * 19 + [False]
    mean, low, high = C.paired_difference_ci(base, steered)
    assert mean == 0.0 and low < 0 < high
    assert C.cost_verdict((low, high)) == "no detectable cost"
    assert C.cost_verdict(None) == "not steered"
    with pytest.raises(ValueError):
        C.paired_difference_ci([True], [True, False])


# ----------------------------------------------------------------------------------------------
# Plumbing on a tiny random model
# ----------------------------------------------------------------------------------------------
ITEMS = [
    C.CapabilityItem("What is 2 + 2?", ("4", "5", "22"), 0),
    C.CapabilityItem("Capital of France?", ("Madrid", "Paris"), 1),
    C.CapabilityItem("Pick the longer one.", ("a pen", "in the washing machine", "it"), 1),
]


def _one_by_one(model, items, steering, metric):
    out = []
    for item in items:
        lps = [sw.score(model, item.prompt, c, steering)[0] for c in item.choices]
        out.append(np.array([float(lp.mean() if metric == "mean" else lp.sum()) for lp in lps]))
    return out


@pytest.mark.parametrize("metric", ["mean", "sum"])
def test_batched_scores_equal_one_by_one(tiny_llama, metric):
    steering = sw.Steering(random_vector(tiny_llama), layer=1, strength=2.0)
    base, steered = C.choice_scores(tiny_llama, ITEMS, steering, metric=metric)
    for got, want in zip(base, _one_by_one(tiny_llama, ITEMS, None, metric)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    for got, want in zip(steered, _one_by_one(tiny_llama, ITEMS, steering, metric)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert any(not np.allclose(b, s, atol=1e-3) for b, s in zip(base, steered))


def test_capability_check_plumbing(tiny_llama):
    steering = sw.Steering(random_vector(tiny_llama), layer=1, strength=2.0)
    result = C.capability_check(tiny_llama, steering, sets={"mine": ITEMS, "twice": ITEMS[:2]}, n=None)
    base, steered = C.choice_scores(tiny_llama, ITEMS, steering)
    want_b = [int(np.argmax(s)) == it.answer for s, it in zip(base, ITEMS)]
    want_s = [int(np.argmax(s)) == it.answer for s, it in zip(steered, ITEMS)]
    mine = result["mine"]
    assert mine.correct_base == tuple(want_b) and mine.correct_steered == tuple(want_s)
    assert mine.accuracy_base == pytest.approx(sum(want_b) / 3)
    assert mine.chance == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert result["twice"].correct_base == tuple(want_b[:2])
    summary = result.summary()
    json.dumps(summary)
    assert summary["scoring"] == "mean" and "per-token mean" in summary["metric"]
    assert summary["steering"].startswith("add at layer 1")
    assert summary["verdict"] == result.verdict and result.verdict.endswith(".")
    with pytest.raises(KeyError):
        result["nope"]
    line = result.side_effect_line()
    assert line.startswith("capability: mine ") and f"{mine.accuracy_base:.2f}→" in line
    assert [row["set"] for row in result.rows()] == ["mine", "twice"]
    assert result.cpu_seconds > 0


def test_capability_check_unsteered_and_n(tiny_llama):
    result = C.capability_check(tiny_llama, None, n=5)
    assert [r.name for r in result.sets] == list(C.CAPABILITY_SETS)
    assert all(r.n == 5 and r.accuracy_steered is None and r.verdict == "not steered" for r in result.sets)
    assert "no steering" in result.verdict
    assert result.side_effect_line().startswith("capability (unsteered): arithmetic ")
    with pytest.raises(sw.SteeringError, match="n must be"):
        C.capability_check(tiny_llama, None, n=0)
    with pytest.raises(sw.SteeringError, match="metric"):
        C.capability_check(tiny_llama, None, n=2, metric="median")


def test_zero_strength_costs_nothing(tiny_llama):
    steering = sw.Steering(random_vector(tiny_llama), layer=1, strength=0.0)
    result = C.capability_check(tiny_llama, steering, sets={"mine": ITEMS}, n=None)
    r = result["mine"]
    assert r.correct_base == r.correct_steered and r.difference == 0.0
    assert r.verdict == "no detectable cost"


def test_without_chat_template(tiny_gpt2):
    model = tiny_gpt2
    pairs = [C._pair(model, ITEMS[0], c, chat=False) for c in ITEMS[0].choices]
    assert pairs[0] == ("Question: What is 2 + 2?\nAnswer:", " 4")
    result = C.capability_check(model, None, sets={"mine": ITEMS}, n=None, chat=False)
    assert result["mine"].n == 3


def _counting_scorer(monkeypatch) -> list[int]:
    """Count the prompts capability_check sends to score_choices."""
    seen: list[int] = []
    real = C.score_choices

    def counting(model, prompts, *args, **kwargs):
        seen.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(C, "score_choices", counting)
    return seen


def test_baseline_reuse_equals_a_full_run(tiny_llama, monkeypatch):
    steering = sw.Steering(random_vector(tiny_llama), layer=1, strength=2.0)
    sets = {"mine": ITEMS, "twice": ITEMS[:2]}
    full = C.capability_check(tiny_llama, steering, sets=sets, n=None)
    base = C.capability_check(tiny_llama, None, sets=sets, n=None)
    seen = _counting_scorer(monkeypatch)
    reused = C.capability_check(tiny_llama, steering, sets=sets, n=None, baseline=base)
    assert seen == [len(ITEMS) + 2]  # the steered pass only: one prompt per item
    assert reused.summary()["sets"] == full.summary()["sets"]
    assert [r.correct_steered for r in reused.sets] == [r.correct_steered for r in full.sets]
    # A steered result serves as a baseline too (its unsteered correctness is what is reused).
    again = C.capability_check(tiny_llama, steering, sets=sets, n=None, baseline=full)
    assert again.summary()["sets"] == full.summary()["sets"]


def test_mismatched_baseline_is_refused(tiny_llama, tiny_gpt2, monkeypatch):
    steering = sw.Steering(random_vector(tiny_llama), layer=1, strength=2.0)
    base = C.capability_check(tiny_llama, None, sets={"mine": ITEMS}, n=None, chat=False)
    seen = _counting_scorer(monkeypatch)
    with pytest.raises(sw.SteeringError, match="metric='mean'"):
        C.capability_check(
            tiny_llama, steering, sets={"mine": ITEMS}, n=None, chat=False, metric="sum", baseline=base
        )
    with pytest.raises(sw.SteeringError, match="chat=False"):
        C.capability_check(tiny_llama, steering, sets={"mine": ITEMS}, n=None, chat=True, baseline=base)
    with pytest.raises(sw.SteeringError, match="same sets and n"):
        C.capability_check(tiny_llama, steering, sets={"mine": ITEMS}, n=2, chat=False, baseline=base)
    with pytest.raises(sw.SteeringError, match="same sets and n"):
        C.capability_check(tiny_llama, steering, sets={"other": ITEMS}, n=None, chat=False, baseline=base)
    with pytest.raises(sw.SteeringError, match="computed on"):
        C.capability_check(tiny_gpt2, None, sets={"mine": ITEMS}, n=None, chat=False, baseline=base)
    with pytest.raises(TypeError, match="CapabilityResult"):
        C.capability_check(
            tiny_llama, steering, sets={"mine": ITEMS}, n=None, chat=False, baseline=base.summary()
        )
    assert seen == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sets": ["arithmetic", "chess"]}, sw.SteeringError, "no built-in capability set 'chess'"),
        ({"sets": []}, sw.SteeringError, "no capability sets"),
        ({"sets": 3}, TypeError, "list of set names"),
        ({"sets": {"mine": []}}, sw.SteeringError, "'mine' is empty"),
        ({"n": 0}, sw.SteeringError, "n must be"),
        ({"n": 2.5}, sw.SteeringError, "n must be"),
        ({"metric": "median"}, sw.SteeringError, "metric"),
        ({"batch_size": 0}, sw.SteeringError, "batch_size"),
        ({"steering": "layer 99"}, ValueError, "out of range"),
        ({"steering": "add"}, sw.SteeringError, "expected Steering objects"),
    ],
)
def test_bad_arguments_raise_before_model_work(tiny_llama, monkeypatch, kwargs, error, match):
    seen = _counting_scorer(monkeypatch)
    kwargs = dict(kwargs)
    vector = random_vector(tiny_llama)
    steerings = {"layer 99": sw.Steering(vector, layer=99), "add": "add"}
    steering = steerings.get(kwargs.pop("steering", None), sw.Steering(vector, layer=1))
    with pytest.raises(error, match=match):
        C.capability_check(tiny_llama, steering, **kwargs)
    assert seen == []


def test_one_set_name_is_accepted(tiny_llama):
    result = C.capability_check(tiny_llama, None, sets="factual", n=2)
    assert [r.name for r in result.sets] == ["factual"] and result["factual"].n == 2


# ----------------------------------------------------------------------------------------------
# The default model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_big_random(smol):
    """One batched call: every set's first 30 items, unsteered and under a big random steering
    (3 × the mean residual norm at layer 10)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    vector = sw.random_like(sw.mean_difference(smol, sw.builtin_pairs("sentiment"), layers=[10]), seed=3)
    steering = sw.Steering(vector, layer=10, strength=3.0, relative=True)
    return C.capability_check(smol, steering, n=30)


@pytest.mark.model
def test_default_model_is_above_chance(smol_big_random):
    above = [r.name for r in smol_big_random.sets if r.ci_base[0] > r.chance]
    # Measured at n=50 (README): every set's Wilson lower bound is above chance; factual 0.68 vs 0.33.
    assert "factual" in above or "arithmetic" in above, smol_big_random.summary()


@pytest.mark.model
def test_packed_choices_equal_separate_rows_on_the_default_model(smol, monkeypatch):
    """On SmolLM2 (chat template on) each prompt runs once for all candidates, with the numbers of one
    row per candidate."""
    from steerwidgets.engine import scoring

    items = [it for name in C.CAPABILITY_SETS for it in C.builtin_capability(name)[:2]]
    vector = sw.random_like(sw.mean_difference(smol, sw.builtin_pairs("sentiment")[:4], layers=[10]), seed=3)
    steering = sw.Steering(vector, layer=10, strength=4.0)
    calls: list[int] = []
    real = scoring._score_packed
    monkeypatch.setattr(
        scoring, "_score_packed", lambda m, rows, s: calls.append(len(rows)) or real(m, rows, s)
    )
    prompts, choices = [it.prompt for it in items], [list(it.choices) for it in items]
    got = sw.engine.score_choices(smol, prompts, choices, steering)
    assert sum(calls) == len(items)
    for item, per_choice in zip(items, got):
        want = sw.score(smol, [item.prompt] * len(item.choices), list(item.choices), steering)
        for g, w in zip(per_choice, want):
            assert torch.allclose(g, w, atol=1e-4), (item.prompt, g, w)


@pytest.mark.model
def test_big_random_steering_costs_capability(smol_big_random):
    result = smol_big_random
    assert any(r.verdict == "costs capability" for r in result.sets), result.summary()
    assert "costs capability" in result.verdict
    assert all(r.accuracy_steered <= r.accuracy_base for r in result.sets if r.verdict == "costs capability")
    assert math.isfinite(result.seconds)
