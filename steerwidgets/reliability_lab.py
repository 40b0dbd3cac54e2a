"""The reliability lab's pipeline: what ReliabilityReport and LayerSweep compute, with no traitlets.

This is the whole of what a run does, in plain Python: the widgets (``widgets/reliability.py``) check their
arguments here (:func:`check_lab_inputs`, :func:`check_report_layer`, :func:`check_sweep_layers`), run
:func:`run_report` or :func:`run_sweep` on their background runner, and write each dict of fields the run
hands to its :class:`LabRun` (``emit``) onto their attributes of the same names, traits included: the
pre-check and the vector as soon as they exist, progress and stage text as the sweeps go, everything
else when the run ends. :func:`report_fields` turns a finished report into the traits the front end draws
(``js/src/reliability.js``, ``js/src/layersweep.js``), and :func:`report_snapshot_html` /
:func:`sweep_snapshot_html` draw the static page viewers without a kernel see.

The numbers come from :mod:`steerwidgets.reliability` (pre-check, layer sweep, generalisation),
:func:`~steerwidgets.propensity_sweep` (both A/B protocols with their random-direction null),
:mod:`steerwidgets.contexts` (realistic contexts) and :mod:`steerwidgets.report` (the report itself).
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from . import metrics
from . import report as R
from .charts import anti_chart, heatmap_chart, propensity_chart, slopes_chart, to_svg
from .contexts import ContextEffect, context_effect_ab, embed_all
from .data import ABItem
from .engine.generation import GenerationCancelled
from .engine.sweep import PropensityResult, propensity_sweep
from .interventions import SteeringError
from .methods import caa
from .reliability import LayerSweepResult, PreCheck, generalisation, layer_sweep, prechecks
from .vectors import SteeringVector
from .verdicts import NULL_DIRECTIONS

log = logging.getLogger(__name__)

DEFAULT_HTML = "reliability_report.html"
DEFAULT_JSON = "reliability_report.json"
LEVEL_COLOURS = {"green": "#188038", "amber": "#b06000", "red": "#d93025"}

Emit = Callable[[dict[str, Any]], None]


class LabRun:
    """Where a run reports to: ``emit(fields)`` receives attribute values (stage and progress too), and
    ``cancel`` stops the run at its next step with :class:`GenerationCancelled`."""

    def __init__(self, emit: Emit | None = None, cancel: threading.Event | None = None):
        self.emit: Emit = emit or (lambda fields: None)
        self.cancel = cancel or threading.Event()

    def stage(self, text: str, progress: float | None = None) -> None:
        fields: dict[str, Any] = {"stage": text}
        if progress is not None:
            fields["progress"] = float(progress)
        self.emit(fields)

    def check(self) -> None:
        if self.cancel.is_set():
            raise GenerationCancelled("run cancelled")

    def between(self, low: float, high: float, label: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback mapping ``done / total`` onto ``[low, high]``."""

        def callback(done: int, total: int) -> None:
            frac = done / max(total, 1)
            self.emit({"progress": low + (high - low) * frac, "stage": f"{label}: {done}/{total}"})

        return callback


# ----------------------------------------------------------------------------------------------
# Arguments (checked before any model work)
# ----------------------------------------------------------------------------------------------
def check_lab_inputs(
    vector_or_train_items: SteeringVector | Sequence[ABItem],
    test_items: Sequence[ABItem],
    strengths: Sequence[float],
) -> tuple[SteeringVector | None, list[ABItem] | None, list[ABItem], list[float]]:
    """(vector, training items, test items, strengths): exactly one of the first two is None."""
    vector: SteeringVector | None = None
    train: list[ABItem] | None = None
    if isinstance(vector_or_train_items, SteeringVector):
        vector = vector_or_train_items
    elif isinstance(vector_or_train_items, (str, bytes)) or not isinstance(vector_or_train_items, Sequence):
        raise TypeError(
            "vector_or_train_items must be a SteeringVector or a list of ABItem training items, got "
            f"{type(vector_or_train_items).__name__}"
        )
    else:
        train = check_items(vector_or_train_items, "training items")
        if len(train) < 2:
            raise SteeringError("give at least two training items to build a CAA vector")
    test = check_items(test_items, "test items")
    if not test:
        raise SteeringError("no test items given; the report needs held-out A/B items")
    lam = [float(s) for s in strengths]
    if len(lam) < 2 or len(set(lam)) < 2 or not all(math.isfinite(s) for s in lam):
        raise SteeringError(f"give at least two different finite strengths, got {list(strengths)}")
    return vector, train, test, lam


