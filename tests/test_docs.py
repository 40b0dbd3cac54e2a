"""The documentation stays true: every Python block of README.md and docs/ runs as written; the site builds.

Each page's ```python blocks run in order in one namespace (as cells of a notebook would), in a fresh working
folder. A block that cannot run here is marked right before it with ``<!-- not run: REASON -->``; REASON names
what it needs that this machine lacks (the Hugging Face hub, NDIF, a GPU), and such blocks stay few.
A page whose blocks load the real model is a ``model`` test, as the other real-model tests are. The README's
example is also the first block of docs/index.md (a test holds them equal), so it runs there, once.

The site is built with ``mkdocs build --strict`` (a broken link, anchor or API reference fails it) with the
network switched off, and the output must load nothing from another host (no CDN scripts, styles or fonts).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```(?P<lang>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<why>.*?)\s*-->\s*\Z", re.S)
#: What a block may need that this machine (and CI) lacks; anything else must run.
NOT_RUN_REASONS = ("hugging face hub", "internet", "ndif", "gpu")
MAX_NOT_RUN = 3
VERDICTS = ("steers", "backfires", "no_detectable_effect", "letter_driven", "cannot_judge")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(first line of the code, code, the not-run reason or None) for each ```python block of a page."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang").strip() != "python":
            continue
        before = text[: match.start()]
        marker = NOT_RUN.search(before)
        line = before.count("\n") + 2
        blocks.append((line, match.group("code"), marker.group("why") if marker else None))
    return blocks


README = ROOT / "README.md"
GETTING_STARTED = DOCS / "index.md"


def _runs_elsewhere(path: Path) -> bool:
    """The README's example is also the getting-started page's first block: it runs there, once."""
    own = [code for _, code, why in python_blocks(path) if why is None]
    there = {code for _, code, _ in python_blocks(GETTING_STARTED)}
    return path == README and bool(own) and all(code in there for code in own)


def _pages_with_code() -> list:
    params = []
    for path in PAGES:
        blocks = [b for b in python_blocks(path) if b[2] is None]
        if not blocks or _runs_elsewhere(path):
            continue
        marks = [pytest.mark.model] if any("load_model(" in code for _, code, _ in blocks) else []
        params.append(pytest.param(path, marks=marks, id=_rel(path)))
    return params


def _close_widgets(namespace: dict) -> None:
    """Stop the background threads of any widget a page made (the Playground runs its work on one)."""
    import ipywidgets

    for value in namespace.values():
        if isinstance(value, ipywidgets.Widget):
            value.close()


def run_page(path: Path) -> dict[str, str]:
    """Run a page's blocks in order in one namespace; returns what each block printed, by its code."""
    namespace: dict = {"__name__": "__docs__"}
    printed: dict[str, str] = {}
    try:
        for line, code, why in python_blocks(path):
            if why is not None:
                continue
            out = io.StringIO()
            # Pad with newlines so a traceback names the page's own line numbers.
            source = "\n" * (line - 1) + code
            with contextlib.redirect_stdout(out):
                exec(compile(source, f"{_rel(path)}", "exec"), namespace)
            printed[code] = out.getvalue()
    finally:
        _close_widgets(namespace)
    return printed


def _lines(printed: dict[str, str], needle: str) -> list[str]:
    (out,) = [out for code, out in printed.items() if needle in code]
    return out.strip().splitlines()


def _check_readme_example(printed: dict[str, str]) -> None:
    ((_, example, _),) = python_blocks(README)
    lines = printed[example].strip().splitlines()
    assert len(lines) >= 5, lines  # base text, steered text, norm ratio, then one verdict line per protocol
    for protocol, line in zip(("letter", "answer_text"), lines[-2:]):
        name, rest = line.split(" ", 1)
        verdict, reason = rest.split(" — ", 1)
        assert name == protocol and verdict in VERDICTS, line
        assert reason.endswith("."), line


def _check_getting_started(printed: dict[str, str]) -> None:
    _check_readme_example(printed)
    (line,) = _lines(printed, "with sw.steered(model, steering):")
    assert line.startswith("log p(answer): ") and " unsteered, " in line and line.endswith(" steered")


def _check_playground(printed: dict[str, str]) -> None:
    lines = _lines(printed, "pg = sw.Playground(")
    assert "import steerwidgets as sw" in lines  # copy-as-code printed a runnable cell
    assert _lines(printed, "sw.load_steerings(")[-1] == "sentiment@10 + formality.safetensors@14"


def _check_is_it_real(printed: dict[str, str]) -> None:
    lines = _lines(printed, "rng = np.random.default_rng(0)")
    assert lines[0].startswith("steers {'steers': 20,"), lines[0]
    assert lines[-1] == "no_detectable_effect"
    assert "does not read the options" in _lines(printed, 'protocol="letter"')[0]


CHECKS = {
    "docs/index.md": _check_getting_started,
    "docs/playground.md": _check_playground,
    "docs/is-it-real.md": _check_is_it_real,
}


