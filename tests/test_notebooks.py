"""Every example notebook runs headless, top to bottom, without an error.

Each notebook runs in a fresh kernel (nbclient) whose working directory is a temporary folder, so files a
notebook writes (exported reports) do not land in the repository. ``HANG_S`` is a hang guard for the whole
notebook, not a speed goal (the suite's tests never depend on speed; each notebook's time is printed by
``--durations``): a cell may use what the cells before it left of it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "example_notebooks").glob("*.ipynb"))
HANG_S = 1500.0  # per notebook: far beyond the slowest (≈ 210 s alone on 2 cores)


@pytest.mark.model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_example_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel imports this checkout's steerwidgets even without `pip install -e .`.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}, allow_errors=False
    )
    client.reset_execution_trackers()
    deadline = time.monotonic() + HANG_S
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{path.name} hung: still running after {HANG_S:.0f} s, before cell {index}")
            client.timeout = max(1, int(left))
            try:
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except nbclient.exceptions.CellTimeoutError:
                pytest.fail(f"{path.name} hung: still running after {HANG_S:.0f} s, in cell {index}")
