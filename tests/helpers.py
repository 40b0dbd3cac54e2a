"""Small helpers shared by tests."""

from __future__ import annotations

import json
import shutil
import subprocess
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
