"""The per-row checks of :func:`~steerwidgets.compare` beyond its numbers: fluency and realistic use.

- :class:`FluencyCheck` — greedy continuations of a few open-ended queries, each judged by
  :func:`~steerwidgets.fluency.fluency_verdict` against the unsteered continuation;
- realistic contexts — the row's A/B steerability on the held-out items asked as the last turn of the
  built-in dialogues and tool-use contexts, paired by item with its bare numbers (:func:`context_effect`,
  :func:`context_fields`);
- capability — :func:`~steerwidgets.capabilities.capability_check` of the row's steering
  (:func:`row_capability`, :func:`capability_fields`);
- the ``settings`` entries that describe each (:func:`fluency_settings`, :func:`contexts_settings`,
  :func:`capability_settings`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from .baselines import EvalContext
from .capabilities import CAPABILITY_SETS, capability_check
from .contexts import MIN_BARE_EFFECT, builtin_contexts, context_verdict, embed_all, paired_context_effect
from .data import ABItem
from .engine.generation import generate
from .engine.scoring import score
from .fluency import DISTINCT_N, MAX_LOGPROB_DROP, MIN_DISTINCT, MIN_TOKENS, fluency_verdict
from .interventions import Steering, SteeringError
from .steerers import SteerFn, propensity_matrix

FLUENCY_QUERIES = 3  # open-ended queries continued per row (greedy)
FLUENCY_TOKENS = 24  # new tokens per continuation


@dataclass
class FluencyCheck:
    """Greedy continuations of a few open-ended queries, each judged by
    :func:`~steerwidgets.fluency.fluency_verdict` against the unsteered continuation (generated and
    scored once per behaviour)."""

    model: Any
    queries: list[str]
    max_new_tokens: int = FLUENCY_TOKENS
    thresholds: dict[str, Any] = field(default_factory=dict)
    _base: list[list[float]] | None = field(default=None, repr=False)

    def _texts(self, steerings: list[Steering] | None, cancel: threading.Event | None) -> list[str]:
        common = dict(max_new_tokens=self.max_new_tokens, cancel=cancel)
        if not steerings:
            return generate(self.model, self.queries, None, **common).base.texts
        return generate(self.model, self.queries, steerings, baseline=False, **common).steered.texts

    def _logprobs(self, texts: list[str]) -> list[list[float]]:
        todo = [i for i, text in enumerate(texts) if text]
        out: list[list[float]] = [[] for _ in texts]
        if todo:
            lps = score(self.model, [self.queries[i] for i in todo], [texts[i] for i in todo])
            for i, lp in zip(todo, lps):
                out[i] = lp.tolist()
        return out

    def judge(self, steerings: list[Steering], cancel: threading.Event | None = None) -> dict[str, Any]:
        if self._base is None:
            self._base = self._logprobs(self._texts(None, cancel))
        texts = self._texts(steerings, cancel)
        lps = self._logprobs(texts)
        tok = self.model.tokenizer
        verdicts = []
        for base_lp, lp, text in zip(self._base, lps, texts):
            ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
            verdict = fluency_verdict(base_lp, lp, ids, **self.thresholds)
            verdicts.append({**verdict.to_json(), "text": text})
        bad = [v for v in verdicts if v["degraded"]]
        kinds = sorted({v["kind"].replace("_", " ") for v in bad})
        summary = f"{len(bad)}/{len(verdicts)} degraded" + (f" ({', '.join(kinds)})" if kinds else "")
        return {
            "degraded_fraction": len(bad) / len(verdicts),
            "summary": summary,
            "reason": bad[0]["reason"] if bad else verdicts[0]["reason"],
            "verdicts": verdicts,
        }


def fluency_settings(
    on: bool, queries: int, tokens: int, thresholds: dict[str, Any] | None
) -> dict[str, Any]:
    if not on:
        return {"on": False}
    values = dict(max_drop=MAX_LOGPROB_DROP, min_distinct=MIN_DISTINCT, n=DISTINCT_N, min_tokens=MIN_TOKENS)
    values.update(thresholds or {})
    return {
        "on": True,
        "queries": queries,
        "max_new_tokens": tokens,
        "decoding": "greedy",
        "at": "open_strength (matched)",
        **values,
    }


CONTEXT_MEASURE = (
    "A/B steerability: per-item OLS slope of m_i(λ) over the row's strengths (matched), held-out items"
)


def check_realistic_args(contexts: Any, capability: Any) -> None:
    """compare's ``contexts`` and ``capability`` arguments, checked before any model work."""
    if not isinstance(contexts, bool):
        raise SteeringError(
            f"contexts must be True or False, got {contexts!r}; pass contexts=True to measure each row in "
            "the built-in dialogue and tool-use contexts"
        )
    positive = isinstance(capability, int) and not isinstance(capability, bool) and capability >= 1
    if capability is not None and not positive:
        raise SteeringError(
            f"capability must be a positive int (items per capability set) or None, got {capability!r}; "
            "e.g. capability=20, or leave it out to skip the capability check"
        )


