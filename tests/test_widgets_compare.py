"""CompareWidget: background run, progress, cancel and error paths (with a stand-in compare), the columns
against real rows, and the front end's sort and format helpers (run in Node when it is available)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from helpers import needs_node, node_json
from steerwidgets import evaluation as E
from steerwidgets.engine.generation import GenerationCancelled
from steerwidgets.widgets import compare as C

ROOT = Path(__file__).resolve().parent.parent
ROW = {
    "method": "caa",
    "behaviour": "sentiment",
    "steerability": 0.5,
    "delta_pos_50": 0.2,
    "random_delta_pos_50_mean": 0.01,
    "random_delta_pos_50_min": -0.02,
    "random_delta_pos_50_max": 0.03,
    "negated_delta_pos_50": -0.2,
    "zero_delta_pos_50": 0.0,
    "prompting_delta_pos_50": 0.4,
    "pne": float("nan"),
}


def _fake_compare(**kwargs):
    kwargs["progress"](1, 2, "half")
    kwargs["progress"](2, 2, "all")
    return E.CompareResult([dict(ROW)], {}, {"layer": kwargs["layer"]})


def test_run_fills_rows_chart_and_progress(monkeypatch):
    monkeypatch.setattr(C, "compare", _fake_compare)
    widget = C.CompareWidget(["caa"], ["sentiment"], model=object(), layer=3)
    assert not widget.running and widget.columns and "Run" in widget.status
    widget.run(wait=True)
    assert widget.rows[0]["method"] == "caa"
    assert widget.rows[0]["pne"] is None  # NaN is not JSON
    json.dumps(widget.rows)
    assert widget.progress == 1.0 and widget.status.startswith("done") and not widget.running
    assert widget.settings == {"layer": 3} and widget.result is not None
    assert widget.spec["facet"]["column"]["field"] == "behaviour"
    widget.metric = "steerability"
    assert widget.spec["title"]["text"] == "steerability"


def test_from_result_shows_a_finished_run():
    result = E.CompareResult([dict(ROW)], {}, {"layer": 12})
    widget = C.CompareWidget.from_result(result, methods=["caa"], model=object())
    assert widget.rows[0]["delta_pos_50"] == 0.2 and widget.spec and widget.progress == 1.0
    assert widget.result is result and not widget.running


def test_cancel_from_the_front_end_stops_the_run(monkeypatch):
    started = threading.Event()

    def slow_compare(**kwargs):
        started.set()
        assert kwargs["cancel"].wait(10)
        raise GenerationCancelled("comparison cancelled")

    monkeypatch.setattr(C, "compare", slow_compare)
    widget = C.CompareWidget(["caa"], model=object())
    widget._on_message(widget, {"type": "run"})
    assert started.wait(10) and widget.running
    widget._on_message(widget, {"type": "cancel"})
    widget.wait(10)
    assert widget.status == "cancelled" and not widget.running and widget.result is None


def test_errors_are_shown_not_raised(monkeypatch):
    def broken(**kwargs):
        raise ValueError("layer 99 is out of range")

    monkeypatch.setattr(C, "compare", broken)
    widget = C.CompareWidget(["caa"], model=object())
    widget.run(wait=True)
    assert "layer 99" in widget.error and widget.status == "failed" and not widget.running


def test_columns_exist_in_real_rows(tiny_llama, monkeypatch):
    from test_evaluation import _tiny_data

    monkeypatch.setattr(E, "behaviour_data", _tiny_data)
    monkeypatch.setattr(E, "_passages", lambda n: ["The Moon orbits the Earth once a month."])
    widget = C.CompareWidget(
        ["caa"], ["sentiment"], model=tiny_llama, layer=2, strengths=[-1, 0, 1], seeds=(0, 1)
    )
    widget.run(wait=True)
    assert widget.error == ""
    row = widget.rows[0]
    assert "degraded" in row["fluency"] and isinstance(row["fluency_reason"], str)
    assert row["norm_ratio"] > 0 and abs(row["matched_strength"] - row["strength_scale"]) < 1e-9  # λ = 1
    for column in widget.columns:
        assert column["key"] in row, column["key"]
        for key in column.get("band", []):
            assert key in row


def test_bundle_is_built():
    assert C.bundle("compare").is_file()


NODE_CHECK = """
import { sortRows, formatValue } from "./js/src/compare.js";
const rows = [{m: "b", v: 2}, {m: "a", v: null}, {m: "c", v: -1}, {m: "d", v: 10}];
const out = {
  asc: sortRows(rows, "v", 1).map((r) => r.m),
  desc: sortRows(rows, "v", -1).map((r) => r.m),
  text: sortRows(rows, "m", -1).map((r) => r.m),
  fmt: [formatValue(null), formatValue(0.12345), formatValue(3), formatValue([-0.5, 1.5]),
        formatValue(0.00001), formatValue("<b>x</b>")],
};
console.log(JSON.stringify(out));
"""


@needs_node
def test_front_end_sorting_and_formatting():
    out = node_json(NODE_CHECK)
    assert out["asc"] == ["c", "b", "d", "a"]  # numeric order, missing last
    assert out["desc"] == ["d", "b", "c", "a"]  # missing stays last
    assert out["text"] == ["d", "c", "b", "a"]
    assert out["fmt"] == ["–", "0.123", "3", "[-0.500, 1.500]", "1.00e-5", "<b>x</b>"]
