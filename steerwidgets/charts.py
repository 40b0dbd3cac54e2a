"""Every chart: vega-lite dicts for the widgets and the reports, and one way to render them as SVG.

The specs are built with altair; the front end draws them with the bundled vega-embed (``js/src/chart.js``,
never altair's JupyterChart, which loads vega from a CDN), and :func:`to_svg` renders the same spec in
Python (vl-convert) for static snapshots and HTML exports that must show something without a kernel,
a browser or a network.

- Playground: :func:`strength_sweep_spec`
- ReliabilityReport: :func:`propensity_chart`, :func:`slopes_chart`
- LayerSweep: :func:`heatmap_chart`, :func:`anti_chart`
- CompareWidget: :func:`compare_chart`
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from . import metrics

VECTOR_SERIES = "steering vector"
RANDOM_SERIES = "random vector, equal norm"


def strength_sweep_spec(
    strengths: Sequence[float],
    vector_diffs: Sequence[float],
    random_diffs: Sequence[float] | None,
    current: float,
    *,
    title: str = "Target vs contrast across strengths",
    y_title: str = "log p(target) − log p(contrast)",
    width: int = 320,
    height: int = 170,
) -> dict[str, Any]:
    """Vega-lite dict: the log-odds of target over contrast against strength, for the vector and for
    a random vector of equal norm (dashed reference), with a rule at the current strength.

    The random curve is what "no real direction" looks like; a vector whose curve is no steeper than
    it is not doing more than any perturbation of that size would.
    """
    import altair as alt

    rows = [
        {"strength": float(s), "value": float(d), "series": VECTOR_SERIES}
        for s, d in zip(strengths, vector_diffs)
    ]
    if random_diffs is not None:
        rows += [
            {"strength": float(s), "value": float(d), "series": RANDOM_SERIES}
            for s, d in zip(strengths, random_diffs)
        ]
    domain = [VECTOR_SERIES, RANDOM_SERIES]
    lines = (
        alt.Chart(alt.Data(values=rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("strength:Q", title="strength λ"),
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=domain, range=["#1976d2", "#9e9e9e"]),
                legend=alt.Legend(orient="bottom", columnPadding=24),
            ),
            strokeDash=alt.StrokeDash(
                "series:N", scale=alt.Scale(domain=domain, range=[[1, 0], [5, 3]]), legend=None
            ),
            tooltip=[
                alt.Tooltip("series:N"),
                alt.Tooltip("strength:Q", format="+.2f"),
                alt.Tooltip("value:Q", title="log-odds", format="+.3f"),
            ],
        )
    )
    rule = (
        alt.Chart(alt.Data(values=[{"strength": float(current)}]))
        .mark_rule(strokeDash=[2, 2], color="#e65100")
        .encode(x="strength:Q")
    )
    chart = (lines + rule).properties(width=width, height=height, title=title)
    return chart.to_dict(validate=False)


def propensity_chart(report: dict[str, Any]) -> dict:
    """Mean propensity over strengths with a ±1 s.d. band, and p(match) beside it."""
    import altair as alt

    rows = [
        {"strength": s, "mean": m, "low": m - sd, "high": m + sd, "p_match": p}
        for s, m, sd, p in zip(
            report["strengths"], report["mean_propensity"], report["std_propensity"], report["p_match"]
        )
    ]
    base = alt.Chart(alt.Data(values=rows)).encode(x=alt.X("strength:Q", title="strength λ"))
    band = base.mark_area(opacity=0.25).encode(y=alt.Y("low:Q", title="propensity (logit diff)"), y2="high:Q")
    line = base.mark_line(point=True).encode(y="mean:Q", tooltip=["strength:Q", "mean:Q"])
    left = (band + line).properties(width=260, height=180, title="Mean propensity ± 1 s.d.")
    right = (
        base.mark_line(point=True, color="#2a9d8f")
        .encode(y=alt.Y("p_match:Q", title="p(match)", scale=alt.Scale(domain=[0, 1])))
        .properties(width=200, height=180, title="p(match) (CAA view)")
    )
    return alt.hconcat(left, right).to_dict()


def slopes_chart(report: dict[str, Any]) -> dict:
    """Per-example steerability as a strip; anti-steerable items in a warning colour."""
    import altair as alt

    rows = [
        {
            "slope": ex["slope"],
            "index": ex["index"],
            "status": "anti-steerable" if ex["anti_steerable"] else "steerable",
            "jitter": (ex["index"] * 0.6180339887) % 1.0,
        }
        for ex in report["per_example"]
    ]
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_circle(size=60, opacity=0.8)
        .encode(
            x=alt.X("slope:Q", title="per-example steerability (slope)"),
            y=alt.Y("jitter:Q", axis=None),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(domain=["steerable", "anti-steerable"], range=["#4c78a8", "#e45756"]),
            ),
            tooltip=["index:Q", "slope:Q", "status:N"],
        )
        .properties(width=480, height=120, title="Per-example steerability")
    )
    rule = alt.Chart(alt.Data(values=[{"x": 0}])).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
    return (chart + rule).to_dict()


def heatmap_chart(sweep: dict[str, Any]) -> dict:
    """Layer × strength heatmaps: mean propensity and KL on neutral prompts; steerability per layer."""
    import altair as alt

    cells = []
    for li, layer in enumerate(sweep["layers"]):
        for si, strength in enumerate(sweep["strengths"]):
            cells.append(
                {
                    "layer": layer,
                    "strength": strength,
                    "propensity": sweep["mean_propensity"][li][si],
                    "kl": sweep["kl"][li][si],
                }
            )
    per_layer = [
        {"layer": layer, "steerability": s, "anti": a}
        for layer, s, a in zip(sweep["layers"], sweep["steerability"], sweep["anti_steerable_fraction"])
    ]
    data = alt.Data(values=cells)
    prop = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("strength:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("propensity:Q", scale=alt.Scale(scheme="redblue", domainMid=0)),
            tooltip=["layer:O", "strength:O", "propensity:Q", "kl:Q"],
        )
        .properties(title="Mean propensity", width=180, height=300)
    )
    kl = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("strength:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("kl:Q", scale=alt.Scale(scheme="oranges"), title="KL (nats)"),
            tooltip=["layer:O", "strength:O", "kl:Q"],
        )
        .properties(title="Side effect: KL on neutral prompts", width=180, height=300)
    )
    bars = (
        alt.Chart(alt.Data(values=per_layer))
        .mark_bar()
        .encode(
            y=alt.Y("layer:O"),
            x=alt.X("steerability:Q"),
            color=alt.Color("anti:Q", scale=alt.Scale(scheme="reds", domain=[0, 1]), title="anti-steerable"),
            tooltip=["layer:O", "steerability:Q", "anti:Q"],
        )
        .properties(title="Steerability per layer", width=160, height=300)
    )
    return alt.hconcat(prop, kl, bars).resolve_scale(color="independent").to_dict()


def anti_chart(sweep: dict[str, Any]) -> dict:
    """Share of items backfiring beyond random directions per layer (the verdict in the tooltip), with the
    notice and warning thresholds as rules; Tan et al.'s raw anti-steerable fraction is in the tooltip."""
    import altair as alt

    backfire = sweep.get("backfire_fraction") or [0.0] * len(sweep["layers"])
    verdict_names = sweep.get("verdicts") or [""] * len(sweep["layers"])
    rows = [
        {
            "layer": layer,
            "backfire": b,
            "anti": anti,
            "verdict": v.replace("_", " "),
            "level": metrics.warning_level(b),
        }
        for layer, b, anti, v in zip(
            sweep["layers"], backfire, sweep["anti_steerable_fraction"], verdict_names
        )
    ]
    bars = (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            x=alt.X("layer:O"),
            y=alt.Y("backfire:Q", title="items backfiring beyond the null", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "level:N",
                title="level",
                scale=alt.Scale(domain=["ok", "notice", "warning"], range=["#4c78a8", "#f9a825", "#e45756"]),
            ),
            tooltip=[
                "layer:O",
                alt.Tooltip("backfire:Q", format=".0%", title="backfiring"),
                alt.Tooltip("anti:Q", format=".0%", title="anti-steerable (s ≤ 0)"),
                "verdict:N",
            ],
        )
    )
    rules = (
        alt.Chart(
            alt.Data(
                values=[
                    {"y": metrics.NOTICE_AT, "label": f"notice ≥ {metrics.NOTICE_AT:.0%}"},
                    {"y": metrics.WARNING_AT, "label": f"warning ≥ {metrics.WARNING_AT:.0%}"},
                ]
            )
        )
        .mark_rule(strokeDash=[4, 4], color="#888")
        .encode(y="y:Q", tooltip=["label:N"])
    )
    width = max(180, 16 * len(rows))
    return (
        (bars + rules)
        .properties(title="Items backfiring beyond random directions, per layer", width=width, height=120)
        .to_dict()
    )


