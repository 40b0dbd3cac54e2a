"""The target check's verdict and warnings (pure functions, no model)."""

from __future__ import annotations

from steerwidgets.target_check import TargetChart, target_verdict, target_warnings

TARGETS = (" I love it", " I hate it")


def test_target_verdict_against_random_directions():
    null = [-0.2, 0.1, 0.0, 0.15, -0.1, 0.05, -0.05, 0.2]
    assert target_verdict(3.0, null, 4.0, "here")["verdict"] == "steers"
    assert target_verdict(-3.0, null, -4.0, "here")["verdict"] == "steers"  # pushed towards the contrast
    back = target_verdict(3.0, null, -4.0, "layer 3")
    assert back["verdict"] == "backfires" and back["level"] == "warning"
    assert back["message"].startswith("Target check (layer 3): backfires — the target's log-odds moved +3.00")
    same = target_verdict(0.1, null, 4.0, "here")
    assert same["verdict"] == "no_detectable_effect" and "8 random directions" in same["message"]


def test_target_warnings_rules():
    grid = [-8.0, -4.0, 0.0, 4.0, 8.0]
    # rises with strength: fine at +4, against the sign at... never
    assert target_warnings(grid, [-2, -1, 0, 1, 2], [0, 0, 0, 0, 0], 4.0, TARGETS) == []
    # falls when the strength is positive: against the sign
    (w,) = target_warnings(grid, [2, 1, 0, -1, -2], [0, 0, 0, 0, 0], 4.0, TARGETS)
    assert w["level"] == "warning" and "less likely" in w["message"]
    # rises then falls: non-monotonic
    levels = target_warnings(grid, [-2, -1, 0, 1, 0.5], [0, 0, 0, 0, 0], 4.0, TARGETS)
    assert [x["level"] for x in levels] == ["notice"] and "non-monotonic" in levels[0]["message"]
    # no bigger than the random vector's change
    (w,) = target_warnings(grid, [-0.2, -0.1, 0, 0.1, 0.2], [0, 0, 0, 0.5, 1.0], 4.0, TARGETS)
    assert "random vector" in w["message"]


def test_chart_points_are_keyed_so_a_strength_move_reuses_them():
    steer = lambda vector, strength: (vector, strength)  # noqa: E731
    chart = TargetChart.around(("p", "t", "v"), 4.0, 2.0, "vec", "rnd", ["n1", "n2"], steer)
    assert chart.grid == [-8.0, -4.0, 0.0, 2.0, 4.0, 8.0]
    missing = dict(chart.missing({}))
    # 0 is shared by both series (unsteered); each other grid point per series; the nulls at 2.0 only
    assert missing[("p", "t")] is None
    assert len(missing) == 1 + 2 * 5 + 2
    assert missing[("p", "t", "v", "null2", 2.0)] == ("n2", 2.0)
    cache = {key: (1.0, 0.0) for key in missing}
    assert chart.missing(cache) == []
    assert chart.curve("vector", cache) == [1.0] * 6
    assert chart.null_effects(cache) == [0.0, 0.0, 0.0]
