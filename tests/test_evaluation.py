"""Open-ended likelihood shift, side effects, baselines and compare(): formulas by hand, plumbing on tiny
models, and finite, reproducible numbers on the default model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import compare_methods, comparison, metrics, reliability
from steerwidgets import evaluation as E
from steerwidgets.interventions import AffineMap

AB = [
    sw.ABItem("Pick the kind reply.\n\n(A) Thanks a lot\n(B) Go away", "A", "B"),
    sw.ABItem("Pick the kind reply.\n\n(A) Get lost\n(B) You are welcome", "B", "A"),
    sw.ABItem("Pick the kind reply.\n\n(A) Lovely to see you\n(B) Leave me alone", "A", "B"),
    sw.ABItem("Which is polite?\n\n(A) Shut up\n(B) Excuse me, please", "B", "A"),
]
OPEN = [
    sw.OpenEndedItem("How was your weekend?", "It was wonderful, thanks!", "It was awful."),
    sw.OpenEndedItem("What do you think of the cafe?", "I love it.", "I hate it, honestly."),
    sw.OpenEndedItem("How did the exam go?", "Really well!", "Terribly."),
    sw.OpenEndedItem("Tell me about your job.", "It is great fun.", "It is boring and sad."),
]
PAIRS = [
    sw.ContrastPair("I love this, it is wonderful.", "I hate this, it is awful."),
    sw.ContrastPair("What a great day.", "What a terrible day."),
    sw.ContrastPair("The food was delicious.", "The food was disgusting."),
]
PASSAGES = [
    "The Moon is the only natural satellite of the Earth.",
    "Water boils at one hundred degrees Celsius at sea level.",
]
STRENGTHS = np.array([-1.0, 0.0, 1.0])


# --- formulas by hand ----------------------------------------------------------------------------
def test_likelihood_shift_table_by_hand():
    base = E.OpenEndedScores(
        sum_pos=np.array([-10.0, -2.0, -6.0, -4.0]),
        sum_neg=np.array([-1.0, -8.0, -3.0, -5.0]),
        mean_pos=np.array([-2.0, -0.5, -1.5, -1.0]),
        mean_neg=np.array([-0.5, -2.0, -1.0, -1.5]),
    )
    steered = E.OpenEndedScores(
        sum_pos=base.sum_pos + np.array([1.0, 2.0, 3.0, 4.0]),
        sum_neg=base.sum_neg - np.array([4.0, 3.0, 2.0, 1.0]),
        mean_pos=base.mean_pos + np.array([0.1, 0.2, 0.3, 0.4]),
        mean_neg=base.mean_neg - np.array([0.4, 0.3, 0.2, 0.1]),
    )
    table = E.likelihood_shift_table(base, steered)
    assert table["primary"] == "mean" and table["n_items"] == 4
    assert set(table["mean"]) == {"25", "50", "75", "100"}
    # top 50 % of positives = the two least likely under the base (mean): items 0 (−2) and 2 (−1.5)
    assert table["mean"]["50"]["delta_pos"] == pytest.approx((0.1 + 0.3) / 2)
    # top 50 % of negatives = the two most likely: items 0 (−0.5) and 2 (−1.0)
    assert table["mean"]["50"]["delta_neg"] == pytest.approx((0.4 + 0.2) / 2)
    # sum: least likely positives are 0 (−10) and 2 (−6); most likely negatives 0 (−1) and 2 (−3)
    assert table["sum"]["50"]["delta_pos"] == pytest.approx((1.0 + 3.0) / 2)
    assert table["sum"]["25"]["delta_neg"] == pytest.approx(4.0)
    assert table["mean"]["100"]["delta_pos"] == pytest.approx(0.25)


def test_usable_range_by_hand():
    out = E.usable_range([1.0, -1.0, 0.0, -0.5, 0.5], [11.0, 12.0, 1.0, 3.0, 8.0])
    assert out["usable_strengths"] == [-0.5, 0.0, 0.5]
    assert out["range"] == [-0.5, 0.5]
    assert E.usable_range([-1, 0, 1], [1.0, 10.0, 1.0])["range"] is None  # not even λ = 0 (ratio ≥ 10)
    gap = E.usable_range([-2, -1, 0, 1], [2.0, 20.0, 1.0, 2.0])
    assert gap["range"] == [0.0, 1.0] and gap["usable_strengths"] == [-2.0, 0.0, 1.0]


def test_pne_follows_von_ruette():
    # effect gain over λ = 0 divided by the perplexity ratio
    assert metrics.perplexity_normalised_effect(np.array([3.0]), 1.0, np.array([4.0])).tolist() == [0.5]


# --- plumbing on tiny models ---------------------------------------------------------------------
def test_next_token_logprobs_left_padding_is_exact(tiny):
    tok = tiny.tokenizer
    short = tok("Hi", add_special_tokens=False)["input_ids"]
    long = tok("A much longer sentence about the weather", add_special_tokens=False)["input_ids"]
    vec = random_vector(tiny)
    steer = [sw.Steering(vec, 1, 0.5)]
    alone = sw.engine.next_token_logprobs(tiny, [short], steer)
    batched = sw.engine.next_token_logprobs(tiny, [long, short], steer)
    assert torch.allclose(alone[0], batched[1], atol=1e-4)
    with torch.no_grad():
        plain = tiny.hf(torch.tensor([long])).logits[0, -1].float().log_softmax(-1)
    assert torch.allclose(sw.engine.next_token_logprobs(tiny, [long, short])[0], plain, atol=1e-4)


def test_general_propensities_match_propensity_sweep(tiny_llama):
    vec = random_vector(tiny_llama, scale=2.0)
    sweep = sw.propensity_sweep(tiny_llama, AB, vec, [2], STRENGTHS, positions="all").propensity[2]
    general = E.ab_propensities(tiny_llama, AB, E.vector_steerer(vec, 2), STRENGTHS)
    assert np.allclose(general, sweep, atol=1e-4)
    # the fast path is taken for single-layer additive steerers, also when negated
    assert E.sweepable(E.vector_steerer(vec, 2), STRENGTHS) is not None
    negated = E.propensity_matrix(tiny_llama, AB, E.negated(E.vector_steerer(vec, 2)), STRENGTHS)
    assert np.allclose(negated, sweep[:, ::-1], atol=1e-4)
    assert E.sweepable(E.vector_steerer(vec, 2, operator="add_norm_preserving"), STRENGTHS) is None


def test_open_ended_loglik_is_the_engine_score(tiny_llama):
    vec = random_vector(tiny_llama)
    steer = [sw.Steering(vec, 1, 1.0)]
    got = E.open_ended_loglik(tiny_llama, OPEN[:2], steer)
    lp = sw.score(tiny_llama, OPEN[1].query, OPEN[1].negative, steer)[0].double()
    assert got.sum_neg[1] == pytest.approx(float(lp.sum()), rel=1e-6)
    assert got.mean_neg[1] == pytest.approx(float(lp.mean()), rel=1e-6)
    prefixed = E.open_ended_loglik(tiny_llama, OPEN[:1], prefix="Be nice.\n\n")
    lp = sw.score(tiny_llama, "Be nice.\n\n" + OPEN[0].query, OPEN[0].positive)[0].double()
    assert prefixed.sum_pos[0] == pytest.approx(float(lp.sum()), rel=1e-6)


def test_side_effects_zero_vector_and_cross_check(tiny_llama):
    zero = E.zero_steerer([1], tiny_llama.d_model)
    ratio, base_ppl = E.perplexity_ratio(tiny_llama, zero, [0.0, 1.0], PASSAGES)
    assert ratio.tolist() == [1.0, 1.0]
    lps = E.passage_logprobs(tiny_llama, PASSAGES)
    assert base_ppl == pytest.approx(metrics.perplexity([t.numpy() for t in lps]))
    assert np.allclose(E.kl_on_neutral(tiny_llama, zero, [1.0]), 0.0, atol=1e-9)
    vec = random_vector(tiny_llama, scale=2.0)
    mine = E.kl_on_neutral(tiny_llama, E.vector_steerer(vec, 2), STRENGTHS)
    theirs = reliability.kl_side_effects(tiny_llama, vec, [2], STRENGTHS)[0]
    assert np.allclose(mine, theirs, atol=1e-4)
    assert mine[1] == pytest.approx(0.0, abs=1e-9) and mine[0] > 0


def test_random_steerer_matches_norms_and_operator(tiny_llama):
    vec = random_vector(tiny_llama, scale=2.0)
    icv_like = E.vector_steerer(vec, [1, 2], operator="add_norm_preserving")
    rnd = E.random_steerer(icv_like, seed=3)(0.5)
    assert [(s.layer, s.operator, s.strength) for s in rnd] == [
        (1, "add_norm_preserving", 0.5),
        (2, "add_norm_preserving", 0.5),
    ]
    for s in rnd:
        assert float(s.direction().norm()) == pytest.approx(float(vec[s.layer].norm()), rel=1e-5)
    amap = AffineMap(
        torch.eye(tiny_llama.d_model), torch.zeros(tiny_llama.d_model), torch.ones(tiny_llama.d_model)
    )
    rnd = E.random_steerer(E.affine_steerer(amap, 2), seed=0)(1.0)
    assert rnd[0].operator == "add"
    assert float(rnd[0].direction().norm()) == pytest.approx(float(amap.shift.norm()), rel=1e-5)
    assert not torch.equal(
        E.random_steerer(icv_like, 0)(1.0)[0].direction(), E.random_steerer(icv_like, 1)(1.0)[0].direction()
    )


def _ctx(model, **kwargs):
    return E.EvalContext(
        model, AB, OPEN, PASSAGES, STRENGTHS, 1.0, neutral_prompts=("Say hi.", "Count to three."), **kwargs
    )


def test_evaluate_with_baselines_on_tiny_model(tiny_llama):
    ctx = _ctx(tiny_llama)
    vec = random_vector(tiny_llama, scale=2.0)
    ticks = []
    result = E.with_baselines(
        ctx, E.vector_steerer(vec, 2), seeds=(0, 1), instruction="Be kind.", tick=ticks.append
    )
    assert ticks == ["evaluated", "random seed 0", "random seed 1", "negated"]
    main = result["method"]
    assert len(main["ppl_ratio"]) == len(STRENGTHS) and main["ppl_ratio"][1] == pytest.approx(1.0)
    assert main["usable"]["limit"] == 10.0 and main["pne_effect"].startswith("mean A/B propensity")
    # negated = the same vector at −λ: steerability flips sign exactly
    assert result["negated"]["steerability"] == pytest.approx(-main["steerability"], abs=1e-5)
    zero = result["zero"]
    assert zero["steerability"] == 0.0 and zero["kl"] == [0.0]
    assert zero["likelihood_shift"]["mean"]["50"] == {"delta_pos": 0.0, "delta_neg": 0.0}
    prompting = result["prompting"]
    prompted = E.ab_propensities(tiny_llama, AB, None, [0.0], prefix="Be kind.\n\n")[:, 0]
    assert prompting["delta_propensity"] == pytest.approx(prompted.mean() - ctx.base_propensity.mean())
    row = E.summary_row(result)
    for key in (
        "steerability",
        "delta_pos_50",
        "random_delta_pos_50_min",
        "random_kl_max",
        "negated_steerability",
        "zero_delta_pos_50",
        "prompting_delta_neg_50",
        "pne",
        "usable_range",
    ):
        assert key in row
    assert row["random_delta_pos_50_min"] <= row["random_delta_pos_50_mean"] <= row["random_delta_pos_50_max"]


def _tiny_data(name, n_items, n_train=None):
    return E.BehaviourData(name, AB[2:], AB[:2], PAIRS, OPEN[:2])


def test_compare_table_progress_and_cancel(tiny_llama, monkeypatch):
    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    seen = []
    result = E.compare(
        ["caa", "icv", "affine"],
        ["sentiment"],
        model=tiny_llama,
        layer=2,
        strengths=[-1.0, 0.0, 1.0],
        seeds=(0,),
        progress=lambda done, total, label: seen.append((done, total)),
    )
    assert [row["method"] for row in result.rows] == ["caa", "icv", "affine"]
    assert "every token" in result.rows[2]["note"]  # affine is fitted on the pairs' tokens
    assert seen[-1][0] == seen[-1][1] == 1 + 3 * 4
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    for row in result.rows:
        assert row["zero_delta_pos_50"] == 0.0 and row["zero_steerability"] == 0.0
        assert row["prompting_delta_pos_50"] is not None and row["open_strength"] == 1.0
        assert all(np.isfinite(row[k]) for k in ("steerability", "delta_pos_50", "ppl_ratio", "kl"))
    assert result.settings["reduction"] == "per-token mean log-likelihood"
    assert result.to_json()["details"]["affine/sentiment"]["method"]["likelihood_shift"]["primary"] == "mean"
    spec = sw.charts.compare_chart(result.rows, "delta_pos_50")
    from steerwidgets.charts import to_svg

    assert "<svg" in to_svg(spec)

    cancel = threading.Event()

    def stop(done, total, label):
        cancel.set()

    with pytest.raises(sw.engine.GenerationCancelled):
        E.compare(
            ["caa"],
            ["sentiment"],
            model=tiny_llama,
            layer=2,
            strengths=[-1, 1],
            seeds=(0,),
            progress=stop,
            cancel=cancel,
        )
    with pytest.raises(sw.SteeringError, match="unknown method"):
        E.compare(["nope"], model=tiny_llama, layer=2)


def test_compare_accepts_a_custom_method(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    vec = random_vector(tiny_gpt2)

    def build(model, data, layer):
        return E.Built(E.vector_steerer(vec, layer), vec, "fixed random")

    result = E.compare(
        [("mine", build)], ["formality"], model=tiny_gpt2, layer=1, strengths=[-1, 0, 1], seeds=(0, 1)
    )
    row = result.rows[0]
    assert row["method"] == "mine" and row["note"] == "fixed random"
    assert result.settings["instructions"] == {"formality": E.DEFAULT_INSTRUCTIONS["formality"]}


def test_compare_on_your_own_behaviour_data(tiny_gpt2, monkeypatch):
    """Not a built-in name: the user's items, pairs and instruction go straight in, checked first."""
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    mine = E.BehaviourData("kindness", AB[2:], AB[:2], PAIRS, OPEN[:2], instruction="Be very kind.")
    result = E.compare(["caa"], [mine], model=tiny_gpt2, layer=1, strengths=[-1, 0, 1], seeds=(0,))
    (row,) = result.rows
    assert row["behaviour"] == "kindness" and np.isfinite(row["steerability"])
    assert np.isfinite(row["prompting_delta_pos_50"])
    assert result.settings["instructions"] == {"kindness": "Be very kind."}
    leaky = E.BehaviourData("kindness", AB, AB[:2], PAIRS, OPEN[:2])
    with pytest.raises(sw.SteeringError, match="hold them out"):
        E.compare(["caa"], [leaky], model=tiny_gpt2, layer=1, strengths=[-1, 1], seeds=(0,))
    with pytest.raises(sw.SteeringError, match="open-ended"):
        E.compare(["caa"], [E.BehaviourData("x", AB[2:], AB[:2])], model=tiny_gpt2, layer=1)


