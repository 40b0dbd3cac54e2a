"""The Playground driven with real input in a real JupyterLab (headless Chromium): Playwright's mouse
and keyboard, not synthetic DOM events.

A strength slider dragged with the mouse; a strength typed into the number box and committed with
Enter (inside JupyterLab, Enter in a number input fires no `change`: JupyterLab's keyboard handling
prevents the key's default action, so the widget needs its own keydown handler); a seed and a
max-new-tokens value committed by Tab; a token chip clicked; the capability check switched on with a
click and off with Space. Each must reach the kernel and run a new update. Every wait is on a state the
reaction produces (the widget's commit marker and its finished update, the kernel's trait), never on
time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import PLAYGROUND_COMMIT_AT, open_playground, patience, require_built, wait_playground_reaction

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ROOT = ".sw-playground"


@pytest.fixture(autouse=True)
def _built():
    require_built("widgets.js", "playground.js")


def _kernel(kernel_execute: Any, page: Any, expr: str) -> str:
    return kernel_execute(page, f"print({expr})").strip()


def test_playground_reacts_to_real_mouse_and_keyboard(
    tmp_path, page, page_log, lab_server, run_notebook, kernel_execute, save_screenshot
):
    root = open_playground(page, lab_server, run_notebook, tmp_path / "playground_input.ipynb")
    root.scroll_into_view_if_needed()
    steered_before = root.locator(".sw-pg-steered-text").text_content()

    # --- drag the strength slider's thumb with the mouse ---------------------------------------
    slider = root.locator(".sw-pg-strength")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    assert box is not None
    lo, hi = (float(slider.get_attribute(a) or "nan") for a in ("min", "max"))
    value = float(slider.input_value())
    assert (lo, hi, value) == (-16.0, 16.0, 4.0)
    thumb = 8  # px: half of Chromium's default thumb width; the value's x is inset by it
    y = box["y"] + box["height"] / 2

    def x_of(v: float) -> float:
        return box["x"] + thumb + (box["width"] - 2 * thumb) * (v - lo) / (hi - lo)

    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    page.mouse.move(x_of(value), y)
    page.mouse.down()
    page.mouse.move(x_of(-9.0), y, steps=8)
    # While the button is held the number box follows the thumb, but nothing is committed yet.
    page.wait_for_function(f"() => Number(document.querySelector('{ROOT} .sw-pg-strength-value').value) < 0")
    assert page.evaluate(PLAYGROUND_COMMIT_AT) == before
    page.mouse.up()
    wait_playground_reaction(page, before)
    dragged = float(slider.input_value())
    assert -11.0 <= dragged <= -7.0, dragged
    assert float(_kernel(kernel_execute, page, "playground.strength")) == dragged
    assert float(root.locator(".sw-pg-strength-value").input_value()) == dragged
    steered_dragged = root.locator(".sw-pg-steered-text").text_content()
    assert steered_dragged and steered_dragged != steered_before

    # --- type a strength and press Enter ----------------------------------------------------
    number = root.locator(".sw-pg-strength-value")
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    number.click()
    number.fill("2.5")
    page.keyboard.press("Enter")
    wait_playground_reaction(page, before)
    assert _kernel(kernel_execute, page, "playground.strength") == "2.5"
    assert slider.input_value() == "2.5"  # the slider echoes the committed value
    assert number.evaluate("(el) => el === document.activeElement")  # Enter kept the focus
    # Tab out after Enter: nothing new to commit, so no second run (the blur handler runs
    # synchronously while the key is handled).
    committed = page.evaluate(PLAYGROUND_COMMIT_AT)
    page.keyboard.press("Tab")
    assert page.evaluate(PLAYGROUND_COMMIT_AT) == committed

    # --- type a seed and Tab out --------------------------------------------------------------
    seed = root.locator(".sw-pg-seed")
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    seed.click()
    seed.fill("7")
    page.keyboard.press("Tab")
    wait_playground_reaction(page, before)
    assert _kernel(kernel_execute, page, "playground.seed") == "7"
    assert not seed.evaluate("(el) => el === document.activeElement")

    # --- max new tokens: Tab out with an invalid value restores the committed one --------------
    max_new = root.locator(".sw-pg-max-new")
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    max_new.click()
    max_new.fill("4")
    page.keyboard.press("Tab")
    wait_playground_reaction(page, before)
    assert _kernel(kernel_execute, page, "playground.max_new_tokens") == "4"
    max_new.click()
    max_new.fill("")
    page.keyboard.press("Tab")
    assert max_new.input_value() == "4"
    assert _kernel(kernel_execute, page, "playground.max_new_tokens") == "4"

    # --- click a token chip ---------------------------------------------------------------------
    chip = root.locator(".sw-pg-chip:not(.sw-pg-template)").first
    index = chip.get_attribute("data-index")
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    chip.click()
    page.wait_for_function(
        f"() => document.querySelector('{ROOT}').querySelectorAll('.sw-pg-chip.sw-pg-steered').length === 1"
    )
    assert chip.get_attribute("aria-pressed") == "true"
    wait_playground_reaction(page, before)
    assert _kernel(kernel_execute, page, "playground.positions") == index
    assert _kernel(kernel_execute, page, "sum(playground.steer_mask)") == "1"
    save_screenshot(page, "playground-real-input")

    # --- the capability check, switched on with a click: its side-effect line appears ----------------
    capability = root.get_by_label(
        "Capability check: accuracy on the built-in capability sets, unsteered vs steered"
    )
    assert not capability.is_checked() and _kernel(kernel_execute, page, "playground.capability") == "0"
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    capability.click()
    wait_playground_reaction(page, before)
    assert _kernel(kernel_execute, page, "playground.capability") == "10"
    line = root.locator(".sw-pg-warnings div", has_text="capability: arithmetic")
    line.wait_for(state="visible", timeout=patience(120_000))
    assert "(first 10 items per set;" in line.text_content()
    assert "capability" in root.locator(".sw-pg-status").text_content()
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    page.keyboard.press("Space")  # the focused checkbox, now with the keyboard: off again
    wait_playground_reaction(page, before)
    assert _kernel(kernel_execute, page, "playground.capability") == "0"
    assert root.locator(".sw-pg-warnings div", has_text="capability: arithmetic").count() == 0

    assert page_log.external_requests == [], page_log.external_requests
    assert page_log.page_errors == [], page_log.page_errors
    assert [e for e in page_log.console_errors if "steerwidgets" in e.lower()] == []
