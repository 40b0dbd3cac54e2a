"""CompareWidget: background run, progress, cancel, close and error paths (with a stand-in compare), the
model left exactly unsteered after a cancel or close inside a steered generation (tiny model), the columns
against real rows, and the front end's sort and format helpers (run in Node when it is available)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

import steerwidgets as sw
from helpers import needs_node, node_json, random_vector
from steerwidgets import comparison
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


def test_close_cancels_the_run_and_stops_the_thread(monkeypatch):
    started, stopped = threading.Event(), []

    def slow_compare(**kwargs):
        started.set()
        stopped.append(kwargs["cancel"].wait(10))
        raise GenerationCancelled("comparison cancelled")

    monkeypatch.setattr(C, "compare", slow_compare)
    widget = C.CompareWidget(["caa"], model=object(), autostart=True)
    assert started.wait(10) and widget.running
    widget.close()
    assert widget._runner.close(timeout=10)  # the thread has ended ...
    assert stopped == [True] and widget.status == "cancelled" and not widget.running  # ... cancelled
    widget.close()  # idempotent
    widget.run()  # after close: nothing starts
    assert not widget.running and widget.wait(10) is None


@pytest.mark.parametrize("stop", ["cancel", "close"])
def test_stopping_inside_a_steered_generation_leaves_the_model_unsteered(tiny_llama, monkeypatch, stop):
    prompt = "The weather today is"
    fresh = sw.generate(tiny_llama, prompt, max_new_tokens=6).base
    before = sw.score(tiny_llama, [prompt], [" sunny and warm"])[0].clone()
    steering = sw.Steering(random_vector(tiny_llama), 1, 8.0)
    in_trace, ends = threading.Event(), []

    def steered_compare(**kwargs):
        cancel = kwargs["cancel"]

        def on_token(run, step, ids):
            if not in_trace.is_set():
                in_trace.set()  # the steered trace is running: now the test cancels or closes
                assert cancel.wait(10)

        try:
            sw.generate(kwargs["model"], prompt, steering, max_new_tokens=60, baseline=False,
                        on_token=on_token, cancel=cancel)  # fmt: skip
        except GenerationCancelled:
            ends.append("cancelled")
            raise
        ends.append("finished")
        return E.CompareResult([], {}, {})

    monkeypatch.setattr(C, "compare", steered_compare)
    widget = C.CompareWidget(["caa"], model=tiny_llama, autostart=True)
    assert in_trace.wait(60)
    getattr(widget, stop)()
    # No wait for the widget: the next use of the model takes turns with the run on model.lock.
    after = sw.generate(tiny_llama, prompt, max_new_tokens=6).base
    assert ends == ["cancelled"]
    assert after.token_ids == fresh.token_ids and after.texts == fresh.texts
    assert torch.equal(after.first_logprobs, fresh.first_logprobs)
    assert torch.equal(sw.score(tiny_llama, [prompt], [" sunny and warm"])[0], before)  # bit for bit
    assert widget.wait(10) is None and not widget.running
    if stop == "cancel":
        assert widget.status == "cancelled" and widget.error == ""
    widget.close()


def test_errors_are_shown_not_raised(monkeypatch):
    def broken(**kwargs):
        raise ValueError("layer 99 is out of range")

    monkeypatch.setattr(C, "compare", broken)
    widget = C.CompareWidget(["caa"], model=object())
    widget.run(wait=True)
    assert "layer 99" in widget.error and widget.status == "failed" and not widget.running


def test_columns_exist_in_real_rows(tiny_llama, monkeypatch):
    from test_evaluation import _tiny_data

    monkeypatch.setattr(comparison, "behaviour_data", _tiny_data)
    monkeypatch.setattr(comparison, "_passages", lambda n: ["The Moon orbits the Earth once a month."])
    widget = C.CompareWidget(
        ["caa"], ["sentiment"], model=tiny_llama, layer=2, strengths=[-1, 0, 1], seeds=(0, 1)
    )
    widget.run(wait=True)
    assert widget.error == ""
    row = widget.rows[0]
    assert "degraded" in row["fluency"] and isinstance(row["fluency_reason"], str)
    assert row["norm_ratio"] > 0 and abs(row["matched_strength"] - row["strength_scale"]) < 1e-9  # λ = 1
    for column in widget.columns:
        if column.get("optional"):  # compare(contexts=True) / capability=n only
            assert column["key"] not in row, column["key"]
            continue
        assert column["key"] in row, column["key"]
        for key in column.get("band", []):
            assert key in row


def test_bundle_is_built():
    assert C.bundle("compare").is_file()


NODE_CHECK = """
import { sortRows, formatValue, visibleColumns } from "./js/src/compare.js";
const rows = [{m: "b", v: 2}, {m: "a", v: null}, {m: "c", v: -1}, {m: "d", v: 10}];
const out = {
  asc: sortRows(rows, "v", 1).map((r) => r.m),
  desc: sortRows(rows, "v", -1).map((r) => r.m),
  text: sortRows(rows, "m", -1).map((r) => r.m),
  fmt: [formatValue(null), formatValue(0.12345), formatValue(3), formatValue([-0.5, 1.5]),
        formatValue(0.00001), formatValue("<b>x</b>")],
  visible: visibleColumns(
    [{key: "m"}, {key: "v", optional: true}, {key: "capability", optional: true}], rows
  ).map((c) => c.key),
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
    assert out["visible"] == ["m", "v"]  # an optional column no row has is left out
