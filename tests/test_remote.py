"""Remote models (NDIF), checked offline: every engine entry point's trace goes through nnsight's remote
request path (serialised, deserialised with steerwidgets not importable, only saved values returned) and gives
the local numbers; what cannot run remotely is refused up front. No test talks to NDIF or any network."""

from __future__ import annotations

import pickle
import socket
import threading

import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import engine, methods, remote
from steerwidgets.remote import REMOTE_SUPPORT, remote_notice, require_local, simulate_remote


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a remote check tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def model(tiny_llama) -> sw.SteerableModel:
    return tiny_llama


@pytest.fixture(scope="module")
def vector(model) -> sw.SteeringVector:
    return random_vector(model)


def _same(local, far) -> None:
    if isinstance(local, torch.Tensor):
        assert torch.allclose(local, far, atol=1e-6), (local, far)
    elif isinstance(local, dict):
        assert local.keys() == far.keys()
        for key in local:
            _same(local[key], far[key])
    elif isinstance(local, (list, tuple)):
        assert len(local) == len(far)
        for a, b in zip(local, far):
            _same(a, b)
    elif isinstance(local, float):
        assert local == pytest.approx(far, abs=1e-6, nan_ok=True)
    else:
        assert local == far


def _remote_run(model, fn):
    with simulate_remote(model) as log:
        far = fn()
    assert log.requests, "no trace went through the remote path"
    assert all(r.payload_bytes > 0 and r.returned for r in log.requests)
    return far, log


ITEMS = sw.builtin_ab("sentiment")[:3]


def _entry_points(model, vector):
    steering = sw.Steering(vector, layer=1, strength=2.0)
    ids = [model.tokenizer("Hello world")["input_ids"], model.tokenizer("The cat sat down")["input_ids"]]
    icl = [
        ([("hot", "cold"), ("big", "small")], "up", "down"),
        ([("wet", "dry"), ("up", "down")], "hot", "cold"),
    ]
    return {
        "score": lambda: sw.score(model, ["Hi", "Yo"], [" there", " you"], steering),
        "next_token_logprobs": lambda: engine.next_token_logprobs(model, ids, [steering]),
        "read_activations": lambda: engine.read_activations(model, ids, [1, 2]),
        "read_activations_all": lambda: engine.read_activations(model, ids, [2], position="all"),
        "caa": lambda: sw.caa(model, ITEMS, [1, 2]).directions,
        "sweep_letter": lambda: sw.propensity_sweep(model, ITEMS, vector, [1, 2], null_directions=0).summary(
            1
        ),
        "sweep_answer_text": lambda: sw.propensity_sweep(
            model, ITEMS, vector, [1], protocol="answer_text", null_directions=0
        ).summary(1),
        "sweep_sampled_null": lambda: sw.propensity_sweep(
            model, ITEMS, vector, [1], null_directions=4, null_method="sampled"
        ).summary(1),
        "function_vector": lambda: (
            methods.function_vector(model, icl, [1], top_k=2, apply_layer=1).directions
        ),
    }


ENTRY_POINTS = [
    "score",
    "next_token_logprobs",
    "read_activations",
    "read_activations_all",
    "caa",
    "sweep_letter",
    "sweep_answer_text",
    "sweep_sampled_null",
    "function_vector",
]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_serialises_and_returns_the_local_numbers(model, vector, name):
    fn = _entry_points(model, vector)[name]
    local = fn()
    far, log = _remote_run(model, fn)
    _same(local, far)
    assert not model.remote  # the dry run restores the model


def test_generate_returns_the_local_continuations_without_the_norm_ratio(model, vector):
    steering = sw.Steering(vector, layer=1, strength=2.0)
    local = sw.generate(model, ["Hi", "The cat"], steering, max_new_tokens=4)
    far, log = _remote_run(model, lambda: sw.generate(model, ["Hi", "The cat"], steering, max_new_tokens=4))
    assert len(log.requests) == 2  # base and steered
    for a, b in ((local.base, far.base), (local.steered, far.steered)):
        assert a.texts == b.texts and a.token_ids == b.token_ids
        _same(a.token_logprobs, b.token_logprobs)
        assert torch.allclose(a.first_logprobs, b.first_logprobs)
    assert local.steered.norm_ratio == local.steered.norm_ratio  # a number locally
    assert far.steered.norm_ratio != far.steered.norm_ratio  # nan remotely, as REMOTE_SUPPORT says
    assert "nan" in REMOTE_SUPPORT["generate"]