def compare_chart(rows: Sequence[dict[str, Any]], metric: str = "delta_pos_50") -> dict:
    """Vega-lite: the metric per method (bars) against the random band (rule, min–max; tick, mean) and
    the negated, zero and prompting baselines (points), one panel per behaviour."""
    import altair as alt

    records: list[dict[str, Any]] = []
    for row in rows:
        if row.get(metric) is None:
            continue
        where = {"method": row["method"], "behaviour": row["behaviour"]}
        records.append({**where, "kind": "method", "value": row[metric]})
        if f"random_{metric}_mean" in row:
            records.append(
                {
                    **where,
                    "kind": "random",
                    "low": row[f"random_{metric}_min"],
                    "high": row[f"random_{metric}_max"],
                    "value": row[f"random_{metric}_mean"],
                }
            )
        for label in ("negated", "zero", "prompting"):
            if row.get(f"{label}_{metric}") is not None:
                records.append(
                    {**where, "kind": "baseline", "baseline": label, "value": row[f"{label}_{metric}"]}
                )
    x = alt.X("method:N", title=None, sort=None)
    base = alt.Chart()
    bars = (
        base.transform_filter(alt.datum.kind == "method")
        .mark_bar(color="#4c78a8", opacity=0.8)
        .encode(x=x, y=alt.Y("value:Q", title=metric), tooltip=["method:N", "value:Q"])
    )
    rule = (
        base.transform_filter(alt.datum.kind == "random")
        .mark_rule(color="#888", strokeWidth=2)
        .encode(x=x, y="low:Q", y2="high:Q", tooltip=["low:Q", "high:Q"])
    )
    tick = (
        base.transform_filter(alt.datum.kind == "random")
        .mark_tick(color="#444", thickness=2)
        .encode(x=x, y="value:Q")
    )
    points = (
        base.transform_filter(alt.datum.kind == "baseline")
        .mark_point(filled=True, size=60)
        .encode(
            x=x,
            y="value:Q",
            color=alt.Color(
                "baseline:N",
                scale=alt.Scale(
                    domain=["negated", "zero", "prompting"], range=["#e45756", "#54a24b", "#f58518"]
                ),
            ),
            tooltip=["baseline:N", "value:Q"],
        )
    )
    layered = alt.layer(bars, rule, tick, points, data=alt.Data(values=records)).properties(
        width=alt.Step(40), height=180
    )
    chart = layered.facet(column=alt.Column("behaviour:N", title=None))
    return chart.properties(
        title={"text": metric, "subtitle": "grey: random vectors of equal norm (min–max, mean)"}
    ).to_dict()


def to_svg(spec: dict[str, Any]) -> str:
    """Render a vega-lite dict to an SVG string in Python (no browser, no network).

    Returns an escaped note instead of raising, because a snapshot must never break the display.
    """
    if not spec:
        return ""
    try:
        import vl_convert

        return vl_convert.vegalite_to_svg(spec)
    except Exception as exc:  # a static snapshot is best effort
        return f"<p><i>(chart could not be rendered: {html.escape(str(exc))})</i></p>"
