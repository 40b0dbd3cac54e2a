"""The letter protocol's sweep for many items in one pass: each item's steered suffix is its last prompt
token, so after the cached prefixes the items are one-token rows that batch.

Why: the per-item path (:func:`~steerwidgets.engine.sweep.sweep_item`) runs two traces per item (the
vector's rows and the gradient null's backward pass); for the Playground's 20-item check that was 40
traces, most of their time fixed per-trace cost. Here the items' prefix keys/values are left-padded into
one cache (padding masked out, each row at its own position), so a chunk of items costs one forward and
one backward. tests/test_letter_batch.py checks it equals the per-item path.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..interventions import apply_operator
from ._trace import _hidden, _scale_factor, _set_hidden

#: Architectures whose forward with a left-padded cache, a 2-D attention mask and explicit
#: ``position_ids`` was checked to equal the per-item rows (tests/test_letter_batch.py; Gemma 3 in
#: tests/test_gemma.py). Others take the per-item path.
BATCHED_MODEL_TYPES = ("llama", "gpt2", "gemma3_text")

#: One item for this path: (prompt ids, (y+, y−) letter ids, prefix (keys/values, norms)).
Item = tuple[list[int], tuple[int, int], tuple[list, dict[int, tuple[float, int]]]]


def can_batch(model: Any) -> bool:
    """Whether this model takes the batched path (local, and an architecture checked to match)."""
    if getattr(model, "remote", False):
        return False
    return getattr(model.hf.config, "model_type", None) in BATCHED_MODEL_TYPES


def _padded_inputs(model: Any, items: list[Item], row_item: torch.Tensor) -> dict[str, Any]:
    """Forward kwargs for one-token rows, row ``r`` reading item ``row_item[r]``: its last token, its prefix
    keys/values left-padded to the longest, an attention mask that hides the padding, and its position."""
    from transformers import DynamicCache

    lengths = [len(ids) - 1 for ids, _, _ in items]
    width = max(lengths)
    data = []
    for layer in range(len(items[0][2][0])):
        keys, values = [], []
        for (_, _, (kv, _)), p in zip(items, lengths):
            k, v = kv[layer][0], kv[layer][1]
            pad = (0, 0, width - p, 0)  # left-pad the sequence axis of [1, heads, p, head_dim]
            keys.append(torch.nn.functional.pad(k, pad))
            values.append(torch.nn.functional.pad(v, pad))
        k, v = torch.cat(keys), torch.cat(values)
        data.append((k[row_item.to(k.device)], v[row_item.to(v.device)]))
    mask = torch.zeros((len(items), width + 1), dtype=torch.long)
    for i, p in enumerate(lengths):
        mask[i, width - p :] = 1
    last = torch.tensor([[ids[-1]] for ids, _, _ in items])
    positions = torch.tensor([[p] for p in lengths])
    return dict(
        input_ids=model.place(last[row_item]),
        attention_mask=model.place(mask[row_item]),
        position_ids=model.place(positions[row_item]),
        past_key_values=DynamicCache(ddp_cache_data=data),
        use_cache=True,
        logits_to_keep=1,
    )


def letter_values(
    model: Any,
    items: list[Item],
    vector: Any,
    layers: list[int],
    rowsets: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
    n_vector_rows: int,
    operator: str,
    relative: bool,
) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Per layer, per item: the letter logit difference of each row ``[S]`` and the vector rows' ‖λv‖/mean‖h‖.

    Rows: for each layer (sorted), for each item, that layer's ``rowsets`` (direction × strengths); a row
    block is steered at its own layer only. One forward for all of them.
    """
    ordered = sorted(layers)
    size = sum(len(lam) for _, lam in rowsets[ordered[0]])
    n = len(items)
    # rows (layer, item, row): block (g, i) is steered at layer g only
    kwargs = _padded_inputs(model, items, torch.arange(n).repeat_interleave(size).repeat(len(ordered)))
    ratios: dict[int, list[np.ndarray]] = {}
    y = torch.tensor([[t[0], t[1]] for _, t, _ in items])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values is deprecated in v5
        input_ids = kwargs.pop("input_ids")
        with model.lock, model.nn.trace(input_ids, remote=False, **kwargs):
            for g, layer in enumerate(ordered):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                vnorm = float(vector[layer].norm())
                pieces = [hidden[: g * n * size]]
                ratios[layer] = []
                for i, (_, _, (_, norms)) in enumerate(items):
                    at = (g * n + i) * size
                    own = hidden[at : at + 1, -1:]  # the item's unedited last token
                    mean_norm, factor = _scale_factor(own, norms.get(layer), 0, vnorm, relative)
                    ratios[layer].append(rowsets[layer][0][1].abs() * factor * vnorm / max(mean_norm, 1e-12))
                    for direction, lam in rowsets[layer]:
                        part = hidden[at : at + len(lam)]
                        if float(direction.norm()) == 0.0:
                            pieces.append(part)
                        else:
                            scale = (lam * factor).reshape(-1, 1, 1)
                            pieces.append(apply_operator(part, direction, scale, operator))
                        at += len(lam)
                pieces.append(hidden[(g + 1) * n * size :])
                _set_hidden(envoy, out, torch.cat(pieces, 0))
            logits = model.nn.lm_head.output[:, -1].save()
    logits = logits.float().cpu().reshape(len(ordered), n, size, -1)
    diff = logits.gather(-1, y[None, :, None, :].expand(len(ordered), n, size, 2))
    value = (diff[..., 0] - diff[..., 1]).double().numpy()
    return {
        layer: [(value[g, i], ratios[layer][i][:n_vector_rows].numpy()) for i in range(n)]
        for g, layer in enumerate(ordered)
    }


def letter_gradients(
    model: Any, items: list[Item], vector: Any, layers: list[int], relative: bool
) -> dict[int, list[tuple[torch.Tensor, float]]]:
    """Per layer, per item: ∇ of the unsteered letter logit difference with respect to a vector δ added at
    the last prompt token of that layer, and the factor that multiplies λ. One backward pass."""
    ordered = sorted(layers)
    n, rows = len(items), len(ordered) * len(items)
    kwargs = _padded_inputs(model, items, torch.arange(n).repeat(len(ordered)))  # rows (layer, item)
    delta = torch.zeros((rows, model.d_model), requires_grad=True)
    y = torch.tensor([[t[0], t[1]] for _, t, _ in items]).repeat(len(ordered), 1)
    factors: dict[int, list[float]] = {}
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore", FutureWarning)
        input_ids = kwargs.pop("input_ids")
        with model.lock, model.nn.trace(input_ids, remote=False, **kwargs):
            for g, layer in enumerate(ordered):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                vnorm = float(vector[layer].norm())
                factors[layer] = [
                    _scale_factor(hidden[r : r + 1, -1:], norms.get(layer), 0, vnorm, relative)[1]
                    for r, (_, _, (_, norms)) in enumerate(items, start=g * n)
                ]
                block = torch.zeros((rows, 1, 1))
                block[g * n : (g + 1) * n] = 1.0
                edit = (block * delta[:, None, :]).to(device=hidden.device, dtype=hidden.dtype)
                _set_hidden(envoy, out, hidden + edit)
            logits = model.nn.lm_head.output[:, -1].save()
        picked = logits.float().gather(-1, y.to(logits.device))
        (grad,) = torch.autograd.grad((picked[:, 0] - picked[:, 1]).sum(), delta)
    grad = grad.detach().cpu().reshape(len(ordered), n, -1)
    return {layer: [(grad[g, i], factors[layer][i]) for i in range(n)] for g, layer in enumerate(ordered)}