def test_the_gradient_null_falls_back_to_the_sampled_null(model, vector):
    args = (model, ITEMS, vector, [1])
    sampled = sw.propensity_sweep(*args, null_directions=4, null_method="sampled").summary(1)
    far, _ = _remote_run(model, lambda: sw.propensity_sweep(*args, null_directions=4).summary(1))
    assert far["null"]["method"].startswith("sampled")
    _same(sampled, far)
    assert REMOTE_SUPPORT["gradient null"].startswith("falls back")


@pytest.mark.parametrize("kwargs", [{"on_token": lambda *a: None}, {"cancel": threading.Event()}])
def test_token_streaming_is_refused_before_any_work(model, vector, kwargs):
    steering = sw.Steering(vector, layer=1, strength=2.0)
    with simulate_remote(model) as log, pytest.raises(sw.SteeringError) as err:
        sw.generate(model, "Hi", steering, max_new_tokens=2, **kwargs)
    assert not log.requests
    assert "token streaming" in str(err.value) and "needs local weights" in str(err.value)
    sw.generate(model, "Hi", steering, max_new_tokens=2, **kwargs)  # locally it runs


def test_require_local_and_the_playground_notice(model):
    needs = [f for f, entry in REMOTE_SUPPORT.items() if entry.startswith(remote.NEEDS_LOCAL)]
    assert {"token streaming", "playground"} <= set(needs)
    for entry in REMOTE_SUPPORT.values():
        assert entry.startswith((remote.WORKS, remote.NEEDS_LOCAL, remote.FALLS_BACK))
    for feature in REMOTE_SUPPORT:
        require_local(model, feature)  # a local model may do everything
    assert remote_notice(model) is None
    with simulate_remote(model):
        for feature in needs:
            with pytest.raises(sw.SteeringError, match=f"{feature}.*needs local weights"):
                require_local(model, feature)
        require_local(model, "score")
        notice = remote_notice(model)
        assert notice.startswith("needs local weights: ") and "\n" not in notice
        assert remote_notice(model, "score") == "score works remotely (NDIF): works"
    with pytest.raises(KeyError, match="known"):
        require_local(model, "no such feature")


def test_a_model_pickles_without_its_lock_and_tokenizer(model):
    copy = pickle.loads(pickle.dumps(sw.SteerableModel(**{**model.__dict__, "nn": None})))
    assert copy.tokenizer is None and copy.name == model.name
    with copy.lock:  # a fresh lock
        pass


def test_remote_load_ships_steerwidgets_by_value():
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    remote.ship_steerwidgets_by_value()
    assert "steerwidgets" in _PICKLE_BY_VALUE_MODULES


def test_remote_needs_a_hub_id():
    with pytest.raises(ValueError, match="NDIF"):
        sw.load_model(remote=True)


def test_the_docs_say_what_remote_support_says():
    """The "Remote models (NDIF)" table, on whichever page (README.md or docs/*.md) holds it."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sections = []
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^(#+) Remote models \(NDIF\)[ \t]*$", text, re.M):
            rest = text[match.end() :]
            end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
            sections.append((page.relative_to(root), rest[: end.start()] if end else rest))
    found = [str(p) for p, _ in sections]
    assert len(sections) == 1, f"one 'Remote models (NDIF)' section expected, found it in {found}"
    page, section = sections[0]
    rows = [line.lower() for line in section.splitlines() if line.startswith("| ")]
    for feature, entry in REMOTE_SUPPORT.items():
        status = next(s for s in (remote.WORKS, remote.FALLS_BACK, remote.NEEDS_LOCAL) if entry.startswith(s))
        row = next((r for r in rows if feature.replace("_", "") in r.split(" | ")[0].replace("_", "")), None)
        assert row is not None, f"the remote table in {page} has no row for {feature!r}"
        assert row.split(" | ")[1].startswith(status), (feature, row)
