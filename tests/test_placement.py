"""Every public engine entry point runs on a model whose parameters live on a device other than the CPU.

No GPU is needed: the model sits on the stand-in accelerator of :mod:`standin_device` (tensors that report
``device='meta'``, keep real values and raise CUDA's "Expected all tensors to be on the same device" when a
CPU tensor meets them) — see that module for why this is a faithful test of placement. Each entry point is
run twice, on the CPU twin and on the stand-in model with the same weights, and must (1) raise no device
error, (2) hand back CPU float32 results, (3) give the twin's numbers, and (4) leave the model where it was.

How we checked it fails on the code before the device work: on that code 31 of these tests fail, most with
the device error (``load_model`` also moved the model back to the CPU, through nnsight's pipeline).
"""

from __future__ import annotations

import threading
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import pytest
import torch
from standin_device import DeviceMismatch, Far, real, stand_in, to_far

import steerwidgets as sw
from helpers import tiny_model
from steerwidgets import conditional as C
from steerwidgets import engine, methods
from steerwidgets import playground as P

ITEMS = [
    sw.ABItem(
        f"Q{i}: shall we go out?\n\nChoices:\n(A) Yes, gladly!\n(B) No, never.", *("AB" if i % 2 else "BA")
    )
    for i in range(4)
]
PAIRS = [sw.ContrastPair("I love this, it is great.", "I hate this, it is awful.")] * 2
STRENGTHS = (-2.0, 0.0, 2.0)


@pytest.fixture(scope="module")
def twins(tokenizer) -> tuple[sw.SteerableModel, sw.SteerableModel]:
    """The CPU model and the same weights on the stand-in device (moved before ``load_model`` wraps it)."""
    cpu = tiny_model("llama", tokenizer)
    with stand_in():
        far = tiny_model("llama", tokenizer, place=to_far)
    return cpu, far


def _vector(model: sw.SteerableModel, seed: int = 1) -> sw.SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return sw.SteeringVector(
        {layer: 3.0 * torch.randn(model.d_model, generator=gen) for layer in range(model.n_layers)},
        model_id=model.name,
        method="random-test",
    )


def _affine(model: sw.SteerableModel) -> sw.Steering:
    gen = torch.Generator().manual_seed(2)
    d = model.d_model
    amap = sw.interventions.AffineMap(
        torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen), torch.zeros(d), torch.randn(d, generator=gen)
    )
    return sw.Steering(amap, 1, 0.5, operator="affine")


def _generate(model: sw.SteerableModel, **kwargs: Any) -> Any:
    seen: list = []
    out = sw.generate(
        model, ["Hello there", "A longer prompt here"], max_new_tokens=3,
        on_token=lambda run, step, ids: seen.append((run, step, ids)), **kwargs,
    )  # fmt: skip
    return out, seen


def _sweep(model: sw.SteerableModel, **kwargs: Any) -> Any:
    # Two items: every op on the stand-in goes through Python, so the sweeps are kept small.
    return sw.propensity_sweep(model, ITEMS[:2], _vector(model), [1, 2], STRENGTHS, **kwargs)


def _pipeline(model: sw.SteerableModel) -> list:
    pipe = P.Pipeline(model, {"rnd": _vector(model)})
    request = P.Request(
        prompt="Hi there.", vector_name="rnd", layer=1, strength=2.0, max_new_tokens=3,
        targets=(" yes", " no"), ab_items=tuple(ITEMS[:2]),
    )  # fmt: skip
    keep = (P.Text, P.Scored, P.ABVerdict)
    return [u for u in pipe.collect(request) if isinstance(u, keep)]


def _conditional(model: sw.SteerableModel) -> Any:
    cond = C.condition_vector(model, ["Is this legal?", "Can I sue?"], ["Bake a cake.", "Sing a song."], [1])
    steering = C.ConditionalSteering(cond, 1, 0.0, "larger", sw.Steering(_vector(model), 2, 2.0))
    return C.conditional_generate(
        model, ["Is it legal to park here?", "Bake bread."], steering, max_new_tokens=3
    )


