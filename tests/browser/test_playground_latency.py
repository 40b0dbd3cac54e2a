"""End-to-end latency of the Playground with its A/B check attached, as a user meets it: a real mouse drag
of the strength slider in JupyterLab, timed by the page's own clock (commit -> first steered token, ->
text and charts, -> the A/B check done), beside the same run's plain-generate floor in the kernel.

A measurement, so opt-in (it loads the model and takes ≈ 4 minutes; ``make test`` does not run it)::

    STEERWIDGETS_MEASURE=1 .venv/bin/python -m pytest -q -m browser tests/browser/test_playground_latency.py

The numbers go to test-artifacts/playground-e2e.json and the log (docs/benchmarks.md quotes one run). It
asserts behaviour only (each drag is answered by a finished update with both protocols' A/B verdicts), never
speed: timing goals live in benchmarks/. In ``make test`` the same behaviour is held by the quickstart test
(both protocols' verdicts after a slider move) and tests/browser/test_playground_input.py (real drags)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from helpers import PLAYGROUND_COMMIT_AT, open_playground, require_built, wait_playground_reaction

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.environ.get("STEERWIDGETS_MEASURE"), reason="set STEERWIDGETS_MEASURE=1"),
]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
ROOT = ".sw-playground"
CELL = """
import time, torch
import steerwidgets as sw
from steerwidgets.widgets.playground import Playground
model = sw.load_model()
playground = Playground(model, 'sentiment', prompt='Tell me about your day.', layer=10, strength=4.0,
                        targets=(' I love it', ' I hate it'), ab_items=sw.builtin_ab('sentiment')[:20])
playground
"""
FLOOR = """
import json, time, torch
ids = torch.tensor([sw.engine.tokenize_prompt(model, 'Tell me about your day.')[0]])
runs = []
for _ in range(3):
    t = time.perf_counter()
    with torch.no_grad():
        model.hf.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    runs.append(time.perf_counter() - t)
print(json.dumps(sorted(runs)[1] * 1000))
"""
_PAGE_CLOCK = f"""() => {{
  const d = document.querySelector('{ROOT}').dataset;
  return {{first_token_ms: Number(d.firstTokenMs), charts_ms: Number(d.chartsMs),
           ab_check_done_ms: Number(d.totalMs), status: d.status}};
}}"""


@pytest.fixture(autouse=True)
def _built():
    require_built("widgets.js", "playground.js")


def _drag(page: Any, slider: Any, to: float) -> None:
    """Press on the thumb and drag it to ``to`` with the mouse (the release commits)."""
    box = slider.bounding_box()
    assert box is not None
    lo, hi = (float(slider.get_attribute(a) or "nan") for a in ("min", "max"))
    thumb = 8  # px: half of Chromium's default thumb width
    y = box["y"] + box["height"] / 2

    def x_of(v: float) -> float:
        return box["x"] + thumb + (box["width"] - 2 * thumb) * (v - lo) / (hi - lo)

    page.mouse.move(x_of(float(slider.input_value())), y)
    page.mouse.down()
    page.mouse.move(x_of(to), y, steps=6)
    page.mouse.up()


def test_slider_drag_to_ab_check_done_on_the_page_clock(
    tmp_path, page, page_log, lab_server, run_notebook, kernel_execute
):
    root = open_playground(
        page, lab_server, run_notebook, tmp_path / "playground_latency.ipynb", CELL,
        run_s=600, first_update_ms=600_000, polling=200,
    )  # fmt: skip
    slider = root.locator(".sw-pg-strength")
    slider.scroll_into_view_if_needed()
    drags = []
    for to in (6.0, -5.0):
        before = page.evaluate(PLAYGROUND_COMMIT_AT)
        _drag(page, slider, to)
        wait_playground_reaction(page, before, 600_000)
        clock = page.evaluate(_PAGE_CLOCK)
        assert clock["status"] == "done", root.locator(".sw-pg-error").text_content()
        python = json.loads(kernel_execute(page, "import json; print(json.dumps(playground.timings))"))
        protocols = "sorted({w['protocol'] for w in playground.warnings if 'verdict' in w})"
        verdicts = json.loads(kernel_execute(page, f"print(json.dumps({protocols}))"))
        assert {"letter", "answer_text"} <= set(verdicts), verdicts
        drags.append({"page": clock, "python": python, "strength": float(slider.input_value())})
    floor_ms = float(kernel_execute(page, FLOOR, timeout_s=600).strip())
    report = {"plain_generate_ms": floor_ms, "drags": drags}
    for drag in drags:
        drag["ab_check_done/plain_generate"] = drag["page"]["ab_check_done_ms"] / floor_ms
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "playground-e2e.json").write_text(json.dumps(report, indent=1))
    for drag in drags:
        p = drag["page"]
        print(
            f"\n[playground e2e, drag to {drag['strength']:+g}] first token {p['first_token_ms']:.0f} ms, "
            f"text+charts {p['charts_ms']:.0f} ms, A/B check done {p['ab_check_done_ms']:.0f} ms "
            f"= {drag['ab_check_done/plain_generate']:.2f}x the plain-generate floor ({floor_ms:.0f} ms)"
        )
    assert page.evaluate("() => window.__pwned") is None
    assert page_log.external_requests == [], page_log.external_requests
