"""Bad input gets a clear error that names the fix, and nothing is left behind."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.data import ABItem
from steerwidgets.prompts import tokenize_prompt

ITEM = ABItem("Pick.\n(A) x\n(B) y", "A", "B")


def _cases(tmp_path, model):
    vec = random_vector(model)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(
        '[{"question": "q", "answer_matching_behavior": "(C)", "answer_not_matching_behavior": "(A)"}]'
    )
    pickled = tmp_path / "vector.pt"
    pickled.write_bytes(pickle.dumps({"layer.0": torch.ones(model.d_model)}))
    long_prompt = "word " * 200
    return {
        "layer out of range": (lambda: sw.generate(model, "Hi", sw.Steering(vec, 99, 1.0)), "0..3"),
        "negative layer": (lambda: sw.generate(model, "Hi", sw.Steering(vec, -1, 1.0)), "0..3"),
        "NaN strength": (
            lambda: sw.generate(model, "Hi", sw.Steering(vec, 1, float("nan"))),
            "finite",
        ),
        "inf strength": (
            lambda: sw.score(model, "Hi", " x", sw.Steering(vec, 1, float("inf"))),
            "finite",
        ),
        "empty prompt": (lambda: sw.generate(model, "   ", None), "prompt is empty"),
        "prompt longer than context": (
            lambda: sw.generate(model, long_prompt, None),
            "reads at most",
        ),
        "wrong vector size": (
            lambda: sw.generate(model, "Hi", sw.Steering(torch.ones(5), 1)),
            "d_model",
        ),
        "unknown position spec": (
            lambda: sw.generate(model, "Hi", sw.Steering(vec, 1, 1.0, positions="middle")),
            "unknown position spec",
        ),
        "position out of range": (
            lambda: sw.score(model, "Hi", " x", sw.Steering(vec, 1, 1.0, positions=[50])),
            "outside the sequence",
        ),
        "malformed dataset file": (lambda: sw.load_ab_items(bad_json), "answer_matching_behavior"),
        "pickle file as vector": (lambda: sw.SteeringVector.load(pickled), "safetensors"),
        "zero max_new_tokens": (
            lambda: sw.generate(model, "Hi", None, max_new_tokens=0),
            "max_new_tokens",
        ),
        "mismatched prompts/completions": (
            lambda: sw.score(model, ["a", "b"], ["x"]),
            "one of each",
        ),
        "empty completion": (lambda: sw.score(model, "Hi", ""), "completion is empty"),
        "one strength only": (
            lambda: sw.propensity_sweep(model, [ITEM], vec, [1], [1.0]),
            "at least two strengths",
        ),
        "no A/B items": (lambda: sw.propensity_sweep(model, [], vec, [1]), "no A/B items"),
        "sweep steering nothing": (
            lambda: sw.propensity_sweep(model, [ITEM], vec, [1], [0, 1], positions="generated"),
            "selects no prompt token",
        ),
        "vector lacks layer": (
            lambda: sw.generate(model, "Hi", sw.Steering(sw.SteeringVector({0: torch.ones(32)}), 2)),
            "has layers [0]",
        ),
        "non-numeric strength": (
            lambda: sw.generate(model, "Hi", sw.Steering(vec, 1, "strong")),
            "number",
        ),
        "actadd with wrong positions": (
            lambda: sw.generate(
                model,
                "Hi",
                sw.Steering(sw.actadd(model, "Love", "Hate", 1), 1, 1.0, positions="last"),
            ),
            "front",
        ),
    }


CASE_NAMES = [
    "layer out of range",
    "negative layer",
    "NaN strength",
    "inf strength",
    "empty prompt",
    "prompt longer than context",
    "wrong vector size",
    "unknown position spec",
    "position out of range",
    "malformed dataset file",
    "pickle file as vector",
    "zero max_new_tokens",
    "mismatched prompts/completions",
    "empty completion",
    "one strength only",
    "no A/B items",
    "sweep steering nothing",
    "vector lacks layer",
    "non-numeric strength",
    "actadd with wrong positions",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_clear_error_and_clean_model(name, tmp_path, tiny_llama):
    ids = torch.tensor([tokenize_prompt(tiny_llama, "Hello world", chat=False)[0]])
    with torch.no_grad():
        before = tiny_llama.hf(ids).logits
    call, expected = _cases(tmp_path, tiny_llama)[name]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert expected in str(info.value), str(info.value)
    with torch.no_grad():
        assert torch.equal(tiny_llama.hf(ids).logits, before)


def test_dataset_error_names_item_and_field(tmp_path):
    path = tmp_path / "items.json"
    path.write_text(
        json.dumps(
            [
                {
                    "question": "ok",
                    "answer_matching_behavior": "(A)",
                    "answer_not_matching_behavior": "(B)",
                },
                {"question": "missing field", "answer_matching_behavior": "(A)"},
            ]
        )
    )
    with pytest.raises(sw.DatasetError) as info:
        sw.load_ab_items(path)
    assert "1" in str(info.value) and "answer_not_matching_behavior" in str(info.value)
