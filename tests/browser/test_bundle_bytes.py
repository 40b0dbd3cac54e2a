"""Measures what a page receives and imports with all four widgets shown (numbers in
benchmarks/README.md). Opt-in, as it loads the model and adds ~2 minutes::

    STEERWIDGETS_MEASURE=1 .venv/bin/python -m pytest -q -m browser tests/browser/test_bundle_bytes.py

Writes test-artifacts/frontend-bytes.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from helpers import COUNT_BLOBS, patience

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.environ.get("STEERWIDGETS_MEASURE"), reason="set STEERWIDGETS_MEASURE=1"),
]

REPO = Path(__file__).resolve().parents[2]
CELLS = [
    """
import steerwidgets as sw
from steerwidgets import evaluation
from steerwidgets.widgets.compare import CompareWidget
from steerwidgets.widgets.playground import Playground
from steerwidgets.widgets.reliability import LayerSweep, ReliabilityReport
model = sw.load_model()
items = sw.builtin_ab("sentiment")
""",
    "playground = Playground(model, 'sentiment', prompt='Hello!', layer=10, max_new_tokens=4)\nplayground",
    "report = ReliabilityReport(model, items[:8], items[40:44], layer=9)\nreport",
    "sweep = LayerSweep(model, items[:8], items[40:44], layers=[6, 9], strengths=[-1, 0, 1])\nsweep",
    "rows = [{'method': 'caa', 'behaviour': 'sentiment', 'steerability': 0.5}]\n"
    "compare = CompareWidget.from_result(evaluation.CompareResult(rows, {}, {}), model=None)\ncompare",
]
ROOTS = [".sw-playground", ".sw-reliability", ".sw-layersweep", ".sw-compare"]


def _shown(page) -> list[int]:
    for sel in ROOTS:
        page.locator(sel).first.wait_for(state="attached", timeout=120_000)
    page.wait_for_function(
        "() => ['done', 'error'].includes(document.querySelector('.sw-playground').dataset.status)",
        timeout=patience(240_000),
    )
    page.locator(".sw-compare-chart svg").first.wait_for(state="attached")
    return page.evaluate("() => window.__swBlobSizes")


def test_bytes_and_imports_with_all_four_widgets(tmp_path, page, lab_server, run_notebook):
    received = {"bytes": 0}

    def on_websocket(ws):
        ws.on("framereceived", lambda p: received.update(bytes=received["bytes"] + len(p)))

    page.on("websocket", on_websocket)
    page.add_init_script(COUNT_BLOBS)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.strip()) for c in CELLS]
    path = tmp_path / "four_widgets.ipynb"
    nbformat.write(nb, path)
    run_notebook(page, lab_server, path, timeout_s=400)
    report = {"run": {"blob_sizes": _shown(page), "ws_bytes": received["bytes"]}}

    # A reload asks the kernel for every widget's state again.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    received["bytes"] = 0
    page.reload()
    report["reload"] = {"blob_sizes": _shown(page), "ws_bytes": received["bytes"]}
    static = REPO / "steerwidgets" / "static"
    report["static_bytes"] = {p.name: p.stat().st_size for p in sorted(static.iterdir())}
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    (REPO / "test-artifacts" / "frontend-bytes.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))

    for phase in ("run", "reload"):
        sizes = report[phase]["blob_sizes"]
        assert len([s for s in sizes if s >= 100_000]) == 1, sizes  # the shared bundle, once
        assert report[phase]["ws_bytes"] < 2_000_000  # was ≈3.7 MB with one bundle per widget
