"""Real-browser test harness: a JupyterLab server (subprocess) driven by headless Chromium.

Fixtures
    lab_server   (session)  base URL (``"http://127.0.0.1:<port>"``) of a fresh JupyterLab server
                            with token/password disabled, isolated config/runtime/settings dirs and
                            the venv's extensions (anywidget, ipywidgets). Notebook 7's pages
                            (``/tree``, ``/notebooks/<name>``) are served by the same server.
    browser      (session)  a Playwright ``Browser`` running Debian's ``/usr/bin/chromium``.
    page_log     (function) ``PageLog``: requests to non-localhost hosts, console errors, page errors.
    page         (function) a fresh Playwright ``Page`` (own context, 1280x900) recording into
                            ``page_log``; a screenshot is saved to ``test-artifacts/`` on failure.

Helpers, each also a fixture of the same name that returns the function (test modules cannot
reliably ``import conftest``: tests/conftest.py is a "conftest" module too):
    run_notebook(page, base_url, notebook_path, *, ui="lab", timeout_s=120.0) -> str
    run_notebook_nb7(page, base_url, notebook_path, *, timeout_s=120.0) -> str
    kernel_execute(page, code, *, timeout_s=60.0) -> str
    save_screenshot(page, name, *, full_page=True) -> pathlib.Path
    unavailable(reason) -> NoReturn       skip, or fail when CI is set

Without Chromium, Playwright, Notebook 7 or the built front end the tests are skipped, except when
the ``CI`` environment variable is set: then they fail, so CI cannot silently skip them.
Set up with ``bash scripts/setup_browser.sh`` and ``bash scripts/build_js.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from helpers import patience

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("STEERWIDGETS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
SERVER_START_TIMEOUT_S = 90.0
SETUP_HINT = "run `bash scripts/setup_browser.sh` (Chromium + playwright) and `bash scripts/build_js.sh`"





def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing prerequisite, or fail when ``CI`` is set (no silent skips)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# Server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``jupyter lab`` on a free port in a temp root dir; yield its base URL."""
    for name in ("widgets.js", "compare.js", "widget.css"):
        if not (REPO_ROOT / "steerwidgets" / "static" / name).is_file():
            unavailable(f"steerwidgets/static/{name} is not built; run `bash scripts/build_js.sh`")
    if importlib.util.find_spec("jupyterlab") is None:
        unavailable("jupyterlab is not installed in this Python environment")

    base = tmp_path_factory.mktemp("jupyter")
    root = base / "root"
    settings = base / "lab-settings"
    for d in (root, settings):
        d.mkdir()
    # No "would you like news?" toast and no update check (both would reach the internet).
    _write_json(
        settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
        {"fetchNews": "false", "checkForUpdates": False},
    )
    # Attach every cell to the DOM: with the default "contentVisibility" windowing, a widget in a
    # cell scrolled out of view (run-all scrolls to the last cell) is not rendered and never
    # becomes "visible" to Playwright, which made the tests depend on the machine's speed.
    _write_json(
        settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
        {"windowingMode": "none"},
    )

    env = dict(os.environ)
    env.update(
        {
            # Private dirs for everything a test run could write or pick up from the user; the
            # venv's own share/jupyter and etc/jupyter (kernelspec, anywidget and ipywidgets
            # lab extensions, server extensions) stay on the search path.
            "JUPYTER_CONFIG_DIR": str(base / "config"),
            "JUPYTER_DATA_DIR": str(base / "data"),
            "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
            "IPYTHONDIR": str(base / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
            # The kernel must import this checkout's steerwidgets even without `pip install -e`.
            "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_TOKEN", None)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",  # lets run_notebook upload via the contents API
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]  # fmt: skip
    log_path = base / "jupyter-lab.log"
    log = open(log_path, "wb")  # closed in teardown
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + patience(SERVER_START_TIMEOUT_S * 1000) / 1000
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {proc.returncode}:\n{_log_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"jupyter lab did not answer /api/status within {SERVER_START_TIMEOUT_S:.0f}s:"
                    f"\n{_log_tail(log_path)}"
                )
            time.sleep(0.25)
        yield url
    finally:
        _shutdown(proc)
        log.close()
        if os.environ.get("STEERWIDGETS_KEEP_LAB_LOG"):
            ARTIFACTS_DIR.mkdir(exist_ok=True)
            shutil.copy(log_path, ARTIFACTS_DIR / "jupyter-lab.log")


def _shutdown(proc: subprocess.Popen) -> None:
    """Terminate the server (and its kernels, which share its process group)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    # Kernels started by the server live in its session/process group; make sure none survive.
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(autouse=True)
def _shut_down_kernels(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the server, shut its kernels down: the server lives for the whole
    session, and a kernel left behind keeps its model in memory and its widget threads on the CPUs."""
    yield
    if "lab_server" not in request.fixturenames:
        return
    base = request.getfixturevalue("lab_server")
    try:
        with urllib.request.urlopen(f"{base}/api/kernels", timeout=10) as r:
            kernels = json.load(r)
        for kernel in kernels:
            req = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()
    except (urllib.error.URLError, OSError) as exc:  # best effort: the test's outcome stands
        print(f"could not shut kernels down: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (never a Playwright-downloaded browser)."""
    if not Path(CHROMIUM).is_file():
        unavailable(f"{CHROMIUM} is missing; {SETUP_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable(f"the playwright Python package is missing; {SETUP_HINT}")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@dataclass
class PageLog:
    """What a page did that a test may want to assert on."""

    external_requests: list[str] = field(default_factory=list)  # URLs not on localhost
    console_errors: list[str] = field(default_factory=list)  # console.error(...) texts
    console_warnings: list[str] = field(default_factory=list)  # console.warn(...) texts
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions, with stacks

    def errors_from(self, *needles: str) -> list[str]:
        """Page errors whose message or stack mentions any of ``needles`` (e.g. a bundle name)."""
        return [e for e in self.page_errors if any(n in e for n in needles)]


def _is_external(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "ws", "wss"):
        return False  # data:, blob:, about:, chrome-extension: ...
    return (parsed.hostname or "") not in LOCAL_HOSTS


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def page(browser: Any, page_log: PageLog, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page in its own browser context; records external requests and JS errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(patience(60_000))

    def on_request(req: Any) -> None:
        if _is_external(req.url):
            page_log.external_requests.append(req.url)

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            page_log.console_errors.append(msg.text)
        elif msg.type == "warning":
            page_log.console_warnings.append(msg.text)

    pg.on("request", on_request)
    pg.on("console", on_console)
    # Uncaught exceptions with the page URL and stack: "[<page url>] TypeError: ...\n    at ...".
    pg.on("pageerror", lambda err: page_log.page_errors.append(f"[{pg.url}] {err.stack or err}"))
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            try:
                save_screenshot(pg, f"FAILED-{request.node.name}")
            except Exception as exc:  # best effort only
                print(f"could not save failure screenshot: {exc}", file=sys.stderr)
        context.close()


# ---------------------------------------------------------------------------------------------
# Helpers


def save_screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a PNG screenshot as ``test-artifacts/<name>.png`` (repo root); return its path."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "screenshot"
    path = ARTIFACTS_DIR / f"{safe}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _upload_notebook(base_url: str, notebook_path: Path | str) -> str:
    """Copy a notebook into the server's root dir (contents API); return its name there."""
    src = Path(notebook_path)
    nb = json.loads(src.read_text())
    # Without a kernelspec, JupyterLab asks which kernel to use in a dialog.
    nb.setdefault("metadata", {}).setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    )
    name = src.name
    body = json.dumps({"type": "notebook", "format": "json", "content": nb}).encode()
    req = urllib.request.Request(
        f"{base_url}/api/contents/{urllib.parse.quote(name)}",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status not in (200, 201):
            raise RuntimeError(f"uploading {name} failed: HTTP {r.status}")
    return name


# JS: the current NotebookPanel once its context is ready and its kernel idle (Lab and Notebook 7).
# (The current tab must be *this* notebook: a restored workspace can bring back another one.)
_JS_NOTEBOOK_READY = """(name) => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  if (!w || !w.context || !w.context.isReady || !w.sessionContext || !w.content) return false;
  if (w.context.path !== name) return false;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
}"""

# JS: true once every code cell ran and the kernel is idle again.
_JS_ALL_CELLS_RAN = """(name) => {
  const w = window.jupyterapp.shell.currentWidget;
  if (!w.context || w.context.path !== name) throw new Error(`the current tab is not ${name}`);
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  const cells = w.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type === 'code' && c.sharedModel.getSource().trim() && !c.executionCount) return false;
  }
  return true;
}"""

# JS: error outputs of all code cells, as "ename: evalue" strings.
_JS_CELL_ERRORS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const errors = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    for (const o of c.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  }
  return errors;
}"""


def run_notebook(
    page: Any,
    base_url: str,
    notebook_path: Path | str,
    *,
    ui: str = "lab",
    timeout_s: float = 120.0,
) -> str:
    """Open a notebook in JupyterLab (``ui="lab"``) or Notebook 7 (``ui="notebook"``), wait for
    its kernel to be idle, run all cells and wait until they have all executed.

    The notebook is copied into the server's root dir first (a ``python3`` kernelspec is added
    if it has none). Raises ``AssertionError`` if a cell produced an error output.
    Returns the notebook's name on the server.
    """
    timeout_ms = patience(timeout_s * 1000)
    name = _upload_notebook(base_url, notebook_path)
    quoted = urllib.parse.quote(name)
    if ui == "lab":
        # ?reset: start from an empty workspace, not the tabs an earlier test left open.
        page.goto(f"{base_url}/lab/tree/{quoted}?reset")
    elif ui == "notebook":
        page.goto(f"{base_url}/tree")
        # The file browser lists the uploaded notebook: Notebook 7's tree page works.
        page.locator(".jp-DirListing-item", has_text=name).first.wait_for(timeout=timeout_ms)
        page.goto(f"{base_url}/notebooks/{quoted}")
    else:
        raise ValueError(f"ui must be 'lab' or 'notebook', not {ui!r}")
    page.wait_for_function(_JS_NOTEBOOK_READY, arg=name, timeout=timeout_ms, polling=100)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_JS_ALL_CELLS_RAN, arg=name, timeout=timeout_ms, polling=100)
    errors = page.evaluate(_JS_CELL_ERRORS)
    assert not errors, f"{name} raised in {ui}: " + "; ".join(errors)
    return name


def run_notebook_nb7(page: Any, base_url: str, notebook_path: Path | str, *, timeout_s: float = 120.0) -> str:
    """``run_notebook`` in Notebook 7 (``/tree`` then ``/notebooks/<name>``)."""
    if importlib.util.find_spec("notebook") is None:
        unavailable("Notebook 7 (the `notebook` package) is not installed; pip install 'notebook>=7'")
    return run_notebook(page, base_url, notebook_path, ui="notebook", timeout_s=timeout_s)


def kernel_execute(page: Any, code: str, *, timeout_s: float = 60.0) -> str:
    """Run ``code`` in the current notebook's kernel (not as a cell) and return its stdout.

    Raises ``AssertionError`` with the traceback summary if the code raised.
    """
    result = page.evaluate(
        """async ([code, timeoutMs]) => {
          const w = window.jupyterapp.shell.currentWidget;
          const kernel = w.sessionContext.session.kernel;
          const future = kernel.requestExecute({ code, store_history: false });
          let out = '', err = null;
          future.onIOPub = (msg) => {
            const t = msg.header.msg_type;
            if (t === 'stream') out += msg.content.text;
            if (t === 'error') err = `${msg.content.ename}: ${msg.content.evalue}`;
          };
          const timeout = new Promise((_, reject) =>
            setTimeout(() => reject(new Error('kernel_execute timed out')), timeoutMs));
          await Promise.race([future.done, timeout]);
          return { out, err };
        }""",
        [code, patience(timeout_s * 1000)],
    )
    assert result["err"] is None, f"kernel raised: {result['err']}\ncode:\n{code}"
    return result["out"]


def luminance_js(selector: str, prop: str) -> str:
    """A JS expression: relative luminance (0-255) of a computed colour property (``"color"``,
    ``"fill"``) of the first element matching ``selector``, -1 if none matches."""
    return f"""((sel, prop) => {{
  const el = document.querySelector(sel);
  if (!el) return -1;
  const [r, g, b] = getComputedStyle(el)[prop].match(/[\\d.]+/g).map(Number);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}})({json.dumps(selector)}, {json.dumps(prop)})"""


# The helpers as fixtures, so test modules need no import:
#     def test_x(page, lab_server, run_notebook): run_notebook(page, lab_server, path)


@pytest.fixture(name="run_notebook")
def _run_notebook_fixture() -> Any:
    return run_notebook


@pytest.fixture(name="run_notebook_nb7")
def _run_notebook_nb7_fixture() -> Any:
    return run_notebook_nb7


@pytest.fixture(name="kernel_execute")
def _kernel_execute_fixture() -> Any:
    return kernel_execute


@pytest.fixture(name="save_screenshot")
def _save_screenshot_fixture() -> Any:
    return save_screenshot


@pytest.fixture(name="luminance_js")
def _luminance_js_fixture() -> Any:
    return luminance_js
