"""One table over methods × behaviours: :func:`compare` (the CompareWidget shows it).

Every method on every behaviour at a matched intervention size (:mod:`steerwidgets.matching`), beside its
random / negated / zero / prompting baselines (:mod:`steerwidgets.baselines`), with optional fluency,
realistic-context and capability checks per row (:mod:`steerwidgets.compare_checks`). The methods and the
behaviours' data are in :mod:`steerwidgets.compare_methods`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .baselines import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_SEEDS,
    EFFECT_NAME,
    EvalContext,
    evaluate_steerer,
    prompting_baseline,
    summary_row,
    with_baselines,
    zero_steerer,
)
from .compare_checks import (
    FLUENCY_QUERIES,
    FLUENCY_TOKENS,
    FluencyCheck,
    capability_fields,
    capability_settings,
    check_realistic_args,
    context_effect,
    context_fields,
    context_items,
    contexts_settings,
    fluency_settings,
    row_capability,
)
from .compare_methods import (
    BehaviourData,
    Built,
    MethodBuilder,
    behaviour_data,
    method_builder,
    reference_caa,
    stack_method,
)
from .data import reference_passages
from .engine.generation import GenerationCancelled
from .engine.sweep import DEFAULT_STRENGTHS, check_strengths
from .interventions import Steering, SteeringError, check_steerings, require_model
from .matching import MATCH_MODES, match_scale, match_target, norms_for, steering_norm_ratio
from .side_effects import USABLE_PPL_RATIO
from .stack import describe_steerings
from .steerers import scaled, stack_steerer

ProgressFn = Callable[[int, int, str], None]


@dataclass
class CompareResult:
    """One row per (method, behaviour), and everything behind each row."""

    rows: list[dict[str, Any]]
    details: dict[str, dict[str, Any]]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "details": self.details, "settings": self.settings}


def _passages(n_passages: int | None) -> list[str]:
    passages = list(reference_passages())
    return passages if n_passages is None else passages[:n_passages]


def compare(
    methods: Sequence[str | tuple[str, MethodBuilder]] = ("caa", "pca", "mean_centring", "icv", "affine"),
    behaviours: Sequence[str | BehaviourData] = ("sentiment",),
    *,
    model: Any = None,
    layer: int = 12,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    n_items: int = 8,
    n_train: int | None = None,
    open_strength: float | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    n_passages: int | None = 3,
    instructions: dict[str, str] | None = None,
    quantile: float = 0.5,
    match: str | None = "norm",
    target_ratio: float | None = None,
    target_kl: float | None = None,
    fluency: bool = True,
    fluency_queries: int = FLUENCY_QUERIES,
    fluency_tokens: int = FLUENCY_TOKENS,
    fluency_thresholds: dict[str, Any] | None = None,
    contexts: bool = False,
    capability: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> CompareResult:
    """Every method on every behaviour, with random / negated / zero / prompting baselines, as one table.

    Vectors are built at ``layer`` from the training split; A/B steerability and the anti-steerable
    fraction come from the held-out items over ``strengths``; the open-ended Δ+/Δ− (top ``quantile``,
    per-token mean), perplexity ratio and KL are read at ``open_strength`` (default: the largest
    strength). ``behaviours`` are built-in names or your own :class:`BehaviourData` (A/B items to train
    and test on, contrast pairs, open-ended items; its ``instruction`` is the prompting baseline's).
    ``methods`` are names from :func:`method_names`, ``(name, builder)`` pairs, or fixed steerings: a
    ``sw.Steering``, a list of them (a *stack*, one row labelled ``"sentiment@10 + formality@14"``) or
    ``(label, stack)``. A stack row is the same on every behaviour; strength λ multiplies each part's own
    strength (λ = 1 is the stack as given; see :func:`stack_steerer`), and matching scales the whole stack;
    its row also has ``stack`` (the parts, as :func:`~steerwidgets.stack.describe_steerings` gives them)
    and its ``layer`` lists the parts' layers;
    ``progress(done, total, label)`` is called after each step; setting ``cancel`` stops between steps
    (and inside sweeps) with ``GenerationCancelled``.

    Methods are compared at a matched intervention size, since a bigger push moves every number:
    ``match="norm"`` (default) scales each method's strengths so that at ``open_strength`` its
    :func:`steering_norm_ratio` (‖λv‖ / mean‖h‖ on the neutral prompts, summed over layers) equals
    ``target_ratio`` (default: the CAA vector's at ``open_strength``); ``match="kl"`` instead equalises
    KL(steered ‖ unsteered) on the neutral prompts with ``target_kl`` (default: CAA's), by a bracketing
    search; ``match=None`` uses the strengths as given. Every row reports ``strength_scale``,
    ``norm_ratio`` and ``kl``; ``norm_ratio`` is the sum over the row's steerings (what matching equalises,
    so a two-vector stack is allowed the size of one vector, as ICV's every-layer rows are), and
    ``norm_ratio_parts`` lists each steering's own ratio in the row's order. With ``fluency``, each row
    also judges greedy continuations of the first
    ``fluency_queries`` open-ended queries (``fluency_tokens`` tokens) at ``open_strength`` with
    :func:`~steerwidgets.fluency.fluency_verdict` (``fluency_thresholds`` are its keywords).

    Realistic use: ``contexts=True`` also measures each row's A/B steerability (same steerer, matched
    strengths) on the held-out items asked as the last turn of the built-in dialogues and tool-use contexts
    (:func:`~steerwidgets.contexts.embed_all`), paired by item with the bare numbers the row already has:
    ``context_<kind>_effect``, ``_ratio`` (None when the bare effect < ``MIN_BARE_EFFECT``), ``_difference``,
    ``_difference_ci`` and ``_verdict`` for ``kind`` in ``dialogue``, ``tool_use``, beside
    ``context_bare_effect`` (the row's steerability) and ``context_caveat`` ("too small to compare" when the
    bare effect is below ``MIN_BARE_EFFECT``, else None); contexts a model's chat template cannot hold are
    refused before any forward pass. ``capability=n`` runs
    :func:`~steerwidgets.capabilities.capability_check` on the first ``n`` items of each capability set
    with the row's steering at its matched ``open_strength``: ``capability`` (one line),
    ``capability_change`` (mean accuracy change over the sets) and ``capability_verdict``; the full summary
    goes to ``details``.
    """
    check_realistic_args(contexts, capability)
    if match not in MATCH_MODES:
        raise SteeringError(f"match must be 'norm', 'kl' or None, got {match!r}")
    if model is None:
        from .models import load_model

        model = load_model()
    require_model(model, "compare")
    model.check_layer(layer)
    lam = check_strengths(strengths)
    open_at = float(lam.max()) if open_strength is None else float(open_strength)
    resolved: list[tuple[str, MethodBuilder]] = []
    stacks: dict[str, list[Steering]] = {}
    for index, spec in enumerate(methods):
        stack = stack_method(spec)
        if isinstance(spec, str):
            resolved.append((spec, method_builder(spec)))
        elif stack is not None:
            label, items = stack
            try:
                check_steerings(items, model)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"methods[{index}] ({label}): {exc}") from exc
            steer, single = stack_steerer(items)
            note = "a fixed stack: each part at λ × its strength (λ = 1 is the stack as given)"
            resolved.append((label, lambda _m, _d, _l, s=steer, v=single, n=note: Built(s, v, n)))
            stacks[label] = items
        elif isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1]):
            resolved.append((spec[0], spec[1]))
        else:
            raise SteeringError(
                f"methods[{index}] is {spec!r:.80}; give a method name, a (name, builder) pair, a "
                "sw.Steering, a list of them (a stack) or a (label, stack) pair"
            )
    instr = dict(DEFAULT_INSTRUCTIONS)
    instr.update(instructions or {})
    datas = [b if isinstance(b, BehaviourData) else behaviour_data(b, n_items, n_train) for b in behaviours]
    for data in datas:
        data.check()
    # the chat template is checked here, before any forward pass: a template that cannot hold fails first
    in_context = {data.name: context_items(model, data.test_items) for data in datas} if contexts else {}
    kinds = sorted({kind for by_kind in in_context.values() for kind in by_kind})
    passages = _passages(n_passages)
    per_row = 3 + len(seeds) + len(kinds) + (1 if capability else 0)
    total = len(behaviours) * (1 + len(resolved) * per_row)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total, label)
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("comparison cancelled")

    rows, details = [], {}
    used_instructions: dict[str, str | None] = {}
    norms: dict[int, float] = {}  # mean‖h‖ per layer on the neutral prompts, filled as needed
    targets: dict[str, dict[str, Any]] = {}
    capability_base: list[Any] = []  # the unsteered capability result, scored once, at the first row
    for data in datas:
        behaviour = data.name
        ctx = EvalContext(model, data.test_items, data.open_items, passages, lam, open_at, cancel=cancel)
        instruction = data.instruction or instr.get(behaviour)
        used_instructions[behaviour] = instruction
        prompting = prompting_baseline(ctx, instruction) if instruction else None
        zero = evaluate_steerer(ctx, zero_steerer([layer], model.d_model), full=False)
        caa_built, caa_is_row = reference_caa(model, data, layer, resolved) if match else (None, False)
        target = match_target(ctx, caa_built, match, open_at, norms, target_ratio, target_kl)
        targets[behaviour] = target
        judge = None
        if fluency:
            queries = [it.query for it in data.open_items[:fluency_queries]]
            judge = FluencyCheck(model, queries, fluency_tokens, dict(fluency_thresholds or {}))
        tick(f"{behaviour}: baselines")
        for name, builder in resolved:
            started = time.perf_counter()
            row = {"method": name, "behaviour": behaviour, "layer": layer, "open_strength": open_at}
            try:
                reuse = name == "caa" and caa_is_row
                built = caa_built if reuse else builder(model, data, layer)
            except SteeringError as exc:  # e.g. no contrast pairs for this behaviour: say so, go on
                row.update(error=str(exc), note=f"not built: {exc}")
                rows.append(row)
                for _ in range(per_row):
                    tick(f"{behaviour}: {name} skipped")
                continue
            tick(f"{behaviour}: {name} built")
            factor = match_scale(ctx, built.steer, match, open_at, norms, target)
            steer = scaled(built.steer, factor)
            result = with_baselines(
                ctx,
                steer,
                seeds=seeds,
                prompting=prompting,
                zero=zero,
                tick=lambda label, n=name, b=behaviour: tick(f"{b}: {n} {label}"),
            )
            row.update(summary_row(result, quantile))
            row["match"] = match or "none"
            row["strength_scale"] = factor
            row["matched_strength"] = factor * open_at
            parts = steer(open_at)
            row["norm_ratio"] = steering_norm_ratio(parts, norms_for(model, norms, parts))
            row["norm_ratio_parts"] = [steering_norm_ratio([part], norms) for part in parts]
            if name in stacks:
                layers = [item.layer for item in stacks[name]]
                row["layer"] = layers[0] if len(set(layers)) == 1 else ", ".join(map(str, layers))
                row["stack"] = describe_steerings(stacks[name])
            if judge is not None:
                check = judge.judge(steer(open_at), cancel)
                result["fluency"] = check
                row["fluency"] = check["summary"]
                row["fluency_degraded_fraction"] = check["degraded_fraction"]
                row["fluency_reason"] = check["reason"]
            if contexts:
                effect = context_effect(
                    ctx, steer, in_context[behaviour], result["method"]["item_slopes"],
                    tick=lambda kind, n=name, b=behaviour: tick(f"{b}: {n} in {kind}"),
                )  # fmt: skip
                per_item = {kind: list(values) for kind, values in effect.effect.items()}
                result["contexts"] = {**effect.summary(), "items": per_item}
                row.update(context_fields(effect))
            if capability:
                checked = row_capability(model, steer(open_at), capability, capability_base)
                result["capability"] = checked.summary()
                row.update(capability_fields(checked))
                tick(f"{behaviour}: {name} capability")
            row["note"] = built.note
            row["seconds"] = round(time.perf_counter() - started, 2)
            rows.append(row)
            details[f"{name}/{behaviour}"] = result
    settings = {
        "model": getattr(model, "name", ""),
        "layer": layer,
        "strengths": [float(x) for x in lam],
        "open_strength": open_at,
        "n_items": n_items,
        "n_passages": len(passages),
        "seeds": list(seeds),
        "quantile": quantile,
        "reduction": "per-token mean log-likelihood",
        "instructions": used_instructions,
        "pne_effect": EFFECT_NAME,
        "usable_ppl_ratio": USABLE_PPL_RATIO,
        "negated": "the method at −λ (for additive vectors: the vector −v)",
        "match": match or "none",
        "match_targets": targets,
        "norm_ratio": "Σ over steered layers of ‖λv‖ / mean‖h‖ (neutral prompts, first token left out)",
        "norm_ratio_parts": "each steering's own ‖λv‖ / mean‖h‖, in the row's order (their sum: norm_ratio)",
        "fluency": fluency_settings(fluency, fluency_queries, fluency_tokens, fluency_thresholds),
        "contexts": contexts_settings(in_context),
        "capability": capability_settings(capability),
    }
    return CompareResult(rows, details, settings)
