"""Scoring: per-token log-probabilities of given completions, and next-token distributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..interventions import Steering, SteeringError, active_steerings, as_list, require_model
from ..prompts import as_texts, check_length, tokenize_prompt
from ._trace import _plans, _Row, _steer_in_trace


def score(
    model: Any,
    prompts: str | Sequence[str],
    completions: str | Sequence[str],
    steering: Steering | Sequence[Steering] | None = None,
    *,
    row_steerings: Sequence[Steering | Sequence[Steering] | None] | None = None,
    chat: bool | None = None,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Per-token log-probabilities of each completion given its prompt (one tensor per pair).

    The completion is tokenised on its own and appended to the prompt's tokens, so its tokens are the
    ``"generated"`` positions for steering. Sum or average the result as the metric requires.
    ``steering`` applies to every pair; ``row_steerings`` (one entry per pair, ``None`` for none) adds
    steerings to single pairs, so many strengths or vectors are scored in one batched pass.
    """
    require_model(model, "score")
    prompts = as_texts(prompts, "prompts")
    completions = as_texts(completions, "completions")
    if len(prompts) != len(completions):
        raise SteeringError(
            f"got {len(prompts)} prompts but {len(completions)} completions; pass one of each per pair"
        )
    per_row = [[] for _ in prompts] if row_steerings is None else [as_list(x) for x in row_steerings]
    if len(per_row) != len(prompts):
        raise SteeringError(
            f"got {len(per_row)} row_steerings for {len(prompts)} pairs; give one entry (or None) per pair"
        )
    steerings = active_steerings(model) + as_list(steering)
    for item in [*steerings, *(x for row in per_row for x in row)]:
        item.validate(model)
    tok = model.tokenizer
    rows = []
    for prompt, completion in zip(prompts, completions):
        ids, start = tokenize_prompt(model, prompt, chat)
        if not isinstance(completion, str) or completion == "":
            raise SteeringError("a completion is empty; give at least one character to score")
        comp = tok(completion, add_special_tokens=False)["input_ids"]
        check_length(model, len(ids) + len(comp))
        rows.append((ids, comp, start))
    results: list[torch.Tensor] = []
    for chunk_start in range(0, len(rows), batch_size):
        chunk = range(chunk_start, min(chunk_start + batch_size, len(rows)))
        applied: list[tuple[Steering, set[int] | None]] = [(item, None) for item in steerings]
        for r, i in enumerate(chunk):
            applied += [(item, {r}) for item in per_row[i]]
        results.extend(_score_batch(model, [rows[i] for i in chunk], applied))
    return results


def _score_batch(
    model: Any, rows: list, steerings: list[tuple[Steering, set[int] | None]]
) -> list[torch.Tensor]:
    width = max(len(p) + len(c) for p, c, _ in rows)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c, _) in enumerate(rows):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
    # Right padding: every row starts at position 0.
    layout = [_Row(0, len(p), len(p) + len(c), start) for p, c, start in rows]
    plans = _plans(model, steerings, layout, width)
    first_read = min(len(p) for p, _, _ in rows) - 1
    keep = width - first_read
    with torch.no_grad(), model.lock:
        with model.nn.trace(input_ids, attention_mask=attention, logits_to_keep=keep, remote=model.remote):
            _steer_in_trace(model, plans, 0, attention)
            logits = model.nn.lm_head.output.save()
    logp = logits.float().log_softmax(-1)
    out = []
    for r, (p, c, _) in enumerate(rows):
        pos = torch.arange(len(p) - 1, len(p) + len(c) - 1) - first_read
        out.append(logp[r, pos, torch.tensor(c)])
    return out


def next_token_logprobs(
    model: Any, sequences: Sequence[list[int]], steerings: Sequence[Steering] = (), batch_size: int = 16
) -> torch.Tensor:
    """Next-token log-distributions ``[n, vocab]`` after each token sequence, under ``steerings``.

    Rows are left-padded with explicit position ids, so every row sees its own positions 0..n−1.
    """
    require_model(model, "next_token_logprobs")
    steerings = as_list(steerings)
    for item in steerings:
        item.validate(model)
    _check_sequences(sequences)
    pad = model.tokenizer.pad_token_id
    pad = 0 if pad is None else pad
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[start : start + batch_size]]
        width = max(len(s) for s in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, seq in enumerate(chunk):
            input_ids[i, width - len(seq) :] = torch.tensor(seq)
            attention[i, width - len(seq) :] = 1
        positions = (attention.cumsum(1) - 1).clamp_min(0)
        rows = [_Row(width - len(seq), len(seq), len(seq), 0) for seq in chunk]
        plans = _plans(model, [(item, None) for item in steerings], rows, width)
        with torch.no_grad(), model.lock:
            with model.nn.trace(
                input_ids,
                attention_mask=attention,
                position_ids=positions,
                logits_to_keep=1,
                remote=model.remote,
            ):
                _steer_in_trace(model, plans, 0, attention)
                logits = model.nn.lm_head.output[:, -1].save()
        out.append(logits.float().log_softmax(-1))
    return torch.cat(out)


def _check_sequences(sequences: Any) -> None:
    """Token-id sequences: a non-empty list of non-empty lists of ints."""
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence) or not sequences:
        raise SteeringError("give a non-empty list of token-id lists, e.g. [tokenizer('Hi')['input_ids']]")
    for i, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or len(seq) == 0:
            raise SteeringError(f"sequence {i} must be a non-empty list of token ids, got {seq!r:.60}")
