"""The engine's side of the verdicts: the random-direction null (first-order and sampled), the answer-text
protocol, the option swap and CAA read in both letter orders — each against a plain computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.data import ABItem, split_options, swap_options
from steerwidgets.engine.sweep import null_directions_for
from steerwidgets.prompts import ab_prompt, tokenize_prompt

ITEMS = [
    ABItem("Pick one.\n\nChoices:\n(A) yes please\n(B) no thanks", "A", "B"),
    ABItem("Choose wisely.\n\nChoices:\n(A) up the hill\n(B) down", "B", "A"),
    ABItem("Which is it?\n\nChoices:\n(A) left\n(B) right side", "A", "B"),
    ABItem("No options listed here, just (A) or (B) inline.", "A", "B"),
]
LAMS = [-1.0, 0.0, 1.0]


def test_split_and_swap_options():
    opts = split_options(ITEMS[1].question)
    assert (opts.stem, opts.a, opts.b, opts.header) == (
        "Choose wisely.",
        "up the hill",
        "down",
        "\n\nChoices:",
    )
    swapped = swap_options(ITEMS[1])
    assert swapped.question == "Choose wisely.\n\nChoices:\n(A) down\n(B) up the hill"
    assert (swapped.matching, swapped.not_matching) == ("A", "B")  # "down" matched before and still does
    assert swap_options(swapped) == ITEMS[1]
    assert split_options(ITEMS[3].question) is None and swap_options(ITEMS[3]) is None


def test_sampled_null_rows_equal_separate_sweeps_of_each_direction(tiny_llama):
    vec = random_vector(tiny_llama, scale=2.0)
    result = sw.propensity_sweep(
        tiny_llama, ITEMS, vec, [1, 2], LAMS, null_directions=3, null_method="sampled", positions="all"
    )
    dirs = null_directions_for(vec, [1, 2], 3)
    for layer in (1, 2):
        assert torch.allclose(dirs[layer].norm(dim=-1), vec[layer].norm().expand(3))
        for k in range(3):
            rnd = sw.SteeringVector({layer: dirs[layer][k]}, model_id=tiny_llama.name, method="r")
            alone = sw.propensity_sweep(tiny_llama, ITEMS, rnd, [layer], [-1.0, 1.0], positions="all")
            expected = (alone.propensity[layer][:, 1] - alone.propensity[layer][:, 0]) / 2.0
            np.testing.assert_allclose(result.null_slopes(layer)[k], expected, atol=1e-4)


@pytest.mark.parametrize("protocol", ["letter", "answer_text"])
def test_first_order_null_matches_sampled_slopes_where_the_response_is_linear(tiny_llama, protocol):
    # a small vector keeps the response linear in λ (the tiny model's residual norm is ~0.2), so ∇·r must
    # equal the two-point slope of r
    vec = random_vector(tiny_llama, scale=1e-3)
    common = dict(protocol=protocol, null_directions=5)
    grad = sw.propensity_sweep(tiny_llama, ITEMS, vec, [0, 2], LAMS, null_method="gradient", **common)
    sampled = sw.propensity_sweep(tiny_llama, ITEMS, vec, [0, 2], LAMS, null_method="sampled", **common)
    for layer in (0, 2):
        a, b = grad.null_slopes(layer), sampled.null_slopes(layer)
        assert np.abs(b).max() > 1e-4  # the directions do move the propensity
        np.testing.assert_allclose(a, b, rtol=0.02, atol=np.abs(b).max() * 1e-3)
        # and the vector's own OLS slope agrees with its first-order slope in this regime
        np.testing.assert_allclose(grad.propensity[layer], sampled.propensity[layer], atol=1e-6)


def test_relative_strengths_scale_the_null_like_the_vector(tiny_llama):
    vec = random_vector(tiny_llama, scale=1e-3)
    kw = dict(null_directions=4, positions="last")
    grad = sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], [-0.01, 0.0, 0.01], relative=True, **kw)
    sampled = sw.propensity_sweep(
        tiny_llama, ITEMS, vec, [1], [-0.01, 0.0, 0.01], relative=True, null_method="sampled", **kw
    )
    np.testing.assert_allclose(grad.null_slopes(1), sampled.null_slopes(1), rtol=0.03, atol=1e-5)


def test_answer_text_protocol_is_the_per_token_mean_log_prob_difference(tiny_llama):
    vec = random_vector(tiny_llama, scale=2.0)
    result = sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], LAMS, protocol="answer_text")
    assert result.positions == "continuation" and result.item_index == [0, 1, 2]  # item 3 has no options
    for row, item in enumerate(ITEMS[:3]):
        opts = split_options(item.question)
        for k, lam in enumerate(LAMS):
            steering = sw.Steering(vec, 1, lam, positions="continuation")
            pos, neg = sw.score(
                tiny_llama,
                [opts.stem] * 2,
                [opts.text(item.matching), opts.text(item.not_matching)],
                steering,
            )
            expected = float(pos.mean() - neg.mean())
            assert result.propensity[1][row, k] == pytest.approx(expected, abs=1e-4)
    assert result.summary(1)["per_example"][2]["index"] == 2
    with pytest.raises(sw.SteeringError, match="answer-text protocol has nothing to score"):
        sw.propensity_sweep(tiny_llama, ITEMS[3:], vec, [1], LAMS, protocol="answer_text")


def test_option_swap_reads_the_relabelled_item_unsteered(tiny_llama):
    vec = random_vector(tiny_llama)
    result = sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], LAMS, null_directions=4)
    assert np.isnan(result.swapped_propensity[3])  # no options to swap
    for i in range(3):
        swapped = swap_options(ITEMS[i])
        ids, y_pos, y_neg = ab_prompt(tiny_llama, swapped)
        with torch.no_grad():
            logits = tiny_llama.hf(torch.tensor([ids])).logits[0, -1]
        assert result.swapped_propensity[i] == pytest.approx(float(logits[y_pos] - logits[y_neg]), abs=1e-4)
        assert result.unsteered[i] == pytest.approx(result.propensity[1][i, 1], abs=1e-5)  # λ = 0
    same = np.sign(result.unsteered[:3]) == np.sign(result.swapped_propensity[:3])
    assert result.option_dependence() == pytest.approx(same.mean())
    summary = result.summary(1)
    assert summary["verdict"] in sw.verdicts.VERDICTS and summary["null"]["n_directions"] == 4
    assert sum(summary["item_classes"].values()) == len(ITEMS)


def test_caa_in_both_letter_orders_cancels_the_letter(tiny_llama):
    items = ITEMS[:3]
    both = sw.caa(tiny_llama, items, [1, 2])
    given = sw.caa(tiny_llama, items, [1, 2], swap_options=False)
    flipped = sw.caa(tiny_llama, [swap_options(item) for item in items], [1, 2], swap_options=False)
    assert both.meta["swap_options"] is True and given.meta["swap_options"] is False
    for layer in (1, 2):
        assert torch.allclose(both[layer], (given[layer] + flipped[layer]) / 2, atol=1e-5)
    # an item without listed options: automatic mode falls back to the items as given; True insists
    assert sw.caa(tiny_llama, ITEMS, [1]).meta["swap_options"] is False
    with pytest.raises(sw.SteeringError, match="swap_options=False"):
        sw.caa(tiny_llama, ITEMS, [1], swap_options=True)


def test_null_arguments_are_checked_before_any_work(tiny_llama):
    vec = random_vector(tiny_llama)
    with pytest.raises(sw.SteeringError, match="null_directions must be an int"):
        sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], LAMS, null_directions=-1)
    with pytest.raises(sw.SteeringError, match="unknown null_method"):
        sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], LAMS, null_directions=2, null_method="exact")
    with pytest.raises(sw.SteeringError, match="unknown protocol"):
        sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], LAMS, protocol="letters")
    no_null = sw.propensity_sweep(tiny_llama, ITEMS[:1], vec, [1], LAMS, null_directions=0)
    assert no_null.verdict(1).verdict == "cannot_judge" and "null_directions" in no_null.verdict(1).reason
    ids, _ = tokenize_prompt(tiny_llama, "x")  # the model is untouched by all of the above
    assert ids


@pytest.mark.model
def test_first_order_null_agrees_with_sampled_directions_on_the_default_model(smol):
    """The default null (∇·r from one backward pass) against running the same random directions at the
    grid's end strengths, on SmolLM2 with a real CAA vector at Tan et al.'s strengths: per item, the two
    nulls' spreads and the slopes themselves must agree (measured: spread ratio 0.999–1.010, correlation
    1.000)."""
    items = sw.builtin_ab("sentiment")
    vec = sw.caa(smol, items[:20], [12])
    common = dict(null_directions=16, option_swap=False)
    grad = sw.propensity_sweep(smol, items[40:46], vec, [12], **common)
    sampled = sw.propensity_sweep(smol, items[40:46], vec, [12], null_method="sampled", **common)
    g, s = grad.null_slopes(12), sampled.null_slopes(12)
    assert np.abs(s).max() > 1e-3  # random directions do move these items
    np.testing.assert_allclose(g.std(0) / s.std(0), 1.0, atol=0.05)
    assert np.corrcoef(g.ravel(), s.ravel())[0, 1] > 0.99
