"""Generation: unsteered and steered continuations of the same prompts, streamed token by token."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from nnsight import save as _save

from ..interventions import Steering, SteeringError, active_steerings, as_list, require_model
from ..prompts import Encoded, as_texts, check_length, check_sampling, encode
from ..remote import require_local
from ._trace import _norm_ratio, _Plan, _plans, _Row, _steer_in_trace


class GenerationCancelled(RuntimeError):
    """Raised when a ``cancel`` event is set during a run; the model is left unsteered."""


@dataclass
class Continuation:
    """One run's continuations: text, ids and the log-probability the model gave each chosen token."""

    texts: list[str]
    token_ids: list[list[int]]
    token_logprobs: list[list[float]]
    first_logprobs: torch.Tensor  # [B, vocab] log-softmax at the first generated position
    norm_ratio: float | None = None  # ‖λv‖ / mean‖h‖ of the (first) steering, None if unsteered
    norm_ratios: list[float] = field(default_factory=list)  # one per steering, in the order given

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
            logp = self.step_logprobs[step]  # on the model's (last) device
            self.chosen.append(logp.gather(1, ids[:, None].to(logp.device))[:, 0].cpu())
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
    attention_full = model.place(
        torch.cat([enc.attention_mask, torch.ones((len(enc.lengths), max_new_tokens), dtype=torch.long)], 1)
    )
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        attention_mask=model.place(enc.attention_mask),
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
            with model.nn.generate(model.place(enc.input_ids), remote=model.remote, **kwargs) as tracer:
                for _ in tracer.all():
                    start = offset[0]
                    _steer_in_trace(model, plans, start, attention_full)
                    logits = model.nn.lm_head.output
                    width = logits.shape[1] if start == 0 else 1
                    offset[0] = start + (enc.width if start == 0 else width)
                    streamer.step_logprobs.append(logits[:, -1].float().log_softmax(-1))
                    state = _save(streamer.__dict__)  # a remote run returns only saved values
            streamer.__dict__.update(state)
    out = _finish_continuation(model, streamer, plans)
    order = sorted(range(len(steerings)), key=lambda i: steerings[i].layer)  # as _plans sorts them
    out.norm_ratios = [0.0] * len(plans)
    for plan, index in zip(plans, order):
        out.norm_ratios[index] = _norm_ratio(plan)
    return out


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
        first_logprobs=streamer.step_logprobs[0].float().cpu(),
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
