"""The steering engine: every forward pass goes through an nnsight trace.

Entry points: :func:`generate` (unsteered and steered continuations, streamed), :func:`score`
(per-token log-probabilities of given completions), :func:`next_token_logprobs` (the next-token
distribution after token sequences) and :func:`propensity_sweep` (the A/B propensity matrix over strengths
and layers). Work is never repeated: strengths share one pass, the layers below the steered one
run once, and what lies before the first steered position is cached and reused (keys/values).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from nnsight import save as _save

from . import metrics, verdicts
from .data import ABItem, split_options, swap_options
from .interventions import (
    Steering,
    SteeringError,
    active_steerings,
    apply_operator,
    as_list,
    check_position_spec,
    check_selects,
    position_mask,
    require_model,
)
from .remote import remote_null_method, require_local
from .vectors import SteeringVector

DEFAULT_STRENGTHS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


class GenerationCancelled(RuntimeError):
    """Raised when a ``cancel`` event is set during a run; the model is left unsteered."""


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """Token ids of a batch of prompts, left-padded for generation."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    user_start: list[int]
    texts: list[str]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])


def _use_chat(model: Any, chat: bool | None) -> bool:
    if chat is None:
        return model.has_chat_template
    if chat and not model.has_chat_template:
        raise SteeringError(f"{model.name} has no chat template; pass chat=False")
    return chat


def prompt_text(model: Any, prompt: str, chat: bool | None = None) -> tuple[str, int]:
    """The text the model sees for a user prompt, and the character offset where the user's text begins."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise SteeringError("the prompt is empty; type some text to continue")
    if not _use_chat(model, chat):
        return prompt, 0
    text = model.chat_prompt(prompt)
    return text, text.find(prompt)


def tokenize_prompt(model: Any, prompt: str, chat: bool | None = None) -> tuple[list[int], int]:
    """Token ids of a prompt (no extra special tokens) and the token index where the user's text starts."""
    text, char_start = prompt_text(model, prompt, chat)
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not _use_chat(model, chat) and tok.bos_token_id is not None and _adds_bos(tok):
        ids = [tok.bos_token_id] + ids
    user_start = len(tok(text[:char_start], add_special_tokens=False)["input_ids"]) if char_start else 0
    if ids and ids[0] == tok.bos_token_id and not _use_chat(model, chat):
        user_start += 1
    check_length(model, len(ids))
    return ids, user_start


def _adds_bos(tok: Any) -> bool:
    probe = tok("a")["input_ids"]
    return bool(probe) and probe[0] == tok.bos_token_id


def check_length(model: Any, n_tokens: int, extra: int = 0) -> None:
    limit = model.max_positions
    if limit is not None and n_tokens + extra > limit:
        raise SteeringError(
            f"the prompt has {n_tokens} tokens (+{extra} to generate) but {model.name} reads at most "
            f"{limit}; shorten the prompt or lower max_new_tokens"
        )


