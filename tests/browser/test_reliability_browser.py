"""The reliability lab in a real JupyterLab, driven by headless Chromium.

A ReliabilityReport on the default model lists its anti-steerable items; a click on one's "Open in
Playground" button opens that question in a Playground drawn inside the report. In a LayerSweep, a click
on a heatmap cell (the vega view's click listener) opens that layer and strength. Dataset text that looks
like HTML stays text, nothing is fetched from outside, and no uncaught error happens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import COUNT_BLOBS, patience

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
XSS = '<img src=x onerror="window.__pwned=1">'
REPORT = ".sw-reliability"
SWEEP = ".sw-layersweep"
# Sizes of the blobs the page makes (anywidget imports every `_esm` from one, the loader the bundle).

SETUP = f"""
import steerwidgets as sw
from steerwidgets.widgets.reliability import LayerSweep, ReliabilityReport

model = sw.load_model()
items = sw.builtin_ab("sentiment")
test = [sw.ABItem(it.question + "\\n" + {XSS!r}, it.matching, it.not_matching) for it in items[40:48]]
"""
REPORT_CELL = """
report = ReliabilityReport(model, items[:8], test, layer=9)
report
"""
SWEEP_CELL = """
sweep = LayerSweep(model, items[:8], test[:4], layers=[6, 9], strengths=[-1, 0, 1])
sweep
"""


@pytest.fixture(autouse=True)
def _built():
    for name in ("widgets.js", "reliability.js", "layersweep.js", "playground.js"):
        if not (REPO / "steerwidgets" / "static" / name).is_file():
            reason = f"steerwidgets/static/{name} is not built; run `bash scripts/build_js.sh`"
            if os.environ.get("CI"):
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.strip()) for src in (SETUP, REPORT_CELL, SWEEP_CELL)]
    nbformat.write(nb, path)
    return path


def _wait_status(page: Any, selector: str, timeout_ms: float = 240_000) -> str:
    page.wait_for_function(
        f"() => ['done', 'error', 'cancelled']"
        f".includes(document.querySelector('{selector}')?.dataset.status)",
        timeout=patience(timeout_ms),
        polling=200,
    )
    return page.evaluate(f"() => document.querySelector('{selector}').dataset.status")


def _kernel_value(kernel_execute: Any, page: Any, expr: str, want: str, tries: int = 100) -> str:
    """Poll the kernel: a click's comm message may still be in flight."""
    out = ""
    for _ in range(tries):
        out = kernel_execute(page, f"print({expr})").strip()
        if out == want:
            break
        page.wait_for_timeout(200)
    return out


