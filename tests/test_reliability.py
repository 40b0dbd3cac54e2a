"""Pre-checks, layer sweeps and the generalisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerwidgets as sw
import steerwidgets.metrics
from helpers import random_vector
from steerwidgets import reliability
from steerwidgets.data import ABItem

ITEMS = [
    ABItem("Pick one.\n(A) yes\n(B) no", "A", "B"),
    ABItem("Choose wisely.\n(A) up\n(B) down", "B", "A"),
    ABItem("Which is it?\n(A) left\n(B) right", "A", "B"),
]


def test_precheck_by_hand():
    # differences (1,0), (1,0), (0,1): pairwise cosines 1, 0, 0 → mean 1/3
    neg = torch.zeros(3, 2)
    pos = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    check = reliability.precheck(5, pos, neg)
    assert check.mean_cosine == pytest.approx(1 / 3)
    assert check.separation == pytest.approx(1.0)  # every pair projects positively on (2,1)/√5
    assert check.level == "green"
    flipped = reliability.precheck(5, torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]]), neg)
    assert flipped.mean_cosine < 0.1
    assert flipped.level == "red"


def test_precheck_flags_the_answer_letter_confound_by_hand():
    # d_i = ±(letter direction e1) + small behaviour part 0.1·e2, the sign set by the matching letter
    groups = [True, False, True, False]
    diffs = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [1.0, 0.1], [-1.0, 0.1]])
    check = reliability.precheck(3, diffs, torch.zeros(4, 2), groups)
    # group means (1, 0.1) and (−1, 0.1): cosine (−1 + 0.01) / 1.01
    assert check.group_cosine == pytest.approx(-0.99 / 1.01)
    # v = (0, 0.1); every ‖d_i‖ = √1.01
    assert check.mean_to_single == pytest.approx(0.1 / 1.01**0.5)
    assert check.level == "red" and "answer letter dominates" in check.reason
    # letter part ½‖m_A − m_B‖ = ‖(1, 0)‖ = 1, behaviour part ½‖m_A + m_B‖ = ‖(0, 0.1)‖ = 0.1
    assert check.letter_norm == pytest.approx(1.0) and check.behaviour_norm == pytest.approx(0.1)
    # the same questions read in both letter orders (second half = options swapped): per question the
    # letter cancels, every averaged difference is (0, 0.1), consistency is perfect
    swapped = torch.tensor(
        [[1.0, 0.1], [-1.0, 0.1], [-1.0, 0.1], [1.0, 0.1]]
    )  # q0, q1, q0 swapped, q1 swapped
    both = reliability.precheck(3, swapped, torch.zeros(4, 2), [True, False, False, True], both_orders=True)
    assert both.mean_cosine == pytest.approx(1.0) and both.mean_to_single == pytest.approx(1.0)
    assert both.letter_norm == pytest.approx(1.0) and "answer letter dominates" not in both.reason
    # the same behaviour part without the letter flip: no confound reported
    clean = reliability.precheck(
        3, torch.tensor([[0.2, 1.0], [0.1, 1.0], [0.3, 1.0], [0.2, 0.9]]), torch.zeros(4, 2), groups
    )
    assert clean.group_cosine > 0.9 and "answer letter dominates" not in clean.reason
    with pytest.raises(sw.SteeringError, match="one per pair"):
        reliability.precheck(3, diffs, torch.zeros(4, 2), groups[:3])


def test_suggest_layer_prefers_reliable_layers():
    layer, reason = reliability.suggest_layer([3, 4, 5], [2.0, 1.0, 3.0], [0.5, 0.0, 0.1], [0.1, 0.1, 5.0])
    assert layer == 4  # 3 backfires too often, 5 damages neutral prompts
    assert "layer 4" in reason
    none, why = reliability.suggest_layer([3], [-1.0], [0.9], [0.0])
    assert none is None and "unreliable" in why


def test_layer_sweep_on_tiny_model(tiny_llama):
    vec = random_vector(tiny_llama)
    seen = []
    result = reliability.layer_sweep(
        tiny_llama,
        ITEMS,
        vec,
        [0, 2],
        [-1.0, 0.0, 1.0],
        progress=lambda d, t: seen.append((d, t)),
        neutral_prompts=["Hello there", "The sky is"],
    )
    assert len(result.steerability) == 2 and len(result.kl[0]) == 3
    assert result.kl[0][1] == pytest.approx(0.0, abs=1e-9)  # λ = 0 is the unsteered model
    assert all(k >= -1e-9 for row in result.kl for k in row)
    expected = [
        sw.metrics.steerability(result.propensity.propensity[layer], [-1.0, 0.0, 1.0]) for layer in (0, 2)
    ]
    assert result.steerability == pytest.approx(expected)
    assert seen[-1] == (5, 5)
    assert np.isfinite(result.to_json()["anti_steerable_fraction"]).all()


def test_shift_items_prepends_prefix():
    shifted = reliability.shift_items(ITEMS, "You love agreeing. ")
    assert shifted[0].question.startswith("You love agreeing. Pick one.")
    assert shifted[1].matching == "B"


def test_report_html_is_standalone_and_escaped(tiny_llama, tmp_path):
    from steerwidgets import report as rep

    evil = ABItem("<script>alert(1)</script> Which?\n(A) x\n(B) y", "A", "B")
    vec = random_vector(tiny_llama)
    result = sw.propensity_sweep(tiny_llama, ITEMS + [evil], vec, [1], [-1.0, 0.0, 1.0])
    sweep = reliability.layer_sweep(tiny_llama, ITEMS, vec, [0, 1], [-1.0, 1.0], neutral_prompts=["Hi"])
    data = rep.build_report(result, 1, sweep=sweep, model_name="tiny", vector_method="random-test")
    page = rep.to_html(data)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<svg" in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page.replace(
        "https://vega.github.io", ""
    )
    html_path = rep.save(data, tmp_path / "r.html")
    json_path = rep.save(data, tmp_path / "r.json")
    assert html_path.read_text().startswith("<!doctype html>")
    import json

    loaded = json.loads(json_path.read_text())
    assert loaded["anti_steerable_fraction"] == data["anti_steerable_fraction"]
    assert [ex["index"] for ex in loaded["anti_steerable_items"]] == sorted(
        (ex["index"] for ex in data["per_example"] if ex["anti_steerable"]),
        key=lambda i: data["per_example"][i]["slope"],
    )


@pytest.mark.parametrize("swap", [None, False])
def test_prechecks_read_the_items_as_caa_does(tiny_llama, swap):
    """``prechecks`` is ``precheck`` on the activations ``caa`` reads (both letter orders by default)."""
    read, swapped = sw.methods.both_orders(ITEMS, swap)
    assert len(read) == (2 if swap is None else 1) * len(ITEMS) and swapped == (swap is None)
    acts = sw.methods.ab_activations(tiny_llama, read, [1, 2])
    letters = [item.matching == "A" for item in read]
    got = reliability.prechecks(tiny_llama, ITEMS, [1, 2], swap_options=swap)
    vector = sw.caa(tiny_llama, ITEMS, [1, 2], swap_options=swap)
    for layer, (pos, neg) in acts.items():
        assert got[layer] == reliability.precheck(layer, pos, neg, letters, swapped)
        assert torch.allclose(vector[layer], (pos - neg).mean(0), atol=1e-6)


@pytest.mark.model
def test_precheck_and_verdicts_on_the_builtin_sets(smol):
    """Braun et al. (2025): consistent training differences predict steerability. On SmolLM2 the built-in
    A/B sets give no spread to correlate over. Read as given, the answer-letter flip dominates the CAA
    differences at every layer (mean cosine ≈ −1/(n−1): they cancel), so every pre-check is red. Read in
    both letter orders, the letter part ½‖m_A − m_B‖ is still far larger than the behaviour part, but it
    cancels per question, so the differences agree more. And whatever the vector, the letter protocol
    cannot judge on this model: swapping the options' texts flips its unsteered preference on most items.
    A green given-order pre-check, a small letter part, or a model that reads the options fails this test."""
    layers = [8, 14, 20]
    anti = []
    for name in ("sentiment", "formality", "sycophancy"):
        items = sw.builtin_ab(name)
        train, test = items[:40], items[40:]
        # One read in both letter orders serves all three (the given order is its first half, in the
        # same batches): the pre-checks as given and in both orders, and the given-order CAA vector.
        read, swapped = sw.methods.both_orders(train)
        acts = sw.methods.ab_activations(smol, read, layers)
        letters = [item.matching == "A" for item in read]
        n = len(train)
        given = {k: reliability.precheck(k, p[:n], q[:n], letters[:n]) for k, (p, q) in acts.items()}
        both = {k: reliability.precheck(k, p, q, letters, swapped) for k, (p, q) in acts.items()}
        vector = sw.SteeringVector({k: (p[:n] - q[:n]).mean(0) for k, (p, q) in acts.items()}, smol.name)
        if name == "sentiment":  # ... as the public functions read them
            public = sw.caa(smol, train, layers, swap_options=False)
            assert all(torch.allclose(public[k], vector[k], atol=1e-5) for k in layers)
        sweep = sw.propensity_sweep(
            smol, test, vector, layers, (-1.0, -0.5, 0.0, 0.5, 1.0), relative=True, null_directions=50
        )
        assert sweep.positions == "last"  # Tan et al. / CAA: the letter is read from the last prompt token
        for layer in layers:
            check = given[layer]
            assert check.level == "red", (name, layer, check)
            assert abs(check.mean_cosine + 1 / (len(train) - 1)) < 0.02, (name, layer, check.mean_cosine)
            # ... because the two letter groups' differences point opposite ways, and the report says so
            assert check.group_cosine < -0.9 and "answer letter dominates" in check.reason
            anti.append(float(steerwidgets.metrics.anti_steerable(sweep.slopes(layer)).mean()))
            deconfounded = both[layer]
            assert deconfounded.both_orders and deconfounded.letter_norm > 5 * deconfounded.behaviour_norm
            assert deconfounded.mean_cosine > check.mean_cosine + 0.05, (name, layer, deconfounded)
            verdict = sweep.verdict(layer)
            assert verdict.verdict == "cannot_judge", (name, layer, verdict.reason)
        assert sweep.option_dependence() < 0.5, (name, sweep.option_dependence())
    assert 0.3 <= float(np.mean(anti)) <= 0.7, anti  # Tan et al.'s raw fraction would cry "warning"
