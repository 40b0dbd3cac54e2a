"""benchmarks/gpu_check.py on the CPU with its tiny random-init config: the prepared device check must pass
here, and fail loudly (non-zero exit, the broken check named) when a fault is injected, so a run on a
lent GPU machine can be trusted the one time it happens. No real model is loaded (no ``model`` mark).

Both runs start together (each uses one torch thread), so the module costs about one run's time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LEAK = "b: unsteered after sw.score, with a leaked hook injected (--inject-error)"


class Run:
    """One gpu_check subprocess on ``--device cpu --config tiny``, started at once, read on demand."""

    def __init__(self, out: Path, *extra: str):
        self.out = out
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--config", "tiny", "--json", str(out), *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._result: tuple[int, str, str, dict] | None = None

    def result(self) -> tuple[int, str, str, dict]:
        if self._result is None:
            stdout, stderr = self.proc.communicate(timeout=400)
            report = json.loads(self.out.read_text()) if self.out.exists() else {}
            self._result = (self.proc.returncode, stdout, stderr, report)
        return self._result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    folder = tmp_path_factory.mktemp("gpu_check")
    started = {
        "plain": Run(folder / "plain.json"),
        "inject": Run(folder / "inject.json", "--inject-error", "--skip-perf"),
    }
    try:
        yield started
    finally:
        for run in started.values():
            run.kill()


def test_gpu_check_passes_on_cpu_tiny(runs: dict[str, Run]) -> None:
    code, stdout, stderr, report = runs["plain"].result()
    tail = stdout[-4000:] + stderr[-2000:]
    assert code == 0, tail
    assert stdout.strip().splitlines()[-1].startswith("PASS: all "), tail
    assert report["passed"] and report["checks"], tail
    groups = {check["check"].split(":")[0] for check in report["checks"]}
    assert {"a", "b", "c", "d"} <= groups, groups
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {"P1 last (a)/(d)", "P1 all (d)/(c)", "P2 engine/hook"} <= ratios, ratios
    assert any(r.startswith("P3 ") for r in ratios), ratios
    assert "| config | check | value | tolerance | ok |" in stdout


def test_gpu_check_fails_loudly_on_an_injected_error(runs: dict[str, Run]) -> None:
    code, stdout, stderr, report = runs["inject"].result()
    tail = stdout[-4000:] + stderr[-2000:]
    assert code == 1, tail
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL: 1 of "), tail
    assert LEAK in last, last
    assert f"[FAIL] {LEAK}" in stdout, tail
    failed = [c["check"] for c in report["checks"] if not c["ok"]]
    assert failed == [LEAK], failed
    assert not report["passed"]
    # the leaked hook is removed after its check: the next unsteered checks pass again
    names = [c["check"] for c in report["checks"]]
    after = report["checks"][names.index(LEAK) + 1 :]
    assert any(c["ok"] and c["check"].startswith("b: unsteered") for c in after), after
