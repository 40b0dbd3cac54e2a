"""Realistic contexts: the same A/B and open-ended items asked at the end of a conversation.

Steering is usually measured on a bare question, but it is used inside conversations and agent loops. This
module holds built-in multi-turn dialogues (2–4 earlier messages, the item is the last user turn) and
tool-use contexts (a JSON function-call format described in the first user turn, a prior tool call and its
result, then the item), and embeds items into them.

The engine builds a prompt from *one* user turn (``model.chat_prompt(question)``). Until it accepts a list
of messages, :func:`embed_ab` and :func:`embed_open_ended` produce ordinary :class:`ABItem` /
:class:`OpenEndedItem` whose text is *spliced*: the conversation rendered by the chat template, minus the
template's own prefix and suffix for a single user turn, so that ``model.chat_prompt(item.question)`` is
exactly :func:`context_prompt` of the whole conversation. That identity is checked for every item (and the
embedding refuses templates where it cannot hold, e.g. a context with its own system message on a
template that adds a default one). One cost: the engine's ``user_start`` (used by ``positions="front"``)
then points at the first turn of the conversation, not at the item.

The tool result is sent as a user message starting with ``TOOL RESULT`` rather than as a ``tool`` role,
because many chat templates (Gemma, Llama 2) reject roles other than user/assistant.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .capabilities import paired_difference_ci
from .data import ABItem, DatasetError, OpenEndedItem, dataset_dir
from .engine.sweep import DEFAULT_STRENGTHS, PropensityResult, propensity_sweep
from .interventions import Steering, SteeringError, as_list
from .likelihood_shift import open_ended_loglik
from .vectors import SteeringVector

CONTEXT_KINDS = ("dialogue", "tool_use")
_FILES = {"dialogue": "context_dialogues.json", "tool_use": "context_tool_use.json"}
_ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, str]


@dataclass(frozen=True)
class Context:
    """Earlier messages of a conversation; an item is asked as the next user turn."""

    name: str
    kind: str
    messages: tuple[tuple[str, str], ...]  # (role, content), hashable and frozen

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_KINDS:
            raise DatasetError(f"Context {self.name!r}: kind {self.kind!r}; use one of {CONTEXT_KINDS}")
        for role, content in self.messages:
            if role not in _ROLES or not isinstance(content, str) or not content.strip():
                raise DatasetError(f"Context {self.name!r}: bad message ({role!r}, {content!r})")
        if self.messages and self.messages[-1][0] == "user":
            raise DatasetError(f"Context {self.name!r}: ends with a user turn; the item must be the next one")

    def conversation(self, user_text: str) -> list[Message]:
        """The context's messages followed by ``user_text`` as the last user turn."""
        return [{"role": r, "content": c} for r, c in self.messages] + [
            {"role": "user", "content": user_text}
        ]

    @property
    def n_turns(self) -> int:
        return len(self.messages)


def builtin_contexts(kind: str | None = None) -> list[Context]:
    """Built-in contexts (``kind`` ``"dialogue"``, ``"tool_use"`` or None for both)."""
    kinds = CONTEXT_KINDS if kind is None else (kind,)
    out = []
    for k in kinds:
        if k not in CONTEXT_KINDS:
            raise DatasetError(f"no built-in context kind {k!r}; use one of {CONTEXT_KINDS}")
        rows = json.loads((dataset_dir() / _FILES[k]).read_text(encoding="utf-8"))
        for row in rows:
            messages = tuple((m["role"], m["content"]) for m in row["messages"])
            out.append(Context(row["name"], k, messages))
    return out


def context_prompt(model: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """The text the model sees for a whole conversation (chat template, generation prompt added)."""
    if not model.has_chat_template:
        raise SteeringError(f"{model.name} has no chat template; multi-turn contexts need one")
    if not messages or messages[-1].get("role") != "user":
        raise SteeringError("a conversation to prompt must end with a user message")
    return model.tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
    )


_SENTINEL = "\x00STEERWIDGETS_ITEM\x00"


def spliced_user_text(model: Any, messages: Sequence[Message]) -> str:
    """A single user-turn text t with ``model.chat_prompt(t) == context_prompt(model, messages)``.

    Lets the current engine (one user turn per prompt) score items inside a conversation; raises
    SteeringError where the template makes that impossible.
    """
    full = context_prompt(model, messages)
    pre, _, post = model.chat_prompt(_SENTINEL).partition(_SENTINEL)
    if not (full.startswith(pre) and full.endswith(post) and len(full) >= len(pre) + len(post)):
        raise SteeringError(
            f"{model.name}'s chat template renders this conversation with a different start or end than a "
            "single user turn (a system message?), so it cannot be passed as one question; this needs the "
            "engine to accept a list of messages"
        )
    text = full[len(pre) : len(full) - len(post)]
    if model.chat_prompt(text) != full:  # pragma: no cover - guarded by the checks above
        raise SteeringError("splicing the conversation into one user turn did not reproduce it")
    return text


