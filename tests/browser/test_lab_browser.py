"""`make lab` in a real browser: the quickstart opens and no news toast or update check shows up (the
other browser tests start their own server with these settings, so only this one covers lab.sh's)."""

from __future__ import annotations

import re

import pytest

from helpers import patience, running_lab

pytestmark = pytest.mark.browser


def test_lab_opens_the_quickstart_without_a_news_toast(tmp_path, page, page_log):
    with running_lab(tmp_path) as (base, token, log_path):
        # The URL the server prints is what a user opens (as root no browser starts): it opens the quickstart.
        printed = re.search(r"(http://127\.0\.0\.1:\d+/\S*)\?token=\.\.\.", log_path.read_text())
        assert printed and printed.group(1) == f"{base}/lab/tree/quickstart.ipynb", log_path.read_text()
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(f"{printed.group(1)}?token={token}")
        # States, not delays: the notebook is open and JupyterLab has restored its layout, which is when
        # the news plugin would ask its question.
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=120_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.lm-TabBar-tabLabel')]"
            ".some(t => t.textContent === 'quickstart.ipynb')",
            timeout=patience(60_000),
        )
        page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
        page.wait_for_load_state("networkidle")
        settings = [u for u in requests if "apputils-extension" in u or "/lab/api/settings" in u]
        assert settings  # the settings (with the override) were loaded before the check below
        assert page.locator(".Toastify__toast").count() == 0
        assert "notified about official Jupyter news" not in page.content()
        assert [u for u in requests if "/lab/api/news" in u or "/lab/api/update" in u] == []
    assert page_log.external_requests == []
