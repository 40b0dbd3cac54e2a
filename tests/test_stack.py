"""Several steerings at once: the engine against hand-written PyTorch hooks, and the stack's JSON form."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.engine import tokenize_prompt
from steerwidgets.interventions import position_mask

PROMPT = "The weather today is"


def _hooked(model, ids, edits):
    """Plain PyTorch reference: ``edits`` is ``[(layer, delta, mask)]``; each adds ``delta`` at ``mask``
    positions of block ``layer``'s output (several at one layer in list order)."""
    handles = []

    def make(delta, mask):
        def hook(_module, _inputs, out):
            hidden = out[0] if isinstance(out, tuple) else out
            edited = torch.where(mask[None, : hidden.shape[1], None], hidden + delta, hidden)
            return (edited, *out[1:]) if isinstance(out, tuple) else edited

        return hook

    for layer, delta, mask in edits:
        handles.append(model.hf_block(layer).register_forward_hook(make(delta, mask)))
    try:
        with torch.no_grad():
            return model.hf(torch.tensor([ids])).logits[0]
    finally:
        for handle in handles:
            handle.remove()


def _stacks(model):
    a, b = random_vector(model, seed=1, scale=3.0), random_vector(model, seed=2, scale=3.0)
    last = model.n_layers - 1
    return {
        "two layers": [sw.Steering(a, 0, 2.0), sw.Steering(b, last, -1.5, positions="prompt")],
        "one layer": [sw.Steering(a, 1, 2.0, positions="generated"), sw.Steering(b, 1, 1.0)],
    }


@pytest.mark.parametrize("which", ["two layers", "one layer"])
def test_generate_with_a_stack_equals_hand_written_hooks(tiny, which):
    stack = _stacks(tiny)[which]
    steps = 5
    result = sw.generate(tiny, PROMPT, stack, max_new_tokens=steps, chat=False, baseline=False)
    ids, _ = tokenize_prompt(tiny, PROMPT, chat=False)
    seq, n = list(ids), len(ids)
    for _ in range(steps):
        edits = [
            (s.layer, s.strength * s.direction(), position_mask(s.positions, n, len(seq))) for s in stack
        ]
        seq.append(int(_hooked(tiny, seq, edits)[-1].argmax()))
    got = result.steered.token_ids[0]
    assert got == seq[n : n + len(got)] and got


@pytest.mark.parametrize("which", ["two layers", "one layer"])
def test_score_with_a_stack_equals_hand_written_hooks(tiny, which):
    stack = _stacks(tiny)[which]
    prompts, completions = [PROMPT, "A much longer prompt about cats"], [" sunny and warm", " ok"]
    got = sw.score(tiny, prompts, completions, stack, chat=False)
    for prompt, completion, logp in zip(prompts, completions, got):
        ids, _ = tokenize_prompt(tiny, prompt, chat=False)
        comp = tiny.tokenizer(completion, add_special_tokens=False)["input_ids"]
        full = ids + comp
        edits = [
            (s.layer, s.strength * s.direction(), position_mask(s.positions, len(ids), len(full)))
            for s in stack
        ]
        logits = _hooked(tiny, full, edits).log_softmax(-1)
        expected = [float(logits[len(ids) - 1 + k, t]) for k, t in enumerate(comp)]
        assert logp.tolist() == pytest.approx(expected, abs=1e-4)
    # and the stack is not one of its parts alone
    alone = sw.score(tiny, prompts, completions, stack[:1], chat=False)
    assert not torch.allclose(alone[0], got[0])