def test_anti_steerable_item_opens_in_the_playground(
    tmp_path, page, page_log, lab_server, run_notebook, kernel_execute, save_screenshot
):
    page.add_init_script(COUNT_BLOBS)
    run_notebook(page, lab_server, _notebook(tmp_path / "reliability_lab.ipynb"), timeout_s=300)
    report = page.locator(REPORT)
    sweep = page.locator(SWEEP)
    assert _wait_status(page, REPORT) == "done", report.locator(".sw-rl-error").inner_text()
    # The sweep waits for the report (one run per model at a time); the Playground waits for both.
    assert _wait_status(page, SWEEP) == "done", sweep.locator(".sw-ls-error").inner_text()
    report.locator(".sw-rl-propensity-chart svg").first.wait_for(state="visible")
    report.locator(".sw-rl-slopes-chart svg").first.wait_for(state="visible")
    assert report.locator(".sw-rl-precheck .sw-rl-light").count() == 1
    assert "anti-steerable" in report.locator(".sw-rl-summary").inner_text()
    report.locator(".sw-rl-precheck").scroll_into_view_if_needed()
    save_screenshot(page, "reliability-report")

    # Anti-steerable items are listed first; dataset text that looks like HTML is shown as text.
    first = report.locator(".sw-rl-anti-list li.sw-rl-item").first
    first.wait_for(state="visible")
    question = first.locator(".sw-rl-question")
    text = question.evaluate("el => el.textContent")
    assert text.endswith(XSS)
    assert report.locator(".sw-rl-question img").count() == 0
    index = first.get_attribute("data-index")
    for control in report.locator("button, input, select").all():
        assert control.get_attribute("aria-label"), control.evaluate("el => el.outerHTML")

    # Click "Open in Playground": Python creates a Playground for that question, drawn inside the report.
    first.get_by_role("button", name=f"Open item {index} in the Playground").click()
    playground = report.locator(".sw-rl-playground .sw-playground")
    playground.wait_for(state="visible", timeout=60_000)
    prompt = playground.get_by_label("Prompt", exact=True)
    page.wait_for_function(
        "([sel, want]) => document.querySelector(sel)?.value === want",
        arg=[f"{REPORT} .sw-rl-playground .sw-playground textarea[aria-label='Prompt']", text],
        timeout=patience(60_000),
    )
    assert prompt.input_value() == text
    same = f"report.opened_playground.prompt == report.test_items[{index}].question"
    assert _kernel_value(kernel_execute, page, same, "True") == "True"
    assert _kernel_value(kernel_execute, page, "report.opened_playground.layer", "9") == "9"
    page.wait_for_function(
        f"() => document.querySelector('{REPORT} .sw-playground')?.dataset.status === 'done'",
        timeout=patience(240_000),
    )
    assert "Opened item" in report.locator(".sw-rl-message").inner_text()
    save_screenshot(page, "reliability-report-playground")

    # Real keyboard input: a strength typed into the number box and committed with Enter reaches the
    # kernel (inside JupyterLab, Enter in a number input fires no `change`).
    box = report.locator(".sw-rl-open-strength")
    box.click()
    box.fill("2.5")
    page.keyboard.press("Enter")
    assert _kernel_value(kernel_execute, page, "report.open_strength", "2.5") == "2.5"

    # LayerSweep: clicking a heatmap cell sends {layer, strength} from the vega click listener.
    sweep.scroll_into_view_if_needed()
    assert "layer" in sweep.locator(".sw-ls-suggestion").inner_text().lower()
    for control in sweep.locator("button, input, select").all():
        assert control.get_attribute("aria-label"), control.evaluate("el => el.outerHTML")
    cells = sweep.locator(".sw-ls-heatmap svg .mark-rect path")
    cells.first.wait_for(state="visible")
    assert cells.count() >= 2 * 3  # propensity and KL heatmaps: 2 layers × 3 strengths each
    cells.first.click()
    sweep.locator(".sw-rl-playground .sw-playground").wait_for(state="visible", timeout=60_000)
    opened = _kernel_value(kernel_execute, page, "sweep.opened_playground is not None", "True")
    assert opened == "True"
    layer = kernel_execute(page, "print(sweep.opened_playground.layer)").strip()
    strength = kernel_execute(page, "print(sweep.opened_playground.strength)").strip()
    assert layer in ("6", "9") and float(strength) in (-1.0, 0.0, 1.0)
    save_screenshot(page, "layer-sweep-playground")

    # The realistic-contexts block: a small real context check (2 items, 2 null directions) written to the
    # report's trait is drawn as one table per protocol: bare, dialogue, tool-use.
    code = (
        "from steerwidgets.contexts import context_effect_ab\n"
        "from steerwidgets.reliability_lab import jsonable\n"
        "ctx = context_effect_ab(model, items[40:42], report.vector, 9, [-1, 0, 1], null_directions=2)\n"
        "report.context_effects = {'letter': jsonable(ctx.summary())}\n"
        "print(ctx.summary()['contexts']['dialogue']['verdict'])"
    )
    change = kernel_execute(page, code, timeout_s=240).strip()
    table = report.locator(".sw-rl-contexts table[aria-label='Effect in context, letter protocol']")
    table.wait_for(state="visible", timeout=patience(60_000))
    rows = [r.inner_text() for r in table.locator("tr").all()]
    assert [r.split("\t")[0] for r in rows[1:]] == ["bare", "dialogue", "tool-use"], rows
    assert change in rows[2]
    report.locator(".sw-rl-contexts").scroll_into_view_if_needed()
    save_screenshot(page, "reliability-report-contexts")

    # Report, sweep and two opened Playgrounds: the shared bundle was imported once, every `_esm` is a
    # small loader (see steerwidgets/widgets/_frontend.py).
    sizes = page.evaluate("() => window.__swBlobSizes")
    assert len([s for s in sizes if s >= 100_000]) == 1, sizes
    assert len([s for s in sizes if s < 100_000]) >= 4, sizes

    assert page.evaluate("() => window.__pwned") is None
    assert page_log.external_requests == [], page_log.external_requests
    assert page_log.page_errors == [], page_log.page_errors
