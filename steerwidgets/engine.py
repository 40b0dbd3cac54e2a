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

from . import metrics
from .data import ABItem
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


def letter_id(tok: Any, letter: str) -> int:
    ids = tok(letter, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SteeringError(f"the answer letter {letter!r} is {len(ids)} tokens for this tokenizer")
    return ids[0]


@dataclass
class PropensityResult:
    """Propensity m_i(λ) = logit(y+) − logit(y−) for items × strengths, per layer (metrics.md)."""

    strengths: np.ndarray
    layers: list[int]
    positions: Any
    propensity: dict[int, np.ndarray]  # layer -> [n_items, n_strengths]
    norm_ratio: dict[int, np.ndarray]  # layer -> [n_strengths], ‖λv‖ / mean‖h‖
    vector_norm: dict[int, float]
    items: list[ABItem]
    relative: bool = False

    def slopes(self, layer: int) -> np.ndarray:
        return metrics.slopes(self.propensity[layer], self.strengths)

    def summary(self, layer: int) -> dict[str, Any]:
        """The literature's numbers for one layer, ready for JSON."""
        m = self.propensity[layer]
        slopes = self.slopes(layer)
        anti = metrics.anti_steerable(slopes)
        nonmono = metrics.non_monotonic(m)
        is_a = np.array([item.matching == "A" for item in self.items])
        return {
            "layer": layer,
            "steerability": float(slopes.mean()),
            "anti_steerable_fraction": float(anti.mean()),
            "non_monotonic_fraction": float(nonmono.mean()),
            "mean_propensity": [float(x) for x in m.mean(0)],
            "p_match": [float(x) for x in metrics.p_match(m).mean(0)],
            "ab_bias_r2": metrics.ab_bias_r2(slopes, is_a),
            "norm_ratio": [float(x) for x in self.norm_ratio[layer]],
            "vector_norm": self.vector_norm[layer],
            "warning_level": metrics.warning_level(float(anti.mean())),
            "per_example": [
                {
                    "index": i,
                    "slope": float(slopes[i]),
                    "propensity": [float(x) for x in m[i]],
                    "anti_steerable": bool(anti[i]),
                    "non_monotonic": bool(nonmono[i]),
                }
                for i in range(m.shape[0])
            ],
        }


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


def propensity_sweep(
    model: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layers: int | Sequence[int],
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    positions: Any = "all",
    operator: str = "add",
    relative: bool = False,
    chat: bool | None = None,
    max_rows: int = 64,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> PropensityResult:
    """The [items × strengths] propensity matrix at each layer, strengths batched into one pass.

    Per item, the tokens before the first steered position run once and their keys/values are reused; the
    blocks below the steered layer run once; the strengths (and, for a single steered token, all layers)
    share one batched pass; logits are computed only at the answer position.
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
    items = list(items)
    if not items:
        raise SteeringError("no A/B items given")
    n_s = len(lam)
    prop = {layer: np.zeros((len(items), n_s)) for layer in layer_list}
    ratio_sum = {layer: np.zeros(n_s) for layer in layer_list}
    for index, item in enumerate(items):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("sweep cancelled")
        ids, y_pos, y_neg = ab_prompt(model, item, chat)
        n = len(ids)
        mask = position_mask(positions, n, n)
        if not bool(mask.any()):
            raise SteeringError(
                f"positions={positions!r} selects no prompt token, so nothing would be steered when "
                "reading the answer letter; use 'all', 'prompt' or 'last'"
            )
        first = int(mask.float().argmax())
        out = _sweep_item(model, ids, mask, first, vector, layer_list, lam, operator, relative, max_rows)
        for layer, (logits, ratios) in out.items():
            prop[layer][index] = (logits[:, y_pos] - logits[:, y_neg]).numpy()
            ratio_sum[layer] += ratios
        if progress is not None:
            progress(index + 1, len(items))
    return PropensityResult(
        strengths=lam,
        layers=layer_list,
        positions=positions,
        propensity=prop,
        norm_ratio={layer: ratio_sum[layer] / len(items) for layer in layer_list},
        vector_norm={layer: float(vector[layer].norm()) for layer in layer_list},
        items=items,
        relative=relative,
    )


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
) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """Answer-position logits for every (layer, strength) of one item."""
    n_s = len(lam)
    input_ids = torch.tensor([ids])
    prefix_kv = None
    prefix_norms: dict[int, tuple[float, int]] = {}
    with torch.no_grad():
        if first > 0:
            with (
                model.lock,
                model.nn.trace(input_ids[:, :first], use_cache=True, logits_to_keep=1, remote=model.remote),
            ):
                for layer in layer_list:
                    h = _hidden(model.block(layer).output)[0, 1:].float()
                    prefix_norms[layer] = (float(h.norm(dim=-1).sum()), int(h.shape[0]))
                result = model.nn.output.save()
            cache = result["cache"] if "cache" in result else result["past_key_values"]
            prefix_kv = [(k, v) for k, v, *_ in cache]
        suffix = input_ids[:, first:]
        suffix_mask = mask[first:]
        # With one steered token every layer's rows are cheap: put them all in one pass.
        if suffix.shape[1] == 1:
            per_pass = max(1, max_rows // n_s)
            groups = [layer_list[i : i + per_pass] for i in range(0, len(layer_list), per_pass)]
        else:
            groups = [[layer] for layer in layer_list]
        out: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
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
                    group,
                    lam,
                    operator,
                    relative,
                )
            )
    return out


def _sweep_pass(
    model: Any,
    suffix: torch.Tensor,
    suffix_mask: torch.Tensor,
    first: int,
    prefix_kv: list | None,
    prefix_norms: dict[int, tuple[float, int]],
    vector: SteeringVector,
    group: list[int],
    lam: np.ndarray,
    operator: str,
    relative: bool,
) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """One batched forward: rows = layers in ``group`` × strengths, expanded at the lowest layer.

    Rows of layer L are steered only at L, so below L they equal the unsteered run; the mean residual
    norm for relative strengths is read from the first row of L's group before editing.
    """
    n_s = len(lam)
    rows = len(group) * n_s
    split = min(group)
    kwargs: dict[str, Any] = dict(logits_to_keep=1, remote=model.remote)
    if prefix_kv is not None:
        # nnsight keeps the ``cache`` keyword for itself, so the cache travels as ``past_key_values``.
        kwargs.update(past_key_values=_cache_from(prefix_kv, rows, split), use_cache=True)
    lam_t = torch.tensor(lam, dtype=torch.float32)
    ratios: dict[int, np.ndarray] = {}
    pos_mask = suffix_mask[None, :, None]
    skip_first = 1 if first == 0 else 0  # the attention-sink token is left out of mean‖h‖
    ordered = sorted(group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values is deprecated in v5
        with model.lock, model.nn.trace(suffix, **kwargs):
            for g, layer in enumerate(ordered):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                own = hidden[:1] if hidden.shape[0] == 1 else hidden[g * n_s : g * n_s + 1]
                total, count = prefix_norms.get(layer, (0.0, 0))
                body = own[0, skip_first:].float()
                mean_norm = (total + float(body.norm(dim=-1).sum())) / max(1, count + body.shape[0])
                vec = vector[layer]
                vnorm = float(vec.norm())
                scale_one = lam_t * (mean_norm / max(vnorm, 1e-12) if relative else 1.0)
                ratios[layer] = (scale_one.abs() * vnorm / max(mean_norm, 1e-12)).numpy()
                if layer == split:
                    hidden = hidden.expand(rows, -1, -1)
                scale = torch.zeros(rows)
                scale[g * n_s : (g + 1) * n_s] = scale_one
                rowsel = scale.new_zeros(rows, dtype=torch.bool)
                rowsel[g * n_s : (g + 1) * n_s] = True
                edited = apply_operator(hidden, vec, scale.reshape(-1, 1, 1), operator)
                _set_hidden(envoy, out, torch.where(rowsel[:, None, None] & pos_mask, edited, hidden))
            logits = model.nn.lm_head.output[:, -1].save()
    logits = logits.float()
    return {layer: (logits[g * n_s : (g + 1) * n_s], ratios[layer]) for g, layer in enumerate(ordered)}


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