def check_contexts(model: Any, contexts: Any, test_items: Sequence[ABItem]) -> None:
    """``contexts`` is a bool; with True, a chat template that cannot hold the contexts fails here."""
    if not isinstance(contexts, bool):
        raise TypeError(f"contexts must be True or False, got {contexts!r}")
    if contexts:
        embed_all(model, list(test_items)[:1])


def check_report_layer(model: Any, vector: SteeringVector | None, layer: int) -> None:
    model.check_layer(layer)
    if vector is not None:
        vector.check_model(model)
        if layer not in vector.layers:
            raise SteeringError(f"the vector has no direction at layer {layer}; it has {vector.layers}")


def check_sweep_layers(model: Any, vector: SteeringVector | None, layers: Sequence[int] | None) -> list[int]:
    """The layers to sweep (``None``: all), each checked against the model and the vector."""
    layer_list = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
    if not layer_list:
        raise SteeringError("give at least one layer to sweep")
    for layer in layer_list:
        model.check_layer(layer)
    if vector is not None:
        vector.check_model(model)
        missing = [layer for layer in layer_list if layer not in vector.layers]
        if missing:
            raise SteeringError(f"the vector has no direction at layers {missing}; it has {vector.layers}")
    return layer_list


# ----------------------------------------------------------------------------------------------
# ReliabilityReport's run
# ----------------------------------------------------------------------------------------------
def run_report(
    model: Any,
    test_items: Sequence[ABItem],
    layer: int,
    strengths: Sequence[float],
    positions: Any,
    run: LabRun,
    *,
    vector: SteeringVector | None = None,
    train: Sequence[ABItem] | None = None,
    shift_prefix: str = "",
    contexts: bool = False,
) -> dict[str, Any]:
    """One layer's report: the CAA vector and pre-check (from ``train``), both A/B protocols with their
    null, the generalisation check (``shift_prefix``, needs ``train``) and realistic contexts.

    Emits each attribute as soon as it exists (``vector``, ``precheck_result`` and ``precheck``,
    ``vector_method``, ``answer_text_result``, ``generalisation_result``, ``context_results``); returns
    ``result`` and the traits set when the run ends (``generalisation``, ``context_effects``, ``timings``,
    ``stage``).
    """
    timings: dict[str, float] = {}
    if train is not None:
        start = time.perf_counter()
        run.stage(f"building the CAA vector from {len(train)} training items", 0.02)
        vector = caa(model, train, [layer])
        run.emit({"vector": vector})
        run.check()
        run.stage("pre-check (consistency and separation of the training differences)", 0.08)
        pre = prechecks(model, train, [layer])[layer]
        run.emit({"precheck_result": pre, "precheck": jsonable(asdict(pre))})
        timings["vector_and_precheck_s"] = round(time.perf_counter() - start, 2)
        run.check()
    assert vector is not None
    run.emit({"vector_method": vector.method})
    want_gen = bool(shift_prefix) and train is not None
    high = 0.98 - (0.28 if want_gen else 0.0) - (0.45 if contexts else 0.0)
    start = time.perf_counter()
    middle = 0.12 + (high - 0.12) * 0.4
    result = propensity_sweep(
        model,
        test_items,
        vector,
        [layer],
        strengths,
        positions=positions,
        null_directions=NULL_DIRECTIONS,
        progress=run.between(0.12, middle, "letter protocol with its null, items"),
        cancel=run.cancel,
    )
    timings["sweep_s"] = round(time.perf_counter() - start, 2)
    run.check()
    start = time.perf_counter()
    answer_text: PropensityResult | None
    try:
        answer_text = propensity_sweep(
            model,
            test_items,
            vector,
            [layer],
            strengths,
            protocol="answer_text",
            null_directions=NULL_DIRECTIONS,
            progress=run.between(middle, high, "answer-text protocol with its null, items"),
            cancel=run.cancel,
        )
    except SteeringError as exc:  # no item lists its options: the letter protocol stands alone
        answer_text = None
        log.info("answer-text protocol skipped: %s", exc)
    run.emit({"answer_text_result": answer_text})
    timings["answer_text_s"] = round(time.perf_counter() - start, 2)
    run.check()
    gen: dict[str, Any] = {}
    gen_result: dict[str, Any] | None = None
    if shift_prefix and train is None:
        gen = {
            "skipped": "the generalisation check builds a second vector on the shifted training "
            "items, so it needs training items rather than a ready vector"
        }
    elif want_gen:
        start = time.perf_counter()
        run.stage(f"generalisation under the prefix {shift_prefix!r}", high)
        gen_result = generalisation(model, train, test_items, layer, shift_prefix, strengths, positions)
        run.emit({"generalisation_result": gen_result})
        gen = jsonable(gen_result)
        timings["generalisation_s"] = round(time.perf_counter() - start, 2)
        run.check()
    in_context: dict[str, ContextEffect] = {}
    if contexts:
        start = time.perf_counter()
        low = high + (0.28 if want_gen else 0.0)
        in_context = context_effects(model, test_items, vector, layer, strengths, positions, result,
                                     answer_text, low, run)  # fmt: skip
        timings["contexts_s"] = round(time.perf_counter() - start, 2)
        run.emit({"context_results": in_context})
    return {
        "result": result,
        "generalisation": gen,
        "context_effects": {k: jsonable(v.summary()) for k, v in in_context.items()},
        "timings": timings,
        "stage": f"Done: {len(test_items)} items × {len(strengths)} strengths at layer {layer} "
        f"in {sum(timings.values()):.1f} s.",
    }


