"""Every chart lives in steerwidgets/charts.py and renders to SVG through its one path, ``to_svg``, which
never raises (a snapshot must not break a display). Small hand-made inputs, no model."""

from __future__ import annotations

import pytest

from steerwidgets import charts

SWEEP = {
    "layers": [2, 3],
    "strengths": [-1.0, 1.0],
    "mean_propensity": [[-0.5, 0.5], [-0.2, 0.3]],
    "kl": [[0.01, 0.02], [0.03, 0.04]],
    "steerability": [0.5, 0.25],
    "anti_steerable_fraction": [0.1, 0.3],
}
REPORT = {
    "strengths": [-1.0, 0.0, 1.0],
    "mean_propensity": [-0.4, 0.0, 0.5],
    "std_propensity": [0.1, 0.1, 0.2],
    "p_match": [0.3, 0.5, 0.7],
    "per_example": [
        {"slope": 0.4, "index": 0, "anti_steerable": False},
        {"slope": -0.1, "index": 1, "anti_steerable": True},
    ],
}
ROW = {
    "method": "caa",
    "behaviour": "sentiment",
    "delta_pos_50": 0.2,
    "random_delta_pos_50_mean": 0.0,
    "random_delta_pos_50_min": -0.1,
    "random_delta_pos_50_max": 0.1,
    "negated_delta_pos_50": -0.2,
}

SPECS = {
    "strength_sweep": lambda: charts.strength_sweep_spec([-1, 0, 1], [-1, 0, 1], [0, 0, 0.1], 0.5),
    "propensity": lambda: charts.propensity_chart(REPORT),
    "slopes": lambda: charts.slopes_chart(REPORT),
    "heatmap": lambda: charts.heatmap_chart(SWEEP),
    "anti": lambda: charts.anti_chart(SWEEP),
    "compare": lambda: charts.compare_chart([ROW]),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_chart_renders_to_svg(name):
    spec = SPECS[name]()
    assert spec and "$schema" in spec
    assert charts.to_svg(spec).lstrip().startswith("<svg")


def test_to_svg_never_raises_and_escapes_its_note():
    assert charts.to_svg({}) == ""
    note = charts.to_svg({"mark": "<b>nope</b>", "data": {"values": []}})
    assert note.startswith("<p><i>(chart could not be rendered") and "<b>" not in note


def test_one_home_for_charts():
    import importlib.util

    from steerwidgets import evaluation, report

    assert importlib.util.find_spec("steerwidgets.widgets.charts") is None
    assert not hasattr(evaluation, "compare_chart") and not hasattr(report, "chart_svg")
