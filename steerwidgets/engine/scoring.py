"""Scoring: per-token log-probabilities of given completions, and next-token distributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..interventions import (
    Steering,
    SteeringError,
    active_steerings,
    as_list,
    check_selects,
    position_mask,
    require_model,
)
from ..prompts import as_texts, check_length, tokenize_prompt
from ._trace import _Plan, _plans, _Row, _steer_in_trace


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
    per_row = _per_row(row_steerings, len(prompts), "pair")
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
    input_ids, attention = model.place(input_ids), model.place(attention)
    with torch.no_grad(), model.lock:
        with model.nn.trace(input_ids, attention_mask=attention, logits_to_keep=keep, remote=model.remote):
            _steer_in_trace(model, plans, 0, attention)
            logits = model.nn.lm_head.output.save()
    logp = logits.float().log_softmax(-1).cpu()
    out = []
    for r, (p, c, _) in enumerate(rows):
        pos = torch.arange(len(p) - 1, len(p) + len(c) - 1) - first_read
        out.append(logp[r, pos, torch.tensor(c)])
    return out


#: Architectures (``config.model_type``) checked to take a custom 4-D attention mask with explicit
#: ``position_ids`` and give the same numbers as separate rows (tests/test_engine.py, tests/test_gemma.py).
PACKED_MODEL_TYPES = ("llama", "gemma3_text", "gpt2")


def score_choices(
    model: Any,
    prompts: str | Sequence[str],
    choice_lists: Sequence[Sequence[str]],
    steering: Steering | Sequence[Steering] | None = None,
    *,
    row_steerings: Sequence[Steering | Sequence[Steering] | None] | None = None,
    chat: bool | None = None,
    batch_size: int = 16,
) -> list[list[torch.Tensor]]:
    """Per-token log-probabilities of each candidate completion of each prompt (a list per prompt).

    The same numbers as ``score(model, [p] * k, candidates, ...)`` for each prompt, but the prompt is run
    once: one row holds ``[prompt, cand 1, cand 2, ...]`` with a 4-D attention mask (each candidate sees
    the prompt and its own earlier tokens) and position ids that restart after the prompt for every
    candidate, so multiple-choice scoring costs about one prompt per item instead of one per candidate.
    ``row_steerings`` has one entry per prompt (applied to all its candidates).

    Falls back to separate rows (plain :func:`score`, same numbers, slower) where packing cannot be
    exact: a model whose architecture is not in :data:`PACKED_MODEL_TYPES` or not on the ``sdpa``/``eager``
    attention, a remote model, a sliding-window model whose packed row would exceed its window, and any
    prompt under a ``relative=True`` steering that touches prompt positions (e.g. ``"all"``, ``"last"``):
    its mean‖h‖ is taken over the prompt *and that candidate's* tokens, so the steered prompt differs per
    candidate and cannot be shared. Relative steerings of candidate positions only (``"generated"``) pack.
    """
    require_model(model, "score_choices")
    prompts = as_texts(prompts, "prompts")
    if isinstance(choice_lists, (str, bytes)) or not isinstance(choice_lists, Sequence):
        raise TypeError("choice_lists must be a list of lists of str, one list of candidates per prompt")
    choices = [as_texts(c, f"choice_lists[{i}]") for i, c in enumerate(choice_lists)]
    if len(choices) != len(prompts):
        raise SteeringError(
            f"got {len(prompts)} prompts but {len(choices)} candidate lists; pass one list per prompt"
        )
    per_row = _per_row(row_steerings, len(prompts), "prompt")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SteeringError(f"batch_size must be a positive int, got {batch_size!r}")
    given = as_list(steering)
    steerings = active_steerings(model) + given
    for item in [*steerings, *(x for row in per_row for x in row)]:
        item.validate(model)
    tok = model.tokenizer
    rows, unpacked = [], []
    arch_ok = _packs(model)
    for i, (prompt, cands) in enumerate(zip(prompts, choices)):
        ids, start = tokenize_prompt(model, prompt, chat)
        comps = []
        for cand in cands:
            if cand == "":
                raise SteeringError("a completion is empty; give at least one character to score")
            comps.append(tok(cand, add_special_tokens=False)["input_ids"])
            check_length(model, len(ids) + len(comps[-1]))
        packed = _PackedRow(ids, comps, start)
        if arch_ok and _window_fits(model, packed.length) and packed.masks_ok([*steerings, *per_row[i]]):
            rows.append((i, packed))
        else:
            unpacked.append(i)
    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    rows.sort(key=lambda pair: pair[1].length)  # little padding per batch
    for chunk_start in range(0, len(rows), batch_size):
        chunk = rows[chunk_start : chunk_start + batch_size]
        applied: list[tuple[Steering, set[int] | None]] = [(item, None) for item in steerings]
        for r, (i, _) in enumerate(chunk):
            applied += [(item, {r}) for item in per_row[i]]
        for (i, _), logps in zip(chunk, _score_packed(model, [row for _, row in chunk], applied)):
            out[i] = logps
    if unpacked:
        flat = [(i, c) for i in unpacked for c in choices[i]]
        flat.sort(key=lambda pair: len(prompts[pair[0]]) + len(pair[1]))  # little padding per batch
        logps = score(
            model,
            [prompts[i] for i, _ in flat],
            [c for _, c in flat],
            given,
            row_steerings=[per_row[i] for i, _ in flat],
            chat=chat,
            batch_size=batch_size,
        )
        by_pair = {(i, c): lp for (i, c), lp in zip(flat, logps)}  # a repeated candidate scores the same
        for i in unpacked:
            out[i] = [by_pair[i, c] for c in choices[i]]
    return out


def _packs(model: Any) -> bool:
    """Whether this model's architecture and attention take the packed layout with the same numbers."""
    if model.remote:  # the server's transformers may differ; not checked there
        return False
    config = getattr(model.hf, "config", None)
    return getattr(config, "model_type", None) in PACKED_MODEL_TYPES and getattr(
        config, "_attn_implementation", None
    ) in ("sdpa", "eager")