def context_effects(
    model: Any,
    test_items: Sequence[ABItem],
    vector: SteeringVector,
    layer: int,
    strengths: Sequence[float],
    positions: Any,
    letter: PropensityResult,
    answer_text: PropensityResult | None,
    low: float,
    run: LabRun,
) -> dict[str, ContextEffect]:
    """Both protocols on the test items inside dialogues and tool-use contexts (bare sweeps reused)."""
    runs = [("letter", letter, positions)]
    if answer_text is not None:
        runs.append(("answer_text", answer_text, None))
    out = {}
    width = (0.98 - low) / len(runs)
    for k, (protocol, bare, where) in enumerate(runs):
        label = f"realistic contexts ({protocol.replace('_', '-')} protocol with its null), items"
        out[protocol] = context_effect_ab(
            model, test_items, vector, layer, strengths, positions=where, protocol=protocol,
            null_directions=NULL_DIRECTIONS, bare=bare, cancel=run.cancel,
            progress=run.between(low + k * width, low + (k + 1) * width, label),
        )  # fmt: skip
        run.check()
    return out


def report_fields(
    result: PropensityResult,
    layer: int,
    test_items: Sequence[ABItem],
    *,
    vector_method: str,
    model_name: str = "",
    precheck: PreCheck | None = None,
    sweep: LayerSweepResult | None = None,
    generalisation_result: dict[str, Any] | None = None,
    answer_text: PropensityResult | None = None,
    contexts: dict[str, ContextEffect] | None = None,
) -> dict[str, Any]:
    """The report (:func:`steerwidgets.report.build_report`, JSON-safe) and the traits drawn from it."""
    rep = R.build_report(
        result,
        layer,
        precheck=precheck,
        sweep=sweep,
        generalisation=generalisation_result,
        model_name=model_name,
        vector_method=vector_method,
        answer_text=answer_text,
        contexts=contexts,
    )
    rep = jsonable(rep)
    return {
        "report": rep,
        "anti": anti_summary(rep),
        "items": listed_items(rep, test_items),
        "propensity_spec": propensity_chart(rep),
        "slopes_spec": slopes_chart(rep),
    }


