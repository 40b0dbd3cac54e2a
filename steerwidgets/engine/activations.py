"""Reading activations (for building vectors): block outputs, and attention heads' outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from nnsight import save as _save

from ..interventions import SteeringError, require_model
from ._trace import _hidden


def read_activations(
    model: Any,
    sequences: Sequence[list[int]],
    layers: Sequence[int],
    *,
    position: int | str = -1,
    batch_size: int = 16,
) -> dict[int, torch.Tensor]:
    """Block outputs at ``layers`` for token-id sequences: ``position=-1`` (last token) gives
    ``[n, d_model]``; ``position="all"`` gives a list-like ``[n, max_len, d_model]`` right-padded with 0."""
    require_model(model, "read_activations")
    for layer in layers:
        model.check_layer(layer)
    if not sequences:
        raise SteeringError("no sequences to read activations from")
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    pad = model.tokenizer.pad_token_id
    max_len = max(len(s) for s in sequences)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, seq in enumerate(chunk):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            attention[i, : len(seq)] = 1
        saved = {}
        placed = model.place(input_ids), model.place(attention)
        with torch.no_grad():
            with (
                model.lock,
                model.nn.trace(placed[0], attention_mask=placed[1], logits_to_keep=1, remote=model.remote),
            ):
                for layer in sorted(layers):
                    saved[layer] = _hidden(model.block(layer).output).save()
                saved = _save(saved)  # a remote run returns only saved values
        lengths = torch.tensor([len(s) for s in chunk])
        for layer in layers:
            h = saved[layer].float().cpu()
            if position == "all":
                full = torch.zeros((len(chunk), max_len, h.shape[-1]))
                full[:, :width] = h * attention[..., None]
                out[layer].append(full)
            else:
                index = lengths + position if position < 0 else torch.full_like(lengths, position)
                out[layer].append(h[torch.arange(len(chunk)), index])
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def attention_out_proj(model: Any, layer: int) -> tuple[Any, torch.Tensor, int]:
    """(nnsight envoy of the attention output projection, its weight as [d_model, H·d_head], n_heads).

    The projection's *input* is the concatenation of the heads' outputs, so head h is the slice
    ``h·d_head .. (h+1)·d_head`` of it. Supported: Llama-style (self_attn.o_proj), GPT-2 (attn.c_proj),
    GPT-NeoX (attention.dense).
    """
    block = model.block(layer)
    hf_block = model.hf_block(layer)
    config = model.hf.config
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    for attn_name, proj_name, transpose in (
        ("self_attn", "o_proj", False),
        ("attn", "c_proj", True),
        ("attention", "dense", False),
    ):
        attn = getattr(hf_block, attn_name, None)
        proj = getattr(attn, proj_name, None) if attn is not None else None
        if proj is not None and hasattr(proj, "weight"):
            weight = proj.weight.detach().float().cpu()
            weight = weight.T if transpose else weight
            envoy = getattr(getattr(block, attn_name), proj_name)
            return envoy, weight, heads
    raise SteeringError(
        f"cannot find the attention output projection of {type(hf_block).__name__}; function vectors "
        "support Llama-style (self_attn.o_proj), GPT-2 (attn.c_proj) and GPT-NeoX (attention.dense) blocks"
    )


def head_means(model: Any, prompts: Sequence[list[int]], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per layer, the mean over prompts of the attention output projection's input at the last token."""
    sums: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for ids in prompts:
            saved = {}
            ids_in = model.place(torch.tensor([ids]))
            with model.lock, model.nn.trace(ids_in, logits_to_keep=1, remote=model.remote):
                for layer in sorted(layers):
                    envoy, _, _ = attention_out_proj(model, layer)
                    saved[layer] = envoy.input[0, -1].save()
                saved = _save(saved)  # a remote run returns only saved values
            for layer, value in saved.items():
                sums[layer] = sums.get(layer, 0) + value.float().cpu()
    return {layer: total / len(prompts) for layer, total in sums.items()}


def patched_answer_probs(
    model: Any,
    ids: list[int],
    answer: int,
    patches: Sequence[tuple[int, int] | None],
    means: dict[int, torch.Tensor],
    head_dim: int,
) -> torch.Tensor:
    """p(answer) at the last position, one row per patch: ``(layer, head)`` replaces that head's output at
    the last token by its mean clean activation; ``None`` is the unpatched run."""
    rows = len(patches)
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for r, patch in enumerate(patches):
        if patch is not None:
            by_layer.setdefault(patch[0], []).append((r, patch[1]))
    with torch.no_grad(), model.lock:
        ids_in = model.place(torch.tensor([ids]).expand(rows, -1))
        with model.nn.trace(ids_in, logits_to_keep=1, remote=model.remote):
            for layer in sorted(by_layer):
                envoy, _, _ = attention_out_proj(model, layer)
                x = envoy.input
                last = x[:, -1].clone()
                for r, head in by_layer[layer]:
                    cols = slice(head * head_dim, (head + 1) * head_dim)
                    last[r, cols] = means[layer][cols].to(device=last.device, dtype=last.dtype)
                patched = x.clone()
                patched[:, -1] = last
                envoy.input = patched
            logits = model.nn.lm_head.output[:, -1].save()
    return logits.float().softmax(-1)[:, answer].cpu()
