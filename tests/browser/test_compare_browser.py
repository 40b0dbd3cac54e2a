"""CompareWidget in a real JupyterLab: method names render as text, headers sort (missing values last),
the metric picker redraws the chart, and Run / progress / Cancel work from the page.

The comparison itself is replaced by a stand-in that holds mid-run until cancelled, so the running
state can be checked at any machine speed; the real `compare` is tested in tests/test_evaluation.py and
in method_comparison.ipynb.
"""

from __future__ import annotations

import nbformat
import pytest

from helpers import patience

pytestmark = pytest.mark.browser

CELL = r"""
from steerwidgets import evaluation
from steerwidgets.widgets import compare as compare_widget

rows = [
    {"method": "<img src=x onerror=window.__pwned=1>", "behaviour": "sentiment", "steerability": 0.2,
     "delta_pos_50": 0.1, "random_delta_pos_50_mean": 0.0, "random_delta_pos_50_min": -0.05,
     "random_delta_pos_50_max": 0.04, "negated_delta_pos_50": -0.1, "zero_delta_pos_50": 0.0,
     "prompting_delta_pos_50": 0.3, "ppl_ratio": 1.1, "kl": 0.05, "norm_ratio": 0.25,
     "fluency": "1/3 degraded (repetition)", "fluency_reason": "<b>repeats</b> itself: distinct-2 0.18"},
    {"method": "caa", "behaviour": "sentiment", "steerability": 0.9, "delta_pos_50": 0.4,
     "random_delta_pos_50_mean": 0.01, "random_delta_pos_50_min": -0.02, "random_delta_pos_50_max": 0.03,
     "negated_delta_pos_50": -0.4, "zero_delta_pos_50": 0.0, "prompting_delta_pos_50": 0.3,
     "ppl_ratio": 1.3, "kl": 0.2, "context_dialogue_ratio": 0.5,
     "context_dialogue_verdict": "weaker in context", "capability_verdict": "no detectable cost",
     "capability": "capability: <i>factual</i> 0.68→0.66 (Δ -0.02 [-0.10, +0.06])"},
    {"method": "pca", "behaviour": "sentiment", "steerability": -0.3, "delta_pos_50": None,
     "ppl_ratio": 1.0, "kl": 0.01},
]


def held_compare(**kwargs):
    # Report some progress, then hold that state until the page presses Cancel: the test waits on
    # states, so it passes on a fast and on a slow machine alike (a timed stand-in could finish first).
    for i in range(10):
        kwargs["progress"](i, 100, f"step {i}")
    if kwargs["cancel"].wait(600):
        raise evaluation.GenerationCancelled("cancelled")
    return evaluation.CompareResult(rows, {}, {})


compare_widget.compare = held_compare
widget = compare_widget.CompareWidget.from_result(
    evaluation.CompareResult(rows, {}, {}), methods=["caa"], model=None
)
widget
"""

_METHODS = "els => els.map(e => e.textContent)"
_METHOD_CELLS = ".sw-compare-table tbody td[data-key=method]"


def test_compare_widget_sorts_charts_runs_and_cancels(
    page, page_log, lab_server, run_notebook, save_screenshot, tmp_path
):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    path = tmp_path / "compare_widget.ipynb"
    nbformat.write(nb, path)
    run_notebook(page, lab_server, path)
    page.wait_for_selector(".sw-compare-table tbody tr", timeout=60_000)
    page.wait_for_selector(".sw-compare-chart svg", timeout=60_000)
    methods = page.eval_on_selector_all(_METHOD_CELLS, _METHODS)
    assert methods[0].startswith("<img")  # shown as text ...
    assert page.evaluate("() => window.__pwned") is None  # ... never run as HTML
    fluency = page.eval_on_selector_all(".sw-compare-table tbody td[data-key=fluency_reason]", _METHODS)
    assert fluency[0].startswith("<b>repeats</b>")  # the verdict's sentence, as text
    assert page.eval_on_selector_all(".sw-compare-table th[data-key=norm_ratio]", _METHODS)
    # compare(contexts=True, capability=n) columns appear because a row has them; others stay hidden
    verdicts = page.eval_on_selector_all("td[data-key=context_dialogue_verdict]", _METHODS)
    assert "weaker in context" in verdicts
    capability = page.eval_on_selector_all("td[data-key=capability]", _METHODS)
    assert any(text.startswith("capability: <i>factual</i>") for text in capability)  # text, not HTML
    assert not page.eval_on_selector_all("th[data-key=context_tool_use_verdict]", _METHODS)

    page.click(".sw-compare-table th[data-key=steerability]")
    assert page.eval_on_selector_all(_METHOD_CELLS, _METHODS)[::2] == ["pca", "caa"]  # ascending
    page.click(".sw-compare-table th[data-key=steerability]")
    assert page.eval_on_selector_all(_METHOD_CELLS, _METHODS)[0] == "caa"  # descending
    page.click(".sw-compare-table th[data-key=delta_pos_50]")
    assert page.eval_on_selector_all(_METHOD_CELLS, _METHODS)[-1] == "pca"  # missing values last

    page.select_option(".sw-compare-metric", "steerability")
    page.wait_for_function(
        "() => document.querySelector('.sw-compare-chart svg') && "
        "document.querySelector('.sw-compare-chart').textContent.includes('steerability')",
        timeout=patience(30_000),
    )
    save_screenshot(page, "compare-widget")

    page.click(".sw-compare-run")
    # Wait for the stand-in's held state itself: the widget starts from a finished run (progress 1.0),
    # so "progress > 0.05" already holds before the click reaches the kernel, and on a slow machine the
    # buttons would be checked in the old state.
    page.wait_for_function(
        "() => document.querySelector('.sw-compare-status').textContent === '9/100 · step 9'",
        timeout=patience(60_000),
    )
    assert 0.05 < page.eval_on_selector(".sw-compare-progress", "e => e.value") < 1
    assert page.is_disabled(".sw-compare-run") and not page.is_disabled(".sw-compare-cancel")
    page.click(".sw-compare-cancel")
    page.wait_for_function(
        "() => document.querySelector('.sw-compare-status').textContent === 'cancelled'",
        timeout=patience(30_000),
    )
    assert not page.is_disabled(".sw-compare-run")
    assert page_log.external_requests == []
    assert not page_log.errors_from("compare.js")