def _function_vector(model: sw.SteerableModel) -> Any:
    demos = [("hot", "cold"), ("up", "down"), ("big", "small")]
    prompts = [(demos, "fast", "slow"), (demos[::-1], "left", "right")]
    return methods.function_vector(model, prompts, layers=[1], top_k=2, apply_layer=1)


def _stack(model: sw.SteerableModel) -> Any:
    v = _vector(model)
    stack = [sw.Steering(v, 1, 2.0), sw.Steering(_vector(model, 3), 2, 1.0, "last", relative=True)]
    with sw.steered(model, stack):
        return sw.generate(model, "Stacked steering", max_new_tokens=3), sw.score(model, "Hi", " there")


ENTRY_POINTS = {
    "generate, streamed": lambda m: _generate(m, steering=sw.Steering(_vector(m), 1, 2.0)),
    "generate, sampled, relative": lambda m: _generate(
        m, steering=sw.Steering(_vector(m), 2, 0.5, "prompt", relative=True), do_sample=True, seed=3
    ),
    "score": lambda m: sw.score(
        m, ["Hi", "Hello there"], [" there", " friend"], sw.Steering(_vector(m), 1, 2.0)
    ),
    "score, row steerings": lambda m: sw.score(
        m, ["Hi", "Hi"], [" a", " b"], row_steerings=[sw.Steering(_vector(m), 1, 1.0), None]
    ),
    "score_choices, packed, relative": lambda m: engine.score_choices(
        m,
        ["Pick one:", "Again:"],
        [[" yes", " no"], [" up", " down now"]],
        sw.Steering(_vector(m), 1, 0.5, "generated", relative=True),
    ),  # fmt: skip
    "next_token_logprobs": lambda m: engine.next_token_logprobs(
        m, [[1, 2, 3], [4, 5]], [sw.Steering(_vector(m), 1)]
    ),
    "sweep letter, gradient null": lambda m: _sweep(m, null_directions=4),
    "sweep letter, sampled null": lambda m: _sweep(m, null_directions=3, null_method="sampled"),
    "sweep letter, one item per pass": lambda m: _sweep(m, null_directions=3, batch_items=False),
    "sweep answer text, gradient null": lambda m: _sweep(m, protocol="answer_text", null_directions=3),
    "sweep answer text, sampled null": lambda m: _sweep(
        m, protocol="answer_text", null_directions=2, null_method="sampled"
    ),
    "sweep relative, background": lambda m: _sweep(
        m, relative=True, positions="all", background=[sw.Steering(_vector(m, 4), 1, 1.0)]
    ),
    "sweep clamp": lambda m: _sweep(m, operator="clamp", null_directions=0),
    "layer_sweep": lambda m: sw.layer_sweep(m, ITEMS[:2], _vector(m), [1, 2], STRENGTHS),
    "read_activations": lambda m: engine.read_activations(m, [[1, 2, 3], [4, 5]], [0, 2], position="all"),
    "caa": lambda m: sw.caa(m, ITEMS, [1, 2]),
    "mean_difference": lambda m: sw.mean_difference(m, PAIRS, [1, 2]),
    "actadd (per-position vector)": lambda m: sw.generate(
        m, "Today I feel", sw.Steering(sw.actadd(m, "Love", "Hate", 1), 1, 2.0, "front"), max_new_tokens=3
    ),
    "operator ablate": lambda m: sw.score(
        m, "Hi", " there", sw.Steering(_vector(m), 1, 1.0, operator="ablate")
    ),
    "operator clamp": lambda m: sw.score(
        m, "Hi", " there", sw.Steering(_vector(m), 1, 2.0, operator="clamp")
    ),
    "operator add_norm_preserving": lambda m: sw.score(
        m, "Hi", " there", sw.Steering(_vector(m), 1, 2.0, operator="add_norm_preserving")
    ),
    "a raw tensor vector on the device": lambda m: sw.generate(
        m, "Hi there", sw.Steering(_vector(m)[1].to(m.device), 1, 2.0, relative=False), max_new_tokens=3
    ),
    "operator affine": lambda m: sw.generate(m, "Hi there", _affine(m), max_new_tokens=3),
    "affine from activations": lambda m: methods.affine(m, ITEMS, 1),
    "stack in steered()": _stack,
    "conditional (CAST)": _conditional,
    "function vector": _function_vector,
    "Playground pipeline": _pipeline,
}


