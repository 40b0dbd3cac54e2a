"""Position masks, operators and Steering validation (pure tensor code)."""

from __future__ import annotations

import pytest
import torch

import steerwidgets as sw
from steerwidgets.interventions import OPERATORS, apply_operator, register_operator


def _idx(mask):
    return torch.nonzero(mask).flatten().tolist()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(8))),
        ("prompt", [0, 1, 2, 3, 4]),
        ("generated", [5, 6, 7]),
        ("last", [4]),
        ("continuation", [4, 5, 6, 7]),
        (-1, [4]),
        (0, [0]),
        (6, [6]),
        ([0, -1], [0, 4]),
        (slice(-2, None), [3, 4, 5, 6, 7]),
        (slice(1, 3), [1, 2]),
        ("-2:", [3, 4, 5, 6, 7]),
        ("1:3", [1, 2]),
        ("1,3", [1, 3]),
        ("-5", [0]),
    ],
)
def test_position_mask(spec, expected):
    assert _idx(sw.interventions.position_mask(spec, prompt_len=5, total_len=8)) == expected


def test_front_mask_uses_user_start():
    mask = sw.interventions.position_mask("front", 6, 9, user_start=2, front_len=3)
    assert _idx(mask) == [2, 3, 4]
    with pytest.raises(sw.SteeringError, match="spans 5 tokens"):
        sw.interventions.position_mask("front", 6, 9, user_start=2, front_len=5)


@pytest.mark.parametrize("spec", ["middle", "1:2:3", "a,b", True, 2.5, [], [1, "x"]])
def test_bad_position_specs(spec):
    with pytest.raises(sw.SteeringError):
        sw.interventions.position_mask(spec, 5, 5)


@pytest.mark.parametrize("spec", [5, -6, [0, 9]])
def test_out_of_range_positions_name_the_range(spec):
    with pytest.raises(sw.SteeringError, match="outside the sequence"):
        sw.interventions.position_mask(spec, prompt_len=5, total_len=5)


def test_operators():
    h = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    v = torch.tensor([2.0, 0.0])
    added = apply_operator(h, v, torch.tensor(0.5), "add")
    assert added.tolist() == [[[4.0, 4.0], [2.0, 0.0]]]
    ablated = apply_operator(h, v, torch.tensor(1.0), "ablate")
    assert ablated.tolist() == [[[0.0, 4.0], [0.0, 0.0]]]
    clamped = apply_operator(h, v, torch.tensor(1.5), "clamp")  # component set to 1.5·‖v‖ = 3
    assert clamped.tolist() == [[[3.0, 4.0], [3.0, 0.0]]]


def test_registering_an_operator_makes_it_usable_by_name(tiny_llama):
    @register_operator("double_add")
    def double_add(hidden, vec, scale):
        return hidden + 2 * scale * vec

    try:
        h, v = torch.randn(1, 3, 4), torch.randn(4)
        assert torch.equal(apply_operator(h, v, torch.tensor(0.5), "double_add"), h + v)
        vec = torch.randn(tiny_llama.d_model)
        steering = sw.Steering(vec, 1, 1.5, "all", operator="double_add")
        steering.validate(tiny_llama)
        ids = tiny_llama.tokenizer("Hello there, friend")["input_ids"]
        got = sw.engine.next_token_logprobs(tiny_llama, [ids], [steering])
        want = sw.engine.next_token_logprobs(tiny_llama, [ids], [sw.Steering(vec, 1, 3.0, "all")])
        assert torch.allclose(got, want, atol=1e-5)
        with pytest.raises(sw.SteeringError, match="double_add"):  # the valid names come from the registry
            sw.Steering(vec, 1, operator="triple_add").validate(tiny_llama)
    finally:
        del OPERATORS["double_add"]
    with pytest.raises(sw.SteeringError, match="unknown operator"):
        steering.validate(tiny_llama)
    assert list(OPERATORS) == ["add", "ablate", "clamp", "add_norm_preserving", "affine"]


def test_steering_validation_messages(tiny_llama):
    vec = torch.ones(tiny_llama.d_model)
    with pytest.raises(ValueError, match="0..3"):
        sw.Steering(vec, 4).validate(tiny_llama)
    with pytest.raises(sw.SteeringError, match="finite"):
        sw.Steering(vec, 1, float("nan")).validate(tiny_llama)
    with pytest.raises(sw.SteeringError, match="unknown operator"):
        sw.Steering(vec, 1, operator="multiply").validate(tiny_llama)
    with pytest.raises(sw.VectorError, match="d_model"):
        sw.Steering(torch.ones(7), 1).validate(tiny_llama)
    with pytest.raises(sw.SteeringError, match="non-zero"):
        sw.Steering(torch.zeros(tiny_llama.d_model), 1, operator="ablate").validate(tiny_llama)