@pytest.mark.model
def test_real_model_stack_equals_hand_written_hooks(smol):
    a = sw.stack.load_steerings([{"vector": "sentiment", "layer": 8, "strength": 4.0}], smol)[0]
    other = sw.random_like(sw.SteeringVector({14: a.direction()}), seed=5)  # a's norm, another direction
    b = sw.Steering(other, 14, 3.0, positions="prompt")
    stack = [a, b]
    completion = " I had a wonderful time at the beach."
    (got,) = sw.score(smol, PROMPT, completion, stack, chat=False)
    ids, _ = tokenize_prompt(smol, PROMPT, chat=False)
    comp = smol.tokenizer(completion, add_special_tokens=False)["input_ids"]
    full = ids + comp
    edits = [
        (s.layer, s.strength * s.direction(), position_mask(s.positions, len(ids), len(full)))
        for s in stack
    ]
    logits = _hooked(smol, full, edits).float().log_softmax(-1)
    expected = [float(logits[len(ids) - 1 + k, t]) for k, t in enumerate(comp)]
    assert got.tolist() == pytest.approx(expected, abs=2e-3)


# ----------------------------------------------------------------------------------------------
# The stack's JSON form
# ----------------------------------------------------------------------------------------------
def test_load_steerings_from_dicts_files_and_names(tiny_llama, tmp_path):
    mine = random_vector(tiny_llama, seed=3)
    saved = random_vector(tiny_llama, seed=4)
    saved.save(tmp_path / "saved.safetensors")
    spec = [
        {"vector": "mine", "layer": 1, "strength": 2},
        {
            "vector": "saved.safetensors",
            "layer": 2,
            "strength": -1.5,
            "positions": "prompt",
            "relative": True,
        },
        {"vector": "sentiment", "layer": 3, "positions": [0, -1]},
    ]
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(spec))
    stack = sw.stack.load_steerings(path, tiny_llama, vectors={"mine": mine})
    assert [s.layer for s in stack] == [1, 2, 3]
    assert stack[0].vector is mine and stack[0].strength == 2.0
    assert torch.equal(stack[1].direction(), saved[2]) and stack[1].relative
    assert stack[2].strength == 1.0 and stack[2].positions == [0, -1]
    expected = sw.mean_difference(tiny_llama, sw.builtin_pairs("sentiment"), [3])[3]
    assert torch.allclose(stack[2].direction(), expected)
    described = sw.stack.describe_steerings(stack)
    assert [d["vector"] for d in described] == ["random-test", "saved.safetensors", "sentiment"]
    assert described[1] == {
        **described[1],
        "layer": 2,
        "strength": -1.5,
        "positions": "prompt",
        "relative": True,
    }
    assert sw.interventions.stack_label(stack) == "random-test@1 + saved.safetensors@2 + sentiment@3"
    json.dumps(described)
    # read back from the description (named vectors by their label)
    again = sw.stack.load_steerings(
        [{k: v for k, v in d.items() if k != "vector_norm"} for d in described],
        tiny_llama,
        vectors={"random-test": mine},
        base_dir=tmp_path,
    )
    assert [(s.layer, s.strength, s.positions, s.relative) for s in again] == [
        (s.layer, s.strength, s.positions, s.relative) for s in stack
    ]
    # JSON text and Steering objects pass too
    assert sw.stack.load_steerings(json.dumps(spec[:1]), tiny_llama, vectors={"mine": mine})[0].layer == 1
    assert sw.stack.load_steerings([stack[0]], tiny_llama) == [stack[0]]


@pytest.mark.parametrize(
    "spec, message",
    [
        ([{"layer": 1}], r"steering \[0\] has no 'vector'"),
        ([{"vector": "mine", "layer": 1}, {"vector": "mine"}], r"steering \[1\] has no 'layer'"),
        ([{"vector": "mine", "layer": 1, "strenght": 2}], r"steering \[0\]: unknown key\(s\) \['strenght'\]"),
        ([{"vector": "mine", "layer": "1"}], r"steering \[0\]: 'layer' must be an int"),
        ([{"vector": "mine", "layer": 1, "strength": "big"}], r"'strength' must be a number"),
        ([{"vector": "mine", "layer": 1, "positions": "middle"}], r"steering \[0\]: unknown position spec"),
        ([{"vector": "mine", "layer": 1, "relative": "yes"}], r"'relative' must be true or false"),
        (
            [{"vector": "mine", "layer": 1}, {"vector": "mine", "layer": 99}],
            r"steering \[1\]: layer 99 is out",
        ),
        ([{"vector": "nope", "layer": 1}], r"steering \[0\]: vector 'nope' is not a file.*vectors="),
        ([{"vector": "gone.safetensors", "layer": 1}], r"steering \[0\]: no vector file"),
        ([], "empty list"),
        ("[{", "not valid JSON"),
        ("missing.json", "no steering spec file"),
        ([3], r"steering \[0\] must be an object"),
    ],
)
def test_load_steerings_names_the_bad_entry_and_the_fix(tiny_llama, spec, message):
    with pytest.raises(sw.SteeringError if "vector file" not in message else sw.VectorError, match=message):
        sw.stack.load_steerings(spec, tiny_llama, vectors={"mine": random_vector(tiny_llama)})


