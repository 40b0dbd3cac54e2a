"""Chart specs for the widgets.

altair builds vega-lite dicts; the front end draws them with the bundled vega-embed (never altair's
JupyterChart, which loads vega from a CDN), and ``to_svg`` renders the same spec in Python
(vl-convert) for static snapshots that must show something without a kernel or network.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

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