@pytest.mark.parametrize("path", _pages_with_code())
def test_page_code_runs_as_written(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (a vector, a report); keep them out of the repo
    printed = run_page(path)
    check = CHECKS.get(_rel(path))
    if check is not None:
        check(printed)


def test_the_readme_example_runs_on_the_getting_started_page():
    """It runs once (the slowest block: two sweeps with their nulls), and the two cannot drift apart."""
    assert _runs_elsewhere(README), "README.md's example must be docs/index.md's first block, word for word"
    ((_, example, _),) = python_blocks(README)
    assert python_blocks(GETTING_STARTED)[0][1] == example


def test_the_readme_example_is_short_and_first_block_is_the_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    first = FENCE.search(text)
    assert first.group("lang") == "bash", "the README starts with the commands"
    assert "make lab" in first.group("code") and "make test" in first.group("code")
    (example,) = python_blocks(ROOT / "README.md")
    assert example[2] is None, "the README's example must run"
    assert len(example[1].splitlines()) <= 20


def test_every_page_has_python_blocks_where_expected():
    """The fence pattern finds every block (a block it missed would silently go untested)."""
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        opened = len(re.findall(r"^```python[ \t]*$", text, re.M))
        assert opened == len(python_blocks(path)), _rel(path)
    assert sum(len(python_blocks(p)) for p in PAGES) >= 10


def test_blocks_that_do_not_run_are_few_and_say_why():
    skipped = [(_rel(p), line, why) for p in PAGES for line, _, why in python_blocks(p) if why is not None]
    assert len(skipped) <= MAX_NOT_RUN, skipped
    for page, line, why in skipped:
        assert any(reason in why.lower() for reason in NOT_RUN_REASONS), (
            f"{page}:{line}: a block may be left out only for what this machine lacks "
            f"({', '.join(NOT_RUN_REASONS)}), not for {why!r}"
        )


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for path in DOCS.rglob("*.md"):
        assert f": {path.relative_to(DOCS)}" in config, f"{path.relative_to(DOCS)} is not in mkdocs.yml's nav"


def test_gpu_page_exists_for_the_readme_line():
    assert "docs/gpu.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert (DOCS / "gpu.md").read_text(encoding="utf-8").startswith("# On a GPU, and on NDIF")


# --- the site ----------------------------------------------------------------------------------------------
_OFFLINE_MKDOCS = """
import socket, sys

def _refuse(*args, **kwargs):
    raise OSError("test_docs: the docs build must not use the network")

socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = _refuse
from mkdocs.__main__ import cli
sys.exit(cli(["build", "--strict", "--quiet", "-f", sys.argv[1], "-d", sys.argv[2]]))
"""


class _Resources(HTMLParser):
    """Every URL a page loads by itself (scripts, styles, images, icons), not links a reader clicks."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "embed", "audio", "video") and attrs.get("src"):
            self.urls.append(attrs["src"])
        rel = (attrs.get("rel") or "").lower()
        if tag == "link" and attrs.get("href") and any(k in rel for k in ("stylesheet", "preload", "icon")):
            self.urls.append(attrs["href"])
        if tag == "object" and attrs.get("data"):
            self.urls.append(attrs["data"])


def _external(url: str) -> bool:
    return bool(re.match(r"^\s*(https?:)?//", url, re.I))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings_handlers.python  # noqa: F401
    except ImportError as exc:  # a failure, not a skip: CI must build the docs
        pytest.fail(f"{exc}; install the docs tools: pip install -e '.[dev,docs]' (scripts/setup.sh does)")
    out = tmp_path_factory.mktemp("site")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_MKDOCS, str(ROOT / "mkdocs.yml"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    print(f"docs built in {time.perf_counter() - started:.1f} s")
    return out


def test_site_builds_strict_and_offline(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    top = "index playground is-it-real verdicts realistic-use methods cli gpu benchmarks".split()
    for page in top + [f"api/{p}" for p in ("index", "core", "engine", "checks", "widgets", "data")]:
        assert f"{page}.html" in pages, page
    assert (site / "playground.png").is_file()
    # The API reference is generated from the docstrings (mkdocstrings), not written by hand.
    api = (site / "api" / "core.html").read_text(encoding="utf-8")
    assert 'id="steerwidgets.models.load_model"' in api
    assert "Load a causal LM for steering" in api


def test_site_loads_nothing_from_other_hosts(site):
    offenders = []
    for page in site.rglob("*.html"):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        offenders += [f"{page.relative_to(site)}: {url}" for url in parser.urls if _external(url)]
    for sheet in site.rglob("*.css"):
        css = sheet.read_text(encoding="utf-8", errors="replace")
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", css) + re.findall(r"@import\s+['\"]([^'\"]+)", css)
        for url in urls:
            if _external(url):
                offenders.append(f"{sheet.relative_to(site)}: {url}")
    loads = re.compile(
        r"""(?:importScripts|import|fetch)\(\s*['"]((?:https?:)?//[^'"]+)"""
        r"""|\.src\s*=\s*['"]((?:https?:)?//[^'"]+)"""
    )
    for script in site.rglob("*.js"):
        for match in loads.finditer(script.read_text(encoding="utf-8", errors="replace")):
            offenders.append(f"{script.relative_to(site)}: {match.group(1) or match.group(2)}")
    assert not offenders, "the site must work offline:\n" + "\n".join(offenders)
