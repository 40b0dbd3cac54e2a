"""The Playground's stack driven with real input in a real JupyterLab (headless Chromium): a row added with
the mouse, its strength typed and committed with Enter; the steered text changes and the row's own norm
ratio appears. Every wait is on a state the reaction produces, never on time."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import PLAYGROUND_COMMIT_AT, open_playground, require_built, wait_playground_reaction

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ROOT = ".sw-playground"


@pytest.fixture(autouse=True)
def _built():
    require_built("widgets.js", "playground.js")


def test_a_stack_row_added_and_typed_into_steers_and_shows_its_norm_ratio(
    tmp_path, page, page_log, lab_server, run_notebook, kernel_execute, save_screenshot
):
    root = open_playground(page, lab_server, run_notebook, tmp_path / "playground_stack.ipynb")
    steered_before = root.locator(".sw-pg-steered-text").text_content()

    # --- add a row with the mouse: it starts at strength 0, so the text stays ---------------------
    add = root.get_by_role("button", name="Add vector to the stack")
    add.scroll_into_view_if_needed()
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    add.click()
    wait_playground_reaction(page, before)
    out = kernel_execute(page, "print(len(playground.stack), playground.stack[0]['strength'])")
    assert out.strip() == "1 0.0"
    ratio = root.get_by_label("Stack row 1 norm ratio", exact=True)
    assert ratio.text_content() == "‖λv‖/mean‖h‖ = 0.00"
    assert root.locator(".sw-pg-steered-text").text_content() == steered_before
    for control in ("vector", "layer", "strength", "positions", "strength relative to residual norm"):
        assert root.get_by_label(f"Stack row 1 {control}", exact=True).count() == 1, control

    # --- type the row's strength and press Enter ------------------------------------------------
    strength = root.get_by_label("Stack row 1 strength", exact=True)
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    strength.click()
    strength.fill("12")
    page.keyboard.press("Enter")
    wait_playground_reaction(page, before)
    assert kernel_execute(page, "print(playground.stack[0]['strength'])").strip() == "12.0"
    assert strength.evaluate("(el) => el === document.activeElement")  # Enter kept the focus
    text = ratio.text_content() or ""
    assert text.startswith("‖λv‖/mean‖h‖ = ") and float(text.rsplit(" ", 1)[1]) > 0, text
    steered_after = root.locator(".sw-pg-steered-text").text_content()
    assert steered_after and steered_after != steered_before

    # --- remove it again: back to the main vector alone -------------------------------------------
    before = page.evaluate(PLAYGROUND_COMMIT_AT)
    root.get_by_role("button", name="Remove stack row 1").click()
    wait_playground_reaction(page, before)
    assert kernel_execute(page, "print(len(playground.stack))").strip() == "0"
    assert root.locator(".sw-pg-stack-row").count() == 0
    assert root.locator(".sw-pg-steered-text").text_content() == steered_before
    save_screenshot(page, "playground-stack")

    assert page_log.external_requests == [], page_log.external_requests
    assert page_log.page_errors == [], page_log.page_errors
    assert [e for e in page_log.console_errors if "steerwidgets" in e.lower()] == []