def embed_ab(model: Any, items: Sequence[ABItem], context: Context) -> list[ABItem]:
    """The same A/B items asked as the last user turn of ``context`` (engine-ready, see module doc)."""
    return [replace(it, question=spliced_user_text(model, context.conversation(it.question))) for it in items]


def embed_open_ended(model: Any, items: Sequence[OpenEndedItem], context: Context) -> list[OpenEndedItem]:
    """The same open-ended items asked as the last user turn of ``context`` (continuations unchanged)."""
    return [replace(it, query=spliced_user_text(model, context.conversation(it.query))) for it in items]


def embed_all(
    model: Any, items: Sequence[ABItem] | Sequence[OpenEndedItem], contexts: Sequence[Context] | None = None
) -> dict[str, list]:
    """Every item in every context, cycling contexts over items so each item appears once per kind.

    Returns ``{"bare": items, "dialogue": [...], "tool_use": [...]}``: item i of each list is the same
    question, so effects can be compared item by item.
    """
    contexts = builtin_contexts() if contexts is None else list(contexts)
    items = list(items)
    if not items:
        raise SteeringError("no items to embed")
    out: dict[str, list] = {"bare": items}
    for kind in CONTEXT_KINDS:
        pool = [c for c in contexts if c.kind == kind]
        if not pool:
            continue
        embedded = []
        for i, item in enumerate(items):
            ctx = pool[i % len(pool)]
            if isinstance(item, ABItem):
                embedded += embed_ab(model, [item], ctx)
            elif isinstance(item, OpenEndedItem):
                embedded += embed_open_ended(model, [item], ctx)
            else:
                raise TypeError(f"expected ABItem or OpenEndedItem, got {type(item).__name__}")
        out[kind] = embedded
    return out


# ----------------------------------------------------------------------------------------------
# The effect in context relative to the bare format
# ----------------------------------------------------------------------------------------------
MIN_BARE_EFFECT = 0.25  # below this bare effect a ratio is not reported (as relative steerability)


def context_verdict(difference_ci: tuple[float, float], bare_effect: float | None = None) -> str:
    """Weaker / stronger in context only when the paired 95 % interval excludes 0, and only where there is
    a bare effect to lose: below :data:`MIN_BARE_EFFECT` a "weaker" or "stronger" verdict would report a
    difference between two non-effects, so it reads "too small to compare"."""
    if bare_effect is not None and bare_effect < MIN_BARE_EFFECT:
        return "too small to compare"
    if difference_ci[1] < 0:
        return "weaker in context"
    if difference_ci[0] > 0:
        return "stronger in context"
    return "no detectable change"


@dataclass(frozen=True)
class ContextEffect:
    """A per-item steering effect on the bare items and on the same items in each context kind.

    ``effect[kind]`` holds one number per item (A/B: the propensity slope over strengths; open-ended: the
    per-token-mean likelihood shift Δ+ + Δ− of that item); ``difference_ci[kind]`` is the paired bootstrap
    95 % interval of mean(effect in context − effect bare).
    """

    measure: str
    effect: dict[str, tuple[float, ...]]
    difference_ci: dict[str, tuple[float, float]]
    settings: dict[str, Any]
    judged: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> verdict vs the null

    def mean(self, kind: str) -> float:
        return float(np.mean(self.effect[kind]))

    def ratio(self, kind: str) -> float | None:
        bare = self.mean("bare")
        return None if bare < MIN_BARE_EFFECT else self.mean(kind) / bare

    @property
    def kinds(self) -> list[str]:
        return [k for k in self.effect if k != "bare"]

    def verdicts(self) -> dict[str, str]:
        return {k: context_verdict(self.difference_ci[k], self.mean("bare")) for k in self.kinds}

    @property
    def verdict(self) -> str:
        bare = self.mean("bare")
        if bare < MIN_BARE_EFFECT:
            return (
                f"Steering effect in realistic contexts vs the bare format: too small to compare (the bare "
                f"effect {bare:.3g} is below {MIN_BARE_EFFECT}, so a change in context would compare two "
                "non-effects; use a larger strength or a behaviour the vector moves)."
            )
        parts = [f"{k.replace('_', '-')}: {v}" for k, v in self.verdicts().items()]
        return f"Steering effect in realistic contexts vs the bare format — {'; '.join(parts)}."

    def summary(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "n_items": len(self.effect["bare"]),
            **self.settings,
            "bare": self.mean("bare"),
            "contexts": {
                k: {
                    "effect": self.mean(k),
                    "ratio_to_bare": self.ratio(k),
                    "difference": self.mean(k) - self.mean("bare"),
                    "difference_ci": list(self.difference_ci[k]),
                    "verdict": context_verdict(self.difference_ci[k], self.mean("bare")),
                }
                for k in self.kinds
            },
            "ratio_rule": f"ratio reported only where the bare effect ≥ {MIN_BARE_EFFECT}",
            "judged": self.judged,
            "verdict": self.verdict,
        }