# ----------------------------------------------------------------------------------------------
# LayerSweep's run
# ----------------------------------------------------------------------------------------------
def run_sweep(
    model: Any,
    test_items: Sequence[ABItem],
    layers: Sequence[int],
    strengths: Sequence[float],
    positions: Any,
    run: LabRun,
    *,
    vector: SteeringVector | None = None,
    train: Sequence[ABItem] | None = None,
) -> dict[str, Any]:
    """Every layer × strength (:func:`~steerwidgets.layer_sweep`), with CAA vectors built from ``train``
    at every layer first. Emits ``vector`` and ``vector_method`` once built; returns ``result`` and the
    traits drawn from it (heatmaps, suggested layer, reason, timings, the final stage)."""
    timings: dict[str, float] = {}
    if train is not None:
        start = time.perf_counter()
        run.stage(f"building CAA vectors at {len(layers)} layers from {len(train)} items", 0.02)
        vector = caa(model, train, list(layers))
        run.emit({"vector": vector, "vector_method": vector.method})
        timings["vector_s"] = round(time.perf_counter() - start, 2)
        run.check()
    assert vector is not None
    start = time.perf_counter()
    result = layer_sweep(
        model,
        test_items,
        vector,
        layers,
        strengths,
        positions=positions,
        progress=run.between(0.05, 0.99, "items (then neutral prompts for KL)"),
        cancel=run.cancel,
    )
    timings["sweep_s"] = round(time.perf_counter() - start, 2)
    sweep = jsonable(result.to_json())
    return {
        "result": result,
        "sweep": sweep,
        "heatmap_spec": heatmap_chart(sweep),
        "anti_spec": anti_chart(sweep),
        "suggested_layer": result.suggested_layer,
        "reason": result.reason,
        "timings": timings,
        "stage": (
            f"Done: {len(layers)} layers × {len(strengths)} strengths × {len(test_items)} "
            f"items in {timings['sweep_s']:.1f} s."
        ),
    }


# ----------------------------------------------------------------------------------------------
# Pure helpers (testable without a model)
# ----------------------------------------------------------------------------------------------
def anti_summary(rep: dict[str, Any]) -> dict[str, Any]:
    """The verdicts' headline: the protocol that can judge first, each with its reason; then how many items
    backfire beyond the null, and Tan et al.'s raw anti-steerable count (s_i ≤ 0) for reference."""
    at = rep.get("answer_text") or None
    levels = ["ok", "notice", "warning"]
    level = rep["warning_level"]
    if at and at.get("warning_level") in levels:
        level = max(level, at["warning_level"], key=levels.index)
    fraction = float(rep["anti_steerable_fraction"])
    n_anti = len(rep["anti_steerable_items"])
    lines = [f"Letter protocol: {rep['verdict'].replace('_', ' ')} — {rep['verdict_reason']}"]
    if at and at.get("verdict"):
        lines.append(f"Answer-text protocol: {at['verdict'].replace('_', ' ')} — {at['verdict_reason']}")
        if rep.get("lead") == "answer_text":
            lines.reverse()
    backfires = rep.get("item_classes", {}).get("backfires", 0)
    message = (
        " ".join(lines)
        + f" Letter protocol items backfiring beyond the null: {backfires} of {rep['n_items']}; Tan et al.'s "
        f"anti-steerable (slope ≤ 0, not compared with the null): {fraction:.0%} ({n_anti} items)."
    )
    return {
        "fraction": fraction,
        "count": n_anti,
        "backfires": backfires,
        "n_items": rep["n_items"],
        "level": level,
        "verdict": rep["verdict"],
        "answer_text_verdict": (at or {}).get("verdict"),
        "lead": rep.get("lead", "letter"),
        "message": message,
        "notice": metrics.NOTICE_AT,
        "warning": metrics.WARNING_AT,
    }


