"""Static HTML snapshots of the widgets' last results, for notebook viewers without a kernel.

GitHub, nbconvert and saved notebooks show ``text/html`` when no widget manager runs; these
functions render the same results as escaped HTML (model output is untrusted text) with the chart
as inline SVG.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from .charts import to_svg

_CELL = "vertical-align:top;padding:4px 8px;border:1px solid #ccc;white-space:pre-wrap;width:50%"


def playground_html(v: Mapping[str, Any]) -> str:
    """The Playground's snapshot from its values (controls and results, keyed by trait name)."""
    esc = html.escape
    head = (
        f"vector <b>{esc(str(v['vector_name']))}</b>, layer {int(v['layer'])}, "
        f"strength {float(v['strength']):+g}{' (relative)' if v['relative'] else ''}, "
        f"positions {esc(str(v['positions']))}, {int(v['max_new_tokens'])} new tokens, "
        f"seed {int(v['seed'])}"
    )
    for row in v.get("stack") or []:  # the stack's extra rows, applied with the main vector
        rel = " (relative)" if row.get("relative") else ""
        head += (
            f"; + <b>{esc(str(row.get('vector_name', '')))}</b> at layer {esc(str(row.get('layer', '')))}, "
            f"strength {esc(str(row.get('strength', '')))}{rel}, "
            f"positions {esc(str(row.get('positions', '')))}"
        )
    parts = [
        '<div class="sw-playground-snapshot" style="font-family:sans-serif;font-size:13px">',
        f"<div><b>Steering playground</b> ({esc(str(v.get('model_name', '')))}): {head}</div>",
        f"<div><b>Prompt:</b> <span style='white-space:pre-wrap'>{esc(str(v['prompt']))}</span></div>",
        "<table style='border-collapse:collapse;width:100%;margin:4px 0'>",
        "<tr><th style='text-align:left'>Unsteered</th><th style='text-align:left'>Steered</th></tr>",
        f"<tr><td style='{_CELL}'>{esc(str(v.get('base_text', '')))}</td>"
        f"<td style='{_CELL}'>{esc(str(v.get('steered_text', '')))}</td></tr></table>",
    ]
    if v.get("error"):
        parts.append(f"<div style='color:#d32f2f'><b>Error:</b> {esc(str(v['error']))}</div>")
    if v.get("warnings"):
        parts.append("<ul>")
        for w in v["warnings"]:
            level = esc(str(w.get("level", "")))
            message = esc(str(w.get("message", "")))
            parts.append(f"<li style='white-space:pre-wrap'><b>{level}:</b> {message}</li>")
        parts.append("</ul>")
    if v.get("chart_spec"):
        parts.append(f"<div>{to_svg(v['chart_spec'])}</div>")
    note = "Static snapshot; run the notebook for the live widget."
    parts += [f"<div style='color:#888'><i>{note}</i></div>", "</div>"]
    return "\n".join(parts)
