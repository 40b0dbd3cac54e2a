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
    assert len(lines) >= 4, lines  # base text, steered text, norm ratio, the A/B summary
    steerability, anti, level = lines[-1].split()
    assert float(steerability) == float(steerability)  # a finite number, not nan
    assert 0.0 <= float(anti) <= 1.0 and level in ("ok", "notice", "warning")
