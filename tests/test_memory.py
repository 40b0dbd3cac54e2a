"""The row budget of a pass: arithmetic for real model sizes, and the same sweep whatever the budget."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.engine import memory

GIB = 1024**3
# Llama-2-7B's config (the 7B class Tan et al. steer), in float16/bfloat16.
LLAMA2_7B = SimpleNamespace(
    hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=32,
    intermediate_size=11008, vocab_size=32000,
)  # fmt: skip
WEIGHTS_7B = 6.74e9 * 2  # parameters × 2 bytes


def test_a_7b_sweep_fits_a_24gb_card_at_the_default_settings():
    shape = memory.Shape.of(LLAMA2_7B, torch.bfloat16)
    free = 24e9 - WEIGHTS_7B - 0.5 * GIB  # what torch reports free after loading (CUDA context ≈ 0.5 GiB)
    # A built-in A/B prompt is ≈ 100 tokens; the letter protocol steers one token and reads one logit.
    letter = memory.row_cost(shape, context=100, tokens=1, keep=1)
    rows = memory.rows_that_fit(int(free), letter)
    # the default sweep has 7 strengths + 1 unsteered row per layer; the gradient null one row per layer
    assert rows >= 8
    assert rows * letter <= memory.USABLE * free
    grad = memory.row_cost(shape, context=100, tokens=1, keep=1, grad=True)
    assert memory.rows_that_fit(int(free), grad) >= 8
    # the answer-text protocol: ≈ 20 completion tokens, all of them read
    text = memory.row_cost(shape, context=100, tokens=20, keep=20)
    assert memory.rows_that_fit(int(free), text) >= 8
    # the arithmetic in docs/gpu.md: a letter row is the prompt's keys/values, ≈ 51 MiB
    assert 45 * 2**20 < letter < 60 * 2**20


def test_row_cost_grows_with_what_a_row_holds():
    shape = memory.Shape.of(LLAMA2_7B, torch.bfloat16)
    base = memory.row_cost(shape, 100, 1, 1)
    assert memory.row_cost(shape, 200, 1, 1) > base  # a longer cached prompt
    assert memory.row_cost(shape, 100, 1, 10) > base  # more logits read
    assert memory.row_cost(shape, 100, 1, 1, grad=True) > base  # activations kept for backward
    f32 = memory.Shape.of(LLAMA2_7B, torch.float32)
    assert memory.row_cost(f32, 100, 1, 1) > base


def test_rows_that_fit_is_at_least_one_and_capped():
    assert memory.rows_that_fit(0, 10**9) == 1
    assert memory.rows_that_fit(10**15, 1) == memory.MAX_ROWS


def test_off_cuda_the_budget_is_the_cpu_one(tiny_llama):
    assert memory.max_rows_for(tiny_llama, 50, 1, 1) == memory.CPU_ROWS


ITEMS = [
    sw.ABItem(f"Q{i}: is it good?\n\nChoices:\n(A) Yes.\n(B) No, it is not.", *("AB" if i % 2 else "BA"))
    for i in range(3)
]


@pytest.mark.parametrize(
    "protocol, null_method", [("letter", "sampled"), ("answer_text", "sampled"), ("answer_text", "gradient")]
)
def test_any_row_budget_gives_the_same_sweep(tiny_llama, protocol, null_method):
    vector = random_vector(tiny_llama, seed=2)
    kwargs = dict(protocol=protocol, null_directions=5, null_method=null_method)
    wide = sw.propensity_sweep(tiny_llama, ITEMS, vector, [1, 2], (-1.0, 0.0, 1.0), max_rows=None, **kwargs)
    narrow = sw.propensity_sweep(tiny_llama, ITEMS, vector, [1, 2], (-1.0, 0.0, 1.0), max_rows=2, **kwargs)
    for layer in (1, 2):
        # batch layout changes float summation order only
        np.testing.assert_allclose(narrow.propensity[layer], wide.propensity[layer], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(narrow.null_slopes(layer), wide.null_slopes(layer), rtol=1e-4, atol=1e-5)


def test_a_bad_row_budget_is_refused_before_any_work(tiny_llama):
    with pytest.raises(sw.SteeringError, match="max_rows must be a positive int"):
        sw.propensity_sweep(tiny_llama, ITEMS, random_vector(tiny_llama), 1, max_rows=0)