def _window_fits(model: Any, length: int) -> bool:
    """A sliding-window layer ignores a custom mask's shape: pack only rows within the window."""
    window = getattr(model.hf.config, "sliding_window", None)
    return window is None or length <= window


class _PackedRow:
    """One prompt and its candidates in one sequence: ``prompt | cand 1 | cand 2 | ...``."""

    def __init__(self, prompt: list[int], cands: list[list[int]], user_start: int) -> None:
        self.prompt, self.cands, self.user_start = prompt, cands, user_start
        self.starts = []  # where each candidate starts in the packed row
        at = len(prompt)
        for cand in cands:
            self.starts.append(at)
            at += len(cand)
        self.length = at

    def masks(self, item: Steering) -> torch.Tensor | None:
        """The packed position mask of ``item``, or None when the candidates disagree on the prompt part
        (a steering that cannot be packed). Each candidate's part is its mask in its own row."""
        vec = item.direction()
        front_len = vec.shape[0] if vec.ndim == 2 else 0
        spec = "front" if vec.ndim == 2 else item.positions
        n = len(self.prompt)
        own = [position_mask(spec, n, n + len(c), self.user_start, front_len) for c in self.cands]
        if any(not torch.equal(m[:n], own[0][:n]) for m in own[1:]):
            return None
        return torch.cat([own[0][:n], *(m[n:] for m in own)])

    def masks_ok(self, steerings: list[Steering]) -> bool:
        n = len(self.prompt)
        for item in steerings:
            try:
                mask = self.masks(item)
            except SteeringError:
                return False  # separate rows raise the same error, with their own message
            if mask is None or (item.relative and bool(mask[:n].any())):
                return False
        return True

    def segment_of(self) -> torch.Tensor:
        """0 for prompt positions, j + 1 for candidate j."""
        seg = torch.zeros(self.length, dtype=torch.long)
        for j, (at, cand) in enumerate(zip(self.starts, self.cands)):
            seg[at : at + len(cand)] = j + 1
        return seg


