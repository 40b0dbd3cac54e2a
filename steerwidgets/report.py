"""The reliability report: one JSON-able dict and a standalone HTML file (its charts: :mod:`.charts`).

The HTML has no script and no CDN: text is escaped (model and dataset text are untrusted) and charts are
inline SVG rendered by vl-convert, so the file can be mailed to a colleague and opened anywhere, offline.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, verdicts
from .charts import heatmap_chart, propensity_chart, slopes_chart, to_svg
from .engine.sweep import PropensityResult
from .reliability import LayerSweepResult, PreCheck

AB_BIAS_WARN = 0.5  # R² above this: the slopes follow the answer letter more than the behaviour


def build_report(
    result: PropensityResult,
    layer: int,
    *,
    precheck: PreCheck | None = None,
    sweep: LayerSweepResult | None = None,
    generalisation: dict[str, Any] | None = None,
    model_name: str = "",
    vector_method: str = "",
    answer_text: PropensityResult | dict[str, Any] | None = None,
    contexts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain JSON types, each number named as in metrics.md.

    ``contexts`` maps a protocol to its :class:`~steerwidgets.contexts.ContextEffect` (or its summary):
    the same items inside dialogues and tool-use contexts, relative to the bare format.

    ``answer_text`` (the answer-text protocol's result or its summary) is shown beside the letter protocol;
    where the letter protocol cannot judge, the report leads with it.
    """
    summary = result.summary(layer)
    verdict = result.verdict(layer)
    slopes = [ex["slope"] for ex in summary["per_example"]]
    questions = [item.question for item in result.items]
    rows = list(enumerate(summary["per_example"]))  # (position in result.items, row)
    anti_rows = sorted(((i, ex) for i, ex in rows if ex["anti_steerable"]), key=lambda r: r[1]["slope"])
    backfire_rows = sorted(
        ((i, ex) for i, ex in rows if ex["class"] == "backfires"), key=lambda r: r[1]["slope"]
    )
    nonmono = [(i, ex) for i, ex in rows if ex["non_monotonic"] and not ex["anti_steerable"]]
    warnings = verdicts.warnings_for(verdict, questions, slopes, layer)
    r2 = summary["ab_bias_r2"]
    if r2 is not None and r2 >= AB_BIAS_WARN and verdict.verdict != "letter_driven":
        warnings.append(
            {
                "level": "notice",
                "message": f"A/B bias R² = {r2:.2f}: slopes depend on whether the matching answer is 'A'.",
            }
        )
    if precheck is not None and precheck.level == "red":
        warnings.append({"level": "notice", "message": f"Pre-check is red: {precheck.reason}."})
    at = answer_text.summary(layer) if isinstance(answer_text, PropensityResult) else answer_text
    if at is not None and at.get("verdict") in ("backfires", "no_detectable_effect", "letter_driven"):
        warnings.append(
            {
                "level": "warning" if at["verdict"] == "backfires" else "notice",
                "message": f"Answer-text protocol: {at['verdict_reason']}",
            }
        )
    lead = "answer_text" if verdict.verdict == "cannot_judge" and at is not None else "letter"
    return {
        "model": model_name,
        "vector_method": vector_method,
        "layer": layer,
        "positions": result.positions,
        "protocol": result.protocol,
        "strengths": [float(x) for x in result.strengths],
        "n_items": len(result.items),
        "steerability": summary["steerability"],
        "steerability_ci95": summary["steerability_ci95"],
        "verdict": summary["verdict"],
        "verdict_reason": summary["verdict_reason"],
        "null": summary["null"],
        "item_classes": summary["item_classes"],
        "option_dependence": summary["option_dependence"],
        "answer_text": at,
        "lead": lead,
        "anti_steerable_fraction": summary["anti_steerable_fraction"],
        "non_monotonic_fraction": summary["non_monotonic_fraction"],
        "warning_level": summary["warning_level"],
        "thresholds": {"notice": metrics.NOTICE_AT, "warning": metrics.WARNING_AT, **verdict.thresholds},
        "ab_bias_r2": r2,
        "mean_propensity": summary["mean_propensity"],
        "std_propensity": [float(x) for x in result.propensity[layer].std(0)],
        "p_match": summary["p_match"],
        "norm_ratio": summary["norm_ratio"],
        "vector_norm": summary["vector_norm"],
        "warnings": warnings,
        "backfire_items": [{**ex, "question": result.items[i].question} for i, ex in backfire_rows],
        "anti_steerable_items": [{**ex, "question": result.items[i].question} for i, ex in anti_rows],
        "non_monotonic_items": [{**ex, "question": result.items[i].question} for i, ex in nonmono],
        "per_example": summary["per_example"],
        "precheck": None if precheck is None else precheck.__dict__,
        "layer_sweep": None if sweep is None else sweep.to_json(),
        "generalisation": generalisation,
        "contexts": _context_summaries(contexts),
        "definitions": {
            "propensity": summary["propensity_definition"],
            "p_match": "sigmoid(propensity) = p(y+) / (p(y+) + p(y-))",
            "slope": "OLS slope of propensity over the strengths, per item",
            "null": "K random directions of the vector's norm, same items/layer/positions; an item's slope "
            "is "
            "beyond the null outside their 95 % prediction interval",
            "backfires": "slope below the item's null band (steers: above it)",
            "anti_steerable": "slope <= 0 (Tan et al.; raw, not compared with the null)",
            "ab_bias_r2": "R^2 of slopes regressed on 1[y+ is 'A']",
            "option_dependence": "fraction of items whose unsteered preference keeps its sign when the two "
            "options' texts are swapped",
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------------
# Standalone HTML
# ------------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em} table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.warning{background:#fdecea;border-left:4px solid #d93025;padding:6px 10px;margin:6px 0}
.notice{background:#fff8e1;border-left:4px solid #f9a825;padding:6px 10px;margin:6px 0}
.green{color:#188038}.amber{color:#b06000}.red{color:#d93025} code{background:#f4f4f4;padding:0 3px}
"""


def _context_summaries(contexts: dict[str, Any] | None) -> dict[str, Any] | None:
    if not contexts:
        return None
    return {k: v if isinstance(v, dict) else v.summary() for k, v in contexts.items()}


def context_rows(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per format (bare first): its steerability and verdict against its own random-direction
    null, and for each context the ratio to bare, the paired 95 % interval of the change and its verdict."""
    judged = ctx.get("judged") or {}
    rows = [{"format": "bare", "steerability": ctx["bare"], **_judged(judged.get("bare"))}]
    for kind, c in ctx["contexts"].items():
        rows.append(
            {
                "format": kind.replace("_", "-"),
                "steerability": c["effect"],
                **_judged(judged.get(kind)),
                "ratio_to_bare": c["ratio_to_bare"],
                "difference_ci": [round(x, 3) for x in c["difference_ci"]],
                "change": c["verdict"],
            }
        )
    return rows


def _judged(judged: dict[str, Any] | None) -> dict[str, Any]:
    return {"verdict": "no null run"} if not judged else {"verdict": judged["verdict"]}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def to_html(report: dict[str, Any], *, charts: bool = True) -> str:
    """A standalone report page: escaped text, inline SVG charts, no scripts, no external resources."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>steerwidgets reliability report — {_esc(report['model'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Reliability report: {_esc(report['vector_method'])} vector, layer {_esc(report['layer'])}</h1>",
        f"<p>Model <code>{_esc(report['model'])}</code>, positions <code>{_esc(report['positions'])}</code>, "
        f"{report['n_items']} test items, strengths {_esc(_fmt(report['strengths']))}, "
        f"‖v‖ = {report['vector_norm']:.2f}. Created {_esc(report['created'])}.</p>",
        *_verdict_lines(report),
        f"<p><b>Steerability</b> {report['steerability']:.3f} (mean per-item slope, 95 % CI "
        f"{_esc(_fmt(report.get('steerability_ci95')))}) · <b>items</b> {_esc(_classes(report))} · "
        f"<b>anti-steerable (s ≤ 0)</b> {report['anti_steerable_fraction']:.0%} · "
        f"<b>non-monotonic</b> {report['non_monotonic_fraction']:.0%} · "
        f"<b>A/B-bias R²</b> {_esc(_fmt(report['ab_bias_r2']))}</p>",
    ]
    for warning in report["warnings"]:
        parts.append(f"<div class='{_esc(warning['level'])}'>{_esc(warning['message'])}</div>")
    if charts:
        parts.append("<h2>Propensity</h2>" + to_svg(propensity_chart(report)))
        parts.append("<h2>Per-example steerability</h2>" + to_svg(slopes_chart(report)))
    if report.get("precheck"):
        pre = report["precheck"]
        parts.append(
            f"<h2>Pre-check (Braun et al. 2025)</h2><p class='{_esc(pre['level'])}'>"
            f"<b>{_esc(pre['level'].upper())}</b>: {_esc(pre['reason'])}; effect size d = "
            f"{pre['effect_size']:.2f}.</p>"
        )
    if report.get("layer_sweep"):
        sweep = report["layer_sweep"]
        parts.append(f"<h2>Layer sweep</h2><p>{_esc(sweep['reason'])}</p>")
        if charts:
            parts.append(to_svg(heatmap_chart(sweep)))
    if report.get("generalisation"):
        gen = report["generalisation"]
        parts.append(
            "<h2>Generalisation</h2><p>Under the prefix "
            f"<code>{_esc(gen['prefix'])}</code>: relative steerability "
            f"{_esc(_fmt(gen['relative_steerability']))} ({_esc(gen['definition'])}).</p>"
        )
    for protocol, ctx in (report.get("contexts") or {}).items():
        parts.append(f"<h2>In realistic contexts ({_esc(protocol)} protocol)</h2>")
        parts.append(f"<p>{_esc(ctx['verdict'])}</p>")
        parts.append(_table(context_rows(ctx), ["format", "steerability", "verdict", "ratio_to_bare",
                                                 "difference_ci", "change"]))  # fmt: skip
    parts.append("<h2>Items that backfire beyond the random-direction null, worst first</h2>")
    parts.append(
        _table(report.get("backfire_items", []), ["index", "slope", "null_band", "question"])
        if report.get("backfire_items")
        else "<p>None.</p>"
    )
    parts.append(
        "<h2>Anti-steerable items (Tan et al.: slope ≤ 0, not compared with the null), worst first</h2>"
    )
    parts.append(
        _table(report["anti_steerable_items"], ["index", "slope", "question"])
        if report["anti_steerable_items"]
        else "<p>None.</p>"
    )
    parts.append("<h2>Non-monotonic items</h2>")
    parts.append(
        _table(report["non_monotonic_items"], ["index", "slope", "propensity", "question"])
        if report["non_monotonic_items"]
        else "<p>None.</p>"
    )
    parts.append("<h2>Definitions</h2>")
    parts.append(
        _table(
            [{"name": k, "definition": v} for k, v in report["definitions"].items()], ["name", "definition"]
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _classes(report: dict[str, Any]) -> str:
    counts = report.get("item_classes") or {}
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())


def _verdict_lines(report: dict[str, Any]) -> list[str]:
    """The verdicts, the protocol that can judge first (the letter one leads unless it cannot judge)."""
    letter = ("letter", report.get("verdict"), report.get("verdict_reason"), report.get("positions"))
    at = report.get("answer_text")
    rows = [letter]
    if at:
        rows.append(("answer-text", at.get("verdict"), at.get("verdict_reason"), at.get("positions")))
        if report.get("lead") == "answer_text":
            rows.reverse()
    return [
        f"<p class='verdict'><b>Verdict ({_esc(name)} protocol, positions {_esc(pos)}): "
        f"{_esc(str(v).replace('_', ' '))}</b> — {_esc(reason)}</p>"
        for name, v, reason, pos in rows
        if v
    ]


def save(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``.html`` (standalone page) or ``.json`` by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(report, indent=2, default=_json_default))
    elif path.suffix.lower() in (".html", ".htm"):
        path.write_text(to_html(report), encoding="utf-8")
    else:
        raise ValueError(f"cannot write a report to {path.name}: use a .html or .json file name")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
