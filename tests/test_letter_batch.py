"""The letter sweep's batched items (engine/letter_batch.py) give the per-item path's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.data import ABItem
from steerwidgets.engine import letter_batch

# Prompts of different lengths, so the left padding and the per-row positions matter.
ITEMS = [
    ABItem("Pick one.\n(A) yes\n(B) no", "A", "B"),
    ABItem("Choose wisely, and take your time over it.\n(A) up\n(B) down", "B", "A"),
    ABItem("Which?\n(A) left\n(B) right", "A", "B"),
    ABItem("A longer question that runs on for a while before the options.\n(A) red\n(B) blue", "B", "A"),
]


class Spy:
    """Counts the batched passes while forwarding to them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.values = self.gradients = 0
        values, gradients = letter_batch.letter_values, letter_batch.letter_gradients

        def count_values(*args, **kwargs):
            self.values += 1
            return values(*args, **kwargs)

        def count_gradients(*args, **kwargs):
            self.gradients += 1
            return gradients(*args, **kwargs)

        monkeypatch.setattr(letter_batch, "letter_values", count_values)
        monkeypatch.setattr(letter_batch, "letter_gradients", count_gradients)


def assert_same(a: sw.PropensityResult, b: sw.PropensityResult) -> None:
    for layer in a.layers:
        np.testing.assert_allclose(a.propensity[layer], b.propensity[layer], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a.norm_ratio[layer], b.norm_ratio[layer], rtol=1e-4, atol=1e-6)
        if a.null is not None:
            np.testing.assert_allclose(a.null[layer], b.null[layer], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(a.unsteered, b.unsteered, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("null_method", ["gradient", "sampled"])
@pytest.mark.parametrize("relative", [False, True])
def test_batched_items_equal_one_item_per_pass(tiny, null_method, relative, monkeypatch):
    vec = random_vector(tiny, scale=2.0)
    layers = [0, tiny.n_layers - 1]
    kwargs = dict(null_directions=6, null_method=null_method, relative=relative, max_rows=128)
    one = sw.propensity_sweep(tiny, ITEMS, vec, layers, [-1.0, 0.0, 1.5], batch_items=False, **kwargs)
    spy = Spy(monkeypatch)
    many = sw.propensity_sweep(tiny, ITEMS, vec, layers, [-1.0, 0.0, 1.5], **kwargs)
    assert spy.values == 1  # every item and layer in one forward (2 layers × 4 items × ≤ 15 rows)
    assert spy.gradients == (1 if null_method == "gradient" else 0)
    assert_same(one, many)
    assert np.abs(many.propensity[layers[-1]][:, 0] - many.propensity[layers[-1]][:, 2]).max() > 1e-3


def test_a_small_row_budget_splits_items_and_layers(tiny_llama, monkeypatch):
    vec = random_vector(tiny_llama, scale=2.0)
    layers = [0, 1, 2]
    one = sw.propensity_sweep(tiny_llama, ITEMS, vec, layers, [-1.0, 1.0], batch_items=False, max_rows=4)
    spy = Spy(monkeypatch)
    many = sw.propensity_sweep(tiny_llama, ITEMS, vec, layers, [-1.0, 1.0], max_rows=4)
    # 3 rows per item and layer (no λ = 0: an unsteered row is added) > 4 / 2: one item, one layer a pass
    assert spy.values == len(ITEMS) * len(layers)
    assert_same(one, many)


def test_other_operators_and_progress(tiny_llama):
    vec = random_vector(tiny_llama, scale=2.0)
    seen = []
    kwargs = dict(operator="clamp", null_directions=3, null_method="sampled")
    one = sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], [0.0, 1.0], batch_items=False, **kwargs)
    many = sw.propensity_sweep(
        tiny_llama, ITEMS, vec, [1], [0.0, 1.0], **kwargs, progress=lambda *a: seen.append(a)
    )
    assert_same(one, many)
    assert seen[-1] == (len(ITEMS), len(ITEMS))


@pytest.mark.parametrize("positions", ["all", "-3:", "prompt"])
def test_earlier_positions_take_the_per_item_path(tiny_llama, positions, monkeypatch):
    spy = Spy(monkeypatch)
    sw.propensity_sweep(tiny_llama, ITEMS, random_vector(tiny_llama), 1, [-1.0, 1.0], positions=positions)
    assert spy.values == 0


def test_an_unchecked_architecture_takes_the_per_item_path(tiny_neox, monkeypatch):
    assert not letter_batch.can_batch(tiny_neox)
    spy = Spy(monkeypatch)
    sw.propensity_sweep(tiny_neox, ITEMS, random_vector(tiny_neox), 1, [-1.0, 1.0])
    assert spy.values == 0


@pytest.mark.model
def test_batched_items_equal_one_item_per_pass_on_the_default_model(smol):
    items = sw.builtin_ab("sentiment")[:12]
    vec = sw.caa(smol, items, [12])
    one = sw.propensity_sweep(smol, items, vec, 12, [-4.0, 0.0, 4.0], batch_items=False)
    many = sw.propensity_sweep(smol, items, vec, 12, [-4.0, 0.0, 4.0])
    assert_same(one, many)


def test_a_cancel_during_the_last_progress_report_is_honoured(tiny_llama):
    """One batched pass reports once, at the end: a Cancel clicked then still stops the sweep."""
    import threading

    cancel = threading.Event()
    vec = random_vector(tiny_llama, scale=2.0)
    before = sw.score(tiny_llama, ["Pick one."], [" A"])[0]
    with pytest.raises(sw.engine.GenerationCancelled):
        sw.propensity_sweep(
            tiny_llama, ITEMS, vec, [1], [-1.0, 1.0], null_directions=3, cancel=cancel,
            progress=lambda done, total: cancel.set(),
        )  # fmt: skip
    assert np.array_equal(sw.score(tiny_llama, ["Pick one."], [" A"])[0].numpy(), before.numpy())
