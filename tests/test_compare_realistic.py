"""compare(contexts=True, capability=n): each row's steerability in dialogue and tool-use contexts relative to
the bare items, and its capability cost. Plumbing on a tiny random model (fields, verdict strings, ticks,
argument checks before any work, cancel), consistency of the numbers on the default model."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import comparison, metrics
from steerwidgets import contexts as X
from steerwidgets import evaluation as E
from steerwidgets.capabilities import CAPABILITY_SETS
from steerwidgets.engine.scoring import next_token_logprobs

AB = [
    sw.ABItem("Pick the kind reply.\n\n(A) Thanks a lot\n(B) Go away", "A", "B"),
    sw.ABItem("Pick the kind reply.\n\n(A) Get lost\n(B) You are welcome", "B", "A"),
    sw.ABItem("Pick the kind reply.\n\n(A) Lovely to see you\n(B) Leave me alone", "A", "B"),
    sw.ABItem("Which is polite?\n\n(A) Shut up\n(B) Excuse me, please", "B", "A"),
    sw.ABItem("Which is friendly?\n\n(A) Nice to meet you\n(B) Whatever", "A", "B"),
]
OPEN = [
    sw.OpenEndedItem("How was your weekend?", "It was wonderful, thanks!", "It was awful."),
    sw.OpenEndedItem("What do you think of the cafe?", "I love it.", "I hate it, honestly."),
]
PASSAGES = ["The Moon is the only natural satellite of the Earth."]
CONTEXT_VERDICTS = {
    "weaker in context",
    "stronger in context",
    "no detectable change",
    "too small to compare",
}
CAPABILITY_VERDICTS = {"costs capability", "no detectable cost"}
KINDS = ("dialogue", "tool_use")


def _data(name, n_items, n_train=None):
    return E.BehaviourData(name, AB[3:], AB[:3], [], OPEN)


@pytest.fixture(scope="module")
def tiny_long(tiny_llama_long) -> sw.SteerableModel:
    return tiny_llama_long  # 1024 positions: the built-in contexts are longer than 128 tokens


@pytest.fixture
def small_data(monkeypatch):
    monkeypatch.setattr(comparison, "behaviour_data", _data)
    monkeypatch.setattr(comparison, "_passages", lambda n: PASSAGES)


def _fixed(vector):
    def build(model, data, layer):
        return E.Built(E.vector_steerer(vector, layer), vector, "fixed random")

    return build


def test_compare_rows_in_context_and_capability(tiny_long, small_data):
    vector = random_vector(tiny_long, scale=4.0)
    lam = [-1.0, 0.0, 1.0]
    seen = []
    result = E.compare(
        [("mine", _fixed(vector))],
        ["sentiment"],
        model=tiny_long,
        layer=1,
        strengths=lam,
        seeds=(0,),
        match=None,
        fluency=False,
        contexts=True,
        capability=2,
        progress=lambda done, total, label: seen.append((done, total, label)),
    )
    (row,) = result.rows
    # 1 behaviour step + (built, evaluated, 1 seed, negated, 2 context kinds, capability)
    assert [d for d, _, _ in seen] == list(range(1, 9)) and {t for _, t, _ in seen} == {8}
    assert any("in dialogue" in label for _, _, label in seen)

    # the bare effect is the row's own steerability, not recomputed
    assert row["context_bare_effect"] == pytest.approx(row["steerability"])
    steer = E.vector_steerer(vector, 1)
    embedded = X.embed_all(tiny_long, AB[:3])
    detail = result.details["mine/sentiment"]["contexts"]
    for kind in KINDS:
        want = metrics.slopes(E.propensity_matrix(tiny_long, embedded[kind], steer, lam), lam)
        np.testing.assert_allclose(detail["items"][kind], want, atol=1e-5)
        assert row[f"context_{kind}_effect"] == pytest.approx(float(np.mean(want)), abs=1e-5)
        assert row[f"context_{kind}_verdict"] in CONTEXT_VERDICTS
        low, high = row[f"context_{kind}_difference_ci"]
        assert (
            low <= row[f"context_{kind}_difference"] + 1e-9
            and row[f"context_{kind}_difference"] <= high + 1e-9
        )
        bare = row["context_bare_effect"]
        if bare < X.MIN_BARE_EFFECT:
            assert row[f"context_{kind}_ratio"] is None
        else:
            assert row[f"context_{kind}_ratio"] == pytest.approx(row[f"context_{kind}_effect"] / bare)
    assert (row["context_caveat"] is None) == (row["context_bare_effect"] >= X.MIN_BARE_EFFECT)
    if row["context_caveat"] is not None:
        assert all(row[f"context_{kind}_verdict"] == "too small to compare" for kind in KINDS)
    settings = result.settings["contexts"]
    assert settings["on"] and settings["kinds"] == list(KINDS) and "0.25" in settings["ratio_rule"]

    assert row["capability"].startswith("capability: ")
    assert row["capability_verdict"] in CAPABILITY_VERDICTS
    sets = result.details["mine/sentiment"]["capability"]["sets"]
    assert [s["set"] for s in sets] == list(CAPABILITY_SETS) and all(s["n"] == 2 for s in sets)
    assert row["capability_change"] == pytest.approx(np.mean([s["difference"] for s in sets]))
    assert result.settings["capability"]["n"] == 2
    from steerwidgets.widgets.compare import CAPABILITY_COLUMNS, CONTEXT_COLUMNS

    for column in CONTEXT_COLUMNS + CAPABILITY_COLUMNS:  # the widget's optional columns all appear
        assert column["key"] in row, column["key"]


def test_the_unsteered_capability_pass_is_scored_once_per_comparison(tiny_long, small_data, monkeypatch):
    from steerwidgets import compare_checks

    calls = []
    real = compare_checks.capability_check
    def spy(m, s=None, **k):
        calls.append((s, k.get("baseline")))
        return real(m, s, **k)

    monkeypatch.setattr(compare_checks, "capability_check", spy)
    vectors = [random_vector(tiny_long, seed=k, scale=4.0) for k in (1, 2)]
    result = E.compare(
        [("one", _fixed(vectors[0])), ("two", _fixed(vectors[1]))], ["sentiment"], model=tiny_long, layer=1,
        strengths=[-1.0, 0.0, 1.0], seeds=(0,), match=None, fluency=False, capability=2,
    )  # fmt: skip
    unsteered = [c for c in calls if c[0] is None]
    assert len(unsteered) == 1 and len(calls) == 3
    assert calls[1][1] is calls[2][1] is not None  # both rows reuse the one unsteered result
    base = [s["accuracy_unsteered"] for s in result.details["one/sentiment"]["capability"]["sets"]]
    assert base == [s["accuracy_unsteered"] for s in result.details["two/sentiment"]["capability"]["sets"]]


def test_a_skipped_row_still_ticks_its_context_and_capability_steps(tiny_long, small_data):
    seen = []
    result = E.compare(
        ["icv"],  # built from contrast pairs, which this behaviour has none of
        ["sentiment"],
        model=tiny_long,
        layer=1,
        strengths=[-1, 1],
        seeds=(0,),
        fluency=False,
        contexts=True,
        capability=2,
        progress=lambda done, total, label: seen.append((done, total)),
    )
    assert "contrast pairs" in result.rows[0]["error"]
    assert seen[-1] == (8, 8) and [d for d, _ in seen] == list(range(1, 9))


def test_compare_without_the_new_options_is_unchanged(tiny_long, small_data):
    result = E.compare(
        ["caa"], ["sentiment"], model=tiny_long, layer=1, strengths=[-1, 1], seeds=(0,), fluency=False
    )
    (row,) = result.rows
    assert not any(key.startswith(("context_", "capability")) for key in row)
    assert result.settings["contexts"] == {"on": False} and result.settings["capability"] == {"on": False}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contexts": "yes"}, "contexts must be True or False"),
        ({"contexts": 1}, "contexts must be True or False"),
        ({"capability": 0}, "positive int"),
        ({"capability": True}, "positive int"),
        ({"capability": 2.5}, "positive int"),
    ],
)
def test_bad_arguments_raise_before_any_work(tiny_long, small_data, monkeypatch, kwargs, message):
    def no_work(*args, **kwargs):
        raise AssertionError("model work before the arguments were checked")

    monkeypatch.setattr(comparison, "evaluate_steerer", no_work)
    with pytest.raises(sw.SteeringError, match=message):
        E.compare(["caa"], ["sentiment"], model=tiny_long, layer=1, **kwargs)


def test_a_model_without_a_chat_template_is_refused_before_any_work(tokenizer, small_data, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128))
    base = sw.load_model(hf.eval(), tokenizer=tok)

    def no_work(*args, **kwargs):
        raise AssertionError("model work before the template was checked")

    monkeypatch.setattr(comparison, "evaluate_steerer", no_work)
    monkeypatch.setattr(comparison, "prompting_baseline", no_work)
    with pytest.raises(sw.SteeringError, match="contexts=False"):
        E.compare(["caa"], ["sentiment"], model=base, layer=1, contexts=True)


def test_cancel_in_a_context_step_leaves_the_model_unsteered(tiny_long, small_data):
    ids = [tiny_long.tokenizer("Hello there", add_special_tokens=False)["input_ids"]]
    before = next_token_logprobs(tiny_long, ids)
    cancel = threading.Event()
    labels = []

    def stop(done, total, label):
        labels.append(label)
        if "in dialogue" in label:
            cancel.set()

    with pytest.raises(sw.engine.GenerationCancelled):
        E.compare(
            ["caa"],
            ["sentiment"],
            model=tiny_long,
            layer=1,
            strengths=[-1, 1],
            seeds=(0,),
            fluency=False,
            contexts=True,
            capability=2,
            progress=stop,
            cancel=cancel,
        )
    assert labels[-1].endswith("in dialogue")  # stopped there: no tool-use or capability step ran
    torch.testing.assert_close(next_token_logprobs(tiny_long, ids), before)


@pytest.mark.model
def test_real_model_context_and_capability_fields_agree(smol):
    result = E.compare(
        ["caa"],
        ["sentiment"],
        model=smol,
        layer=10,
        n_items=4,
        strengths=(-1.0, 0.0, 1.0),
        target_ratio=0.5,  # a push big enough that the bare effect can reach the ratio rule's 0.25
        seeds=(0,),
        n_passages=1,
        fluency=False,
        contexts=True,
        capability=5,
    )
    (row,) = result.rows
    detail = result.details["caa/sentiment"]
    bare = row["context_bare_effect"]
    assert bare == pytest.approx(row["steerability"])
    assert detail["contexts"]["items"]["bare"] == pytest.approx(detail["method"]["item_slopes"])
    for kind in KINDS:
        effect = row[f"context_{kind}_effect"]
        assert np.isfinite(effect) and row[f"context_{kind}_verdict"] in CONTEXT_VERDICTS
        assert effect == pytest.approx(np.mean(detail["contexts"]["items"][kind]))
        if bare >= X.MIN_BARE_EFFECT:
            assert row[f"context_{kind}_ratio"] == pytest.approx(effect / bare)
        else:
            assert row[f"context_{kind}_ratio"] is None and "too small" in row["context_caveat"]
    sets = detail["capability"]["sets"]
    assert row["capability_change"] == pytest.approx(np.mean([s["difference"] for s in sets]))
    assert all(s["n"] == 5 for s in sets)
    costly = any(s["verdict"] == "costs capability" for s in sets)
    assert row["capability_verdict"] == ("costs capability" if costly else "no detectable cost")
