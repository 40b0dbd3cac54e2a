"""Prompts the model sees: chat templates, A/B prompts and tokenisation (public names, no forward pass).

:func:`prompt_text` / :func:`tokenize_prompt` turn a user prompt into the text and token ids the model reads,
:func:`encode` left-pads a batch for generation, :func:`ab_prompt` and :func:`answer_text_prompt` build the
two propensity protocols' prompts, and :func:`check_length` / :func:`as_texts` / :func:`check_sampling`
validate inputs before any model work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import ABItem, split_options
from .interventions import SteeringError


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


def use_chat(model: Any, chat: bool | None) -> bool:
    """Whether to wrap prompts in the chat template: the model's default (``chat=None``), or as asked."""
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
    if not use_chat(model, chat):
        return prompt, 0
    text = model.chat_prompt(prompt)
    return text, text.find(prompt)


def tokenize_prompt(model: Any, prompt: str, chat: bool | None = None) -> tuple[list[int], int]:
    """Token ids of a prompt (no extra special tokens) and the token index where the user's text starts."""
    text, char_start = prompt_text(model, prompt, chat)
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not use_chat(model, chat) and tok.bos_token_id is not None and adds_bos(tok):
        ids = [tok.bos_token_id] + ids
    user_start = len(tok(text[:char_start], add_special_tokens=False)["input_ids"]) if char_start else 0
    if ids and ids[0] == tok.bos_token_id and not use_chat(model, chat):
        user_start += 1
    check_length(model, len(ids))
    return ids, user_start


def adds_bos(tok: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front by itself."""
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


def ab_prompt(model: Any, item: ABItem, chat: bool | None = None) -> tuple[list[int], int, int]:
    """Prompt ids for an A/B item (chat template + ``"("``) and the token ids of y+ and y−.

    For a model without a chat template the prompt is ``question + "\\n\\nAnswer: ("``.
    """
    tok = model.tokenizer
    if use_chat(model, chat):
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
