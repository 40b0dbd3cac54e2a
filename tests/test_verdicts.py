"""Verdicts on constructed cases: each class is planted and must be found; the statistics are hand-checked."""

from __future__ import annotations

import numpy as np
import pytest

import steerwidgets as sw
from steerwidgets import verdicts as V
from steerwidgets.verdicts import ab_check_lines

N, K = 40, 16
IS_A = np.arange(N) % 2 == 0


def _null(scale: float = 0.1, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, size=(K, N))


def _noise(scale: float = 0.1, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, size=N)


def test_quantiles_match_tables():
    assert V._normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert V._normal_quantile(0.025) == pytest.approx(-1.959964, abs=1e-6)
    assert V._t_quantile(0.975, 15) == pytest.approx(2.1314, abs=1e-3)
    assert V._t_quantile(0.975, 5) == pytest.approx(2.5706, abs=3e-3)
    assert V._t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert V._t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert V._t_quantile(0.975, 3) == pytest.approx(3.182, abs=1e-2)


def test_null_band_is_the_prediction_interval():
    samples = np.array([[-1.0], [0.0], [1.0], [2.0]])
    lo, hi = V.null_band(samples)
    half = V._t_quantile(0.975, 3) * np.std(samples, ddof=1) * np.sqrt(1 + 1 / 4)
    assert lo[0] == pytest.approx(0.5 - half) and hi[0] == pytest.approx(0.5 + half)
    with pytest.raises(ValueError):
        V.null_band(np.zeros((1, 3)))


def test_wilson_and_bootstrap():
    lo, hi = V.wilson_interval(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-3) and hi == pytest.approx(0.7007, abs=1e-3)
    values = np.arange(20, dtype=float)
    ci = V.bootstrap_ci(values)
    assert ci[0] < values.mean() < ci[1]
    assert ci == V.bootstrap_ci(values)  # seeded: the same every time


def test_option_dependence_counts_kept_signs():
    assert V.option_dependence(np.array([1.0, -2.0, 3.0, 0.5]), np.array([2.0, -1.0, -3.0, -0.5])) == 0.5
    with pytest.raises(ValueError):
        V.option_dependence(np.ones(3), np.ones(2))


def test_planted_effect_steers():
    verdict = V.judge(1.0 + _noise(), _null(), matching_is_a=IS_A, option_dependence=0.95)
    assert verdict.verdict == "steers"
    assert verdict.counts["steers"] == N and verdict.counts["backfires"] == 0
    assert verdict.steerability_ci95[0] > 0.9 and verdict.warning_level == "ok"
    assert "steers" in verdict.reason and "random directions" in verdict.reason
    assert sum(verdict.counts.values()) == N


def test_planted_backfire_backfires_and_warns():
    verdict = V.judge(-1.0 + _noise(), _null(), matching_is_a=IS_A, option_dependence=0.95)
    assert verdict.verdict == "backfires" and verdict.warning_level == "warning"
    assert verdict.counts["backfires"] == N
    line, listed = V.warnings_for(verdict, [f"q{i}" for i in range(N)], -1.0 + _noise(), layer=3)
    assert line["level"] == "warning"
    assert line["message"].startswith("Letter protocol (layer 3, 40 items): backfires")
    assert listed["level"] == "warning"
    assert listed["message"].startswith(f"{N} of {N} items backfire beyond what random directions do")


def test_no_effect_is_no_detectable_effect_and_does_not_warn():
    # the vector behaves like a random direction: raw s_i ≤ 0 on about half the items ...
    slopes = np.random.default_rng(7).normal(0.0, 0.1, size=N)
    slopes -= slopes.mean()
    verdict = V.judge(slopes, _null(), matching_is_a=IS_A, option_dependence=0.95)
    assert verdict.anti_steerable_fraction > 0.3  # Tan et al.'s raw fraction would say "warning" ...
    assert verdict.verdict == "no_detectable_effect"
    assert verdict.warning_level == "ok"  # ... but nothing backfires beyond the null
    assert verdict.counts["no_detectable_effect"] >= N - 3


def test_the_null_is_calibrated():
    """A vector drawn from the same process as the random directions gets a verdict other than
    "no detectable effect" about 5 % of the time (the band's coverage), and per-item classes ≈ 5 %."""
    rng = np.random.default_rng(11)

    def draw(k: int) -> np.ndarray:  # a shared shift per direction plus item noise, as real slopes have
        return rng.normal(0, 0.05, size=(k, 1)) + rng.normal(0, 0.1, size=(k, N))

    trials = 300
    flagged, item_rate = 0, 0.0
    for _ in range(trials):
        verdict = V.judge(draw(1)[0], draw(K), option_dependence=0.95)
        flagged += verdict.verdict != "no_detectable_effect"
        item_rate += (verdict.counts["steers"] + verdict.counts["backfires"]) / N / trials
    assert flagged / trials < 0.10
    assert 0.01 < item_rate < 0.10


