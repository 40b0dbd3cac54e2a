"""CompareWidget: steering methods side by side, each beside its random / negated / zero / prompting controls.

>>> from steerwidgets.widgets.compare import CompareWidget
>>> w = CompareWidget(["caa", "pca"], ["sentiment"], model=model, n_items=6)  # doctest: +SKIP
>>> w  # press Run (or w.run()); Cancel stops between steps  # doctest: +SKIP

The work (:func:`steerwidgets.comparison.compare`) runs on the widget's
:class:`~steerwidgets.widgets._runner.Runner`, taking turns with other widgets on ``model.lock``, so the
notebook stays usable; the table sorts on any column and the chart shows one metric against its baselines.
``close()`` (or Cancel) stops it at its next step and leaves the model unsteered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import anywidget
import traitlets

from ..charts import compare_chart
from ..comparison import CompareResult, compare
from ..contexts import MIN_BARE_EFFECT
from ..engine.generation import GenerationCancelled
from ..engine.sweep import DEFAULT_STRENGTHS
from ..fluency import DISTINCT_N, MAX_LOGPROB_DROP, MIN_DISTINCT
from ._frontend import bundle, css, shared_bundle_trait
from ._runner import Runner

log = logging.getLogger(__name__)

# compare(contexts=True) / compare(capability=n) columns; "optional": shown only when the rows have them
CONTEXT_COLUMNS: list[dict[str, Any]] = [
    col
    for kind, name in (("dialogue", "dialogue"), ("tool_use", "tool use"))
    for col in (
        {
            "key": f"context_{kind}_effect",
            "label": f"{name}: steerability",
            "title": f"mean per-item slope of m_i(λ) on the same held-out items asked as the last turn of a "
            f"built-in {name} context (same steering and strengths as the row)",
            "optional": True,
        },
        {
            "key": f"context_{kind}_ratio",
            "label": f"{name} ÷ bare",
            "title": f"{name} steerability / bare steerability; empty when the bare effect is below "
            f"{MIN_BARE_EFFECT} (too small to compare)",
            "optional": True,
        },
        {
            "key": f"context_{kind}_difference_ci",
            "label": f"{name} − bare [95 %]",
            "title": "paired bootstrap 95 % interval of mean(in context − bare) over the items",
            "optional": True,
        },
        {
            "key": f"context_{kind}_verdict",
            "label": f"{name} verdict",
            "title": "weaker / stronger in context when the paired 95 % interval excludes 0, else no "
            f"detectable change; too small to compare when the bare steerability is below {MIN_BARE_EFFECT}",
            "optional": True,
        },
    )
] + [
    {
        "key": "context_caveat",
        "label": "contexts: caveat",
        "title": f"set when the bare steerability is below {MIN_BARE_EFFECT}: there is no effect to lose, "
        "so the context verdicts read 'too small to compare'",
        "optional": True,
    }
]
CAPABILITY_COLUMNS: list[dict[str, Any]] = [
    {
        "key": "capability_verdict",
        "label": "capability",
        "title": "costs capability when any set's paired 95 % interval of the accuracy change is below 0",
        "optional": True,
    },
    {
        "key": "capability_change",
        "label": "capability Δ",
        "title": "mean over the capability sets of (steered − unsteered accuracy), at the compared strength",
        "optional": True,
    },
    {
        "key": "capability",
        "label": "capability: per set",
        "title": "accuracy unsteered→steered per set, Δ and its paired 95 % interval",
        "optional": True,
    },
]
# key, label, tooltip; "band" names the random baseline's min/max keys shown beside its mean
COLUMNS: list[dict[str, Any]] = [
    {"key": "method", "label": "method", "title": "how the steering was built"},
    {"key": "behaviour", "label": "behaviour", "title": "built-in or your own BehaviourData"},
    {"key": "steerability", "label": "steerability", "title": "mean per-item OLS slope of m_i(λ) (A/B)"},
    {
        "key": "ab_verdict",
        "label": "A/B verdict (letter)",
        "title": "letter protocol against random directions of the vector's norm, positions 'last' "
        "(docs/verdicts.md); hover the reason column",
    },
    {
        "key": "answer_text_verdict",
        "label": "A/B verdict (answer text)",
        "title": "answer-text protocol (no letters) against random directions, positions 'continuation'",
    },
    {
        "key": "open_verdict",
        "label": "open-ended verdict",
        "title": "Δ+ (top 50%) against the random vectors' Δ+ (95 % prediction band of the seeds)",
    },
    {"key": "open_verdict_reason", "label": "open-ended: why", "title": "the open-ended verdict's reason"},
    {
        "key": "ab_verdict_reason",
        "label": "A/B verdict: why",
        "title": "the letter protocol's one-sentence reason",
    },
    {
        "key": "anti_steerable_fraction",
        "label": "anti-steerable",
        "title": "fraction of held-out A/B items with slope ≤ 0",
    },
    {
        "key": "delta_pos_50",
        "label": "Δ+ (top 50%)",
        "title": "open-ended: mean(LL_steered − LL_base) on the least likely half of the positives, "
        "per-token mean log-likelihood",
    },
    {
        "key": "delta_neg_50",
        "label": "Δ− (top 50%)",
        "title": "open-ended: mean(LL_base − LL_steered) on the most likely half of the negatives",
    },
    {"key": "ppl_ratio", "label": "ppl ratio", "title": "ppl(λ)/ppl(0) on reference passages"},
    {
        "key": "norm_ratio",
        "label": "‖λv‖/mean‖h‖",
        "title": "intervention size at the compared strength: Σ over steered layers of ‖λv‖ / mean‖h‖ "
        "(neutral prompts); equal on every row when match='norm' (the default)",
    },
    {
        "key": "matched_strength",
        "label": "λ used",
        "title": "the strength that gives this method the matched size (the open-ended strength × scale)",
    },
    {
        "key": "kl",
        "label": "KL",
        "title": "KL(steered ‖ unsteered), next token, neutral prompts (nats); equal when match='kl'",
    },
    {
        "key": "fluency",
        "label": "fluency",
        "title": "greedy continuations of open-ended queries at the compared strength judged degraded: mean "
        f"log-prob under the unsteered model more than {MAX_LOGPROB_DROP:g} nats/token below the unsteered "
        f"text's, or distinct-{DISTINCT_N} below {MIN_DISTINCT:g}",
    },
    *CONTEXT_COLUMNS,
    *CAPABILITY_COLUMNS,
    {"key": "pne", "label": "PNE", "title": "(effect(λ) − effect(0)) / ppl ratio, effect = mean propensity"},
    {
        "key": "random_steerability_mean",
        "label": "random: steerability",
        "title": "random vectors of equal norm: mean [min, max] over seeds",
        "band": ["random_steerability_min", "random_steerability_max"],
    },
    {
        "key": "random_delta_pos_50_mean",
        "label": "random: Δ+",
        "title": "random vectors of equal norm: mean [min, max] over seeds",
        "band": ["random_delta_pos_50_min", "random_delta_pos_50_max"],
    },
    {"key": "negated_steerability", "label": "negated: steerability", "title": "the method at −λ"},
    {"key": "negated_delta_pos_50", "label": "negated: Δ+", "title": "the method at −λ"},
    {"key": "zero_delta_pos_50", "label": "zero: Δ+", "title": "zero vector: must be 0 (pipeline check)"},
    {
        "key": "prompting_delta_pos_50",
        "label": "prompting: Δ+",
        "title": "no steering; the behaviour asked for in an instruction before the query",
    },
    {"key": "prompting_delta_neg_50", "label": "prompting: Δ−", "title": "as above, for the negatives"},
    {
        "key": "usable_range",
        "label": "usable λ",
        "title": "contiguous strengths around 0 with ppl ratio < 10",
    },
    {"key": "fluency_reason", "label": "fluency: why", "title": "the first degraded continuation's verdict"},
    {"key": "seconds", "label": "s", "title": "seconds for the method and its baselines"},
]
CHART_METRICS = ["delta_pos_50", "delta_neg_50", "steerability", "ppl_ratio", "kl"]


class CompareWidget(anywidget.AnyWidget):
    """A sortable table (one row per method × behaviour), a chart, a progress bar, Run and Cancel."""

    _esm = bundle("compare")
    _css = css()
    _bundle = shared_bundle_trait()  # the shared front-end bundle, sent to the page once

    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    columns = traitlets.List(traitlets.Dict()).tag(sync=True)
    spec = traitlets.Dict().tag(sync=True)
    metric = traitlets.Unicode("delta_pos_50").tag(sync=True)
    metrics = traitlets.List(traitlets.Unicode()).tag(sync=True)
    progress = traitlets.Float(0.0).tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    settings = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        methods: Sequence[Any] = ("caa", "pca", "mean_centring", "icv", "affine"),
        behaviours: Sequence[str] = ("sentiment",),
        *,
        model: Any = None,
        layer: int = 12,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        n_items: int = 8,
        autostart: bool = False,
        **compare_kwargs: Any,
    ) -> None:
        super().__init__(columns=COLUMNS, metrics=CHART_METRICS)
        self._args = dict(
            methods=list(methods),
            behaviours=list(behaviours),
            model=model,
            layer=layer,
            strengths=list(strengths),
            n_items=n_items,
            **compare_kwargs,
        )
        self.result: CompareResult | None = None
        self._lock = threading.RLock()
        # With model=None, compare() loads the default model inside the job (no lock to take turns on yet).
        self._runner = Runner(
            lock=getattr(model, "lock", None), on_error=self._failed, name="steerwidgets-compare"
        )
        self.on_msg(self._on_message)
        self.observe(self._redraw, names=["metric"])
        self.status = "Press Run to compare " + ", ".join(str(m) for m in self._args["methods"])
        if autostart:
            self.run()

    @classmethod
    def from_result(cls, result: CompareResult, **kwargs: Any) -> CompareWidget:
        """A widget showing an existing :class:`CompareResult` (Run recomputes with ``kwargs``)."""
        widget = cls(**kwargs)
        widget._show(result)
        widget.progress = 1.0
        widget.status = f"{len(result.rows)} rows (from a finished run)"
        return widget

    def _show(self, result: CompareResult) -> None:
        self.result = result
        self.settings = result.settings
        self.rows = [_jsonable(row) for row in result.rows]
        self._redraw()

    # --- front-end messages ------------------------------------------------------------------
    def _on_message(self, _widget: Any, content: Any, _buffers: Any = None) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "run":
            self.run()
        elif kind == "cancel":
            self.cancel()

    # --- running -------------------------------------------------------------------------------
    def run(self, wait: bool = False) -> None:
        """Start the comparison in the background (a no-op while one runs); ``wait`` blocks until it ends."""
        with self._lock:
            if not self.running and not self._runner.closed:
                with self.hold_sync():
                    self.error = ""
                    self.progress = 0.0
                    self.running = True
                    self.status = "starting…"
                self._runner.submit(self._work)
        if wait:
            self._runner.wait_idle()

    def cancel(self) -> None:
        """Ask the running comparison to stop at its next step (the model is left unsteered)."""
        with self._lock:
            if self.running:
                self._runner.cancel()
                self.status = "cancelling…"

    def wait(self, timeout: float | None = None) -> CompareResult | None:
        """Block until the current run ends; returns its result (None if cancelled or failed)."""
        self._runner.wait_idle(timeout)
        return self.result

    def close(self) -> None:
        """Cancel the run, stop the background thread and close the widget.

        The model is unsteered once the cancelled step's trace has ended (the next use of the model waits
        for it on ``model.lock``). Also runs from ``Widget.__del__``, maybe before the runner exists.
        """
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.close()
        super().close()

    def _on_progress(self, done: int, total: int, label: str) -> None:
        self.progress = done / max(total, 1)
        self.status = f"{done}/{total} · {label}"

    def _work(self, cancel: threading.Event) -> None:
        result = compare(**self._args, progress=self._on_progress, cancel=cancel)
        self._show(result)
        with self.hold_sync():
            self.progress = 1.0
            self.status = f"done: {len(result.rows)} rows"
            self.running = False

    def _failed(self, exc: BaseException, _job: Any) -> None:
        """The runner's error callback: a cancel or an error ends the run, shown in the widget."""
        with self.hold_sync():
            if isinstance(exc, GenerationCancelled):
                self.status = "cancelled"
            else:  # shown in the widget; the traceback goes to the log
                log.error("comparison failed", exc_info=exc)
                self.error = f"{type(exc).__name__}: {exc}"
                self.status = "failed"
            self.running = False

    def _redraw(self, _change: Any = None) -> None:
        if self.rows:
            self.spec = compare_chart(self.rows, self.metric)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, float) and value != value:  # NaN is not JSON
            value = None
        out[key] = value
    return out
