"""benchmarks/gpu_check.py on the CPU with its tiny random-init config: the prepared device check must pass
here, and fail loudly (non-zero exit, the broken check named) when a fault is injected, so a run on a
lent GPU machine can be trusted the one time it happens. No real model is loaded (no ``model`` mark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out.json"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--config", "tiny", "--json", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


def test_gpu_check_passes_on_cpu_tiny(tmp_path: Path) -> None:
    proc, report = _run(tmp_path)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert proc.stdout.strip().splitlines()[-1].startswith("PASS"), tail
    assert report["passed"] and report["checks"], tail
    groups = {check["check"].split(":")[0] for check in report["checks"]}
    assert {"a", "b", "c", "d"} <= groups, groups
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {"P1 last (a)/(d)", "P1 all (d)/(c)", "P2 engine/hook"} <= ratios, ratios
    assert any(r.startswith("P3 ") for r in ratios), ratios
    assert "| config | check | value | tolerance | ok |" in proc.stdout


def test_gpu_check_fails_loudly_on_an_injected_error(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, "--inject-error", "--skip-perf")
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 1, tail
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL: 1 of "), tail
    assert "b: unsteered after sw.score, with a leaked hook injected" in last, last
    failed = [c["check"] for c in report["checks"] if not c["ok"]]
    assert failed == ["b: unsteered after sw.score, with a leaked hook injected (--inject-error)"], failed
    assert not report["passed"]
    # the leak is removed after its check: the next unsteered check passes again
    names = [c["check"] for c in report["checks"]]
    after = names.index(failed[0]) + 1
    assert any(c["ok"] and c["check"].startswith("b: unsteered") for c in report["checks"][after:])
