"""The README's Python quick start runs as written (so the README stays true)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    section = text.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


@pytest.mark.model
def test_python_quick_start_runs():
    code = _block("## Quick start (Python)")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README quick start", "exec"), {})
    lines = out.getvalue().strip().splitlines()
    assert len(lines) >= 6, lines  # base text, steered text, norm ratio, then the verdicts
    verdict, reason = lines[-3].split(" — ", 1)
    assert verdict in ("steers", "backfires", "no_detectable_effect", "letter_driven", "cannot_judge")
    assert reason.endswith(".") and "{'steers': " in lines[-2]
    assert lines[-1].endswith(".")  # the answer-text protocol's reason