def _score_packed(
    model: Any, rows: list[_PackedRow], steerings: list[tuple[Steering, set[int] | None]]
) -> list[list[torch.Tensor]]:
    width = max(row.length for row in rows)
    n_seg = max(len(row.cands) for row in rows) + 1
    pad = model.tokenizer.pad_token_id
    pad = 0 if pad is None else pad
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment_of = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        n = len(row.prompt)
        input_ids[r, : row.length] = torch.tensor(row.prompt + [t for c in row.cands for t in c])
        attention[r, : row.length] = 1
        positions[r, :n] = torch.arange(n)
        seg = row.segment_of()
        segment_of[r, : row.length] = seg
        for at, cand in zip(row.starts, row.cands):
            positions[r, at : at + len(cand)] = torch.arange(n, n + len(cand))
        # A query sees the prompt and its own sequence, causally; padding sees itself only.
        same = (seg[:, None] == seg[None, :]) | (seg[None, :] == 0)
        allowed[r, : row.length, : row.length] = same & causal[: row.length, : row.length]
        allowed[r, row.length :, row.length :] = torch.eye(width - row.length, dtype=torch.bool)
    dtype = model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    plans = []
    for item, only in sorted(steerings, key=lambda pair: pair[0].layer):
        vec = item.direction()
        masks = torch.zeros((len(rows), width), dtype=torch.bool)
        front = torch.zeros((len(rows), width, vec.shape[-1])) if vec.ndim == 2 else None
        for r, row in enumerate(rows):
            if only is not None and r not in only:
                continue
            masks[r, : row.length] = row.masks(item)
            if front is not None:
                front[r, row.user_start : row.user_start + vec.shape[0]] = vec
        check_selects("front" if vec.ndim == 2 else item.positions, masks)
        plan = _Plan(item, vec, masks, front)
        if item.relative:
            # Each candidate's mean‖h‖ as in its own row: prompt and that candidate, minus the first token.
            weights = torch.zeros((len(rows), n_seg, width))
            for r, row in enumerate(rows):
                seg = segment_of[r, : row.length]
                for j in range(len(row.cands) + 1):
                    weights[r, j, : row.length] = ((seg == j) | (seg == 0)).float()
                weights[r, :, 0] = 0.0
            plan.segments, plan.segment_of = weights, segment_of
        plans.append(plan)
    first_read = min(len(row.prompt) for row in rows) - 1
    keep = width - first_read
    input_ids, mask, positions = model.place(input_ids), model.place(mask), model.place(positions)
    attention = model.place(attention)
    with torch.no_grad(), model.lock:
        with model.nn.trace(
            input_ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=keep,
            remote=model.remote,
        ):
            _steer_in_trace(model, plans, 0, attention)
            logits = model.nn.lm_head.output.save()
    logp = logits.float().log_softmax(-1).cpu()
    out = []
    for r, row in enumerate(rows):
        n = len(row.prompt)
        per_cand = []
        for at, cand in zip(row.starts, row.cands):
            # Token t of a candidate is predicted at the prompt's last token (t = 0) or at token t − 1.
            pos = torch.tensor([n - 1] + list(range(at, at + len(cand) - 1))) - first_read
            per_cand.append(logp[r, pos, torch.tensor(cand)])
        out.append(per_cand)
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
        input_ids, attention = model.place(input_ids), model.place(attention)
        positions = model.place(positions)
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
        out.append(logits.float().log_softmax(-1).cpu())
    return torch.cat(out)


def _per_row(row_steerings: Sequence[Any] | None, n: int, unit: str) -> list[list[Steering]]:
    """One list of extra steerings per ``unit`` (pair or prompt); the count must match."""
    per_row = [[] for _ in range(n)] if row_steerings is None else [as_list(x) for x in row_steerings]
    if len(per_row) != n:
        raise SteeringError(
            f"got {len(per_row)} row_steerings for {n} {unit}s; give one entry (or None) per {unit}"
        )
    return per_row


def _check_sequences(sequences: Any) -> None:
    """Token-id sequences: a non-empty list of non-empty lists of ints."""
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence) or not sequences:
        raise SteeringError("give a non-empty list of token-id lists, e.g. [tokenizer('Hi')['input_ids']]")
    for i, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or len(seq) == 0:
            raise SteeringError(f"sequence {i} must be a non-empty list of token ids, got {seq!r:.60}")