def test_compare_reports_a_method_it_cannot_build(tiny_gpt2, monkeypatch):
    data = lambda name, n, t=None: E.BehaviourData(name, AB[2:], AB[:2], [], OPEN[:2])  # noqa: E731
    monkeypatch.setattr(comparison, "behaviour_data", data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    seen = []
    result = E.compare(
        ["icv", "caa"],
        ["sycophancy"],
        model=tiny_gpt2,
        layer=1,
        strengths=[-1, 1],
        seeds=(0,),
        progress=lambda done, total, label: seen.append((done, total)),
    )
    skipped, built = result.rows
    assert "contrast pairs" in skipped["error"] and "steerability" not in skipped
    assert "error" not in built and np.isfinite(built["steerability"])
    assert seen[-1] == (1 + 2 * 4, 1 + 2 * 4)


# --- the real model ------------------------------------------------------------------------------
@pytest.mark.model
def test_prompting_baseline_and_steering_on_the_default_model(smol):
    ctx = E.EvalContext(
        smol, AB[:2], OPEN[:2], PASSAGES[:1], np.array([-1.0, 0.0, 1.0]), 1.0, neutral_prompts=("Say hi.",)
    )
    first = E.prompting_baseline(ctx, E.DEFAULT_INSTRUCTIONS["sentiment"])
    again = E.prompting_baseline(ctx, E.DEFAULT_INSTRUCTIONS["sentiment"])
    assert first == again
    shift = first["likelihood_shift"]["mean"]["100"]
    assert np.isfinite([shift["delta_pos"], shift["delta_neg"], first["delta_propensity"]]).all()
    vec = sw.caa(smol, AB, [12])
    one = E.evaluate_steerer(ctx, E.vector_steerer(vec), full=True)
    assert (
        np.isfinite(one["ppl_ratio"]).all()
        and np.isfinite(one["kl"]).all()
        and np.isfinite(one["steerability"])
    )
    assert one["ppl_ratio"][1] == pytest.approx(1.0) and one["kl"][1] == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(one["pne"]).all() and one["usable"]["range"] is not None
    # reproducible: the same steering gives the same numbers (the open-ended and A/B parts again)
    again = E.open_ended_loglik(smol, OPEN[:2], E.vector_steerer(vec)(1.0))
    table = E.likelihood_shift_table(ctx.base_open, again)
    assert table == one["likelihood_shift"]
    m = E.propensity_matrix(smol, AB[:2], E.vector_steerer(vec), [-1.0, 0.0, 1.0])
    assert np.allclose(m.mean(0), one["mean_propensity"], atol=1e-6)


# --- fair comparison: matched intervention size, fluency column ----------------------------------
def test_steering_norm_ratio_by_hand():
    vec = sw.SteeringVector({1: torch.tensor([3.0, 4.0]), 2: torch.tensor([0.0, 1.0])})
    norms = {1: 20.0, 2: 4.0}
    assert E.steering_norm_ratio([sw.Steering(vec, 1, -2.0)], norms) == pytest.approx(0.5)  # 2·5/20
    both = [sw.Steering(vec, 1, 2.0), sw.Steering(vec, 2, 2.0, operator="add_norm_preserving")]
    assert E.steering_norm_ratio(both, norms) == pytest.approx(0.5 + 0.5)  # summed over layers
    assert E.steering_norm_ratio([sw.Steering(vec, 1, 0.3, relative=True)], norms) == pytest.approx(0.3)
    assert E.scaled(E.vector_steerer(vec, 1), 2.5)(2.0)[0].strength == 5.0


def test_residual_norms_skip_the_first_token(tiny_llama):
    prompts = ("Say hi.", "Name a colour.")
    norms = E.residual_norms(tiny_llama, [1], prompts)
    seqs = E.neutral_ids(tiny_llama, prompts)
    acts = sw.engine.read_activations(tiny_llama, seqs, [1], position="all")[1]
    expected = np.mean([float(acts[i, 1 : len(s)].norm(dim=-1).mean()) for i, s in enumerate(seqs)])
    assert norms[1] == pytest.approx(expected, rel=1e-6)


def test_compare_matches_the_norm_ratio_of_every_method(tiny_llama, monkeypatch):
    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    monkeypatch.setattr(compare_methods, "generic_corpus", lambda: PASSAGES)
    result = E.compare(
        ["caa", "pca", "mean_centring", "icv", "affine"],
        ["sentiment"],
        model=tiny_llama,
        layer=2,
        strengths=[-1.0, 0.0, 1.0],
        seeds=(0,),
        fluency_queries=2,
        fluency_tokens=6,
    )
    ratios = [row["norm_ratio"] for row in result.rows]
    target = result.settings["match_targets"]["sentiment"]["norm_ratio"]
    assert result.rows[0]["strength_scale"] == pytest.approx(1.0)  # CAA is the reference
    assert ratios == pytest.approx([target] * 5, abs=1e-3)
    assert len({round(row["strength_scale"], 6) for row in result.rows}) > 1  # sizes differed before
    for row in result.rows:
        assert np.isfinite(row["kl"]) and row["match"] == "norm"
        assert row["fluency"].endswith(("degraded", ")")) and "/2 degraded" in row["fluency"]
        assert 0.0 <= row["fluency_degraded_fraction"] <= 1.0 and row["fluency_reason"]
    verdicts = result.details["caa/sentiment"]["fluency"]["verdicts"]
    assert len(verdicts) == 2 and {"degraded", "reason", "text"} <= set(verdicts[0])
    assert result.settings["fluency"]["max_drop"] == 2.0


def test_compare_given_ratio_and_no_matching(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    common = dict(model=tiny_gpt2, layer=1, strengths=[-1.0, 1.0], seeds=(0,), fluency=False)
    given = E.compare(["caa", "pca"], ["sentiment"], target_ratio=0.05, **common)
    assert [row["norm_ratio"] for row in given.rows] == pytest.approx([0.05, 0.05], abs=1e-6)
    raw = E.compare(["caa", "pca"], ["sentiment"], match=None, **common)
    assert [row["strength_scale"] for row in raw.rows] == [1.0, 1.0] and "fluency" not in raw.rows[0]
    with pytest.raises(sw.SteeringError, match="match"):
        E.compare(["caa"], ["sentiment"], match="size", **common)


def test_compare_matches_kl(tiny_llama, monkeypatch):
    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    # on this random model CAA read in both letter orders cancels to ~0 (KL ~1e-8), so mean_difference
    # stands in for it
    result = E.compare(
        ["mean_difference", "pca"],
        ["sentiment"],
        model=tiny_llama,
        layer=2,
        strengths=[-1.0, 1.0],
        seeds=(0,),
        match="kl",
        target_kl=0.01,
        fluency=False,
    )
    target = result.settings["match_targets"]["sentiment"]["kl"]
    assert target == 0.01
    caa, pca = result.rows
    assert caa["kl"] == pytest.approx(target, rel=0.05) and pca["kl"] == pytest.approx(target, rel=0.05)


def test_kl_matched_scale_brackets_and_bisects(tiny_llama):
    ctx = E.EvalContext(tiny_llama, AB[:2], OPEN[:2], PASSAGES[:1], np.array([1.0]), 1.0)
    steer = E.vector_steerer(random_vector(tiny_llama), [1])
    want = float(E.kl_on_neutral(tiny_llama, steer, [3.0], base=ctx.base_neutral)[0])
    factor, kl = E.kl_matched_scale(ctx, steer, 1.0, want, start=0.5, max_evals=20, tol=0.01)
    # KL need not be monotone in the strength (here KL(4) ≈ KL(3)): the KL is what is matched
    assert kl == pytest.approx(want, rel=0.01) and factor > 0.5


def test_compare_accepts_a_stack_beside_single_vectors(tiny_gpt2, monkeypatch):
    """A list of Steerings is one row, labelled by its parts; its numbers are the stack's own."""
    from dataclasses import replace

    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES[:1])
    a, b = random_vector(tiny_gpt2, seed=1), random_vector(tiny_gpt2, seed=2)
    stack = [sw.Steering(a, 0, 2.0), sw.Steering(b, 2, -1.0, positions="all")]
    lam = [-1.0, 0.0, 1.0]
    common = dict(model=tiny_gpt2, layer=1, strengths=lam, seeds=(0,), fluency=False)
    result = E.compare(["caa", stack, ("just b", stack[1])], ["sentiment"], match=None, **common)
    caa, row, single = result.rows
    assert row["method"] == "random-test@0 + random-test@2" and single["method"] == "just b"
    assert row["layer"] == "0, 2" and single["layer"] == 2 and caa["layer"] == 1
    assert [p["strength"] for p in row["stack"]] == [2.0, -1.0]
    items = _tiny_data("sentiment", 0).test_items
    m = E.ab_propensities(
        tiny_gpt2, items, lambda x: [replace(s, strength=x * s.strength) for s in stack], lam
    )
    assert row["steerability"] == pytest.approx(float(sw.metrics.slopes(m, np.array(lam)).mean()), abs=1e-5)
    assert "No random-direction null" in row["ab_verdict_reason"]  # several steerings
    assert "answer_text_positions" in single  # one additive vector: the fast sweep, with its null
    assert len(row["norm_ratio_parts"]) == 2 and len(caa["norm_ratio_parts"]) == 1
    assert row["norm_ratio"] == pytest.approx(sum(row["norm_ratio_parts"]))
    # matched: the whole stack is scaled to CAA's size, and the parts keep their proportion
    matched = E.compare(["caa", stack], ["sentiment"], **common)
    target = matched.settings["match_targets"]["sentiment"]["norm_ratio"]
    parts = matched.rows[1]["norm_ratio_parts"]
    assert matched.rows[1]["norm_ratio"] == pytest.approx(target, rel=1e-4)
    assert parts[0] / parts[1] == pytest.approx(row["norm_ratio_parts"][0] / row["norm_ratio_parts"][1])
    with pytest.raises(sw.SteeringError, match=r"methods\[1\] \(bad\): steering \[0\]"):
        E.compare(["caa", ("bad", [sw.Steering(a, 0, float("nan"))])], ["sentiment"], **common)
    with pytest.raises(sw.SteeringError, match=r"methods\[0\] is 3"):
        E.compare([3], ["sentiment"], **common)
