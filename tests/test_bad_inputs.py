"""A careless user's inputs: each public entry point checks its inputs before any work and raises an error
that names the problem and the fix, and the model is left exactly unsteered afterwards.

tests/test_errors.py covers layers, strengths, prompt length, vector sizes and dataset files; this module
covers the rest of issue 10: position specs that select nothing, types (prompts, strengths, seeds, models),
sampling parameters, crafted vector files, model folders and offline hub ids, CLI output paths and over-long
items, widget constructors, and steering isolated per thread and per asyncio task.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import sys
import threading
import time

import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import cli, models
from steerwidgets.engine.scoring import next_token_logprobs
from steerwidgets.interventions import active_steerings
from steerwidgets.prompts import tokenize_prompt
from steerwidgets.vectors import VectorError

ITEMS = sw.builtin_ab("sentiment")[:2]
PROMPT = "The weather today is"


def _logits(model: sw.SteerableModel) -> torch.Tensor:
    ids = torch.tensor([tokenize_prompt(model, "Hello world", chat=False)[0]])
    with torch.no_grad():
        return model.hf(ids).logits


# ----------------------------------------------------------------------------------------------
# Engine and steering entry points
# ----------------------------------------------------------------------------------------------
def _engine_cases(model: sw.SteerableModel) -> dict:
    vec = random_vector(model)

    def steer(positions):
        return sw.Steering(vec, 1, 4.0, positions=positions)

    def gen(*args, **kwargs):
        kwargs.setdefault("max_new_tokens", 2)
        return sw.generate(model, *args, **kwargs)

    return {
        # position specs that select nothing (they used to steer nothing and report a ratio)
        "slice 5:2": (lambda: gen("Hi", steer(slice(5, 2))), sw.SteeringError, "stop > start"),
        "string 5:2": (lambda: gen("Hi", steer("5:2")), sw.SteeringError, "stop > start"),
        "string :0": (lambda: sw.score(model, "Hi", " x", steer(":0")), sw.SteeringError, "selects no"),
        "negative 5:2": (lambda: gen("Hi", steer("-2:-5")), sw.SteeringError, "stop > start"),
        "empty for this prompt": (
            lambda: sw.score(model, "Hi there", " x", steer(slice(2, -1)), chat=False),
            sw.SteeringError,
            "pick indices inside the prompt",
        ),
        "slice with step": (lambda: gen("Hi", steer(slice(0, 4, 2))), sw.SteeringError, "step 1"),
        "slice of floats": (lambda: gen("Hi", steer(slice(0.5, 2))), sw.SteeringError, "take ints"),
        # types
        "None prompt": (lambda: gen(None), TypeError, "str or a list of str"),
        "bytes prompt": (lambda: gen(b"Hi"), TypeError, "str or a list of str"),
        "None in prompt list": (lambda: gen(["Hi", None]), TypeError, "prompt[1] must be a str"),
        "empty prompt list": (lambda: gen([]), sw.SteeringError, "non-empty list"),
        "None completion": (lambda: sw.score(model, "Hi", None), TypeError, "completions must be"),
        "seed as str": (lambda: gen("Hi", seed="1"), TypeError, "seed must be a non-negative int"),
        "negative seed": (lambda: gen("Hi", seed=-1), TypeError, "seed must be a non-negative int"),
        "float seed": (lambda: gen("Hi", seed=1.5), TypeError, "seed=0"),
        "do_sample as str": (lambda: gen("Hi", do_sample="yes"), TypeError, "True or False"),
        "scalar strengths": (
            lambda: sw.propensity_sweep(model, ITEMS, vec, [1], 1.0),
            TypeError,
            "e.g. [-1, 0, 1]",
        ),
        "strengths as str": (
            lambda: sw.propensity_sweep(model, ITEMS, vec, [1], "-1,1"),
            TypeError,
            "list of numbers",
        ),
        "dicts as items": (
            lambda: sw.propensity_sweep(model, [{"question": "q"}], vec, [1]),
            TypeError,
            "load_ab_items",
        ),
        "tensor as vector": (
            lambda: sw.propensity_sweep(model, ITEMS, vec[1], [1]),
            TypeError,
            "SteeringVector",
        ),
        "vector instead of Steering": (lambda: gen("Hi", vec), sw.SteeringError, "Steering objects"),
        "raw transformers model": (lambda: sw.generate(model.hf, "Hi"), TypeError, "sw.load_model(hf_model"),
        "model name instead of model": (
            lambda: sw.score("default", "Hi", " x"),
            TypeError,
            "sw.load_model('default')",
        ),
        "raw model to steered": (
            lambda: sw.steered(model.hf, steer("all")).__enter__(),
            TypeError,
            "sw.load_model(hf_model",
        ),
        "raw model to sweep": (
            lambda: sw.propensity_sweep(model.hf, ITEMS, vec, [1]),
            TypeError,
            "SteerableModel",
        ),
        "raw model to caa": (lambda: sw.caa(model.hf, ITEMS, [1]), TypeError, "sw.load_model(hf_model"),
        "None as ActAdd phrase": (lambda: sw.actadd(model, None, "Hate", 1), TypeError, "'Love', 'Hate'"),
        "raw model to compare": (
            lambda: sw.compare(["caa"], model=model.hf, layer=1),
            TypeError,
            "sw.load_model(hf_model",
        ),
        "empty token sequences": (
            lambda: next_token_logprobs(model, [[]]),
            sw.SteeringError,
            "non-empty list of token ids",
        ),
        # sampling parameters
        "top_p above 1": (lambda: gen("Hi", do_sample=True, top_p=1.5), sw.SteeringError, "(0, 1]"),
        "top_p zero": (lambda: gen("Hi", do_sample=True, top_p=0.0), sw.SteeringError, "use 1.0"),
        "top_p NaN": (lambda: gen("Hi", top_p=float("nan")), sw.SteeringError, "finite number"),
        "zero temperature": (
            lambda: gen("Hi", do_sample=True, temperature=0.0),
            sw.SteeringError,
            "e.g. 0.7",
        ),
    }


ENGINE_CASES = [
    "slice 5:2", "string 5:2", "string :0", "negative 5:2", "empty for this prompt", "slice with step",
    "slice of floats", "None prompt", "bytes prompt", "None in prompt list", "empty prompt list",
    "None completion", "seed as str", "negative seed", "float seed", "do_sample as str",
    "scalar strengths", "strengths as str", "dicts as items", "tensor as vector",
    "vector instead of Steering", "raw transformers model", "model name instead of model",
    "raw model to steered", "raw model to sweep", "raw model to caa", "None as ActAdd phrase",
    "raw model to compare",
    "empty token sequences", "top_p above 1",
    "top_p zero", "top_p NaN", "zero temperature",
]  # fmt: skip


@pytest.mark.parametrize("name", ENGINE_CASES)
def test_engine_bad_input_names_the_fix_and_leaves_model_clean(name, tiny_llama):
    before = _logits(tiny_llama)
    call, error, fix = _engine_cases(tiny_llama)[name]
    with pytest.raises(error) as info:
        call()
    assert fix in str(info.value), str(info.value)
    assert active_steerings(tiny_llama) == []
    assert torch.equal(_logits(tiny_llama), before)


def test_case_list_is_complete(tiny_llama):
    assert sorted(_engine_cases(tiny_llama)) == sorted(ENGINE_CASES)


def test_valid_slices_still_steer(tiny_llama):
    """The new checks reject only what selects nothing: '-3:' and slice(0, 2) still steer."""
    vec = random_vector(tiny_llama)
    plain = sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0]
    for spec in ("-3:", slice(0, 2), "1:-1", [0, -1]):
        steered = sw.score(tiny_llama, PROMPT, " sunny", sw.Steering(vec, 1, 4.0, positions=spec), chat=False)
        assert not torch.equal(steered[0], plain), spec


# ----------------------------------------------------------------------------------------------
# Steering is isolated per thread and per asyncio task
# ----------------------------------------------------------------------------------------------
def test_steered_in_one_thread_does_not_steer_another(tiny_llama):
    steering = sw.Steering(random_vector(tiny_llama, scale=20.0), 1, 1.0)
    kwargs = dict(max_new_tokens=6, chat=False)
    solo_base = sw.generate(tiny_llama, PROMPT, **kwargs).base
    solo_steered = sw.generate(tiny_llama, PROMPT, steering, baseline=False, **kwargs).steered
    assert solo_base.token_logprobs != solo_steered.token_logprobs  # the steering does something

    entered, other_done = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def steering_thread() -> None:
        with sw.steered(tiny_llama, steering):
            entered.set()
            assert other_done.wait(60)  # the other thread generates while this block is open
            results["steered"] = sw.generate(tiny_llama, PROMPT, baseline=False, **kwargs)

    def plain_thread() -> None:
        assert entered.wait(60)
        results["plain"] = sw.generate(tiny_llama, PROMPT, **kwargs)
        other_done.set()

    threads = [threading.Thread(target=steering_thread), threading.Thread(target=plain_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    plain, steered = results["plain"], results["steered"]
    assert plain.steered is None and plain.steering == []
    assert plain.base.token_ids == solo_base.token_ids
    assert plain.base.token_logprobs == solo_base.token_logprobs
    assert steered.steered.token_ids == solo_steered.token_ids
    assert steered.steered.token_logprobs == solo_steered.token_logprobs
    assert active_steerings(tiny_llama) == []


def test_steered_is_isolated_per_asyncio_task(tiny_llama):
    steering = sw.Steering(random_vector(tiny_llama), 1, 1.0)

    async def main() -> tuple[list, list]:
        inside = asyncio.Event()

        async def steering_task() -> list:
            with sw.steered(tiny_llama, steering):
                inside.set()
                await asyncio.sleep(0)
                return active_steerings(tiny_llama)

        async def other_task() -> list:
            await inside.wait()
            return active_steerings(tiny_llama)

        return await asyncio.gather(steering_task(), other_task())

    # a thread of its own: earlier (browser) tests may leave an event loop running in this one
    results: list = []
    worker = threading.Thread(target=lambda: results.append(asyncio.run(main())))
    worker.start()
    worker.join()
    own, other = results[0]
    assert own == [steering] and other == []


def test_nested_steered_blocks_stack_and_unwind(tiny_llama, tiny_gpt2):
    a = sw.Steering(random_vector(tiny_llama, seed=1), 1, 1.0)
    b = sw.Steering(random_vector(tiny_llama, seed=2), 2, 1.0)
    with sw.steered(tiny_llama, a):
        with sw.steered(tiny_llama, b):
            assert active_steerings(tiny_llama) == [a, b]
            assert active_steerings(tiny_gpt2) == []  # keyed by model identity
        assert active_steerings(tiny_llama) == [a]
    assert active_steerings(tiny_llama) == []


# ----------------------------------------------------------------------------------------------
# Vector files with crafted contents
# ----------------------------------------------------------------------------------------------
def _save(path, tensors: dict, meta: str | None):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=None if meta is None else {"steerwidgets": meta})
    return path


VEC = torch.ones(32)
VECTOR_FILES = {
    "metadata not JSON": ({"layer.0": VEC}, "{not json", "not valid JSON"),
    "metadata a list": ({"layer.0": VEC}, "[1, 2]", "must be a JSON object"),
    "model_id a number": ({"layer.0": VEC}, json.dumps({"model_id": 5}), "'model_id' must be a string"),
    "meta a list": ({"layer.0": VEC}, json.dumps({"meta": [1]}), "'meta' must be a JSON object"),
    "layer key not a number": ({"layer.x": VEC}, None, "'layer.<int>' keys"),
    "negative layer key": ({"layer.-1": VEC}, None, "layer >= 0"),
    "foreign tensor name": ({"weight": VEC}, None, "unexpected tensor 'weight'"),
    "integer tensor": ({"layer.0": torch.ones(32, dtype=torch.int64)}, None, "not a float type"),
    "NaN direction": ({"layer.0": torch.full((32,), float("nan"))}, None, "NaN or inf"),
    "mixed hidden sizes": ({"layer.0": VEC, "layer.1": torch.ones(8)}, None, "one hidden size"),
}


@pytest.mark.parametrize("name", list(VECTOR_FILES))
def test_crafted_vector_file_is_rejected_with_the_fix(name, tmp_path):
    tensors, meta, expected = VECTOR_FILES[name]
    path = _save(tmp_path / "v.safetensors", tensors, meta)
    with pytest.raises(VectorError) as info:
        sw.SteeringVector.load(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "SteeringVector.save()" in message, message


def test_garbage_and_empty_vector_files(tmp_path):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(VectorError, match="never unpickles"):
        sw.SteeringVector.load(garbage)
    empty = _save(tmp_path / "e.safetensors", {"other": VEC}, None)
    with pytest.raises(VectorError, match="unexpected tensor"):
        sw.SteeringVector.load(empty)


def test_well_formed_vector_file_round_trips(tmp_path, tiny_llama):
    vec = random_vector(tiny_llama)
    loaded = sw.SteeringVector.load(vec.save(tmp_path / "ok.safetensors"), tiny_llama)
    assert loaded.method == vec.method and torch.equal(loaded[2], vec[2])


# ----------------------------------------------------------------------------------------------
# Loading models: folders and offline hub ids
# ----------------------------------------------------------------------------------------------
def test_offline_hub_id_fails_fast_and_says_what_works(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=models._HUB_TIMEOUT_S: False)
    start = time.monotonic()
    with pytest.raises(models.ModelLoadError) as info:
        sw.load_model("some-org/some-model-that-is-not-cached")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "cannot be reached" in message and "sw.load_model()" in message and "local folders" in message


def test_hub_probe_is_bounded_even_when_the_resolver_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        assert models._hub_reachable(timeout=0.3) is False
        assert time.monotonic() - start < 2
    finally:
        release.set()


def test_hub_offline_env_is_honoured_without_a_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(*args, **kwargs):
        raise AssertionError("no network probe when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(socket, "create_connection", no_probe)
    assert models._hub_reachable() is False


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp, "no config.json"),
        (lambda tmp: (tmp / "config.json").write_text("{}") and tmp, "no weights"),
        (lambda tmp: (tmp / "model.gguf").write_bytes(b"x") and tmp / "model.gguf", "is a file"),
        (lambda tmp: tmp / "missing" / "folder", "no model folder"),
        (lambda tmp: "not a valid id!!", "valid Hugging Face id"),
    ],
    ids=["empty folder", "config without weights", "a file", "missing folder", "invalid id"],
)
def test_bad_model_folder_says_what_was_expected(tmp_path, make, expected):
    target = make(tmp_path)
    start = time.monotonic()
    with pytest.raises(models.ModelLoadError) as info:
        sw.load_model(str(target))
    assert expected in str(info.value), str(info.value)
    assert time.monotonic() - start < 5


def test_load_model_type_errors(tiny_llama):
    with pytest.raises(TypeError, match="torch.dtype"):
        sw.load_model(tiny_llama.hf, tokenizer=tiny_llama.tokenizer, dtype="float16")
    with pytest.raises(TypeError, match="takes None, a model name"):
        sw.load_model(42)
    assert sw.load_model(tiny_llama) is tiny_llama  # already loaded: returned as is


# ----------------------------------------------------------------------------------------------
# Command line: output paths before the run, over-long items named by file and index
# ----------------------------------------------------------------------------------------------
def _items_file(path, questions):
    rows = [
        {"question": q, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
        for q in questions
    ]
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def cli_files(tmp_path):
    ok = [item.question for item in sw.builtin_ab("sentiment")[:3]]
    return _items_file(tmp_path / "train.json", ok), _items_file(tmp_path / "test.json", ok)


@pytest.mark.parametrize(
    ("make_out", "expected"),
    [
        (lambda tmp: tmp / "no" / "such" / "dir" / "out.json", "does not exist"),
        (lambda tmp: tmp, "is a folder"),
        (lambda tmp: (tmp / "f.txt").write_text("x") and tmp / "f.txt" / "out.json", "does not exist"),
    ],
    ids=["missing folder", "a folder", "below a file"],
)
def test_cli_unwritable_output_fails_before_the_model_loads(
    cli_files, tmp_path, capsys, monkeypatch, make_out, expected
):
    def no_model(name):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(cli, "_load", no_model)
    out = make_out(tmp_path)
    train, test = cli_files
    for command in (["evaluate", "--layer", "1"], ["sweep", "--layers", "0-1"]):
        argv = [*command, "--train", str(train), "--test", str(test), "--json", str(out)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "--json" in err and expected in err, err


def test_cli_html_output_is_checked_too(cli_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", lambda name: pytest.fail("model loaded"))
    train, test = cli_files
    argv = ["evaluate", "--layer", "1", "--train", str(train), "--test", str(test)]
    assert cli.main([*argv, "--html", str(tmp_path / "nope" / "r.html")]) == 2
    assert "--html" in capsys.readouterr().err


def test_cli_over_long_item_is_named_by_file_and_index(cli_files, tmp_path, capsys, monkeypatch, tiny_llama):
    monkeypatch.setattr(cli, "_load", lambda name: tiny_llama)  # 128 positions
    train, _ = cli_files
    questions = [item.question for item in sw.builtin_ab("sentiment")[:3]]
    questions.insert(2, "word " * 400)
    test = _items_file(tmp_path / "long.json", questions)
    caa_calls = []
    monkeypatch.setattr(sw.methods, "caa", lambda *a, **k: caa_calls.append(1))
    assert cli.main(["evaluate", "--layer", "1", "--train", str(train), "--test", str(test)]) == 2
    err = capsys.readouterr().err
    assert "long.json" in err and "item 2" in err and "reads at most 128" in err, err
    assert caa_calls == []  # checked before any model work


def test_cli_offline_hub_id_exits_2(cli_files, capsys, monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=models._HUB_TIMEOUT_S: False)
    train, test = cli_files
    argv = ["evaluate", "--layer", "1", "--train", str(train), "--test", str(test)]
    assert cli.main([*argv, "--model", "some-org/not-cached-model"]) == 2
    assert "local folders work" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Widgets: constructor errors name the fix, and no spurious Widget.__del__ error follows
# ----------------------------------------------------------------------------------------------
def _widget_cases(model: sw.SteerableModel) -> dict:
    vec = random_vector(model)
    return {
        "Playground raw model": (lambda: sw.Playground(model.hf, vec), TypeError, "sw.load_model(hf_model"),
        "Playground None prompt": (lambda: sw.Playground(model, vec, prompt=None), TypeError, "prompt="),
        "Playground layer str": (lambda: sw.Playground(model, vec, layer="x"), TypeError, "0..3"),
        "Playground layer too big": (lambda: sw.Playground(model, vec, layer=9), ValueError, "0..3"),
        "Playground strength str": (
            lambda: sw.Playground(model, vec, strength="big"),
            TypeError,
            "strength=4.0",
        ),
        "Playground seed float": (lambda: sw.Playground(model, vec, seed=0.5), TypeError, "seed must"),
        "Playground stack row layer": (
            lambda: sw.Playground(model, vec, stack=[{"vector_name": "vector", "layer": 9}]),
            ValueError,
            "stack row 1 (stack[0], vector@9): layer 9 is out of range",
        ),
        "Playground stack not a list": (
            lambda: sw.Playground(model, vec, stack={"vector_name": "vector", "layer": 1}),
            TypeError,
            "stack must be a list of rows",
        ),
        "ReliabilityReport raw model": (
            lambda: sw.ReliabilityReport(model.hf, vec, ITEMS, 1),
            TypeError,
            "sw.load_model(hf_model",
        ),
        "ReliabilityReport no arguments": (lambda: sw.ReliabilityReport(model), TypeError, "required"),
        "LayerSweep model name": (
            lambda: sw.LayerSweep("default", vec, ITEMS),
            TypeError,
            "sw.load_model('default')",
        ),
        "LayerSweep bad layer": (
            lambda: sw.LayerSweep(model, vec, ITEMS, layers=[7], autostart=False),
            ValueError,
            "0..3",
        ),
    }


WIDGET_CASES = [
    "Playground raw model", "Playground None prompt", "Playground layer str", "Playground layer too big",
    "Playground strength str", "Playground seed float", "Playground stack row layer",
    "Playground stack not a list", "ReliabilityReport raw model",
    "ReliabilityReport no arguments", "LayerSweep model name", "LayerSweep bad layer",
]  # fmt: skip


@pytest.mark.parametrize("name", WIDGET_CASES)
def test_widget_constructor_error_has_no_spurious_del_error(name, tiny_llama, monkeypatch):
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    before = _logits(tiny_llama)
    call, error, fix = _widget_cases(tiny_llama)[name]
    with pytest.raises(error) as info:
        call()
    assert fix in str(info.value), str(info.value)
    del info
    gc.collect()
    assert unraisable == [], [str(u.exc_value) for u in unraisable]
    assert torch.equal(_logits(tiny_llama), before)


def test_widget_case_list_is_complete(tiny_llama):
    assert sorted(_widget_cases(tiny_llama)) == sorted(WIDGET_CASES)