def paired_context_effect(
    measure: str, per_kind: dict[str, np.ndarray], settings: dict[str, Any], seed: int = 0
) -> ContextEffect:
    """A :class:`ContextEffect` from per-item effects (``per_kind["bare"]`` and one array per context kind,
    item i the same question in each): callers that measured the items themselves (``compare``) get the
    same intervals, ratio rule and verdicts."""
    bare = per_kind["bare"]
    cis = {}
    for kind, values in per_kind.items():
        if kind != "bare":
            _, low, high = paired_difference_ci(bare, values, seed=seed)
            cis[kind] = (low, high)
    effect = {k: tuple(float(x) for x in v) for k, v in per_kind.items()}
    return ContextEffect(measure, effect, cis, settings)


def context_effect_ab(
    model: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layer: int,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    positions: Any = "last",
    relative: bool = False,
    contexts: Sequence[Context] | None = None,
    seed: int = 0,
    protocol: str = "letter",
    null_directions: int = 0,
    bare: PropensityResult | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> ContextEffect:
    """Per-item steerability (Tan et al.'s slope) bare vs in each context kind, paired by item.

    ``null_directions=K`` also judges each format on its own against K random directions of the vector's
    norm (the verdict a report shows: does the vector steer at all in a dialogue?); ``bare`` reuses a sweep
    already run on exactly ``items`` with the same strengths and protocol. ``protocol="answer_text"``
    compares only items whose answers can be read in every format (``positions=None``: the protocol's
    default). ``progress(done, total)`` counts items over every format's sweep.
    """
    embedded = embed_all(model, items, contexts)  # refuses a template that cannot hold them, before work
    if bare is not None and (
        bare.protocol != protocol
        or len(bare.strengths) != len(strengths)
        or not np.allclose(bare.strengths, np.asarray(strengths, dtype=float))
        or (bare.item_index is None and len(bare.items) != len(items))
    ):
        raise SteeringError(
            "bare= must be a sweep of the same items with the same strengths and protocol; pass "
            "bare=None to run it here"
        )
    kinds = list(embedded)
    runs: dict[str, PropensityResult] = {}
    for k, kind in enumerate(kinds):
        if kind == "bare" and bare is not None:
            runs[kind] = bare
            continue
        step = (
            None
            if progress is None
            else (lambda done, total, k=k: progress(k * total + done, len(kinds) * total))
        )
        runs[kind] = propensity_sweep(
            model, embedded[kind], vector, [layer], strengths, positions=positions, relative=relative,
            protocol=protocol, null_directions=null_directions, progress=step, cancel=cancel,
        )  # fmt: skip
    per_item = {kind: _slopes_by_item(result, layer, len(items)) for kind, result in runs.items()}
    common = sorted(set.intersection(*(set(v) for v in per_item.values())))
    if not common:
        raise SteeringError(f"no item could be read in every format with the {protocol} protocol")
    slopes = {kind: np.array([v[i] for i in common]) for kind, v in per_item.items()}
    settings = {
        "layer": layer,
        "positions": positions,
        "strengths": [float(x) for x in strengths],
        "protocol": protocol,
        "items_compared": len(common),
    }
    judged = {}
    if null_directions:
        for kind, result in runs.items():
            verdict = result.verdict(layer)
            judged[kind] = {
                "verdict": verdict.verdict,
                "reason": verdict.reason,
                "steerability": verdict.steerability,
                "null_band": [verdict.null_q025, verdict.null_q975],
                "n_directions": verdict.n_directions,
            }
    measure = "steerability (propensity slope per unit strength)"
    return replace(paired_context_effect(measure, slopes, settings, seed), judged=judged)


def _slopes_by_item(result: PropensityResult, layer: int, n: int) -> dict[int, float]:
    """Slopes keyed by the caller's item index (answer-text sweeps may leave items out)."""
    index = result.item_index if result.item_index is not None else list(range(n))
    return dict(zip(index, (float(x) for x in result.slopes(layer))))


def context_effect_open_ended(
    model: Any,
    items: Sequence[OpenEndedItem],
    steering: Steering | Sequence[Steering],
    *,
    contexts: Sequence[Context] | None = None,
    seed: int = 0,
) -> ContextEffect:
    """Per-item likelihood shift (per-token mean, Δ+ + Δ−) bare vs in each context kind, paired by item."""
    steerings = as_list(steering)
    if not steerings:
        raise SteeringError("give a steering to measure")
    embedded = embed_all(model, items, contexts)
    shifts = {}
    for kind, its in embedded.items():
        base = open_ended_loglik(model, its)
        steered = open_ended_loglik(model, its, steerings)
        shifts[kind] = (steered.mean_pos - base.mean_pos) + (base.mean_neg - steered.mean_neg)
    settings = {
        "steering": [f"layer {s.layer}, strength {s.strength}, positions {s.positions}" for s in steerings]
    }
    return paired_context_effect("likelihood shift Δ+ + Δ− (per-token mean log-prob)", shifts, settings, seed)