def context_items(model: Any, items: Sequence[ABItem]) -> dict[str, list[ABItem]]:
    """The held-out items asked as the last turn of each built-in context kind (chat template only, no
    forward pass), so a template that cannot hold the conversations fails before compare runs anything."""
    try:
        embedded = embed_all(model, items)
    except SteeringError as exc:
        raise SteeringError(
            f"contexts=True cannot put the items into multi-turn conversations on "
            f"{getattr(model, 'name', 'this model')}: {exc}. Run compare with contexts=False, or use a chat "
            "model whose template renders several user/assistant turns"
        ) from exc
    embedded.pop("bare")
    return embedded


def context_effect(
    ctx: EvalContext,
    steer: SteerFn,
    items_by_kind: dict[str, list[ABItem]],
    bare_slopes: Sequence[float],
    tick: Callable[[str], None],
) -> Any:
    """The row's per-item steerability in each context kind beside its bare slopes (already measured by
    :func:`evaluate_steerer` with the same steerer and strengths), as a paired ``ContextEffect``."""
    per_kind = {"bare": np.asarray(bare_slopes, dtype=float)}
    for kind, items in items_by_kind.items():
        ctx.check()
        m = propensity_matrix(ctx.model, items, steer, ctx.strengths, ctx.cancel)
        per_kind[kind] = metrics.slopes(m, ctx.strengths)
        tick(kind)
    settings = {"strengths": [float(x) for x in ctx.strengths], "positions": "as the row's steering"}
    return paired_context_effect(CONTEXT_MEASURE, per_kind, settings)


def context_fields(effect: Any) -> dict[str, Any]:
    """Flat row fields ``context_<kind>_…`` from a ``ContextEffect`` (plus the bare effect and a caveat)."""
    bare = effect.mean("bare")
    row: dict[str, Any] = {"context_bare_effect": bare}
    for kind in effect.kinds:
        ci = effect.difference_ci[kind]
        row[f"context_{kind}_effect"] = effect.mean(kind)
        row[f"context_{kind}_ratio"] = effect.ratio(kind)
        row[f"context_{kind}_difference"] = effect.mean(kind) - bare
        row[f"context_{kind}_difference_ci"] = [float(ci[0]), float(ci[1])]
        row[f"context_{kind}_verdict"] = context_verdict(ci, bare)
    small = bare < MIN_BARE_EFFECT
    caveat = f"bare effect {bare:.3g} < {MIN_BARE_EFFECT}: too small to compare"
    row["context_caveat"] = caveat if small else None
    return row


def row_capability(model: Any, steerings: list[Steering], n: int, base: list[Any]) -> Any:
    """``capability_check`` of one row's steering (at its matched strength), first ``n`` items per set;
    the unsteered pass is scored once per comparison (kept in ``base``) and reused by every row."""
    if not base:
        base.append(capability_check(model, None, n=n))
    return capability_check(model, steerings, n=n, baseline=base[0])


def capability_fields(result: Any) -> dict[str, Any]:
    """Row fields: the one-line side effect, the mean accuracy change over sets, and one verdict."""
    changes = [r.difference for r in result.sets]
    costly = bool(result.costly_sets)
    return {
        "capability": result.side_effect_line(),
        "capability_change": float(np.mean(changes)),
        "capability_verdict": "costs capability" if costly else "no detectable cost",
    }


def contexts_settings(in_context: dict[str, dict[str, list[ABItem]]]) -> dict[str, Any]:
    if not in_context:
        return {"on": False}
    kinds = sorted({kind for by_kind in in_context.values() for kind in by_kind})
    return {
        "on": True,
        "measure": CONTEXT_MEASURE,
        "kinds": kinds,
        "contexts": {kind: [c.name for c in builtin_contexts(kind)] for kind in kinds},
        "pairing": "item i is the same held-out question bare and in each kind (contexts cycled over items)",
        "bare": "the row's own per-item slopes (steerability), not recomputed",
        "ratio_rule": f"ratio = mean effect in context / mean bare effect, None where the bare effect < "
        f"{MIN_BARE_EFFECT}",
        "verdict_rule": "'weaker in context' / 'stronger in context' when the paired bootstrap 95 % interval "
        "of mean(context − bare) excludes 0, else 'no detectable change'",
        "positions": "the row's steering as built (compare's vectors: all positions, earlier turns too)",
    }


def capability_settings(n: int | None) -> dict[str, Any]:
    if not n:
        return {"on": False}
    return {
        "on": True,
        "n": n,
        "sets": list(CAPABILITY_SETS),
        "at": "open_strength (matched)",
        "scoring": "candidate with the highest per-token mean log-probability",
        "change": "capability_change = mean over sets of (steered − unsteered accuracy)",
        "verdict_rule": "'costs capability' when any set's paired bootstrap 95 % CI of the change is below 0",
        "unsteered": "scored again in every row's check (the same numbers each time)",
    }