def listed_items(rep: dict[str, Any], items: Sequence[ABItem]) -> list[dict[str, Any]]:
    """Items that backfire beyond the null (the leading protocol's), then the raw anti-steerable ones
    (slope ≤ 0), then the non-monotonic ones, each worst slope first, for the item list."""
    at = rep.get("answer_text") or {}
    backfire_rows = rep.get("backfire_items", [])
    if rep.get("lead") == "answer_text":
        backfire_rows = sorted(
            (ex for ex in at.get("per_example", []) if ex.get("class") == "backfires"),
            key=lambda ex: ex["slope"],
        )
    out = []
    for kind, rows in (
        ("backfires", backfire_rows),
        ("anti-steerable", rep["anti_steerable_items"]),
        ("non-monotonic", rep["non_monotonic_items"]),
    ):
        for row in rows:
            item = items[row["index"]]
            prop = row["propensity"]
            out.append(
                {
                    "kind": kind,
                    "index": row["index"],
                    "slope": row["slope"],
                    "question": row.get("question", item.question),
                    "matching": item.matching,
                    "propensity_min": min(prop),
                    "propensity_max": max(prop),
                }
            )
    return out


def check_items(items: Any, what: str) -> list[ABItem]:
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, ABItem):
            raise TypeError(f"{what}[{i}] is a {type(item).__name__}, not an ABItem (see sw.builtin_ab)")
    return out


def positions_str(positions: Any) -> str:
    if isinstance(positions, str):
        return positions
    if isinstance(positions, slice):
        start = "" if positions.start is None else str(positions.start)
        stop = "" if positions.stop is None else str(positions.stop)
        return f"{start}:{stop}"
    if isinstance(positions, (list, tuple)):
        return ",".join(str(int(i)) for i in positions)
    return str(positions)


