"""ReliabilityReport and LayerSweep on the real default model (small sizes): traits after the run, the
item list against the metrics, "open in Playground" through the front end's message, cancel, and exports
that carry no script and escape dataset text. Pure helpers and the front end's helpers run without it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import needs_node, node_json
from steerwidgets import metrics, reliability_lab
from steerwidgets.widgets import reliability as RW
from steerwidgets.widgets.playground import Playground

ROOT = Path(__file__).resolve().parent.parent
LAYER = 9
EVIL = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def ab_items() -> list[sw.ABItem]:
    return sw.builtin_ab("sentiment")


@pytest.fixture(scope="module")
def report(smol, ab_items):
    widget = RW.ReliabilityReport(smol, ab_items[:8], ab_items[40:50], layer=LAYER)
    assert widget.wait(600), "the report did not finish"
    yield widget
    widget.close()


def _close_opened(widget) -> None:
    widget._stop_playground()  # and wait for its last request: one trace on the model at a time


# --- ReliabilityReport --------------------------------------------------------------------------------
@pytest.mark.model
def test_report_fills_its_traits(report):
    assert report.status == "done" and report.error == "" and not report.running
    assert report.progress == 1.0 and report.stage.startswith("Done")
    rep = report.report
    json.dumps(rep, allow_nan=False)  # what the front end can parse
    assert rep["layer"] == LAYER and rep["n_items"] == 10 and rep["positions"] == "last"
    assert rep["strengths"] == list(sw.engine.DEFAULT_STRENGTHS)
    assert report.precheck["level"] in ("green", "amber", "red") and report.precheck["layer"] == LAYER
    assert {"mean_cosine", "separation", "effect_size", "reason"} <= set(report.precheck)
    assert report.propensity_spec["hconcat"] and report.slopes_spec["layer"]
    # the level follows backfires beyond the null (or the verdict), never raw s_i ≤ 0
    letter = report.result.verdict(LAYER)
    assert rep["verdict"] == letter.verdict and rep["verdict_reason"] == letter.reason
    assert rep["null"]["n_directions"] == sw.verdicts.NULL_DIRECTIONS
    assert sum(rep["item_classes"].values()) == 10
    at = rep["answer_text"]
    assert at["verdict"] in sw.verdicts.VERDICTS and at["positions"] == "continuation"
    levels = ["ok", "notice", "warning"]
    assert report.anti["level"] == max(letter.warning_level, at["warning_level"], key=levels.index)
    assert f"Letter protocol: {letter.verdict.replace('_', ' ')}" in report.anti["message"]
    assert f"{rep['anti_steerable_fraction']:.0%}" in report.anti["message"]  # Tan et al.'s, kept and named
    if rep["lead"] == "answer_text":  # the letter protocol cannot judge: the answer text leads
        assert letter.verdict == "cannot_judge"
        assert report.anti["message"].startswith("Answer-text protocol")
    assert report.vector is not None and report.vector.method == "caa" and report.vector.layers == [LAYER]
    assert report.vector.meta["swap_options"] is True  # both letter orders by default
    assert report.generalisation == {}  # not asked for
    assert set(report.timings) == {"vector_and_precheck_s", "sweep_s", "answer_text_s"}


@pytest.mark.model
def test_backfiring_then_anti_steerable_items_match_the_metrics(report):
    result = report.result
    m = result.propensity[LAYER]
    slopes = metrics.slopes(m, result.strengths)
    anti = metrics.anti_steerable(slopes)
    nonmono = metrics.non_monotonic(m) & ~anti
    rep = report.report
    if rep["lead"] == "answer_text":
        at = report.answer_text_result
        backfire = [at.item_index[i] for i, c in enumerate(at.verdict(LAYER).classes) if c == "backfires"]
    else:
        backfire = [i for i, c in enumerate(result.verdict(LAYER).classes) if c == "backfires"]
    kinds = [row["kind"] for row in report.items]
    n_back, n_anti = len(backfire), int(anti.sum())
    assert kinds == ["backfires"] * n_back + ["anti-steerable"] * n_anti + ["non-monotonic"] * int(
        nonmono.sum()
    )
    assert sorted(row["index"] for row in report.items[:n_back]) == sorted(backfire)
    listed_anti = [row["index"] for row in report.items[n_back : n_back + n_anti]]
    assert sorted(listed_anti) == [int(i) for i in np.flatnonzero(anti)]
    assert [row["slope"] for row in report.items[n_back : n_back + n_anti]] == sorted(
        float(slopes[i]) for i in listed_anti
    )
    assert {row["index"] for row in report.items[n_back + n_anti :]} == {
        int(i) for i in np.flatnonzero(nonmono)
    }
    for row in report.items[n_back:]:
        assert row["question"] == report.test_items[row["index"]].question
        assert row["slope"] == pytest.approx(float(slopes[row["index"]]))
    assert report.anti["count"] == n_anti
    assert report.anti["fraction"] == pytest.approx(metrics.anti_steerable_fraction(slopes))


@pytest.mark.model
def test_open_message_creates_a_playground_for_that_item(report):
    index = report.items[0]["index"] if report.items else 0
    report._on_message(report, {"type": "open", "index": index})
    first = report.opened_playground
    try:
        assert isinstance(first, Playground)
        assert first.prompt == report.test_items[index].question
        assert first.layer == LAYER and first.strength == report.open_strength == 1.5
        assert first.positions == "last"
        assert str(index) in report.message
        assert first.wait(120) and first.error == "" and first.steered_text
        # A second click replaces (and closes) the first Playground.
        other = (index + 1) % report.n_test
        report._on_message(report, {"type": "open", "index": other})
        assert report.opened_playground is not first
        assert report.opened_playground.prompt == report.test_items[other].question
        assert first._closed
        # A bad index is reported, not raised into the comm.
        report._on_message(report, {"type": "open", "index": 999})
        assert "IndexError" in report.message
    finally:
        _close_opened(report)


@pytest.mark.model
def test_report_from_a_vector_escapes_text_and_exports(smol, report, ab_items, tmp_path, monkeypatch):
    # Dataset text and the model name carry markup; a zero vector lists every item (slope ≤ 0 or wobbling).
    items = [sw.ABItem(f"{it.question}\n{EVIL}", it.matching, it.not_matching) for it in ab_items[40:44]]
    zero = sw.SteeringVector({LAYER: torch.zeros(smol.d_model)}, model_id=smol.name, method="zero")
    widget = RW.ReliabilityReport(smol, zero, items, LAYER, strengths=[-1, 0, 1], autostart=False)
    widget.model_name = f"model {EVIL}"
    widget.run(wait=True)
    try:
        assert widget.status == "done", widget.error
        assert widget.precheck == {}  # no training items, no pre-check
        assert widget.items, "a zero vector must list items"
        monkeypatch.chdir(tmp_path)
        widget._on_message(widget, {"type": "export", "format": "html"})
        widget._on_message(widget, {"type": "export", "format": "json"})
        assert "reliability_report.json" in widget.message
        page = (tmp_path / RW.DEFAULT_HTML).read_text(encoding="utf-8")
        data = json.loads((tmp_path / RW.DEFAULT_JSON).read_text())
        assert data["n_items"] == 4 and data["anti_steerable_items"][0]["question"].endswith(EVIL)
        snapshot = widget._repr_mimebundle_()[0]["text/html"]
        for text in (page, snapshot):
            assert "<script" not in text.lower() and "<b>bold" not in text
            assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
            assert "<svg" in text  # charts inline, rendered in Python
        path = widget.export_html(tmp_path / "custom.html")
        assert path == (tmp_path / "custom.html").resolve() and "<script" not in path.read_text(
            encoding="utf-8"
        )
        with pytest.raises(ValueError, match=".html"):
            widget.export_html(tmp_path / "report.txt")
    finally:
        widget.close()


@pytest.mark.model
def test_generalisation_block_and_its_skip(smol, ab_items):
    widget = RW.ReliabilityReport(
        smol, ab_items[:4], ab_items[40:44], LAYER, strengths=[-1, 0, 1], shift_prefix="Answer briefly. "
    )
    assert widget.wait(600) and widget.status == "done", widget.error
    gen = widget.generalisation
    assert gen["prefix"] == "Answer briefly. " and gen["layer"] == LAYER
    expected = metrics.relative_steerability(gen["steerability_shifted_vA"], gen["steerability_shifted_vB"])
    assert gen["relative_steerability"] == (None if expected is None else pytest.approx(expected))
    assert widget.report["generalisation"]["prefix"] == "Answer briefly. "
    widget.close()
    vec = widget.vector
    skipped = RW.ReliabilityReport(smol, vec, ab_items[40:42], LAYER, [-1, 1], shift_prefix="Hi. ")
    assert skipped.wait(600) and skipped.status == "done"
    assert "training items" in skipped.generalisation["skipped"]
    skipped.close()


@pytest.mark.model
def test_context_block_judges_each_format_and_compares_it_with_bare(smol, ab_items, tmp_path):
    widget = RW.ReliabilityReport(smol, ab_items[:4], ab_items[40:44], LAYER, [-1, 0, 1], contexts=True)
    assert widget.wait(900) and widget.status == "done", widget.error
    effects = widget.context_effects
    assert set(effects) == {"letter", "answer_text"}
    letter = effects["letter"]
    # the bare row is the report's own letter sweep, not a second run
    assert letter["bare"] == pytest.approx(widget.report["steerability"])
    assert letter["judged"]["bare"]["verdict"] == widget.report["verdict"]
    for protocol, summary in effects.items():
        assert set(summary["contexts"]) == {"dialogue", "tool_use"}, protocol
        for kind, c in summary["contexts"].items():
            low, high = c["difference_ci"]
            assert low <= c["difference"] <= high
            assert c["verdict"] == sw.contexts.context_verdict((low, high), summary["bare"])
            ratio = None if summary["bare"] < sw.contexts.MIN_BARE_EFFECT else c["effect"] / summary["bare"]
            assert c["ratio_to_bare"] == (None if ratio is None else pytest.approx(ratio))
            assert summary["judged"][kind]["verdict"] in sw.verdicts.VERDICTS
    assert widget.report["contexts"]["letter"]["verdict"] == letter["verdict"]
    page = widget.export_html(tmp_path / "r.html").read_text(encoding="utf-8")
    assert "In realistic contexts (letter protocol)" in page and "tool-use" in page
    widget.close()


@pytest.mark.model
def test_bad_arguments_raise_early(smol, ab_items):
    with pytest.raises(TypeError, match="SteeringVector or a list"):
        RW.ReliabilityReport(smol, "sentiment", ab_items[:2], LAYER, autostart=False)
    with pytest.raises(TypeError, match="ABItem"):
        RW.ReliabilityReport(smol, ab_items[:2], ["a question"], LAYER, autostart=False)
    with pytest.raises(sw.SteeringError, match="strengths"):
        RW.ReliabilityReport(smol, ab_items[:2], ab_items[2:4], LAYER, strengths=[1, 1], autostart=False)
    with pytest.raises(sw.SteeringError, match="test items"):
        RW.LayerSweep(smol, ab_items[:2], [], autostart=False)
    vec = sw.SteeringVector({3: torch.zeros(smol.d_model)}, model_id=smol.name)
    with pytest.raises(sw.SteeringError, match="layers \\[4\\]"):
        RW.LayerSweep(smol, vec, ab_items[:2], layers=[3, 4], autostart=False)


# --- LayerSweep -------------------------------------------------------------------------------------
@pytest.mark.model
def test_layer_sweep_cancel_leaves_it_usable_and_the_model_unsteered(smol, report, ab_items, monkeypatch):
    prompt, completion = ab_items[0].question, " Yes"
    before = sw.score(smol, [prompt], [completion])[0].clone()
    layers = [3, LAYER, 15]
    vec = sw.caa(smol, ab_items[:8], layers)
    widget = RW.LayerSweep(smol, vec, ab_items[40:46], layers=layers, strengths=[-1, 0, 1], autostart=False)
    assert widget.status == "idle" and widget.sweep == {}

    real = reliability_lab.layer_sweep

    def click_cancel_at_the_first_report(*args, **kwargs):
        inner = kwargs["progress"]
        clicked = []

        def progress(done, total):
            inner(done, total)
            if not clicked:  # the first report (one item, or a batched pass of items): Cancel, mid-sweep
                clicked.append(done)
                widget._on_message(widget, {"type": "cancel"})

        return real(*args, **{**kwargs, "progress": progress})

    monkeypatch.setattr(reliability_lab, "layer_sweep", click_cancel_at_the_first_report)
    widget.run(wait=True)
    assert widget.status == "cancelled" and not widget.running and widget.error == ""
    assert "Cancelled" in widget.stage and widget.result is None and widget.sweep == {}
    assert torch.equal(sw.score(smol, [prompt], [completion])[0], before)  # unsteered, bit for bit

    monkeypatch.setattr(reliability_lab, "layer_sweep", real)
    widget._on_message(widget, {"type": "run"})
    assert widget.wait(600)
    try:
        assert widget.status == "done" and widget.error == "" and widget.progress == 1.0
        sweep = widget.sweep
        json.dumps(sweep, allow_nan=False)
        assert sweep["layers"] == layers and len(sweep["kl"]) == 3 and len(sweep["kl"][0]) == 3
        assert widget.suggested_layer == widget.result.suggested_layer and widget.reason
        assert widget.heatmap_spec["hconcat"] and widget.anti_spec["layer"]
        anti = [metrics.anti_steerable_fraction(widget.result.propensity.slopes(layer)) for layer in layers]
        assert sweep["anti_steerable_fraction"] == pytest.approx(anti)
        judged = [widget.result.propensity.verdict(layer) for layer in layers]
        assert sweep["verdicts"] == [v.verdict for v in judged]
        assert sweep["backfire_fraction"] == pytest.approx([v.backfire_fraction for v in judged])
        assert widget._repr_mimebundle_()[0]["text/html"].count("<svg") == 2

        # Clicking a heatmap cell: {layer, strength} from the vega listener.
        widget._on_message(widget, {"type": "open", "layer": 15, "strength": -1.0})
        pg = widget.opened_playground
        worst = int(np.argmin(widget.result.propensity.slopes(15)))
        assert pg.layer == 15 and pg.strength == -1.0 and pg.prompt == widget.test_items[worst].question
        # A bar carries no strength: the largest |λ| is used.
        widget._on_message(widget, {"type": "open", "layer": 3, "strength": None})
        assert widget.opened_playground.layer == 3 and widget.opened_playground.strength == 1.0
        widget._on_message(widget, {"type": "open", "layer": 7, "strength": 1.0})
        assert "not swept" in widget.message

        # The report takes the finished sweep into its exports.
        report.include_sweep(widget)
        assert report.report_dict["layer_sweep"]["layers"] == layers
    finally:
        _close_opened(widget)
        widget.close()
        report.sweep_result = None


@pytest.mark.model
def test_two_widgets_on_one_model_take_turns(smol, ab_items):
    # Two nnsight traces on one model from two threads break each other; the widgets queue instead.
    first = RW.ReliabilityReport(smol, ab_items[:4], ab_items[40:44], LAYER, strengths=[-1, 0, 1])
    second = RW.LayerSweep(smol, ab_items[:4], ab_items[40:44], layers=[3, LAYER], strengths=[-1, 0, 1])
    try:
        assert first.wait(600) and second.wait(600)
        assert (first.status, second.status) == ("done", "done"), (first.error, second.error)
    finally:
        first.close()
        second.close()


# --- the runner, without a model (the work is a stand-in) -------------------------------------------
def _fake_model() -> SimpleNamespace:
    """Quacks like a SteerableModel for construction; ``lock`` is its one re-entrant model lock."""
    return SimpleNamespace(
        nn=None, tokenizer=None, n_layers=4, d_model=8, block=None, check_layer=lambda layer: None,
        lock=threading.RLock(), name="fake",
    )  # fmt: skip


FAKE_ITEMS = [
    sw.ABItem("Pick the kind reply.\n\n(A) Thanks\n(B) Go away", "A", "B"),
    sw.ABItem("Pick the kind reply.\n\n(A) Get lost\n(B) Welcome", "B", "A"),
]


def test_a_run_waits_for_its_turn_on_model_lock_and_cancel_ends_the_wait(monkeypatch):
    model = _fake_model()
    widget = RW.ReliabilityReport(model, FAKE_ITEMS, FAKE_ITEMS, 1, [-1, 1], autostart=False)
    waiting, calls = threading.Event(), []
    widget.observe(lambda change: change["new"].startswith("waiting") and waiting.set(), names="stage")
    monkeypatch.setattr(widget, "_work", calls.append)
    try:
        with model.lock:  # another widget's run (or an engine call) holds the model
            widget.run()
            assert waiting.wait(10) and widget.running and calls == []
            widget._on_message(widget, {"type": "cancel"})
            assert widget.wait(10)
        assert widget.status == "cancelled" and "Cancelled" in widget.stage and not widget.running
        assert calls == []  # it never ran
        widget.run(wait=True)  # the lock is free now: the run holds it while it works
        assert widget.status == "done" and widget.progress == 1.0 and len(calls) == 1
    finally:
        widget.close()


def test_run_errors_are_shown_the_widget_stays_usable_and_close_stops_the_thread(monkeypatch):
    widget = RW.LayerSweep(_fake_model(), FAKE_ITEMS, FAKE_ITEMS, layers=[1, 2], autostart=False)

    def broken(cancel: threading.Event) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(widget, "_work", broken)
    widget.run(wait=True)
    assert widget.status == "error" and widget.error == "RuntimeError: boom" and not widget.running
    monkeypatch.setattr(widget, "_work", lambda cancel: None)
    widget.run(wait=True)
    assert widget.status == "done" and widget.error == ""
    widget.close()
    widget.close()  # idempotent
    assert widget._runner.close(timeout=10) and widget.wait(1)
    widget.run()  # after close: nothing starts
    assert not widget.running
    assert not hasattr(RW, "_MODEL_LOCKS")  # no registry keyed by id(model): the lock lives on the model


# --- pure helpers ------------------------------------------------------------------------------------
def _fake_report(level: str, verdict: str = "steers", lead: str = "letter", at: dict | None = None) -> dict:
    return {
        "warning_level": level,
        "verdict": verdict,
        "verdict_reason": f"reason for {verdict}.",
        "item_classes": {"steers": 7, "backfires": 1, "no_detectable_effect": 2},
        "lead": lead,
        "answer_text": at,
        "anti_steerable_fraction": 0.1,
        "n_items": 10,
        "backfire_items": [{"index": 1, "slope": -0.9, "propensity": [1.0, -1.0], "question": "q1"}],
        "anti_steerable_items": [
            {"index": 2, "slope": -0.5, "propensity": [1.0, 0.0], "question": "q2"},
        ],
        "non_monotonic_items": [{"index": 0, "slope": 0.1, "propensity": [0.0, 1.0, 0.5], "question": "q0"}],
    }


def test_anti_summary_leads_with_the_protocol_that_can_judge():
    out = RW.anti_summary(_fake_report("notice"))
    assert out["level"] == "notice" and out["message"].startswith(
        "Letter protocol: steers — reason for steers."
    )
    assert "backfiring beyond the null: 1 of 10" in out["message"]
    assert "anti-steerable (slope ≤ 0, not compared with the null): 10%" in out["message"]
    at = {
        "verdict": "backfires",
        "verdict_reason": "it backfires.",
        "warning_level": "warning",
        "per_example": [],
    }
    out = RW.anti_summary(_fake_report("notice", "cannot_judge", "answer_text", at))
    assert out["message"].startswith(
        "Answer-text protocol: backfires — it backfires. Letter protocol: cannot"
    )
    assert out["level"] == "warning" and out["lead"] == "answer_text"


def test_listed_items_put_backfires_first():
    items = [sw.ABItem(f"q{i}", "A", "B") for i in range(3)]
    rows = RW.listed_items(_fake_report("notice"), items)
    assert [(r["kind"], r["index"]) for r in rows] == [
        ("backfires", 1),
        ("anti-steerable", 2),
        ("non-monotonic", 0),
    ]
    assert rows[2]["propensity_min"] == 0.0 and rows[2]["propensity_max"] == 1.0


def test_jsonable_replaces_nan_and_numpy():
    value = {"a": float("nan"), "b": np.float32(1.5), "c": (np.arange(2), slice(-3, None))}
    out = reliability_lab.jsonable(value)
    assert out == {"a": None, "b": 1.5, "c": [[0, 1], "-3:"]}
    json.dumps(out, allow_nan=False)


def test_bundles_are_built():
    assert RW.bundle("reliability").is_file() and RW.bundle("layersweep").is_file()


NODE_CHECK = """
import { cellFromDatum, topIndex } from "./js/src/layersweep.js";
import { fmt, pct } from "./js/src/reliability.js";
console.log(JSON.stringify({
  cell: cellFromDatum({ layer: 4, strength: -0.5, propensity: 1 }),
  bar: cellFromDatum({ layer: 4, steerability: 0.2 }),
  rule: cellFromDatum({ y: 0.3 }),
  top: [topIndex([-1.5, 0, 1.5]), topIndex([-1, 0, 2])],
  fmt: [fmt(null), fmt(0.12345), fmt(NaN), pct(0.305)],
}));
"""


@needs_node
def test_front_end_helpers():
    out = node_json(NODE_CHECK)
    assert out["cell"] == {"layer": 4, "strength": -0.5}
    assert out["bar"] == {"layer": 4, "strength": None}
    assert out["rule"] is None
    assert out["top"] == [0, 2]
    assert out["fmt"] == ["–", "0.123", "–", "31%"]
