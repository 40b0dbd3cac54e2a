"""The Playground in a real JupyterLab (and Notebook 7), driven by headless Chromium.

Runs example_notebooks/quickstart.ipynb, then: moves the strength slider and checks the steered text
changes while the unsteered text stays (and measures slider release → first steered token → charts →
complete, in the page's own clock), clicks a token chip and checks the overlay, renders model output
that looks like HTML as text, switches to the dark theme and saves screenshots to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import patience

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "example_notebooks" / "quickstart.ipynb"
ARTIFACTS = REPO / "test-artifacts"
XSS = '<img src=x onerror="window.__pwned=1">'
ROOT = ".sw-playground"
NB7_UPSTREAM_ERRORS = [
    r"Cannot read properties of undefined \(reading 'schema'\)\n.*notebook_core",
    r"Command 'filebrowser:open-path' not registered\.\n.*notebook_core",
]

# JS: commit a new value on a range input the way a user's release does (input, then change), and
# resolve with the widget's own timings (ms since the commit) once the update is complete.
_JS_MOVE = """async ([selector, value, timeoutMs]) => {
  const root = document.querySelector('.sw-playground');
  const slider = root.querySelector(selector);
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no complete update in time')), timeoutMs);
    const obs = new MutationObserver(() => {
      if (root.dataset.totalMs) {
        obs.disconnect();
        clearTimeout(timer);
        resolve({
          first_token_ms: Number(root.dataset.firstTokenMs),
          charts_ms: Number(root.dataset.chartsMs),
          total_ms: Number(root.dataset.totalMs),
          status: root.dataset.status,
        });
      }
    });
    obs.observe(root, { attributes: true, attributeFilter: ['data-total-ms'] });
    slider.value = String(value);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    slider.dispatchEvent(new Event('change', { bubbles: true }));
  });
}"""


@pytest.fixture(autouse=True)
def _built():
    if not (REPO / "steerwidgets" / "static" / "playground.js").is_file():
        reason = "steerwidgets/static/playground.js is not built; run `bash scripts/build_js.sh`"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def _wait_done(page: Any, timeout_ms: float = 180_000) -> None:
    page.wait_for_function(
        f"() => ['done', 'error'].includes(document.querySelector('{ROOT}')?.dataset.status)",
        timeout=patience(timeout_ms),
        polling=100,
    )


def _shown_playground(page: Any) -> Any:
    """The first Playground on the page, scrolled into view, once its first update has finished."""
    root = page.locator(ROOT).first
    root.wait_for(state="attached", timeout=120_000)
    root.scroll_into_view_if_needed()
    root.wait_for(state="visible")
    _wait_done(page)
    return root


def _text(root: Any, cls: str) -> str:
    return root.locator(cls).first.text_content() or ""


def test_quickstart_playground_in_jupyterlab(
    page, page_log, lab_server, run_notebook, kernel_execute, save_screenshot, luminance_js
):
    run_notebook(page, lab_server, QUICKSTART, timeout_s=300)
    root = _shown_playground(page)
    assert root.locator(".sw-pg-error").first.is_hidden()
    # every control is labelled for assistive technology
    unlabelled = page.evaluate(
        """() => [...document.querySelector('.sw-playground').querySelectorAll(
              'input, select, textarea, button')].filter(
              (e) => !e.getAttribute('aria-label')).map((e) => e.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == [], unlabelled
    # the chart is drawn by the bundled vega (two lines: vector and random reference)
    root.locator(".sw-pg-chart svg").first.wait_for(state="visible")
    assert root.locator(".sw-pg-topk tr").count() == 1 + 8
    base_before = _text(root, ".sw-pg-base-text")
    steered_before = _text(root, ".sw-pg-steered-text")
    assert base_before and steered_before
    root.scroll_into_view_if_needed()
    save_screenshot(page, "playground-lab-light")

    # --- strength slider: the steered text changes, the unsteered one stays -----------------
    timings = page.evaluate(_JS_MOVE, [".sw-pg-strength", -4, 240_000])
    assert timings["status"] == "done"
    steered_after = _text(root, ".sw-pg-steered-text")
    assert steered_after and steered_after != steered_before
    assert _text(root, ".sw-pg-base-text") == base_before
    py_timings = json.loads(kernel_execute(page, "import json; print(json.dumps(playground.timings))"))
    assert py_timings["base_cached"] is True
    # the move is answered with the A/B check's verdict for both protocols (ab_items are attached)
    protocols = "sorted({w['protocol'] for w in playground.warnings if 'verdict' in w})"
    seen = json.loads(kernel_execute(page, f"print(json.dumps({protocols}))"))
    assert {"letter", "answer_text"} <= set(seen)
    # a second move, now that everything is warm
    timings2 = page.evaluate(_JS_MOVE, [".sw-pg-strength", 6, 240_000])
    py_timings2 = json.loads(kernel_execute(page, "print(json.dumps(playground.timings))"))
    report = {"browser": [timings, timings2], "python": [py_timings, py_timings2]}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "playground-latency.json").write_text(json.dumps(report, indent=1))
    for label, t, p in (("cold", timings, py_timings), ("warm", timings2, py_timings2)):
        print(
            f"\n[playground latency, {label}] slider release -> first steered token "
            f"{t['first_token_ms']:.0f} ms (python {p['first_token_ms']:.0f} ms), -> text+charts "
            f"{t['charts_ms']:.0f} ms (python {p['charts_ms']:.0f} ms), -> complete incl. A/B "
            f"sweep {t['total_ms']:.0f} ms (python {p['total_ms']:.0f} ms)"
        )
    assert timings2["first_token_ms"] > 0 and timings2["total_ms"] >= timings2["first_token_ms"]

    # --- token chips: clicking one steers only there, and the overlay shows it ---------------
    steered_chips = root.locator(".sw-pg-chip.sw-pg-steered")
    n_chips = root.locator(".sw-pg-chip").count()
    assert steered_chips.count() == n_chips  # positions="all"
    chip = root.locator(".sw-pg-chip:not(.sw-pg-template)").first
    index = chip.get_attribute("data-index")
    chip.click()
    page.wait_for_function(
        f"() => document.querySelector('{ROOT}').querySelectorAll('.sw-pg-chip.sw-pg-steered').length === 1"
    )
    assert chip.get_attribute("aria-pressed") == "true"
    assert "sw-pg-steered" in (chip.get_attribute("class") or "")
    _wait_done(page)
    assert kernel_execute(page, "print(playground.positions)").strip() == index
    assert kernel_execute(page, "print(sum(playground.steer_mask))").strip() == "1"
    # the "all" preset brings the overlay back over every token
    root.get_by_role("button", name="Steer all positions").click()
    page.wait_for_function(
        f"() => document.querySelector('{ROOT}').querySelectorAll('.sw-pg-chip.sw-pg-steered')"
        f".length === {n_chips}"
    )
    _wait_done(page)

    # --- model output that looks like HTML is shown as text, never parsed ---------------------
    kernel_execute(
        page,
        f"playground.base_text = {XSS!r}\n"
        f"playground.warnings = [{{'level': 'warning', 'message': {XSS!r}}}]\n",
    )
    page.wait_for_function(f"() => document.querySelector('{ROOT} .sw-pg-base-text').textContent === {XSS!r}")
    assert root.locator(".sw-pg-warning").first.text_content() == f"warning: {XSS}"
    # and through the real path: a prompt the model is asked to repeat
    kernel_execute(page, f"playground.prompt = 'Repeat exactly this text: ' + {XSS!r}")
    page.wait_for_function(
        f"() => [...document.querySelector('{ROOT}').querySelectorAll('.sw-pg-chip')]"
        ".map((c) => c.textContent).join('').includes('<img')",
        timeout=patience(60_000),
    )
    _wait_done(page)
    assert root.locator("img").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    chips_text = "".join(root.locator(".sw-pg-chip").all_text_contents())
    assert "<img" in chips_text  # the prompt's tokens, as text

    # --- dark theme --------------------------------------------------------------------------
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.locator("#jupyterlab-splash").wait_for(state="detached")
    base_luminance = luminance_js(f"{ROOT} .sw-pg-base-text", "color")
    page.wait_for_function(f"() => {base_luminance} > 128")
    root.scroll_into_view_if_needed()
    save_screenshot(page, "playground-lab-dark")
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")
    page.locator("#jupyterlab-splash").wait_for(state="detached")

    assert page.evaluate("() => window.__pwned") is None
    assert page_log.external_requests == [], page_log.external_requests
    assert page_log.errors_from("playground") == [], page_log.page_errors
    assert [e for e in page_log.console_errors if "playground" in e.lower()] == []


def test_playground_in_notebook7(tmp_path, page, page_log, lab_server, run_notebook_nb7):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import steerwidgets as sw\n"
            "from steerwidgets.widgets.playground import Playground\n"
            "playground = Playground(sw.load_model(), 'sentiment', prompt='Hello!', layer=10,\n"
            "                        max_new_tokens=8)\n"
            "playground"
        )
    ]
    path = tmp_path / "playground_nb7.ipynb"
    nbformat.write(nb, path)
    run_notebook_nb7(page, lab_server, path, timeout_s=240)
    root = _shown_playground(page)
    assert _text(root, ".sw-pg-steered-text") and _text(root, ".sw-pg-base-text")
    root.get_by_role("button", name="Steer last positions").click()
    page.wait_for_function(
        f"() => document.querySelector('{ROOT}').querySelectorAll('.sw-pg-chip.sw-pg-steered').length === 1"
    )
    _wait_done(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-notebook7.png"), full_page=True)
    assert page_log.external_requests == [], page_log.external_requests
    unexpected = [e for e in page_log.page_errors if not any(re.search(k, e) for k in NB7_UPSTREAM_ERRORS)]
    assert unexpected == [], unexpected
