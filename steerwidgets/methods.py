"""Ways to build a steering vector from data. Each returns a :class:`SteeringVector` with provenance.

- :func:`caa` — mean difference at the answer-letter token over A/B items (Panickssery et al. 2023).
- :func:`mean_difference` — the same estimator on contrastive sentence pairs, read at the last token.
- :func:`actadd` — the per-position difference of one prompt pair (Turner et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .data import ABItem, ContrastPair, fingerprint
from .engine import _use_chat, ab_prompt, read_activations
from .interventions import SteeringError
from .vectors import SteeringVector


def _layer_list(model: Any, layers: int | Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.n_layers))
    out = [layers] if isinstance(layers, int) else list(layers)
    for layer in out:
        model.check_layer(layer)
    if not out:
        raise SteeringError("give at least one layer")
    return out


def ab_activations(
    model: Any,
    items: Sequence[ABItem],
    layers: int | Sequence[int] | None = None,
    *,
    chat: bool | None = None,
    batch_size: int = 16,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, activations ``(positive [n, d], negative [n, d])`` at the answer-letter token.

    The prompt is the chat template with the question as the user turn, generation prompt added, then
    ``"("``; the completion is the letter token alone (metrics.md).
    """
    items = list(items)
    if not items:
        raise SteeringError("need at least one A/B item")
    layer_list = _layer_list(model, layers)
    sequences = []
    for item in items:
        ids, y_pos, y_neg = ab_prompt(model, item, chat)
        sequences += [ids + [y_pos], ids + [y_neg]]
    acts = read_activations(model, sequences, layer_list, position=-1, batch_size=batch_size)
    return {layer: (a[0::2], a[1::2]) for layer, a in acts.items()}


def pair_activations(
    model: Any,
    pairs: Sequence[ContrastPair],
    layers: int | Sequence[int] | None = None,
    *,
    batch_size: int = 16,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, ``(positive [n, d], negative [n, d])`` at each sentence's last token (raw text)."""
    pairs = list(pairs)
    if not pairs:
        raise SteeringError("need at least one contrast pair")
    layer_list = _layer_list(model, layers)
    tok = model.tokenizer
    sequences = []
    for pair in pairs:
        for text in (pair.positive, pair.negative):
            ids = tok(text, add_special_tokens=True)["input_ids"]
            if not ids:
                raise SteeringError(f"a contrast sentence tokenises to nothing: {text!r}")
            sequences.append(ids)
    acts = read_activations(model, sequences, layer_list, position=-1, batch_size=batch_size)
    return {layer: (a[0::2], a[1::2]) for layer, a in acts.items()}


def caa(
    model: Any,
    items: Sequence[ABItem],
    layers: int | Sequence[int] | None = None,
    *,
    chat: bool | None = None,
    batch_size: int = 16,
) -> SteeringVector:
    """v = mean_i [a_L(prompt_i + y+_i) − a_L(prompt_i + y−_i)], read at the answer-letter token.

    ``layers=None`` reads every layer in the same forward passes.
    """
    acts = ab_activations(model, items, layers, chat=chat, batch_size=batch_size)
    return SteeringVector(
        directions={layer: (pos - neg).mean(0) for layer, (pos, neg) in acts.items()},
        model_id=model.name,
        method="caa",
        read_position="answer letter (last token)",
        dataset_fingerprint=fingerprint(list(items)),
        meta={"n_items": len(items), "chat": _use_chat(model, chat)},
    )


def mean_difference(
    model: Any,
    pairs: Sequence[ContrastPair],
    layers: int | Sequence[int] | None = None,
    *,
    batch_size: int = 16,
) -> SteeringVector:
    """Mean over pairs of a_L(positive) − a_L(negative) at each sentence's last token (raw text)."""
    acts = pair_activations(model, pairs, layers, batch_size=batch_size)
    return SteeringVector(
        directions={layer: (pos - neg).mean(0) for layer, (pos, neg) in acts.items()},
        model_id=model.name,
        method="mean_difference",
        read_position="last token of each sentence",
        dataset_fingerprint=fingerprint(list(pairs)),
        meta={"n_pairs": len(pairs)},
    )


def actadd(
    model: Any,
    positive_prompt: str,
    negative_prompt: str,
    layer: int | Sequence[int],
) -> SteeringVector:
    """h_A = a_L(p+) − a_L(p−) per position, the shorter prompt right-padded with spaces to equal length.

    The result has shape ``[n_positions, d_model]`` per layer and is added at the first positions of the
    user's text (``positions="front"``), as in Turner et al. (2023).
    """
    if not positive_prompt.strip() or not negative_prompt.strip():
        raise SteeringError("ActAdd needs two non-empty phrases, e.g. 'Love' and 'Hate'")
    layer_list = _layer_list(model, layer)
    tok = model.tokenizer
    pos = tok(positive_prompt, add_special_tokens=False)["input_ids"]
    neg = tok(negative_prompt, add_special_tokens=False)["input_ids"]
    space = tok(" ", add_special_tokens=False)["input_ids"]
    filler = space[0] if len(space) == 1 else tok.pad_token_id
    width = max(len(pos), len(neg))
    pos = pos + [filler] * (width - len(pos))
    neg = neg + [filler] * (width - len(neg))
    acts = read_activations(model, [pos, neg], layer_list, position="all")
    directions = {layer: a[0, :width] - a[1, :width] for layer, a in acts.items()}
    return SteeringVector(
        directions=directions,
        model_id=model.name,
        method="actadd",
        read_position=f"front-aligned, {width} positions",
        dataset_fingerprint=fingerprint([ContrastPair(positive_prompt, negative_prompt)]),
        meta={"positive": positive_prompt, "negative": negative_prompt},
    )
