"""End-to-end proof of the front-end plumbing with a real widget (CompareWidget, which needs no
model), in a real browser.

Checks: the shared bundle (static/widgets.js) reaches the page once through the SharedBundle model
and is imported once however many widgets there are, each widget's `_esm` is the small loader,
traits sync both ways, model text is shown as text (no HTML injection), the bundled vega-embed draws
an SVG chart offline, the widget and chart follow JupyterLab's dark theme, and it also renders in
Notebook 7.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import COUNT_BLOBS

pytestmark = pytest.mark.browser

XSS_TEXT = '<img src=x onerror="window.__pwned=1">'
ROWS = [
    {"method": XSS_TEXT, "behaviour": "sentiment", "steerability": 0.2, "delta_pos_50": 0.1, "kl": 0.05},
    {"method": "caa", "behaviour": "sentiment", "steerability": 0.9, "delta_pos_50": 0.4, "kl": 0.2},
]
ROOT = ".sw-compare"
STATUS_SEL = f"{ROOT} .sw-compare-status"
AXIS_LABEL_SEL = f"{ROOT} .sw-chart-inner:not(.sw-chart-pending) svg .role-axis-label text"
METHOD_CELLS = f"{ROOT} .sw-compare-table tbody td[data-key=method]"
# Blobs the page makes (anywidget imports every `_esm` from one, the loader the shared bundle):
# their sizes, recorded before any page script runs.
BIG = 100_000  # bytes: the shared bundle is ~0.9 MB, a loader ~1 KB

# Uncaught errors Notebook 7.6 itself raises (notebook_core.*.js) on any notebook, with or without
# widgets; not ours, so tolerated in the Notebook 7 test. The first comes from its shortcuts
# settings plugin on every page; the second appears once JupyterLab has saved a workspace on the
# same server (the Lab test runs first) and Notebook 7 restores it.
NB7_UPSTREAM_ERRORS = [
    r"Cannot read properties of undefined \(reading 'schema'\)\n.*notebook_core",
    r"Command 'filebrowser:open-path' not registered\.\n.*notebook_core",
]


def _compare_notebook(path: Path, n_widgets: int = 1) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from steerwidgets import evaluation\n"
            "from steerwidgets.widgets.compare import CompareWidget\n"
            f"rows = {ROWS!r}\n"
            "def make():\n"
            "    return CompareWidget.from_result(evaluation.CompareResult(rows, {}, {}), model=None)\n"
            "w = make()\n"
            "w"
        )
    ]
    nb.cells += [nbformat.v4.new_code_cell(f"w{i} = make()\nw{i}") for i in range(2, n_widgets + 1)]
    nbformat.write(nb, path)
    return path


def _assert_renders(page: Any, n_widgets: int) -> Any:
    """Shared checks; returns the first widget's root locator."""
    roots = page.locator(ROOT)
    roots.nth(n_widgets - 1).wait_for(state="attached")
    assert roots.count() == n_widgets
    root = roots.first
    root.scroll_into_view_if_needed()
    root.wait_for(state="visible")
    assert root.get_by_role("button", name="Run the comparison").is_visible()

    # Model text is shown literally, never parsed as HTML.
    root.locator(".sw-compare-table tbody tr").first.wait_for()
    methods = root.locator(".sw-compare-table tbody td[data-key=method]").all_text_contents()
    assert XSS_TEXT in methods
    assert root.locator(".sw-compare-table img").count() == 0
    assert page.evaluate("() => window.__pwned") is None

    # The bundled vega-embed drew the chart as SVG, with no action menu.
    root.locator(".sw-compare-chart svg").first.wait_for(state="visible")
    assert root.locator(".vega-actions").count() == 0
    for i in range(n_widgets):
        roots.nth(i).locator(".sw-compare-chart svg").first.wait_for(state="attached")

    # One shared bundle for the page: imported from one big blob, every `_esm` a small loader.
    sizes = page.evaluate("() => window.__swBlobSizes")
    big = [s for s in sizes if s >= BIG]
    assert len(big) == 1, sizes
    assert len([s for s in sizes if s < BIG]) >= n_widgets, sizes
    return root


