"""Metric formulas against values computed by hand (metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steerwidgets import metrics

LAM = [-1.0, 0.0, 1.0]


def test_propensity_and_p_match():
    m = metrics.propensity(np.array([2.0, 0.0]), np.array([1.0, 3.0]))
    assert m.tolist() == [1.0, -3.0]
    assert metrics.p_match(np.array([0.0]))[0] == pytest.approx(0.5)
    assert metrics.p_match(np.array([math.log(3)]))[0] == pytest.approx(0.75)
    assert metrics.p_match(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]


def test_slopes_by_hand():
    m = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, -1.0], [5.0, 5.0, 5.0], [0.0, 2.0, 1.0]])
    # OLS slope over λ = -1, 0, 1 is (m3 - m1) / 2 when λ is symmetric
    assert metrics.slopes(m, LAM).tolist() == pytest.approx([1.0, -2.0, 0.0, 0.5])


def test_slopes_uneven_grid():
    lam = [0.0, 1.0, 3.0]
    m = np.array([[1.0, 3.0, 7.0]])  # exactly 1 + 2λ
    assert metrics.slopes(m, lam)[0] == pytest.approx(2.0)


def test_steerability_is_slope_of_mean_curve():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(10, 7))
    lam = [-1.5, -1, -0.5, 0, 0.5, 1, 1.5]
    assert metrics.steerability(m, lam) == pytest.approx(metrics.slopes(m.mean(0), lam)[0])


def test_anti_steerable_counts_ties_as_anti():
    s = np.array([0.5, 0.0, -0.1, 2.0])
    assert metrics.anti_steerable(s).tolist() == [False, True, True, False]
    assert metrics.anti_steerable_fraction(s) == 0.5


def test_non_monotonic():
    m = np.array(
        [
            [0.0, 1.0, 2.0, 3.0],  # increasing
            [0.0, 1.0, 1.0, 2.0],  # flat step: zeros carry no sign
            [0.0, 2.0, 1.0, 3.0],  # up, down, up
            [3.0, 3.0, 3.0, 3.0],  # flat
            [3.0, 2.0, 2.0, 1.0],  # decreasing
        ]
    )
    assert metrics.non_monotonic(m).tolist() == [False, False, True, False, False]


def test_ab_bias_r2():
    s = np.array([1.0, 1.0, -1.0, -1.0])
    assert metrics.ab_bias_r2(s, np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    assert metrics.ab_bias_r2(s, np.array([1, 0, 1, 0])) == pytest.approx(0.0)
    assert metrics.ab_bias_r2(s, np.array([1, 1, 1, 1])) is None
    # by hand: groups {1, 2} and {0}: fitted 1.5, 1.5, 0; SSE 0.5; SST 2 → R² 0.75
    assert metrics.ab_bias_r2(np.array([1.0, 2.0, 0.0]), np.array([1, 1, 0])) == pytest.approx(0.75)


def test_relative_steerability():
    assert metrics.relative_steerability(0.5, 1.0) == 0.5
    assert metrics.relative_steerability(0.5, 0.2) is None


@pytest.mark.parametrize(
    ("fraction", "level"),
    [
        (0.0, "ok"),
        (0.099, "ok"),
        (0.10, "notice"),
        (0.29, "notice"),
        (0.30, "warning"),
        (0.5, "warning"),
    ],
)
def test_warning_level(fraction, level):
    assert metrics.warning_level(fraction) == level


def test_likelihood_shift_top_q():
    base_pos = np.array([-1.0, -5.0, -3.0, -2.0])
    steer_pos = np.array([-1.0, -4.0, -1.0, -2.0])
    base_neg = np.array([-1.0, -5.0, -3.0, -2.0])
    steer_neg = np.array([-3.0, -5.0, -3.0, -2.0])
    plus, minus = metrics.likelihood_shift(base_pos, steer_pos, base_neg, steer_neg, q=1.0)
    assert plus == pytest.approx((0 + 1 + 2 + 0) / 4)
    assert minus == pytest.approx((2 + 0 + 0 + 0) / 4)
    # top 50 %: least likely positives are -5 and -3 (shifts 1, 2); most likely negatives -1, -2
    plus, minus = metrics.likelihood_shift(base_pos, steer_pos, base_neg, steer_neg, q=0.5)
    assert plus == pytest.approx(1.5)
    assert minus == pytest.approx(1.0)


def test_perplexity_kl_pne():
    assert metrics.perplexity([np.log([0.5, 0.5])]) == pytest.approx(2.0)
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert metrics.kl_divergence(p, q)[0] == pytest.approx(expected)
    assert metrics.kl_divergence(p, p)[0] == pytest.approx(0.0)
    pne = metrics.perplexity_normalised_effect(np.array([3.0, 1.0]), 1.0, np.array([2.0, 1.0]))
    assert pne.tolist() == [1.0, 0.0]