def jsonable(value: Any) -> Any:
    """Plain JSON types only: NaN and infinities become None (the front end's JSON cannot read them)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, slice):
        return positions_str(value)
    return value


# ----------------------------------------------------------------------------------------------
# Static snapshots (what a notebook viewer without a kernel shows)
# ----------------------------------------------------------------------------------------------
_SNAP_STYLE = "font-family:sans-serif;font-size:13px;line-height:1.45"
_SNAP_NOTE = "<div style='color:#888'><i>Static snapshot; run the notebook for the live widget.</i></div>"


def report_snapshot_html(state: Any) -> str:
    """Escaped HTML of a ReliabilityReport's state (its traits, read as attributes), charts as inline SVG."""
    esc = html.escape
    head = (
        f"<b>Reliability report</b> — {esc(state.model_name)}, {esc(state.vector_method)} vector, layer "
        f"{state.layer}, positions <code>{esc(state.positions)}</code>, {state.n_test} test items, "
        f"strengths {esc(', '.join(f'{s:+g}' for s in state.strengths))}"
    )
    parts = [f"<div class='sw-reliability-snapshot' style='{_SNAP_STYLE}'>", f"<div>{head}</div>"]
    if state.error:
        parts.append(f"<div style='color:#d32f2f'><b>Error:</b> {esc(state.error)}</div>")
    if state.precheck:
        pre = state.precheck
        colour = LEVEL_COLOURS.get(pre.get("level", ""), "#555")
        parts.append(
            f"<div><b>Pre-check:</b> <span style='color:{colour}'>● "
            f"{esc(str(pre['level']).upper())}</span> — {esc(pre['reason'])}; effect size d = "
            f"{pre['effect_size']:.2f}</div>"
        )
    rep = state.report
    if not rep:
        parts.append(f"<div><i>{esc(state.status)}: {esc(state.stage)}</i></div></div>")
        return "\n".join(parts)
    r2 = rep.get("ab_bias_r2")
    parts.append(
        f"<div>Steerability <b>{rep['steerability']:.3f}</b> per unit λ · anti-steerable (s ≤ 0) "
        f"<b>{rep['anti_steerable_fraction']:.0%}</b> · non-monotonic {rep['non_monotonic_fraction']:.0%}"
        f" · A/B-bias R² {'–' if r2 is None else f'{r2:.2f}'}</div>"
    )
    parts.append(f"<div>{esc(state.anti.get('message', ''))}</div>")
    for warning in rep.get("warnings", []):
        colour = "#d32f2f" if warning["level"] == "warning" else "#b06000"
        parts.append(f"<div style='color:{colour}'>{esc(warning['message'])}</div>")
    parts.append(f"<div>{to_svg(state.propensity_spec)}</div><div>{to_svg(state.slopes_spec)}</div>")
    gen = state.generalisation
    if gen.get("skipped"):
        parts.append(f"<div><b>Generalisation:</b> skipped — {esc(gen['skipped'])}</div>")
    elif gen:
        parts.append(
            f"<div><b>Generalisation</b> under <code>{esc(gen['prefix'])}</code>: relative "
            f"steerability {esc(_fmt(gen['relative_steerability']))} ({esc(gen['definition'])})</div>"
        )
    parts.append(_items_table(state.items))
    parts.append(_SNAP_NOTE)
    parts.append("</div>")
    return "\n".join(parts)


def sweep_snapshot_html(state: Any) -> str:
    """Escaped HTML of a LayerSweep's state (its traits, read as attributes), charts as inline SVG."""
    esc = html.escape
    head = (
        f"<b>Layer sweep</b> — {esc(state.model_name)}, {esc(state.vector_method)} vector, layers "
        f"{esc(_layer_range(state.layers))}, positions <code>{esc(state.positions)}</code>, "
        f"{state.n_test} test items, strengths {esc(', '.join(f'{s:+g}' for s in state.strengths))}"
    )
    parts = [f"<div class='sw-layersweep-snapshot' style='{_SNAP_STYLE}'>", f"<div>{head}</div>"]
    if state.error:
        parts.append(f"<div style='color:#d32f2f'><b>Error:</b> {esc(state.error)}</div>")
    if not state.sweep:
        parts.append(f"<div><i>{esc(state.status)}: {esc(state.stage)}</i></div></div>")
        return "\n".join(parts)
    suggested = "none" if state.suggested_layer is None else str(state.suggested_layer)
    parts.append(f"<div><b>Suggested layer: {esc(suggested)}</b> — {esc(state.reason)}</div>")
    parts.append(f"<div>{to_svg(state.heatmap_spec)}</div><div>{to_svg(state.anti_spec)}</div>")
    parts.append(_SNAP_NOTE)
    parts.append("</div>")
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "– (skipped: in-distribution steerability of the shifted vector < 0.25)"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _layer_range(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(str(x) for x in layers)


def _items_table(items: Sequence[dict[str, Any]]) -> str:
    esc = html.escape
    if not items:
        return "<div>No anti-steerable or non-monotonic items.</div>"
    rows = "".join(
        f"<tr><td>{esc(row['kind'])}</td><td>#{int(row['index'])}</td><td>{row['slope']:+.3f}</td>"
        f"<td style='white-space:pre-wrap'>{esc(row['question'])}</td></tr>"
        for row in items
    )
    return (
        "<table style='border-collapse:collapse'><tr><th align='left'>kind</th><th align='left'>item</th>"
        f"<th align='left'>slope</th><th align='left'>question</th></tr>{rows}</table>"
    )
