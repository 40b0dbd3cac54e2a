"""`make lab`, the README's first command: JupyterLab starts (as root too), keeps its token, opens the
quickstart, and makes no call to the internet (no news toast, no update check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import LAB_SH, ROOT, http_get, running_lab


def test_readme_first_command_is_make_lab_and_runs_the_script():
    assert "make lab" in (ROOT / "README.md").read_text().split("```")[1]
    recipe = subprocess.run(
        ["make", "-n", "lab", "-o", "setup"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "bash scripts/lab.sh" in recipe


def test_lab_serves_jupyterlab_with_token_and_no_internet(tmp_path):
    with running_lab(tmp_path) as (base, token, log_path):
        assert http_get(f"{base}/api/status")[0] == 403  # the token is still required
        status, body = http_get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification", token)
        assert status == 200
        props = json.loads(body)["schema"]["properties"]
        assert props["fetchNews"]["default"] == "false"  # no "get notified about news?" toast
        assert props["checkForUpdates"]["default"] is False
        assert json.loads(http_get(f"{base}/lab/api/news", token)[1]) == {"news": []}
        assert json.loads(http_get(f"{base}/lab/api/update", token)[1]) == {"notification": None}
        # JupyterLab serves the folder of the notebook it opens: the quickstart is at its top.
        assert http_get(f"{base}/api/contents/quickstart.ipynb", token)[0] == 200
    log_text = log_path.read_text(errors="replace")
    assert "Running as root is not recommended" not in log_text
    assert "Serving notebooks from local directory: " + str(ROOT / "example_notebooks") in log_text
    assert "/lab/tree/quickstart.ipynb?token=..." in log_text  # the printed URL opens the quickstart


@pytest.mark.parametrize(("uid", "allow_root"), [("0", True), ("1000", False)])
def test_allow_root_only_for_root(tmp_path, uid, allow_root):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (shim / "id").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}", STEERWIDGETS_LAB_DRY_RUN="1")
    env["STEERWIDGETS_PYTHON"] = sys.executable
    out = subprocess.run(["bash", str(LAB_SH), "--no-browser"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.split("\n")
    assert ("--allow-root" in argv) is allow_root
    assert argv[-2] == "example_notebooks/quickstart.ipynb" and "--no-browser" in argv
