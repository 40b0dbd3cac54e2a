"""How many batch rows one forward pass may hold: a budget that follows the device.

A propensity sweep runs each item as batch rows (strengths × directions) that share the prompt's keys and
values, copied once per row above the steered layer. On two CPU cores 64 rows per pass is what suits the
cores (more rows only queue). On an accelerator the limit is memory: the rows that fit in the memory left
free after the weights, at :data:`USABLE` of it, with each row costed from the model's config
(:func:`row_cost`). The arithmetic for a 7B model on a 24 GB card is in ``docs/gpu.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: Rows per pass on the CPU (and on devices whose free memory torch cannot read, e.g. MPS).
CPU_ROWS = 64
#: The share of free accelerator memory a pass may fill: the allocator's fragmentation, CUDA's
#: workspace and the caller's own tensors need the rest.
USABLE = 0.7
#: More rows than this never pay: the step is already compute-bound.
MAX_ROWS = 4096


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder that decide activation memory (read from a transformers config)."""

    n_layers: int
    d_model: int
    intermediate: int
    n_heads: int
    kv_dim: int  # n_kv_heads × head_dim: the width of the cached keys (and of the values)
    vocab: int
    bytes_per_value: int

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype) -> Shape:
        d = int(getattr(config, "hidden_size", None) or config.n_embd)
        heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or d // heads)
        layers = int(getattr(config, "num_hidden_layers", None) or config.n_layer)
        inter = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d)
        return cls(layers, d, inter, heads, kv_heads * head_dim, int(config.vocab_size),
                   torch.empty((), dtype=dtype).element_size())  # fmt: skip


def row_cost(shape: Shape, context: int, tokens: int, keep: int, grad: bool = False) -> int:
    """Bytes one batch row needs in a pass over ``tokens`` new positions after ``context`` cached ones,
    reading logits at ``keep`` positions.

    - keys and values of every layer for all ``context + tokens`` positions (the per-row cache copy);
    - the widest transient of a block (the MLP's three ``intermediate`` projections, the residual and
      attention in/out), counted for one layer at a time — except with ``grad``, where autograd keeps every
      layer's activations for the backward pass;
    - attention scores in float32 over ``tokens × (context + tokens)`` per head (eager attention's worst
      case);
    - logits at ``keep`` positions in the model's dtype, their float32 copy and its log-softmax.
    """
    b = shape.bytes_per_value
    seen = context + tokens
    kv = 2 * shape.n_layers * shape.kv_dim * seen * b
    block = tokens * (6 * shape.d_model + 3 * shape.intermediate) * b
    scores = shape.n_heads * tokens * seen * 4
    logits = keep * shape.vocab * (b + 8)
    return kv + (block * shape.n_layers if grad else block) + scores + logits


def free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (after what this process and others hold); None where unknown."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def rows_that_fit(free: int, cost: int) -> int:
    """Rows per pass within :data:`USABLE` of ``free`` bytes at ``cost`` bytes a row (1 at least)."""
    return max(1, min(MAX_ROWS, int(free * USABLE) // max(1, cost)))


def max_rows_for(model: Any, context: int, tokens: int, keep: int, grad: bool = False) -> int:
    """The row budget of one pass on ``model``'s device: :data:`CPU_ROWS` off CUDA (and for a remote model,
    whose server does its own batching), else what fits in free memory."""
    if getattr(model, "remote", False):
        return CPU_ROWS
    free = free_bytes(model.device)
    if free is None:
        return CPU_ROWS
    shape = Shape.of(model.hf.config, model.dtype)
    return rows_that_fit(free, row_cost(shape, context, tokens, keep, grad))