def _tensors(value: Any, seen: set | None = None) -> list[torch.Tensor]:
    """Every tensor inside a result (dataclasses, dicts, lists), for the placement checks."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [value]
    if is_dataclass(value) and not isinstance(value, type):
        return [t for f in fields(value) for t in _tensors(getattr(value, f.name), seen)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v, seen)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, seen)]
    if hasattr(value, "__dict__") and type(value).__module__.startswith("steerwidgets"):
        return [t for v in vars(value).values() for t in _tensors(v, seen)]
    return []


def _numbers(value: Any) -> list[np.ndarray]:
    """The numbers of a result, in a fixed order, for comparing the two twins."""
    out = []
    for t in _tensors(value):
        if t.is_floating_point():
            out.append(real(t).detach().double().numpy().ravel())
    if isinstance(value, sw.PropensityResult):
        out += [value.propensity[layer].ravel() for layer in value.layers]
        out += [value.null[layer].ravel() for layer in value.layers] if value.null is not None else []
    return out


def _on_device(model: sw.SteerableModel) -> bool:
    return all(isinstance(p, Far) for p in model.hf.parameters())


def test_the_stand_in_raises_what_cuda_raises():
    with stand_in():
        far = torch.randn(3, 4, device="meta")
        assert isinstance(far, Far) and far.device.type == "meta"
        with pytest.raises(DeviceMismatch, match="same device"):
            far + torch.randn(4)
        ok = far + torch.randn(4).to(far.device) + torch.tensor(2.0)  # moved, and a 0-dim CPU scalar
        assert isinstance(ok, Far) and isinstance(far[torch.tensor([0, 2])], Far)  # CPU indices are fine
        back = ok.cpu()
        assert not isinstance(back, Far) and back.device.type == "cpu"
        assert torch.allclose(back, real(far) + real(ok - far))


def test_load_model_leaves_the_model_on_its_device(twins):
    cpu, far = twins
    assert _on_device(far) and far.device.type == "meta" and far.devices == ["meta"]
    assert "on meta, float32" in repr(far) and cpu.device.type == "cpu"


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_entry_point_runs_on_the_device_and_hands_back_cpu_float32(twins, name):
    cpu, far = twins
    fn = ENTRY_POINTS[name]
    expected = fn(cpu)
    with stand_in():
        got = fn(far)
        assert _on_device(far), "the entry point moved the model off its device"
    tensors = _tensors(got)
    assert not [t for t in tensors if isinstance(t, Far) or t.device.type != "cpu"], (
        "a result is not on the CPU"
    )
    floats = [t for t in tensors if t.is_floating_point()]
    assert all(t.dtype in (torch.float32, torch.float64) for t in floats), {t.dtype for t in floats}
    vectors = [t for t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    assert not [v for v in vectors if v.ndim == 1 and v.shape[0] == cpu.d_model], "vectors must be float32"
    want, have = _numbers(expected), _numbers(got)
    assert len(want) == len(have)
    for a, b in zip(want, have):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_a_cancel_mid_generation_leaves_the_unsteered_model_on_its_device(twins):
    cpu, far = twins
    plain = sw.score(cpu, "Hi", " there")[0]
    stop = threading.Event()

    def on_token(run: str, step: int, ids: list[int]) -> None:
        if step == 1:
            stop.set()

    with stand_in():
        with pytest.raises(engine.GenerationCancelled):
            sw.generate(far, "Hello", sw.Steering(_vector(far), 1, 5.0), max_new_tokens=5,
                        on_token=on_token, cancel=stop)  # fmt: skip
        after = sw.score(far, "Hi", " there")[0]
        assert _on_device(far)
    assert torch.equal(after, plain)