def test_check_steerings_names_the_bad_entry(tiny_llama):
    good = sw.Steering(random_vector(tiny_llama), 1, 2.0)
    assert sw.interventions.check_steerings([good, good], tiny_llama) == [good, good]
    assert sw.interventions.check_steerings(None, tiny_llama) == []
    small = sw.SteeringVector({2: torch.ones(8)})
    with pytest.raises(sw.VectorError, match=r"steering \[1\] \(custom@2\): .*hidden size 8"):
        sw.interventions.check_steerings([good, sw.Steering(small, 2, 1.0)], tiny_llama)
    with pytest.raises(sw.SteeringError, match=r"steering \[1\] is a str"):
        sw.interventions.check_steerings([good, "sentiment"], tiny_llama)
    with pytest.raises(sw.SteeringError, match=r"steering \[0\] \(random-test@1\): strength must be finite"):
        sw.interventions.check_steerings([sw.Steering(good.vector, 1, float("inf"))], tiny_llama)


# ----------------------------------------------------------------------------------------------
# propensity_sweep with fixed background steerings
# ----------------------------------------------------------------------------------------------
ITEMS = [
    sw.ABItem("Pick one.\n(A) yes\n(B) no", "A", "B"),
    sw.ABItem("Choose wisely.\n(A) up\n(B) down", "B", "A"),
    sw.ABItem("Which is it?\n(A) left\n(B) right", "A", "B"),
]


def _background(model):
    a, b = random_vector(model, seed=11, scale=3.0), random_vector(model, seed=12, scale=3.0)
    return [sw.Steering(a, 0, 1.5), sw.Steering(b, 2, -2.0, positions="-2:")]


def _bg_edits(background, n, total):
    return [
        (s.layer, s.strength * s.direction(), position_mask(s.positions, n, total)) for s in background
    ]


@pytest.mark.parametrize("positions", ["last", "all"])
def test_sweep_with_background_equals_hooks(tiny, positions):
    from steerwidgets.engine import ab_prompt

    vec = random_vector(tiny, seed=3, scale=2.0)
    background = _background(tiny)
    strengths = [-1.0, 0.0, 2.0]
    layers = [1, 2]  # layer 2 shares its block with a background steering (which edits first)
    result = sw.propensity_sweep(
        tiny, ITEMS, vec, layers, strengths, positions=positions, background=background, null_directions=0,
        option_swap=True,
    )  # fmt: skip
    assert result.background == background
    for layer in layers:
        for i, item in enumerate(ITEMS):
            ids, y_pos, y_neg = ab_prompt(tiny, item)
            mask = position_mask(positions, len(ids), len(ids))
            bg = _bg_edits(background, len(ids), len(ids))
            for k, lam in enumerate(strengths):
                logits = _hooked(tiny, ids, [*bg, (layer, lam * vec[layer], mask)])[-1]
                assert result.propensity[layer][i, k] == pytest.approx(
                    float(logits[y_pos] - logits[y_neg]), abs=1e-4
                )
            logits = _hooked(tiny, ids, bg)[-1]
            assert result.unsteered[i] == pytest.approx(float(logits[y_pos] - logits[y_neg]), abs=1e-4)
    plain = sw.propensity_sweep(tiny, ITEMS, vec, layers, strengths, positions=positions, null_directions=0)
    assert not np.allclose(plain.propensity[1], result.propensity[1])
    swapped_plain = sw.propensity_sweep(tiny, ITEMS, vec, [1], strengths, null_directions=0, option_swap=True)
    assert not np.allclose(swapped_plain.swapped_propensity, result.swapped_propensity)


