"""Conditional steering (CAST): decision logic and F1 by hand, the grid search on constructed
similarities, condition vectors and similarities against a hand-written computation on a tiny model,
per-group generation, and on the default model a condition found on training prompts that separates
held-out prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import conditional as K
from steerwidgets.engine.activations import read_activations
from steerwidgets.prompts import tokenize_prompt

POS = ["Can I sue my landlord?", "Is a verbal contract legal?", "How do I appeal a fine?"]
NEG = ["How do I bake bread?", "Why is the sky blue?", "Tips for running?"]


# ----------------------------------------------------------------------------------------------
# By hand
# ----------------------------------------------------------------------------------------------
def test_condition_met_and_description():
    sims = np.array([0.1, 0.3, 0.5])
    assert K.condition_met(sims, 0.3, "larger").tolist() == [False, False, True]
    assert K.condition_met(sims, 0.3, "smaller").tolist() == [True, False, False]
    assert K.describe_decision(0.4213, 0.3, "larger") == (
        "condition met (similarity 0.42 vs threshold 0.30, met when >)"
    )
    assert K.describe_decision(0.4213, 0.3, "smaller").startswith("condition not met (similarity 0.42")
    with pytest.raises(sw.SteeringError, match="direction"):
        K.condition_met(sims, 0.0, "above")


def test_f1_by_hand():
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 2/3
    p, r, f = K.f1_score([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert (p, r, f) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert K.f1_score([0, 0], [1, 0]) == (0.0, 0.0, 0.0)
    assert K.f1_score([1, 1], [1, 1]) == (1.0, 1.0, 1.0)


def test_search_thresholds_on_constructed_similarities():
    labels = [1, 1, 1, 0, 0, 0]
    sims = {
        0: np.array([0.2, -0.1, 0.3, 0.25, 0.0, 0.1]),  # mixed
        3: np.array([-0.5, -0.4, -0.3, 0.2, 0.3, 0.4]),  # separable, positives *smaller*
    }
    best = K.search_thresholds(sims, labels)
    assert (best.layer, best.direction, best.f1) == (3, "smaller", 1.0)
    assert -0.3 < best.threshold < 0.2
    assert best.precision == 1.0 and best.recall == 1.0 and best.n == 6
    assert {row["layer"] for row in best.table} == {0, 3}
    json.dumps(best.summary())
    assert best.summary()["best_f1_per_layer"]["3"] == 1.0 and best.summary()["best_f1_per_layer"]["0"] < 1.0
    assert "layer 3" in best.verdict
    # A fixed grid is honoured.
    fixed = K.search_thresholds(sims, labels, thresholds=[0.0], directions=["larger"])
    assert {row["threshold"] for row in fixed.table} == {0.0} and fixed.direction == "larger"


def test_builtin_condition_set():
    data = K.builtin_condition("legal")
    assert len(data.positive) == len(data.negative) == 50
    assert not set(data.positive) & set(data.negative)
    train, test = data.split(25)
    assert len(train.prompts) == 50 and len(test.prompts) == 50 and not set(train.prompts) & set(test.prompts)
    assert train.labels.tolist() == [1] * 25 + [0] * 25
    with pytest.raises(sw.DatasetError):
        K.builtin_condition("medical")
    with pytest.raises(sw.DatasetError):
        data.split(50)


# ----------------------------------------------------------------------------------------------
# Tiny model
# ----------------------------------------------------------------------------------------------
def _pooled_by_hand(model, prompts, layer):
    out = []
    for p in prompts:
        ids, start = tokenize_prompt(model, p)
        h = read_activations(model, [ids], [layer], position="all")[layer][0, : len(ids)]
        out.append(h[max(start, 1) :].mean(0))
    return torch.stack(out)


def test_condition_vector_and_similarity_by_hand(tiny_llama):
    cond = K.condition_vector(tiny_llama, POS, NEG, [1, 2])
    pos, neg = _pooled_by_hand(tiny_llama, POS, 2), _pooled_by_hand(tiny_llama, NEG, 2)
    want = pos.mean(0) - neg.mean(0)
    torch.testing.assert_close(cond.directions[2], want / want.norm(), atol=1e-5, rtol=1e-4)
    centre = torch.cat([pos, neg]).mean(0)
    torch.testing.assert_close(cond.centres[2], centre, atol=1e-5, rtol=1e-4)
    sims = K.condition_similarity(tiny_llama, POS + NEG, cond, 2)
    h = torch.cat([pos, neg]) - centre
    by_hand = (h @ (want / want.norm())) / h.norm(dim=1)
    np.testing.assert_allclose(sims, by_hand.numpy(), atol=1e-4)
    both = K.condition_similarity(tiny_llama, POS + NEG, cond, [1, 2])
    np.testing.assert_allclose(both[2], sims, atol=1e-6)
    # The mean difference separates its own training prompts on average.
    assert sims[:3].mean() > sims[3:].mean()
    pca = K.condition_vector(tiny_llama, POS, NEG, 2, method="pca")
    assert float(pca.directions[2] @ want) > 0 and float(pca.directions[2].norm()) == pytest.approx(1.0)
    with pytest.raises(sw.SteeringError, match="no layer"):
        K.condition_similarity(tiny_llama, POS, cond, 3)
    with pytest.raises(sw.SteeringError, match="method"):
        K.condition_vector(tiny_llama, POS, NEG, 2, method="ica")


def test_grid_search_and_decisions(tiny_llama):
    cond = K.condition_vector(tiny_llama, POS, NEG, [1, 2])
    labels = [1, 1, 1, 0, 0, 0]
    best = K.grid_search(tiny_llama, cond, POS + NEG, labels)
    sims = K.condition_similarity(tiny_llama, POS + NEG, cond, [1, 2])
    assert best == K.search_thresholds(sims, labels)
    behaviour = sw.Steering(random_vector(tiny_llama), layer=1, strength=4.0)
    cs = best.steering(cond, behaviour)
    assert (
        cs.decide(tiny_llama, POS + NEG).tolist()
        == K.condition_met(sims[best.layer], best.threshold, best.direction).tolist()
    )
    scores = K.evaluate_condition(tiny_llama, cs, POS + NEG, labels)
    assert scores["f1"] == pytest.approx(best.f1)
    with pytest.raises(sw.SteeringError, match="labels"):
        K.grid_search(tiny_llama, cond, POS, [1, 2, 0])
    with pytest.raises(sw.SteeringError, match="no layer"):
        K.ConditionalSteering(cond, 3, 0.0, "larger", behaviour)


def test_conditional_generate_steers_only_met_prompts(tiny_llama):
    cond = K.condition_vector(tiny_llama, POS, NEG, [2])
    prompts = [POS[0], NEG[0]]
    sims = K.condition_similarity(tiny_llama, prompts, cond, 2)
    threshold = float(sims.mean())  # exactly one of the two is above
    behaviour = sw.Steering(random_vector(tiny_llama, scale=20.0), layer=1, strength=4.0)
    cs = K.ConditionalSteering(cond, 2, threshold, "larger", behaviour)
    out = K.conditional_generate(tiny_llama, prompts, cs, max_new_tokens=6)
    met_index = int(np.argmax(sims))
    assert out.met == tuple(i == met_index for i in range(2))
    steered = sw.generate(tiny_llama, prompts[met_index], behaviour, max_new_tokens=6)
    plain = sw.generate(tiny_llama, prompts[1 - met_index], None, max_new_tokens=6)
    assert out.texts[met_index] == steered.steered.text
    assert out.unsteered_texts[met_index] == steered.base.text
    assert out.texts[1 - met_index] == plain.base.text
    assert out.texts[met_index] != out.unsteered_texts[met_index]
    assert out.lines[met_index].startswith("condition met") and out.lines[1 - met_index].startswith(
        "condition not"
    )
    summary = out.summary()
    json.dumps(summary)
    assert summary["n_steered"] == 1 and out.verdict.startswith("Behaviour steering applied to 1 of 2")


# ----------------------------------------------------------------------------------------------
# Default model
# ----------------------------------------------------------------------------------------------
@pytest.mark.model
def test_cast_condition_generalises_to_held_out_prompts(smol):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = K.builtin_condition("legal")
    train, test = data.split(25)
    layers = list(range(2, smol.n_layers, 3))
    cond = K.condition_vector(smol, train.positive, train.negative, layers)
    best = K.grid_search(smol, cond, train.prompts, train.labels)
    behaviour = sw.Steering(torch.zeros(smol.d_model), layer=best.layer)
    held_out = K.evaluate_condition(smol, best.steering(cond, behaviour), test.prompts, test.labels)
    # Flagging every prompt gives F1 = 2/3 and accuracy 1/2 on this balanced set.
    assert held_out["f1"] >= 0.85 and held_out["accuracy"] >= 0.85, (best.summary(), held_out)
