"""The Playground's token views: the prompt's chips, each generated token's text and the top-k changes.

- :func:`prompt_chips` — one chip per prompt token, marked where the user typed it (not the chat template);
- :func:`token_pieces` — each token's text, such that the pieces concatenate to the decoded string;
- :func:`topk_changes` — the :data:`TOP_K` next tokens whose probability the steering changed most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import prompts

TOP_K = 8


def prompt_chips(model: Any, prompt: str) -> tuple[list[int], int, list[dict]]:
    """The prompt's ids, where the user's text starts, and one chip per token (``user``: typed by the
    user rather than added by the chat template)."""
    tok = model.tokenizer
    ids, user_start = prompts.tokenize_prompt(model, prompt)
    text, char_start = prompts.prompt_text(model, prompt)
    user_end = len(ids)
    if char_start or text != prompt:
        user_end = len(tok(text[: char_start + len(prompt)], add_special_tokens=False)["input_ids"])
    chips = [
        {"i": i, "text": piece, "user": user_start <= i < user_end}
        for i, piece in enumerate(token_pieces(tok, ids))
    ]
    return ids, user_start, chips


def topk_changes(tok: Any, base: Any, steered: Any, k: int = TOP_K) -> list[dict]:
    """The k next tokens whose probability changed most at the first generated position."""
    lp_b = base.first_logprobs[0].float()
    lp_s = steered.first_logprobs[0].float()
    p_b, p_s = lp_b.exp(), lp_s.exp()
    delta = p_s - p_b
    idx = delta.abs().topk(min(k, delta.numel())).indices.tolist()
    rows = [
        {
            "token": tok.decode([i]),
            "id": int(i),
            "p_base": rounded(float(p_b[i]), 4),
            "p_steered": rounded(float(p_s[i]), 4),
            "delta": rounded(float(delta[i]), 4),
            "logp_shift": rounded(float(lp_s[i] - lp_b[i])),
        }
        for i in idx
    ]
    return sorted(rows, key=lambda r: -r["delta"])


def token_pieces(tok: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text, such that the pieces concatenate to the decoded string.

    Decoding prefixes keeps leading spaces right; a character split across tokens shows on the
    token that completes it (the others get "").
    """
    out, prev = [], ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        if text.endswith("\ufffd") and n < len(ids):
            out.append("")
            continue
        out.append(text[len(prev) :] if text.startswith(prev) else tok.decode([ids[n - 1]]))
        prev = text
    return out


def rounded(x: float, digits: int = 3) -> float | None:
    """``x`` rounded to ``digits``, or None when it is not finite (JSON cannot hold NaN)."""
    return round(float(x), digits) if math.isfinite(x) else None