def test_compare_widget_in_jupyterlab(
    tmp_path, page, page_log, lab_server, run_notebook, kernel_execute, save_screenshot, luminance_js
):
    page.add_init_script(COUNT_BLOBS)
    notebook = _compare_notebook(tmp_path / "harness_lab.ipynb", n_widgets=2)
    run_notebook(page, lab_server, notebook)
    root = _assert_renders(page, n_widgets=2)
    # Both widgets refer to the same SharedBundle model.
    same = kernel_execute(page, "print(w.get_state()['_bundle'] == w2.get_state()['_bundle'])")
    assert same.strip() == "True"

    # JS -> Python: choosing a metric reaches the kernel.
    root.locator(".sw-compare-metric").select_option("steerability")
    for _ in range(50):
        if kernel_execute(page, "print(w.metric)").strip() == "steerability":
            break
        page.wait_for_timeout(100)
    assert kernel_execute(page, "print(w.metric)").strip() == "steerability"

    # Python -> JS: trait changes in the kernel update the view (still as plain text).
    kernel_execute(page, "w.status = '<b>bold?</b> from python'")
    page.wait_for_function(
        f"() => document.querySelector('{STATUS_SEL}').textContent === '<b>bold?</b> from python'"
    )
    assert root.locator(".sw-compare-status b").count() == 0
    save_screenshot(page, "harness-lab-light")

    # Light theme: dark text and dark axis labels.
    assert 0 <= page.evaluate(f"() => {luminance_js(METHOD_CELLS, 'color')}") < 128
    assert 0 <= page.evaluate(f"() => {luminance_js(AXIS_LABEL_SEL, 'fill')}") < 128

    # Dark theme: the CSS variables flip the widget, and the chart is re-rendered with them.
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function(
        "() => document.body.dataset.jpThemeName === 'JupyterLab Dark'"
        " && document.body.dataset.jpThemeLight === 'false'"
    )
    page.wait_for_function(f"() => {luminance_js(METHOD_CELLS, 'color')} > 128")
    page.wait_for_function(f"() => {luminance_js(AXIS_LABEL_SEL, 'fill')} > 128")
    assert root.locator(".sw-chart-inner").count() == 1
    page.locator("#jupyterlab-splash").wait_for(state="detached")
    save_screenshot(page, "harness-lab-dark")

    assert page.evaluate("() => window.__pwned") is None
    assert page_log.external_requests == [], page_log.external_requests
    assert page_log.page_errors == [], page_log.page_errors
    assert page_log.console_errors == [], page_log.console_errors
    # e.g. "The input spec uses Vega-Lite v5..., but the current version ..." (see chart.js)
    assert [w for w in page_log.console_warnings if "Vega" in w] == []

    # The theme is a user setting saved on the (session-wide) server: put it back.
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")
    page.locator("#jupyterlab-splash").wait_for(state="detached")


def test_compare_widget_in_notebook7(tmp_path, page, page_log, lab_server, run_notebook_nb7, save_screenshot):
    page.add_init_script(COUNT_BLOBS)
    notebook = _compare_notebook(tmp_path / "harness_nb7.ipynb")
    run_notebook_nb7(page, lab_server, notebook)
    root = _assert_renders(page, n_widgets=1)
    root.locator(".sw-compare-table th[data-key=steerability]").click()
    assert root.locator(".sw-compare-table tbody td[data-key=method]").first.text_content() == XSS_TEXT
    save_screenshot(page, "harness-notebook7")
    assert page_log.external_requests == [], page_log.external_requests
    unexpected = [e for e in page_log.page_errors if not any(re.search(k, e) for k in NB7_UPSTREAM_ERRORS)]
    assert unexpected == [], unexpected