def test_sweep_with_background_answer_text_and_nulls(tiny_llama):
    from steerwidgets.engine import answer_text_prompt, null_directions_for

    tiny = tiny_llama
    vec = random_vector(tiny, seed=4, scale=2.0)
    background = _background(tiny)
    strengths = [-1.0, 1.0]
    common = dict(background=background, null_directions=3, positions="continuation")
    res = sw.propensity_sweep(tiny, ITEMS, vec, [1], strengths, protocol="answer_text", **common)
    sampled = sw.propensity_sweep(
        tiny, ITEMS, vec, [1], strengths, protocol="answer_text", null_method="sampled", **common
    )
    directions = null_directions_for(vec, [1], 3)[1]

    def m(item, delta):
        ids, pos, neg = answer_text_prompt(tiny, item)
        out = 0.0
        for sign, comp in ((1.0, pos), (-1.0, neg)):
            full = ids + comp
            mask = position_mask("continuation", len(ids), len(full))
            logp = _hooked(tiny, full, [*_bg_edits(background, len(ids), len(full)), (1, delta, mask)])
            logp = logp.log_softmax(-1)
            out += sign * float(torch.stack([logp[len(ids) - 1 + k, t] for k, t in enumerate(comp)]).mean())
        return out

    eps = 1e-2
    for i, item in enumerate(ITEMS):
        for k, lam in enumerate(strengths):
            assert res.propensity[1][i, k] == pytest.approx(m(item, lam * vec[1]), abs=1e-4)
        for j in range(3):
            two_point = (m(item, directions[j]) - m(item, -directions[j])) / 2.0
            assert sampled.null[1][j, i] == pytest.approx(two_point, abs=1e-4)
            first_order = (m(item, eps * directions[j]) - m(item, -eps * directions[j])) / (2 * eps)
            assert res.null[1][j, i] == pytest.approx(first_order, abs=2e-3)


def test_sweep_background_errors_name_the_entry(tiny_llama):
    vec = random_vector(tiny_llama)
    with pytest.raises(sw.SteeringError, match=r"background \[1\] \(random-test@1\): .*relative=False"):
        sw.propensity_sweep(
            tiny_llama, ITEMS, vec, [1], [-1, 1],
            background=[sw.Steering(vec, 1, 1.0), sw.Steering(vec, 1, 1.0, relative=True)],
        )  # fmt: skip
    with pytest.raises(sw.SteeringError, match=r"steering \[0\] is a str"):
        sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], [-1, 1], background=["sentiment"])


def test_generation_reports_each_steerings_norm_ratio_in_the_order_given(tiny_llama):
    a, b = random_vector(tiny_llama, seed=1), random_vector(tiny_llama, seed=2)
    stack = [
        sw.Steering(b, 2, 0.25, relative=True),
        sw.Steering(a, 0, 0.5, relative=True),
        sw.Steering(a, 1, 0.0),
    ]
    steered = sw.generate(tiny_llama, PROMPT, stack, max_new_tokens=2, baseline=False).steered
    assert steered.norm_ratios == pytest.approx([0.25, 0.5, 0.0], rel=1e-4)
    assert steered.norm_ratio == pytest.approx(0.5, rel=1e-4)  # the lowest layer's, as before


def test_steered_takes_a_stack(tiny_llama):
    stack = _stacks(tiny_llama)["two layers"]
    direct = sw.score(tiny_llama, PROMPT, " sunny", stack, chat=False)[0]
    with sw.steered(tiny_llama, stack):
        inside = sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0]
    with sw.steered(tiny_llama, *stack):
        spread = sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0]
    assert torch.allclose(direct, inside) and torch.equal(inside, spread)
    with pytest.raises(sw.SteeringError, match=r"steering \[1\] \(random-test@0\): strength must be finite"):
        with sw.steered(tiny_llama, [stack[0], sw.Steering(stack[0].vector, 0, float("nan"))]):
            pass
