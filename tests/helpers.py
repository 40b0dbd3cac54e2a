"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import steerwidgets as sw


def random_vector(model: sw.SteerableModel, seed: int = 0, scale: float = 3.0) -> sw.SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return sw.SteeringVector(
        {layer: scale * torch.randn(model.d_model, generator=gen) for layer in range(model.n_layers)},
        model_id=model.name,
        method="random-test",
    )


ROOT = Path(__file__).resolve().parent.parent
needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "js" / "node_modules").is_dir(),
    reason="needs Node.js and js/node_modules (bash scripts/build_js.sh)",
)


def node_json(script: str) -> Any:
    """Run an ES-module script with Node.js in the repository root; parse the last line it prints."""
    proc = subprocess.run(
        ["node", "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


LAB_SH = ROOT / "scripts" / "lab.sh"


@contextlib.contextmanager
def running_lab(tmp_path: Path, *extra: str, timeout_s: float = 90.0) -> Iterator[tuple[str, str, Path]]:
    """Start ``scripts/lab.sh`` (what ``make lab`` runs after set-up) on a free port with a known token
    and private Jupyter dirs; yield ``(base_url, token, log_path)`` once ``/api/status`` answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.pop("JUPYTER_PATH", None)
    env.update(
        STEERWIDGETS_PYTHON=sys.executable,
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    args = ["--no-browser", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    args += [f"--IdentityProvider.token={token}", *extra]
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(LAB_SH), *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + patience(timeout_s * 1000) / 1000
        while http_get(f"{base}/api/status", token)[0] != 200:
            assert proc.poll() is None, f"lab.sh exited with {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer in {timeout_s}s:\n{log_path.read_text()}"
            time.sleep(0.25)
        yield base, token, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; 0 when nothing answers (yet)."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


# A page script that records the size of every Blob URL the page makes, before any other script runs
# (anywidget imports every `_esm` from one, the shared-bundle loader the bundle): window.__swBlobSizes.
COUNT_BLOBS = """(() => {
  const orig = URL.createObjectURL.bind(URL);
  window.__swBlobSizes = [];
  URL.createObjectURL = (obj) => {
    if (obj instanceof Blob) window.__swBlobSizes.push(obj.size);
    return orig(obj);
  };
})();"""


# Timeouts in these tests are guards against hangs, never speed checks: every wait is on a state. They are
# multiplied by PATIENCE so a slow or loaded machine (CI's 2 cores with a kernel, JupyterLab and Chromium
# on them) only takes longer. SW_BROWSER_PATIENCE=1 restores the raw values.
PATIENCE = float(os.environ.get("SW_BROWSER_PATIENCE", "4"))


def patience(ms: float) -> float:
    """A hang guard in milliseconds, scaled by PATIENCE."""
    return ms * PATIENCE


# --- the Playground in a real page (browser tests) ----------------------------------------------
PLAYGROUND = ".sw-playground"
# JS: the widget's marker of its last commit (playground.js sets data-commit-at on every commit).
PLAYGROUND_COMMIT_AT = f"() => document.querySelector('{PLAYGROUND}').dataset.commitAt || ''"
# JS: true once a commit newer than `before` has been answered by a finished update from Python
# (data-total-ms is cleared by each commit and set when the kernel's status reaches done/error).
PLAYGROUND_REACTED = f"""(before) => {{
  const root = document.querySelector('{PLAYGROUND}');
  return (root.dataset.commitAt || '') !== before && !!root.dataset.totalMs
    && ['done', 'error'].includes(root.dataset.status);
}}"""


def require_built(*names: str) -> None:
    """Skip (fail under CI) when the front end's files in steerwidgets/static/ are not built."""
    for name in names:
        if not (ROOT / "steerwidgets" / "static" / name).is_file():
            reason = f"steerwidgets/static/{name} is not built; run `bash scripts/build_js.sh`"
            if os.environ.get("CI"):
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)


# The Playground most browser tests drive: the default model, short generations.
PLAYGROUND_CELL = """
import steerwidgets as sw
from steerwidgets.widgets.playground import Playground
playground = Playground(sw.load_model(), 'sentiment', prompt='Tell me about your day.', layer=10,
                        strength=4.0, max_new_tokens=6)
playground
"""


def open_playground(
    page: Any,
    lab_server: Any,
    run_notebook: Any,
    path: Path,
    cell: str = PLAYGROUND_CELL,
    *,
    run_s: float = 300,
    first_update_ms: float = 180_000,
    polling: int = 100,
) -> Any:
    """Write ``cell`` as a one-cell notebook at ``path``, run it in JupyterLab and wait for the Playground's
    first update to finish (done or error); returns the Playground's root locator."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cell.strip())]
    nbformat.write(nb, path)
    run_notebook(page, lab_server, path, timeout_s=run_s)
    root = page.locator(PLAYGROUND).first
    root.wait_for(state="attached", timeout=patience(120_000))
    page.wait_for_function(
        f"() => ['done', 'error'].includes(document.querySelector('{PLAYGROUND}').dataset.status)",
        timeout=patience(first_update_ms),
        polling=polling,
    )
    return root


def wait_playground_reaction(page: Any, before: str, timeout_ms: float = 180_000) -> None:
    """Wait until the Playground committed something after `before` and Python finished updating; the
    update must have succeeded."""
    page.wait_for_function(PLAYGROUND_REACTED, arg=before, timeout=patience(timeout_ms), polling=100)
    status = page.evaluate(f"() => document.querySelector('{PLAYGROUND}').dataset.status")
    error = page.evaluate(f"() => document.querySelector('{PLAYGROUND} .sw-pg-error').textContent")
    assert status == "done", error


def tiny_model(
    kind: str, tokenizer, dtype: torch.dtype = torch.float32, positions: int = 128, place=None
) -> sw.SteerableModel:
    """A tiny random model (seeded: two calls give the same weights); ``place(hf)`` moves it first."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=positions,
        )
        hf = LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=128)
        hf = GPT2LMHeadModel(config)
    else:
        config = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
        )
        hf = GPTNeoXForCausalLM(config)
    hf.to(dtype).eval()
    if place is not None:
        hf = place(hf)
    return sw.load_model(hf, tokenizer=tokenizer)