def test_planted_letter_bias_is_letter_driven():
    slopes = np.where(IS_A, 1.0, -1.0) + _noise(0.05)
    verdict = V.judge(slopes, _null(), matching_is_a=IS_A, option_dependence=0.95)
    assert verdict.verdict == "letter_driven" and verdict.ab_bias_r2 > 0.9
    assert verdict.warning_level == "notice"  # the "backfiring" B items are the letter, not the behaviour
    messages = [w["message"] for w in V.warnings_for(verdict, [], slopes)]
    assert any(
        "follow the answer letter" in m and "moves the letter, not the behaviour" in m for m in messages
    )


def test_letter_picking_model_cannot_judge():
    verdict = V.judge(1.0 + _noise(), _null(), matching_is_a=IS_A, option_dependence=0.10)
    assert verdict.verdict == "cannot_judge" and "does not read the options" in verdict.reason
    assert "answer-text" in verdict.reason
    # a model at chance (half the signs kept) cannot be trusted either; a clear majority can
    assert V.judge(1.0 + _noise(), _null(), option_dependence=0.55).verdict == "cannot_judge"
    assert V.judge(1.0 + _noise(), _null(), option_dependence=0.85).verdict == "steers"
    # the answer-text protocol has no letters to pick: the option swap does not apply to it
    assert V.judge(1.0 + _noise(), _null(), protocol="answer_text", option_dependence=0.1).verdict == "steers"


def test_a_few_backfiring_items_are_listed_with_chance_level():
    slopes = 1.0 + _noise()
    slopes[:3] = -2.0
    verdict = V.judge(slopes, _null(), matching_is_a=IS_A, option_dependence=0.95)
    assert verdict.verdict == "steers" and verdict.counts["backfires"] == 3
    line, warning = V.warnings_for(verdict, [f"question {i}" for i in range(N)], slopes)
    assert line["level"] == "ok" and line["verdict"] == "steers"
    assert warning["message"].startswith(f"3 of {N} items backfire beyond what random directions do")
    assert "expected by chance" in warning["message"] and warning["items"][:3] == [
        "question 0",
        "question 1",
        "question 2",
    ]


def test_summary_has_the_cli_contract_fields():
    summary = V.judge(1.0 + _noise(), _null()).summary()
    for key in ("verdict", "verdict_reason", "steerability_ci95", "null", "item_classes", "mean_propensity"):
        assert key in summary
    assert set(summary["null"]) == {"method", "n_directions", "steerability_q025", "steerability_q975"}
    assert summary["verdict"] in V.VERDICTS


def test_a_single_number_against_random_directions():
    null = [0.01, -0.02, 0.0]
    verdict, reason = V.against_null(0.5, null, "Δ+")
    assert verdict == "steers" and reason.startswith("Δ+ +0.500 is above what 3 random directions")
    assert V.against_null(-0.5, null, "Δ+")[0] == "backfires"
    assert V.against_null(0.01, null, "Δ+")[0] == "no_detectable_effect"
    assert V.against_null(0.5, [0.0], "Δ+")[0] == "cannot_judge"


# --- the Playground's A/B check lines ---------------------------------------------------------
def _result(prop: np.ndarray, null: np.ndarray, questions: list[str], swapped=None) -> sw.PropensityResult:
    """A hand-made letter-protocol result: propensities [n, 3] over λ = -1, 0, 1 and null slopes [K, n]."""
    items = [sw.ABItem(q, *("AB" if i % 2 == 0 else "BA")) for i, q in enumerate(questions)]
    return sw.PropensityResult(
        strengths=np.array([-1.0, 0.0, 1.0]),
        layers=[5],
        positions="last",
        propensity={5: prop},
        norm_ratio={5: np.zeros(3)},
        vector_norm={5: 1.0},
        items=items,
        null={5: null},
        null_method="hand-made",
        unsteered=prop[:, 1],
        swapped_propensity=swapped,
    )


def test_ab_check_lines_list_items_that_backfire_beyond_the_null():
    rng = np.random.default_rng(0)
    n = 20
    slopes = np.full(n, 1.0)
    slopes[[3, 7]] = -1.0  # two items backfire
    prop = np.outer(slopes, [-1.0, 0.0, 1.0]) + 0.5
    questions = [f"Q{i} " + "x" * 100 for i in range(n)]
    result = _result(prop, rng.normal(0, 0.05, size=(16, n)), questions, swapped=prop[:, 1].copy())
    line, listed = ab_check_lines(result, layer=5)
    assert line["verdict"] == "steers" and line["level"] == "ok"
    assert listed["level"] == "notice"  # 2 of 20 = 10 %: metrics.md's notice threshold
    assert listed["items"] == [questions[3][:80], questions[7][:80]]
    assert listed["message"].startswith("2 of 20 items backfire beyond what random directions do")
    # a letter-picking model: the swap flips every preference, so the letter protocol cannot judge and
    # the answer-text result (when there is one) comes first
    flipped = _result(prop, rng.normal(0, 0.05, size=(16, n)), questions, swapped=-prop[:, 1])
    at = _result(prop, rng.normal(0, 0.05, size=(16, n)), questions)
    at.protocol = "answer_text"
    lines = ab_check_lines(flipped, layer=5, answer_text=at)
    assert [x["protocol"] for x in lines][0] == "answer_text"
    assert any(x["verdict"] == "cannot_judge" and "does not read the options" in x["message"] for x in lines)
