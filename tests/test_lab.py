"""`make lab`, the README's first command: JupyterLab starts (as root too), keeps its token, opens the
quickstart, and makes no call to the internet (no news toast, no update check)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB_SH = ROOT / "scripts" / "lab.sh"
START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_readme_first_command_is_make_lab_and_runs_the_script():
    assert "make lab" in (ROOT / "README.md").read_text().split("```")[1]
    recipe = subprocess.run(
        ["make", "-n", "lab", "-o", "setup"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "bash scripts/lab.sh" in recipe


def test_lab_serves_jupyterlab_with_token_and_no_internet(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.pop("JUPYTER_PATH", None)
    env.update(
        STEERWIDGETS_PYTHON=sys.executable,
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    args = ["--no-browser", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    args.append(f"--IdentityProvider.token={token}")
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(LAB_SH), *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _safe_status(f"{base}/api/status", token) != 200:
            assert proc.poll() is None, f"lab.sh exited with {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT_S}s:\n{log_path.read_text()}"
            time.sleep(0.25)
        assert _get(f"{base}/api/status")[0] == 403  # the token is still required
        status, body = _get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification", token)
        props = json.loads(body)["schema"]["properties"]
        assert status == 200
        assert props["fetchNews"]["default"] == "false"  # no "get notified about news?" toast
        assert props["checkForUpdates"]["default"] is False
        assert json.loads(_get(f"{base}/lab/api/news", token)[1]) == {"news": []}
        assert json.loads(_get(f"{base}/lab/api/update", token)[1]) == {"notification": None}
        # JupyterLab serves the folder of the notebook it opens: the quickstart is at its top.
        assert _get(f"{base}/api/contents/quickstart.ipynb", token)[0] == 200
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    log_text = log_path.read_text(errors="replace")
    assert "Running as root is not recommended" not in log_text
    assert "Serving notebooks from local directory: " + str(ROOT / "example_notebooks") in log_text


def _safe_status(url: str, token: str) -> int:
    try:
        return _get(url, token)[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


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