def as_texts(value: Any, what: str) -> list[str]:
    """A str or a non-empty sequence of str as a list; anything else raises naming the expected type."""
    if isinstance(value, str):
        return [value]
    if value is None or isinstance(value, bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a str or a list of str, got {type(value).__name__}")
    values = list(value)
    if not values:
        raise SteeringError(f"no {what} given; pass a str or a non-empty list of str")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise TypeError(
            f"{what}[{bad[0]}] must be a str, got {type(values[bad[0]]).__name__}; pass a list of str"
        )
    return values


def check_sampling(seed: Any, do_sample: Any, temperature: Any, top_p: Any) -> None:
    """Validate generation settings before any work (transformers would fail deep inside generate)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}; e.g. seed=0")
    if not isinstance(do_sample, (bool, np.bool_)):
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SteeringError(f"{name} must be a finite number, got {value!r}")
    if not 0 < top_p <= 1:
        raise SteeringError(f"top_p must be in (0, 1], got {top_p}; use 1.0 to keep the whole distribution")
    if do_sample and temperature <= 0:
        raise SteeringError(f"temperature must be > 0 when sampling, got {temperature}; e.g. 0.7 or 1.0")


def encode(model: Any, prompts: Sequence[str], chat: bool | None = None) -> Encoded:
    """Tokenise prompts and left-pad them so every row's last prompt token is in the last column."""
    rows = [tokenize_prompt(model, p, chat) for p in prompts]
    if not rows:
        raise SteeringError("no prompts given")
    width = max(len(ids) for ids, _ in rows)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention[i, width - len(ids) :] = 1
    return Encoded(
        input_ids=input_ids,
        attention_mask=attention,
        lengths=[len(ids) for ids, _ in rows],
        user_start=[start for _, start in rows],
        texts=list(prompts),
    )


# ----------------------------------------------------------------------------------------------
# Applying steering inside a trace
# ----------------------------------------------------------------------------------------------
def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _set_hidden(envoy: Any, out: Any, hidden: torch.Tensor) -> None:
    envoy.output = (hidden, *out[1:]) if isinstance(out, tuple) else hidden


@dataclass
class _Plan:
    """One steering resolved for a batch: masks over [rows, total positions] and per-row scales."""

    steering: Steering
    vec: torch.Tensor
    masks: torch.Tensor  # bool [B, total]
    front: torch.Tensor | None = None  # for per-position vectors: [B, total, d] additions
    scale: torch.Tensor | None = None  # [B, 1, 1], filled at the first step if relative
    mean_norm: torch.Tensor | None = None  # [B]


@dataclass
class _Row:
    """Where one sequence sits in a batch: it starts at ``offset`` (after left padding), its prompt has
    ``prompt_len`` tokens, ``length`` positions in all (prompt + completion or generated) and the user's
    text starts at ``user_start`` (relative to the sequence)."""

    offset: int
    prompt_len: int
    length: int
    user_start: int


def _plans(
    model: Any, steerings: list[tuple[Steering, set[int] | None]], rows: list[_Row], width: int
) -> list[_Plan]:
    """Resolve steerings for a batch; a steering with a row set applies to those rows only."""
    plans = []
    for item, only in sorted(steerings, key=lambda pair: pair[0].layer):
        item.validate(model)
        vec = item.direction()
        front_len = vec.shape[0] if vec.ndim == 2 else 0
        spec = "front" if vec.ndim == 2 else item.positions
        masks = torch.zeros((len(rows), width), dtype=torch.bool)
        front = torch.zeros((len(rows), width, vec.shape[-1])) if vec.ndim == 2 else None
        for r, row in enumerate(rows):
            if only is not None and r not in only:
                continue
            own = position_mask(spec, row.prompt_len, row.length, row.user_start, front_len)
            masks[r, row.offset : row.offset + row.length] = own
            if front is not None:
                at = row.offset + row.user_start
                front[r, at : at + front_len] = vec
        check_selects(spec, masks)
        plans.append(_Plan(item, vec, masks, front))
    return plans


def _mean_norm(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Mean residual norm per row over real tokens, skipping each row's first token (attention sink)."""
    norms = hidden.float().norm(dim=-1)
    keep = attention.bool().clone()
    first = keep.float().argmax(dim=1)
    keep[torch.arange(keep.shape[0]), first] = False
    keep_f = keep.float()
    return (norms * keep_f).sum(1) / keep_f.sum(1).clamp_min(1.0)


def _steer_in_trace(model: Any, plans: list[_Plan], start: int, attention: torch.Tensor) -> None:
    """Edit block outputs for one forward step covering positions ``start .. start+width``.

    Each steered block's output is read and written once; several plans at one layer (e.g. one per row)
    edit it in turn, and relative strengths are measured on the unedited output.
    """
    by_layer: dict[int, list[_Plan]] = {}
    for plan in plans:
        by_layer.setdefault(plan.steering.layer, []).append(plan)
    for layer in sorted(by_layer):
        envoy = model.block(layer)
        out = envoy.output
        original = hidden = _hidden(out)
        width = hidden.shape[1]
        changed = False
        for plan in by_layer[layer]:
            if plan.mean_norm is None:
                plan.mean_norm = _mean_norm(original, attention[:, start : start + width])
                vnorm = plan.vec.norm(dim=-1).mean().clamp_min(1e-12)
                factor = plan.mean_norm / vnorm if plan.steering.relative else torch.ones_like(plan.mean_norm)
                plan.scale = (plan.steering.strength * factor).reshape(-1, 1, 1)
            mask = plan.masks[:, start : start + width]
            if not bool(mask.any()):
                continue
            if plan.front is not None:
                edited = (hidden.float() + plan.scale * plan.front[:, start : start + width]).to(hidden.dtype)
            else:
                operand = plan.steering.operand() if plan.steering.operator == "affine" else plan.vec
                edited = apply_operator(hidden, operand, plan.scale, plan.steering.operator)
            hidden = torch.where(mask[..., None], edited, hidden)
            changed = True
        if changed:
            _set_hidden(envoy, out, hidden)


def _norm_ratio(plan: _Plan) -> float:
    """‖λv‖ / mean‖h‖ at the steered layer, averaged over rows."""
    if plan.mean_norm is None or plan.scale is None:
        return float("nan")
    vnorm = plan.vec.norm(dim=-1).mean()
    ratio = plan.scale.reshape(-1).abs() * vnorm / plan.mean_norm.clamp_min(1e-12)
    return float(ratio.mean())


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
@dataclass
class Continuation:
    """One run's continuations: text, ids and the log-probability the model gave each chosen token."""

    texts: list[str]
    token_ids: list[list[int]]
    token_logprobs: list[list[float]]
    first_logprobs: torch.Tensor  # [B, vocab] log-softmax at the first generated position
    norm_ratio: float | None = None  # ‖λv‖ / mean‖h‖ of the (first) steering, None if unsteered

    @property
    def text(self) -> str:
        return self.texts[0]


@dataclass
class GenerationResult:
    """Unsteered (``base``, None if not asked for) and steered continuations of the same prompts."""

    prompts: list[str]
    base: Continuation | None
    steered: Continuation | None
    steering: list[Steering] = field(default_factory=list)
    seed: int = 0


class _Streamer:
    """Receives each step's new tokens from transformers' generate: callback, cancel, log-probs."""

    def __init__(self, run: str, on_token: Callable | None, cancel: threading.Event | None):
        self.run, self.on_token, self.cancel = run, on_token, cancel
        self.prompt_seen = False
        self.tokens: list[torch.Tensor] = []
        self.step_logprobs: list[torch.Tensor] = []  # filled from inside the trace
        self.chosen: list[torch.Tensor] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # transformers first sends the prompt
            self.prompt_seen = True
            return
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("generation cancelled")
        ids = value.reshape(-1).cpu()
        step = len(self.tokens)
        self.tokens.append(ids)
        if len(self.step_logprobs) > step:
            logp = self.step_logprobs[step]
            self.chosen.append(logp.gather(1, ids[:, None])[:, 0])
            if step > 0:
                self.step_logprobs[step] = None  # keep only the first full distribution
        if self.on_token is not None:
            self.on_token(self.run, step, ids.tolist())

    def end(self) -> None:
        pass


def _run_generation(
    model: Any,
    enc: Encoded,
    steerings: list[Steering],
    *,
    run: str,
    max_new_tokens: int,
    seed: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    on_token: Callable | None,
    cancel: threading.Event | None,
) -> Continuation:
    total = enc.width + max_new_tokens
    rows = [
        _Row(enc.width - length, length, total - (enc.width - length), start)
        for length, start in zip(enc.lengths, enc.user_start)
    ]
    plans = _plans(model, [(item, None) for item in steerings], rows, total)
    streamer = _Streamer(run, on_token, cancel)
    offset = [0]
    attention_full = torch.cat(
        [enc.attention_mask, torch.ones((len(enc.lengths), max_new_tokens), dtype=torch.long)], 1
    )
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        attention_mask=enc.attention_mask,
        pad_token_id=model.tokenizer.pad_token_id,
        streamer=streamer,
    )
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        warnings.filterwarnings("ignore", message=".*generation flags.*")
        with model.lock:
            with model.nn.generate(enc.input_ids, remote=model.remote, **kwargs) as tracer:
                for _ in tracer.all():
                    start = offset[0]
                    _steer_in_trace(model, plans, start, attention_full)
                    logits = model.nn.lm_head.output
                    width = logits.shape[1] if start == 0 else 1
                    offset[0] = start + (enc.width if start == 0 else width)
                    streamer.step_logprobs.append(logits[:, -1].float().log_softmax(-1))
                    state = _save(streamer.__dict__)  # a remote run returns only saved values
            streamer.__dict__.update(state)
    return _finish_continuation(model, streamer, plans)


def _finish_continuation(model: Any, streamer: _Streamer, plans: list[_Plan]) -> Continuation:
    tok = model.tokenizer
    if not streamer.tokens:
        raise RuntimeError("generation produced no tokens")
    ids = torch.stack(streamer.tokens, 1)  # [B, steps]
    chosen = torch.stack(streamer.chosen, 1) if streamer.chosen else torch.zeros(ids.shape)
    stop = {tok.eos_token_id, tok.pad_token_id} - {None}
    texts, all_ids, all_lp = [], [], []
    for row in range(ids.shape[0]):
        row_ids = ids[row].tolist()
        cut = next((i + 1 for i, t in enumerate(row_ids) if t in stop), len(row_ids))
        keep = row_ids[:cut]
        all_ids.append(keep)
        all_lp.append(chosen[row, :cut].tolist())
        texts.append(tok.decode(keep, skip_special_tokens=True))
    return Continuation(
        texts=texts,
        token_ids=all_ids,
        token_logprobs=all_lp,
        first_logprobs=streamer.step_logprobs[0],
        norm_ratio=_norm_ratio(plans[0]) if plans else None,
    )


def generate(
    model: Any,
    prompt: str | Sequence[str],
    steering: Steering | Sequence[Steering] | None = None,
    *,
    max_new_tokens: int = 32,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat: bool | None = None,
    baseline: bool = True,
    on_token: Callable[[str, int, list[int]], None] | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Unsteered and steered continuations of the same prompt(s), with the same seed.

    ``on_token(run, step, ids)`` is called for every new token (``run`` is ``"base"`` or ``"steered"``;
    ``ids`` has one id per prompt) and may raise to stop; setting ``cancel`` stops at the next token.
    Token log-probabilities are under the model's own distribution (temperature 1, no top-p).
    """
    require_model(model, "generate")
    require_local(model, "token streaming" if on_token or cancel else "generate")
    prompts = as_texts(prompt, "prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SteeringError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    check_sampling(seed, do_sample, temperature, top_p)
    steerings = active_steerings(model) + as_list(steering)
    enc = encode(model, prompts, chat)
    check_length(model, enc.width, max_new_tokens)
    common = dict(
        max_new_tokens=max_new_tokens,
        seed=seed,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        on_token=on_token,
        cancel=cancel,
    )
    for item in steerings:
        item.validate(model)
    base = _run_generation(model, enc, [], run="base", **common) if baseline else None
    steered = _run_generation(model, enc, steerings, run="steered", **common) if steerings else None
    return GenerationResult(prompts, base, steered, steerings, seed)


# ----------------------------------------------------------------------------------------------
# Scoring completions
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Propensity sweeps (A/B items)
# ----------------------------------------------------------------------------------------------
PROTOCOLS = ("letter", "answer_text")
#: Where each protocol steers unless told otherwise: Tan et al. and CAA steer from the last prompt token on
#: (the letter is read there); the answer-text protocol steers the last prompt token and the answer's tokens.
DEFAULT_POSITIONS = {"letter": "last", "answer_text": "continuation"}
PROPENSITY_DEFINITIONS = {
    "letter": "logit(y+) - logit(y-) at the answer-letter position (Tan et al. 2024)",
    "answer_text": "per-token mean log-prob of the matching answer's text minus the other answer's text, "
    "after the question stem alone (no options, no letters)",
}


def ab_prompt(model: Any, item: ABItem, chat: bool | None = None) -> tuple[list[int], int, int]:
    """Prompt ids for an A/B item (chat template + ``"("``) and the token ids of y+ and y−.

    For a model without a chat template the prompt is ``question + "\\n\\nAnswer: ("``.
    """
    tok = model.tokenizer
    if _use_chat(model, chat):
        text = model.chat_prompt(item.question) + "("
    else:
        text = item.question + "\n\nAnswer: ("
    ids = tok(text, add_special_tokens=False)["input_ids"]
    check_length(model, len(ids) + 1)
    return ids, letter_id(tok, item.matching), letter_id(tok, item.not_matching)


def answer_text_prompt(
    model: Any, item: ABItem, chat: bool | None = None
) -> tuple[list[int], list[int], list[int]] | None:
    """The answer-text protocol's prompt (the question stem alone, as the user turn) and the token ids of
    the matching and the other answer's text; ``None`` when the question does not list its two options."""
    opts = split_options(item.question)
    if opts is None:
        return None
    ids, _ = tokenize_prompt(model, opts.stem, chat)
    tok = model.tokenizer
    pos = tok(opts.text(item.matching), add_special_tokens=False)["input_ids"]
    neg = tok(opts.text(item.not_matching), add_special_tokens=False)["input_ids"]
    if not pos or not neg:
        return None
    check_length(model, len(ids) + max(len(pos), len(neg)))
    return ids, pos, neg


def letter_id(tok: Any, letter: str) -> int:
    ids = tok(letter, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SteeringError(f"the answer letter {letter!r} is {len(ids)} tokens for this tokenizer")
    return ids[0]


@dataclass
class PropensityResult:
    """Propensity m_i(λ) for items × strengths, per layer (metrics.md), with its random-direction null.

    ``protocol`` says what m is (:data:`PROPENSITY_DEFINITIONS`). ``null[layer]`` is ``[K, n_items]``: the
    slopes K random directions of the vector's norm give each item (``null_method`` says how they were
    measured). ``swapped_propensity`` (letter protocol) is the unsteered propensity of each item with its two
    options' texts swapped and the answer relabelled (NaN where the options could not be found).
    """

    strengths: np.ndarray
    layers: list[int]
    positions: Any
    propensity: dict[int, np.ndarray]  # layer -> [n_items, n_strengths]
    norm_ratio: dict[int, np.ndarray]  # layer -> [n_strengths], ‖λv‖ / mean‖h‖
    vector_norm: dict[int, float]
    items: list[ABItem]
    relative: bool = False
    protocol: str = "letter"
    null: dict[int, np.ndarray] | None = None  # layer -> [K, n_items] slopes of random directions
    null_method: str = ""
    unsteered: np.ndarray | None = None  # [n_items] m_i(0)
    swapped_propensity: np.ndarray | None = None
    item_index: list[int] | None = None  # answer-text: indices into the caller's items that could be read

    def slopes(self, layer: int) -> np.ndarray:
        return metrics.slopes(self.propensity[layer], self.strengths)

    def null_slopes(self, layer: int) -> np.ndarray | None:
        """``[K, n_items]`` slopes of the random directions (None without a null)."""
        return None if self.null is None else self.null[layer]

    def option_dependence(self) -> float | None:
        """Fraction of items whose unsteered preference survives swapping the options (letter protocol)."""
        if self.swapped_propensity is None or self.unsteered is None:
            return None
        keep = ~np.isnan(self.swapped_propensity)
        if not keep.any():
            return None
        return verdicts.option_dependence(self.unsteered[keep], self.swapped_propensity[keep])

    def verdict(self, layer: int) -> verdicts.Verdict:
        """The dataset verdict at ``layer`` against the random-direction null (see :mod:`verdicts`)."""
        null = self.null_slopes(layer)
        if null is None or null.shape[0] < 2:
            return verdicts.cannot_judge(
                self.protocol,
                "No random-direction null was run (null_directions < 2), so nothing says "
                f"what 'no effect' looks like; rerun with null_directions={verdicts.NULL_DIRECTIONS}.",
                self.positions,
            )
        if not self.items:
            return verdicts.cannot_judge(self.protocol, "No item could be read.", self.positions)
        is_a = [item.matching == "A" for item in self.items] if self.protocol == "letter" else None
        n_dep = None
        if self.swapped_propensity is not None:
            n_dep = int((~np.isnan(self.swapped_propensity)).sum())
        return verdicts.judge(
            self.slopes(layer),
            null,
            protocol=self.protocol,
            matching_is_a=is_a,
            option_dependence=self.option_dependence(),
            n_option_items=n_dep,
            null_method=self.null_method,
            positions=self.positions,
            mean_propensity=self.propensity[layer].mean(0),
        )

    def summary(self, layer: int) -> dict[str, Any]:
        """The literature's numbers for one layer, with the verdict against the null, ready for JSON."""
        m = self.propensity[layer]
        slopes = self.slopes(layer)
        anti = metrics.anti_steerable(slopes)
        nonmono = metrics.non_monotonic(m)
        is_a = np.array([item.matching == "A" for item in self.items])
        verdict = self.verdict(layer)
        classes = verdict.classes or ("no_detectable_effect",) * m.shape[0]
        out = {
            "layer": layer,
            "protocol": self.protocol,
            "propensity_definition": PROPENSITY_DEFINITIONS[self.protocol],
            "positions": self.positions,
            "steerability": float(slopes.mean()),
            "anti_steerable_fraction": float(anti.mean()),
            "non_monotonic_fraction": float(nonmono.mean()),
            "mean_propensity": [float(x) for x in m.mean(0)],
            "p_match": [float(x) for x in metrics.p_match(m).mean(0)],
            "ab_bias_r2": metrics.ab_bias_r2(slopes, is_a),
            "norm_ratio": [float(x) for x in self.norm_ratio[layer]],
            "vector_norm": self.vector_norm[layer],
            "warning_level": verdict.warning_level,
            "verdict": verdict.verdict,
            "verdict_reason": verdict.reason,
            "steerability_ci95": list(verdict.steerability_ci95),
            "null": verdict.summary()["null"],
            "item_classes": verdict.counts,
            "option_dependence": verdict.option_dependence,
            "per_example": [
                {
                    "index": i if self.item_index is None else self.item_index[i],
                    "slope": float(slopes[i]),
                    "propensity": [float(x) for x in m[i]],
                    "anti_steerable": bool(anti[i]),
                    "non_monotonic": bool(nonmono[i]),
                    "class": classes[i],
                    "null_band": [verdict.item_lo[i], verdict.item_hi[i]] if verdict.item_lo else None,
                }
                for i in range(m.shape[0])
            ],
        }
        return out


def _check_strengths(strengths: Sequence[float]) -> np.ndarray:
    values = np.asarray(list(strengths), dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise SteeringError("give at least two strengths, e.g. -1,0,1, to fit a slope")
    if not np.isfinite(values).all():
        raise SteeringError(f"strengths must be finite numbers, got {list(strengths)}")
    if np.ptp(values) == 0:
        raise SteeringError("strengths must not all be equal; a slope needs spread")
    return values


def _check_sequences(sequences: Any) -> None:
    """Token-id sequences: a non-empty list of non-empty lists of ints."""
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence) or not sequences:
        raise SteeringError("give a non-empty list of token-id lists, e.g. [tokenizer('Hi')['input_ids']]")
    for i, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or len(seq) == 0:
            raise SteeringError(f"sequence {i} must be a non-empty list of token ids, got {seq!r:.60}")


def _cache_from(prefix: list, rows: int, split: int) -> Any:
    """A fresh DynamicCache from saved (keys, values): batch 1 up to layer ``split``, ``rows`` after."""
    from transformers import DynamicCache

    data = []
    for i, (k, v) in enumerate(prefix):
        if i > split:
            k, v = k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous()
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)


def null_directions_for(vector: SteeringVector, layers: Sequence[int], k: int, seed: int = 0) -> dict:
    """``{layer: [k, d]}`` Gaussian directions scaled to ‖v_layer‖: the null's random steerings.

    Seeded per layer, so a result is reproducible and every item sees the same K directions (the dataset's
    mean slope under direction k is then one sample of the null of the mean).
    """
    out = {}
    for layer in layers:
        vec = vector[layer]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(layer))
        rnd = torch.randn((k, vec.shape[-1]), generator=gen)
        out[layer] = rnd * (vec.norm() / rnd.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return out


def _swapped_propensity(model: Any, items: Sequence[ABItem], chat: bool | None) -> np.ndarray:
    """Unsteered letter propensity of each item with its options' texts swapped (NaN where not swappable)."""
    out = np.full(len(items), np.nan)
    seqs, where, letters = [], [], []
    for i, item in enumerate(items):
        swapped = swap_options(item)
        if swapped is None:
            continue
        ids, y_pos, y_neg = ab_prompt(model, swapped, chat)
        seqs.append(ids)
        where.append(i)
        letters.append((y_pos, y_neg))
    if seqs:
        logp = next_token_logprobs(model, seqs)
        for row, (i, (y_pos, y_neg)) in enumerate(zip(where, letters)):
            out[i] = float(logp[row, y_pos] - logp[row, y_neg])
    return out


NULL_METHODS = ("gradient", "sampled")


def propensity_sweep(
    model: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layers: int | Sequence[int],
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    positions: Any = None,
    operator: str = "add",
    relative: bool = False,
    chat: bool | None = None,
    protocol: str = "letter",
    null_directions: int | None = None,
    null_method: str = "gradient",
    null_seed: int = 0,
    option_swap: bool | None = None,
    max_rows: int = 64,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> PropensityResult:
    """The [items × strengths] propensity matrix at each layer, strengths batched into one pass.

    ``protocol="letter"`` is Tan et al.'s letter propensity; ``"answer_text"`` scores the two answers' texts
    after the question stem (items whose options cannot be found are left out; ``item_index`` says which
    stayed). ``positions=None`` takes the protocol's default (:data:`DEFAULT_POSITIONS`).

    ``null_directions=K`` adds the random-direction null every verdict needs: K Gaussian directions scaled
    to ‖v‖ at each layer, the same for every item (default: :data:`verdicts.NULL_DIRECTIONS` for the
    ``"add"`` operator, none for the others — pass K with ``null_method="sampled"`` for them; 0 skips it).
    ``null_method="gradient"`` (default) takes each direction's slope to first order, ∇_λ m · r from one
    backward pass per item (exact for a response linear in λ; ``tests/test_verdict_null.py`` checks it against
    ``"sampled"``, which runs every direction at the grid's two end strengths and takes the two-point slope).
    ``option_swap`` (default: on with a null, letter protocol) also reads each item with its options swapped,
    unsteered.

    Per item, the tokens before the first steered position run once and their keys/values are reused; the
    blocks below the steered layer run once; the strengths (and sampled directions) share one batched pass;
    logits are computed only where they are scored.
    """
    require_model(model, "propensity_sweep")
    if not isinstance(vector, SteeringVector):
        raise TypeError(
            f"propensity_sweep needs a SteeringVector, got {type(vector).__name__}; build one with "
            "sw.caa(model, items, layers) or wrap a tensor: sw.SteeringVector({layer: tensor})"
        )
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, (Sequence, np.ndarray)):
        raise TypeError(
            f"strengths must be a list of numbers (at least two), got {strengths!r}; e.g. [-1, 0, 1]"
        )
    if isinstance(items, (str, bytes, ABItem)) or not isinstance(items, Sequence):
        raise TypeError(
            f"items must be a list of ABItem, got {type(items).__name__}; e.g. sw.builtin_ab('sentiment')"
        )
    bad = [i for i, item in enumerate(items) if not isinstance(item, ABItem)]
    if bad:
        raise TypeError(
            f"items[{bad[0]}] is a {type(items[bad[0]]).__name__}, not an ABItem; load files with "
            "sw.load_ab_items(path)"
        )
    if isinstance(layers, bool) or not isinstance(layers, (int, Sequence)):
        raise TypeError(f"layers must be an int or a list of ints, got {layers!r}")
    if protocol not in PROTOCOLS:
        raise SteeringError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    if null_method not in NULL_METHODS:
        raise SteeringError(f"unknown null_method {null_method!r}; use one of {NULL_METHODS}")
    null_method = remote_null_method(model, null_method)
    if positions is None:
        positions = DEFAULT_POSITIONS[protocol]
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    if not layer_list:
        raise SteeringError("give at least one layer")
    for layer in layer_list:
        model.check_layer(layer)
    vector.check_model(model)
    for layer in layer_list:
        Steering(vector, layer, 1.0, positions, operator, relative).validate(model)
        if vector[layer].ndim != 1:
            raise SteeringError("propensity sweeps need a [d_model] vector per layer (not ActAdd)")
    lam = _check_strengths(strengths)
    check_position_spec(positions)
    if null_directions is None:
        null_directions = verdicts.NULL_DIRECTIONS if operator == "add" else 0
    if isinstance(null_directions, bool) or not isinstance(null_directions, int) or null_directions < 0:
        raise SteeringError(
            f"null_directions must be an int ≥ 0 ({verdicts.NULL_DIRECTIONS} is the default for verdicts), "
            f"got {null_directions!r}"
        )
    if null_directions and null_method == "gradient" and operator != "add":
        raise SteeringError(
            f"the gradient null measures added directions; with operator={operator!r} use "
            "null_method='sampled'"
        )
    items = list(items)
    if not items:
        raise SteeringError("no A/B items given")
    k = null_directions
    directions = null_directions_for(vector, layer_list, k, null_seed) if k else None
    null_lam = np.array([lam.min(), lam.max()])
    prompts = _protocol_prompts(model, items, protocol, chat)
    if not prompts:
        raise SteeringError(
            "no item lists its two options as '(A) …' and '(B) …' lines, so the answer-text protocol has "
            "nothing to score; use protocol='letter'"
        )
    n_s, n_items = len(lam), len(prompts)
    prop = {layer: np.zeros((n_items, n_s)) for layer in layer_list}
    null = {layer: np.zeros((k, n_items)) for layer in layer_list} if k else None
    unsteered = np.zeros(n_items)
    ratio_sum = {layer: np.zeros(n_s) for layer in layer_list}
    for row, (_, ids, completions) in enumerate(prompts):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("sweep cancelled")
        out = _sweep_protocol_item(
            model,
            ids,
            completions,
            positions,
            vector,
            layer_list,
            lam,
            directions,
            null_method,
            null_lam,
            operator,
            relative,
            max_rows,
        )
        for layer, (vec_m, null_s, zero_m, ratios) in out.items():
            prop[layer][row] = vec_m
            if null is not None:
                null[layer][:, row] = null_s
            unsteered[row] = zero_m
            ratio_sum[layer] += ratios
        if progress is not None:
            progress(row + 1, n_items)
    kept = [items[index] for index, _, _ in prompts]
    swap = option_swap if option_swap is not None else (k > 0 and protocol == "letter")
    swapped = _swapped_propensity(model, kept, chat) if swap and protocol == "letter" else None
    if null_method == "gradient":
        how = f"first-order: slope of direction r = ∇_λ m · r at λ = 0 (one backward pass per item), {k} "
    else:
        how = f"sampled: two-point slopes at λ = {null_lam[0]:g} and {null_lam[1]:g}, {k} "
    return PropensityResult(
        strengths=lam,
        layers=layer_list,
        positions=positions,
        propensity=prop,
        norm_ratio={layer: ratio_sum[layer] / n_items for layer in layer_list},
        vector_norm={layer: float(vector[layer].norm()) for layer in layer_list},
        items=kept,
        relative=relative,
        protocol=protocol,
        null=null,
        null_method=how + "Gaussian directions scaled to ‖v‖ (seeded)" if k else "",
        unsteered=unsteered,
        swapped_propensity=swapped,
        item_index=None if protocol == "letter" else [index for index, _, _ in prompts],
    )


def _protocol_prompts(
    model: Any, items: list[ABItem], protocol: str, chat: bool | None
) -> list[tuple[int, list[int], list[tuple[list[int], Any]]]]:
    """Per readable item: its index, prompt ids and what is scored — ``(completion ids, target)`` pairs.

    Letter: one empty completion whose target is the two letter ids (logit difference at the last prompt
    token). Answer text: the two answers' token ids (per-token mean log-probs, matching minus other).
    """
    out = []
    for index, item in enumerate(items):
        if protocol == "letter":
            ids, y_pos, y_neg = ab_prompt(model, item, chat)
            out.append((index, ids, [([], (y_pos, y_neg))]))
        else:
            read = answer_text_prompt(model, item, chat)
            if read is not None:
                ids, pos, neg = read
                out.append((index, ids, [(pos, None), (neg, None)]))
    return out


def _sweep_protocol_item(
    model: Any,
    ids: list[int],
    completions: list[tuple[list[int], Any]],
    positions: Any,
    vector: SteeringVector,
    layer_list: list[int],
    lam: np.ndarray,
    directions: dict | None,
    null_method: str,
    null_lam: np.ndarray,
    operator: str,
    relative: bool,
    max_rows: int,
) -> dict[int, tuple[np.ndarray, np.ndarray | None, float, np.ndarray]]:
    """One item's propensities per layer: vector rows, null slopes ``[K]``, unsteered, norm ratios.

    Each completion (one for the letter, two answer texts) shares the prompt's prefix keys/values; the
    item's propensity is the first completion's score (minus the second's).
    """
    n = len(ids)
    scores = []
    for comp, target in completions:
        mask = position_mask(positions, n, n + max(0, len(comp) - 1))
        if not bool(mask.any()):
            raise SteeringError(
                f"positions={positions!r} selects no prompt token before the answer, so nothing would be "
                "steered when reading it; use 'last', 'continuation' or 'all'"
            )
        scores.append((comp, target, mask))
    first = min(int(mask.float().argmax()) for _, _, mask in scores)
    prefix = _prefix(model, ids, first, layer_list)
    sampled = directions if null_method == "sampled" else None
    n_s = len(lam)
    values: dict[int, np.ndarray] = {}
    grads: dict[int, tuple[torch.Tensor, float]] = {}
    ratios: dict[int, np.ndarray] = {}
    for c, (comp, target, mask) in enumerate(scores):
        sign = 1.0 if c == 0 else -1.0
        seq = ids + comp[:-1]
        keep = max(1, len(comp))

        def objective(logits: torch.Tensor, comp: list[int] = comp, target: Any = target) -> torch.Tensor:
            if target is not None:  # letter: logit(y+) − logit(y−) at the last position
                return logits[:, -1, target[0]] - logits[:, -1, target[1]]
            logp = logits.log_softmax(-1)  # answer text: per-token mean log-prob of the completion
            return logp[:, torch.arange(len(comp)), torch.tensor(comp)].mean(-1)

        per_layer = _sweep_item(
            model, seq, mask, first, vector, layer_list, lam, operator, relative, max_rows,
            null=sampled, null_lam=null_lam, keep=keep, prefix=prefix,
        )  # fmt: skip
        for layer, (logits, layer_ratios) in per_layer.items():
            value = objective(logits).double().numpy()
            values[layer] = sign * value + values.get(layer, 0.0)
            ratios.setdefault(layer, layer_ratios)
        if directions is not None and null_method == "gradient":
            for layer, (grad, factor) in _grad_pass(
                model, seq, mask, first, prefix, layer_list, vector, relative, keep, objective
            ).items():
                prev = grads.get(layer, (0.0, factor))[0]
                grads[layer] = (prev + sign * grad, factor)
    k = 0 if directions is None else next(iter(directions.values())).shape[0]
    result = {}
    for layer, value in values.items():
        null_s = None
        if k and null_method == "sampled":
            pairs = value[n_s : n_s + 2 * k].reshape(k, 2)
            null_s = (pairs[:, 1] - pairs[:, 0]) / (null_lam[1] - null_lam[0])
        elif k:
            grad, factor = grads[layer]
            null_s = (directions[layer].double() @ grad.double()).numpy() * factor
        result[layer] = (value[:n_s], null_s, float(value[-1]), ratios[layer])
    return result


def _prefix(
    model: Any, ids: list[int], first: int, layer_list: list[int]
) -> tuple[list | None, dict[int, tuple[float, int]]]:
    """Keys/values of the unsteered tokens before ``first`` and their residual norms (skipping the sink)."""
    prefix_norms: dict[int, tuple[float, int]] = {}
    if first <= 0:
        return None, prefix_norms
    input_ids = torch.tensor([ids[:first]])
    with (
        torch.no_grad(),
        model.lock,
        model.nn.trace(input_ids, use_cache=True, logits_to_keep=1, remote=model.remote),
    ):
        for layer in sorted(layer_list):
            h = _hidden(model.block(layer).output)[0, 1:].float()
            prefix_norms[layer] = (float(h.norm(dim=-1).sum()), int(h.shape[0]))
        result = model.nn.output.save()
        prefix_norms = _save(prefix_norms)  # a remote run returns only saved values
    cache = result["cache"] if "cache" in result else result["past_key_values"]
    return [(k, v) for k, v, *_ in cache], prefix_norms


def _sweep_item(
    model: Any,
    ids: list[int],
    mask: torch.Tensor,
    first: int,
    vector: SteeringVector,
    layer_list: list[int],
    lam: np.ndarray,
    operator: str,
    relative: bool,
    max_rows: int,
    *,
    null: dict | None = None,
    null_lam: np.ndarray | None = None,
    keep: int = 1,
    prefix: tuple[list | None, dict] | None = None,
) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """Logits ``[rows, keep, vocab]`` at the last ``keep`` positions for every layer of one sequence.

    Rows per layer: the vector at each strength in ``lam``, then (with ``null``) each random direction at
    the two ``null_lam`` strengths, then one unsteered row. Ratios are the vector rows' ‖λv‖ / mean‖h‖.
    """
    prefix_kv, prefix_norms = prefix if prefix is not None else _prefix(model, ids, first, layer_list)
    input_ids = torch.tensor([ids])
    rowsets = {}
    for layer in layer_list:
        sets = [(vector[layer], torch.tensor(lam, dtype=torch.float32))]
        if null is not None:
            nl = torch.tensor(null_lam, dtype=torch.float32)
            sets += [(null[layer][j], nl) for j in range(null[layer].shape[0])]
        sets.append((torch.zeros_like(vector[layer]), torch.zeros(1)))
        rowsets[layer] = sets
    per_layer_rows = sum(len(s[1]) for s in rowsets[layer_list[0]])
    suffix = input_ids[:, first:]
    suffix_mask = mask[first : len(ids)] if mask.shape[0] >= len(ids) else mask[first:]
    # With one steered token every layer's rows are cheap: put them all in one pass.
    if suffix.shape[1] == 1:
        per_pass = max(1, max_rows // per_layer_rows)
        groups = [layer_list[i : i + per_pass] for i in range(0, len(layer_list), per_pass)]
    else:
        groups = [[layer] for layer in layer_list]
    out: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
    with torch.no_grad():
        for group in groups:
            out.update(
                _sweep_pass(
                    model,
                    suffix,
                    suffix_mask,
                    first,
                    prefix_kv,
                    prefix_norms,
                    vector,
                    rowsets,
                    group,
                    len(lam),
                    operator,
                    relative,
                    keep,
                )
            )
    return out


def _scale_factor(
    own: torch.Tensor, prefix: tuple[float, int] | None, skip_first: int, vnorm: float, relative: bool
) -> tuple[float, float]:
    """Mean residual norm over the prefix and this unedited row, and what multiplies λ (mean‖h‖/‖v‖ when
    strengths are relative, else 1)."""
    total, count = prefix if prefix is not None else (0.0, 0)
    body = own[0, skip_first:].detach().float()
    mean_norm = (total + float(body.norm(dim=-1).sum())) / max(1, count + body.shape[0])
    return mean_norm, (mean_norm / max(vnorm, 1e-12) if relative else 1.0)


def _grad_pass(
    model: Any,
    seq: list[int],
    mask: torch.Tensor,
    first: int,
    prefix: tuple[list | None, dict[int, tuple[float, int]]],
    layer_list: list[int],
    vector: SteeringVector,
    relative: bool,
    keep: int,
    objective: Callable[[torch.Tensor], torch.Tensor],
) -> dict[int, tuple[torch.Tensor, float]]:
    """∇ of the unsteered objective with respect to a vector δ added at the steered positions, per layer.

    For any direction r, the slope dm(λr)/dλ at λ = 0 is then ``factor · ∇·r``: one backward pass gives every
    random direction's first-order slope. One row per layer (δ of row g enters at layer g only).
    """
    prefix_kv, prefix_norms = prefix
    ordered = sorted(layer_list)
    rows, split = len(ordered), ordered[0]
    suffix = torch.tensor([seq])[:, first:]
    pos_mask = mask[first : len(seq)][None, :, None]
    delta = torch.zeros((rows, model.d_model), requires_grad=True)
    kwargs: dict[str, Any] = dict(logits_to_keep=keep, remote=model.remote)
    if prefix_kv is not None:
        kwargs.update(past_key_values=_cache_from(prefix_kv, rows, split), use_cache=True)
    skip_first = 1 if first == 0 else 0
    factors: dict[int, float] = {}
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore", FutureWarning)
        with model.lock, model.nn.trace(suffix, **kwargs):
            for g, layer in enumerate(ordered):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                own = hidden[:1] if hidden.shape[0] == 1 else hidden[g : g + 1]
                vnorm = float(vector[layer].norm())
                factors[layer] = _scale_factor(own, prefix_norms.get(layer), skip_first, vnorm, relative)[1]
                if layer == split:
                    hidden = hidden.expand(rows, -1, -1)
                row = torch.zeros((rows, 1, 1))
                row[g] = 1.0
                _set_hidden(envoy, out, hidden + (row * delta[g] * pos_mask).to(hidden.dtype))
            logits = model.nn.lm_head.output[:, -keep:].save()
        (grad,) = torch.autograd.grad(objective(logits.float()).sum(), delta)
    return {layer: (grad[g].detach(), factors[layer]) for g, layer in enumerate(ordered)}


def _sweep_pass(
    model: Any,
    suffix: torch.Tensor,
    suffix_mask: torch.Tensor,
    first: int,
    prefix_kv: list | None,
    prefix_norms: dict[int, tuple[float, int]],
    vector: SteeringVector,
    rowsets: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
    group: list[int],
    n_vector_rows: int,
    operator: str,
    relative: bool,
    keep: int,
) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """One batched forward: for each layer in ``group`` its rows (direction × strength), expanded at the
    lowest layer.

    Rows of layer L are steered only at L, so below L they equal the unsteered run; the mean residual
    norm for relative strengths is read from the first row of L's block before editing, and every direction
    of L is scaled by the same factor (the null's directions have the vector's norm).
    """
    ordered = sorted(group)
    sizes = [sum(len(lam) for _, lam in rowsets[layer]) for layer in ordered]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    rows = int(offsets[-1])
    split = ordered[0]
    kwargs: dict[str, Any] = dict(logits_to_keep=keep, remote=model.remote)
    if prefix_kv is not None:
        # nnsight keeps the ``cache`` keyword for itself, so the cache travels as ``past_key_values``.
        kwargs.update(past_key_values=_cache_from(prefix_kv, rows, split), use_cache=True)
    ratios: dict[int, np.ndarray] = {}
    pos_mask = suffix_mask[None, :, None]
    skip_first = 1 if first == 0 else 0  # the attention-sink token is left out of mean‖h‖
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values is deprecated in v5
        with model.lock, model.nn.trace(suffix, **kwargs):
            for g, layer in enumerate(ordered):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                start = int(offsets[g])
                own = hidden[:1] if hidden.shape[0] == 1 else hidden[start : start + 1]
                vnorm = float(vector[layer].norm())
                mean_norm, factor = _scale_factor(own, prefix_norms.get(layer), skip_first, vnorm, relative)
                ratios[layer] = (rowsets[layer][0][1].abs() * factor * vnorm / max(mean_norm, 1e-12)).numpy()
                if layer == split:
                    hidden = hidden.expand(rows, -1, -1)
                pieces = [hidden[:start]]
                at = start
                for direction, lam in rowsets[layer]:
                    part = hidden[at : at + len(lam)]
                    scale = (lam * factor).reshape(-1, 1, 1)
                    if operator == "add" or float(direction.norm()) == 0.0:
                        edited = (
                            part
                            if float(direction.norm()) == 0.0
                            else apply_operator(part, direction, scale, "add")
                        )
                    else:
                        edited = apply_operator(part, direction, scale, operator)
                    pieces.append(torch.where(pos_mask, edited, part))
                    at += len(lam)
                pieces.append(hidden[at:])
                _set_hidden(envoy, out, torch.cat(pieces, 0))
            logits = model.nn.lm_head.output[:, -keep:].save()
            ratios = _save(ratios)  # a remote run returns only saved values
    logits = logits.float()
    return {
        layer: (logits[int(offsets[g]) : int(offsets[g + 1])], ratios[layer][:n_vector_rows])
        for g, layer in enumerate(ordered)
    }


# ----------------------------------------------------------------------------------------------
# Reading activations (for building vectors)
# ----------------------------------------------------------------------------------------------
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
        with torch.no_grad():
            with (
                model.lock,
                model.nn.trace(input_ids, attention_mask=attention, logits_to_keep=1, remote=model.remote),
            ):
                for layer in sorted(layers):
                    saved[layer] = _hidden(model.block(layer).output).save()
                saved = _save(saved)  # a remote run returns only saved values
        lengths = torch.tensor([len(s) for s in chunk])
        for layer in layers:
            h = saved[layer].float()
            if position == "all":
                full = torch.zeros((len(chunk), max_len, h.shape[-1]))
                full[:, :width] = h * attention[..., None]
                out[layer].append(full)
            else:
                index = lengths + position if position < 0 else torch.full_like(lengths, position)
                out[layer].append(h[torch.arange(len(chunk)), index])
    return {layer: torch.cat(parts) for layer, parts in out.items()}
