"""The reliability lab: does this steering vector really work, for which inputs, and at which layer?

- :class:`ReliabilityReport` — one layer: the pre-check (when built from training items), the mean
  propensity curve and p(match), per-example slopes, the anti-steerable fraction with its notice /
  warning level, the anti-steerable then non-monotonic items (each opens in the Playground), the A/B-bias
  warning, an optional generalisation check and HTML / JSON export.
- :class:`LayerSweep` — every layer × strength: heatmaps of propensity and KL side effects, steerability
  and anti-steerable fraction per layer, the suggested layer with its reason, progress and Cancel; a click
  on a cell opens that layer and strength in the Playground.

Both are thin: what a run computes lives in :mod:`steerwidgets.reliability_lab` (plain Python, no
traitlets); this file holds the traits, runs the pipeline on the widget's
:class:`~steerwidgets.widgets._runner.Runner` (so the kernel stays free for Cancel, and runs on one model take
turns on its ``model.lock``), writes the fields it emits onto the attributes of the same names and opens
the Playground. The front ends (``js/src/reliability.js``, ``js/src/layersweep.js``) only draw traits and
send button clicks.

>>> import steerwidgets as sw
>>> from steerwidgets.widgets.reliability import LayerSweep, ReliabilityReport
>>> items = sw.builtin_ab("sentiment")
>>> ReliabilityReport(model, items[:20], items[20:40], layer=10)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from .. import metrics
from .. import report as R
from ..contexts import ContextEffect
from ..data import ABItem
from ..engine.generation import GenerationCancelled
from ..engine.sweep import DEFAULT_STRENGTHS, PropensityResult
from ..interventions import SteeringError, require_model
from ..reliability import LayerSweepResult, PreCheck
from ..reliability_lab import (
    DEFAULT_HTML,
    DEFAULT_JSON,
    LEVEL_COLOURS,
    LabRun,
    anti_summary,
    check_contexts,
    check_lab_inputs,
    check_report_layer,
    check_sweep_layers,
    listed_items,
    positions_str,
    report_fields,
    report_snapshot_html,
    run_report,
    run_sweep,
    sweep_snapshot_html,
)
from ..vectors import SteeringVector
from ._frontend import bundle, css, shared_bundle_trait
from ._runner import Runner

log = logging.getLogger(__name__)

PLAYGROUND_STOP_S = 30.0  # how long to wait for a closed Playground's last request to end

__all__ = [
    "DEFAULT_HTML",
    "DEFAULT_JSON",
    "LEVEL_COLOURS",
    "LayerSweep",
    "ReliabilityReport",
    "anti_summary",
    "bundle",
    "listed_items",
]


# ----------------------------------------------------------------------------------------------
# Shared machinery: background run, progress, cancel, Playground opening
# ----------------------------------------------------------------------------------------------
class _LabWidget(anywidget.AnyWidget):
    """Background run with progress and cancel, front-end messages, and the opened Playground."""

    model_name = traitlets.Unicode("").tag(sync=True)
    positions = traitlets.Unicode("last").tag(sync=True)
    strengths = traitlets.List(traitlets.Float()).tag(sync=True)
    vector_method = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | running | done | cancelled | error
    stage = traitlets.Unicode("").tag(sync=True)  # what is running now, or how the last run ended
    progress = traitlets.Float(0.0).tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)  # result of the last button (export, open)
    timings = traitlets.Dict().tag(sync=True)
    # The Playground opened from this widget, drawn inside it (anywidget composition).
    opened_playground = anywidget.WidgetTrait().tag(sync=True)

    snapshot_wait_s: float = 0.0  # how long a display waits for the run before taking its snapshot

    def _setup(
        self,
        model: Any,
        vector_or_train_items: SteeringVector | Sequence[ABItem],
        test_items: Sequence[ABItem],
        strengths: Sequence[float],
        positions: Any,
    ) -> None:
        require_model(model, type(self).__name__)
        self.model = model
        self.vector, self._train, self.test_items, lam = check_lab_inputs(
            vector_or_train_items, test_items, strengths
        )
        self._positions = positions
        self._lock = threading.RLock()
        # nnsight traces on one model from two threads at once break each other ("parent cannot be on
        # a different thread"), so runs take turns on the model's own lock.
        self._runner = Runner(
            lock=getattr(model, "lock", None),
            on_error=self._run_failed,
            on_wait=self._run_waits,
            name=type(self).__name__,
        )
        self.model_name = str(getattr(model, "name", ""))
        self.positions = positions_str(positions)
        self.strengths = lam
        self.vector_method = self.vector.method if self.vector is not None else "caa"
        self.on_msg(self._on_message)

    # --- public -----------------------------------------------------------------------------------
    def run(self, wait: bool = False) -> None:
        """Start (or restart) the computation in the background; a no-op while one runs."""
        with self._lock:
            if not self.running and not self._runner.closed:
                self._stop_playground()  # it would wait for its turn on the model behind the run
                with self.hold_sync():
                    self.error = ""
                    self.progress = 0.0
                    self.running = True
                    self.status = "running"
                    self.stage = "starting…"
                self._runner.submit(self._run_job)
        if wait:
            self._runner.wait_idle()

    def cancel(self) -> None:
        """Stop the run at its next item; the model is left unsteered and the widget stays usable."""
        with self._lock:
            if self.running:
                self._runner.cancel()
                self.stage = "cancelling…"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run has ended (for scripts and tests); False on timeout."""
        return self._runner.wait_idle(timeout)

    def close(self) -> None:
        """Cancel the run, stop the background thread, close the opened Playground and the widget.

        Also runs from ``Widget.__del__`` after a constructor raised, before ``_setup`` made the attributes.
        """
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.close()
            self._stop_playground()
        super().close()

    # --- running (on the runner's thread, holding the model's lock) --------------------------------
    def _run_job(self, cancel: threading.Event) -> None:
        self._work(cancel)
        with self.hold_sync():
            self.status = "done"
            self.progress = 1.0
            self.running = False

    def _run_failed(self, exc: BaseException, _job: Any) -> None:
        """The runner's error callback: a cancel or an error ends the run, shown in the widget."""
        with self.hold_sync():
            if isinstance(exc, GenerationCancelled):
                self.status = "cancelled"
                self.stage = "Cancelled. The model is unsteered; press Run to start again."
            else:  # shown in the widget, the traceback goes to the log
                log.error("%s run failed", type(self).__name__, exc_info=exc)
                self.error = f"{type(exc).__name__}: {exc}"
                self.status = "error"
                self.stage = "failed"
            self.running = False

    def _run_waits(self, _job: Any) -> None:
        self.stage = "waiting for another run on this model to finish…"

    def _work(self, cancel: threading.Event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _lab_run(self, cancel: threading.Event) -> LabRun:
        """The pipeline's reporter: what it emits is written onto this widget's attributes and traits."""
        return LabRun(self._apply, cancel)

    def _apply(self, fields: dict[str, Any]) -> None:
        with self.hold_sync():
            for name, value in fields.items():
                setattr(self, name, value)

    # --- messages from the front end --------------------------------------------------------------
    def _on_message(self, _widget: Any, content: Any, _buffers: Any = None) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            if kind == "run":
                self.run()
            elif kind == "cancel":
                self.cancel()
            else:
                self._on_custom(kind, content)
        except Exception as exc:  # a bad click must not kill the comm; say what happened
            log.exception("message %r failed", kind)
            self.message = f"{type(exc).__name__}: {exc}"

    def _on_custom(self, kind: str | None, content: dict) -> None:
        pass

    # --- Playground -------------------------------------------------------------------------------
    def _open_playground(self, prompt: str, layer: int, strength: float, what: str) -> Any:
        from .playground import Playground

        if self.running or self.vector is None:
            raise SteeringError("the run is still going; open items once it has finished")
        # The old Playground's last request ends before the new one starts; a run of another widget on
        # this model holding ``model.lock`` only delays the new Playground's first result (it takes turns).
        self._stop_playground(clear=False)
        playground = Playground(
            self.model,
            vector=self.vector,
            prompt=prompt,
            layer=int(layer),
            strength=float(strength),
            positions=self._positions,
        )
        self.opened_playground = playground
        self.message = (
            f"Opened {what} in the Playground at layer {int(layer)}, strength {float(strength):+g}."
        )
        return playground

    def _stop_playground(self, clear: bool = True) -> None:
        """Close the opened Playground and wait until its last request has ended."""
        playground = self.opened_playground
        if playground is None:
            return
        playground.close()
        if not playground.wait(PLAYGROUND_STOP_S):
            log.warning("the opened Playground did not stop within %.0f s", PLAYGROUND_STOP_S)
        if clear:
            self.opened_playground = None

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        out = super()._repr_mimebundle_(**kwargs)
        if out is None:
            return out
        if self.snapshot_wait_s > 0:
            self.wait(self.snapshot_wait_s)
        snapshot = self.snapshot_html()
        if isinstance(out, tuple):
            data, meta = out
            return {**data, "text/html": snapshot}, meta
        return {**out, "text/html": snapshot}

    def snapshot_html(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# ReliabilityReport
# ----------------------------------------------------------------------------------------------
class ReliabilityReport(_LabWidget):
    """One layer's reliability report for a steering vector on held-out A/B items.

    ``vector_or_train_items`` is a :class:`~steerwidgets.SteeringVector` or a list of A/B training items;
    from items the CAA vector is built at ``layer`` and the pre-check (Braun et al. 2025) is run.
    ``shift_prefix`` adds the generalisation check (relative steerability when every question starts
    with that prefix; needs training items). ``contexts=True`` adds the same check in realistic contexts:
    the test items asked after built-in dialogues and tool-use exchanges, each format judged against its
    own random-direction null and compared item by item with the bare format (both protocols).
    The run starts at once on a background thread (``wait()`` blocks until it ends);
    ``autostart=False`` waits for :meth:`run` or the Run button.
    """

    _esm = bundle("reliability")
    _css = css()
    _bundle = shared_bundle_trait()  # the shared front-end bundle, sent to the page once

    layer = traitlets.Int(0).tag(sync=True)
    n_test = traitlets.Int(0).tag(sync=True)
    n_train = traitlets.Int(0).tag(sync=True)
    shift_prefix = traitlets.Unicode("").tag(sync=True)
    open_strength = traitlets.Float(1.0).tag(sync=True)  # strength a Playground opens at

    precheck = traitlets.Dict().tag(sync=True)  # PreCheck fields; {} when given a vector
    report = traitlets.Dict().tag(sync=True)  # report.build_report(...), JSON-safe
    anti = traitlets.Dict().tag(sync=True)  # fraction, level, message, thresholds
    items = traitlets.List(traitlets.Dict()).tag(sync=True)  # anti-steerable first, then non-monotonic
    propensity_spec = traitlets.Dict().tag(sync=True)
    slopes_spec = traitlets.Dict().tag(sync=True)
    generalisation = traitlets.Dict().tag(sync=True)  # {} when not asked; {"skipped": why} when skipped
    context_effects = traitlets.Dict().tag(sync=True)  # {protocol: ContextEffect summary}; {} when not asked

    def __init__(
        self,
        model: Any,
        vector_or_train_items: SteeringVector | Sequence[ABItem],
        test_items: Sequence[ABItem],
        layer: int,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        positions: Any = "last",
        shift_prefix: str | None = None,
        *,
        open_strength: float | None = None,
        contexts: bool = False,
        autostart: bool = True,
        **kwargs: Any,
    ) -> None:
        require_model(model, type(self).__name__)  # before the widget (and its comm) exists
        check_contexts(model, contexts, test_items)  # a template that cannot hold the contexts fails here
        super().__init__(**kwargs)
        self._setup(model, vector_or_train_items, test_items, strengths, positions)
        check_report_layer(model, self.vector, layer)
        self.layer = int(layer)
        self.n_test = len(self.test_items)
        self.n_train = len(self._train or [])
        self.shift_prefix = shift_prefix or ""
        top = max(self.strengths, key=abs)
        self.open_strength = float(open_strength if open_strength is not None else abs(top))
        self.result: PropensityResult | None = None
        self.answer_text_result: PropensityResult | None = None
        self.precheck_result: PreCheck | None = None
        self.generalisation_result: dict[str, Any] | None = None
        self.contexts = contexts
        self.context_results: dict[str, ContextEffect] = {}
        self.sweep_result: LayerSweepResult | None = None
        self._report: dict[str, Any] | None = None
        self.stage = "Press Run to compute the report." if not autostart else "starting…"
        if autostart:
            self.run()

    # --- public -----------------------------------------------------------------------------------
    @property
    def report_dict(self) -> dict[str, Any]:
        """The report as :func:`steerwidgets.report.build_report` returns it (raises before the run ends)."""
        if self._report is None:
            raise RuntimeError("the report is not ready yet; call wait() first")
        return self._report

    def include_sweep(self, sweep: LayerSweepResult | LayerSweep) -> None:
        """Add a layer sweep (a result or a finished :class:`LayerSweep`) to the report and its exports."""
        if isinstance(sweep, LayerSweep):
            if sweep.result is None:
                raise RuntimeError("the layer sweep has not finished; call its wait() first")
            sweep = sweep.result
        self.sweep_result = sweep
        if self.result is not None:
            self._publish_report()

    def open_item(self, index: int) -> Any:
        """Open test item ``index`` in a Playground at the report's layer and ``open_strength``."""
        index = int(index)
        if not 0 <= index < len(self.test_items):
            raise IndexError(f"item {index} does not exist; there are {len(self.test_items)} test items")
        return self._open_playground(
            self.test_items[index].question, self.layer, self.open_strength, f"item #{index}"
        )

    def export_html(self, path: str | Path = DEFAULT_HTML) -> Path:
        """Write the standalone report page (no scripts, inline SVG; relative paths: next to the notebook)."""
        return self._export(path, ".html")

    def export_json(self, path: str | Path = DEFAULT_JSON) -> Path:
        """Write the report's numbers, items and definitions as JSON."""
        return self._export(path, ".json")

    # --- work -------------------------------------------------------------------------------------
    def _work(self, cancel: threading.Event) -> None:
        run = self._lab_run(cancel)
        fields = run_report(
            self.model, self.test_items, self.layer, self.strengths, self._positions, run,
            vector=self.vector, train=self._train, shift_prefix=self.shift_prefix, contexts=self.contexts,
        )  # fmt: skip
        self.result = fields.pop("result")
        with self.hold_sync():
            self._apply(fields)
            self._publish_report()

    def _publish_report(self) -> None:
        assert self.result is not None and self.vector is not None
        fields = report_fields(
            self.result,
            self.layer,
            self.test_items,
            vector_method=self.vector.method,
            model_name=self.model_name,
            precheck=self.precheck_result,
            sweep=self.sweep_result,
            generalisation_result=self.generalisation_result,
            answer_text=self.answer_text_result,
            contexts=self.context_results,
        )
        self._report = fields["report"]
        self._apply(fields)

    # --- front-end messages -----------------------------------------------------------------------
    def _on_custom(self, kind: str | None, content: dict) -> None:
        if kind == "open":
            self.open_item(int(content["index"]))
        elif kind == "export":
            fmt = content.get("format")
            if fmt not in ("html", "json"):
                raise ValueError(f"unknown export format {fmt!r}")
            self.export_html() if fmt == "html" else self.export_json()

    def _export(self, path: str | Path, suffix: str) -> Path:
        path = Path(path)
        if path.suffix.lower() != suffix and not (suffix == ".html" and path.suffix.lower() == ".htm"):
            raise ValueError(f"{path.name}: use a file name ending in {suffix}")
        out = R.save(self.report_dict, path).resolve()
        self.message = f"Saved {out.name} ({out.stat().st_size / 1024:.0f} kB) in {out.parent}"
        return out

    # --- static snapshot --------------------------------------------------------------------------
    def snapshot_html(self) -> str:
        """Escaped HTML of the current state, charts as inline SVG: what viewers without a kernel show."""
        return report_snapshot_html(self)


# ----------------------------------------------------------------------------------------------
# LayerSweep
# ----------------------------------------------------------------------------------------------
class LayerSweep(_LabWidget):
    """Steerability, propensity, anti-steerable fraction and KL side effects for every layer × strength.

    ``vector_or_train_items``: a :class:`~steerwidgets.SteeringVector` with a direction at every swept
    layer, or A/B training items (a CAA vector is built at every swept layer). ``layers=None`` sweeps all
    layers. The sweep starts at once (``autostart=False``: press Run); Cancel stops it at the next item.
    Clicking a heatmap cell opens that layer and strength in the Playground, on the test item with the
    lowest slope at that layer (the one most worth looking at).
    """

    _esm = bundle("layersweep")
    _css = css()
    _bundle = shared_bundle_trait()  # the shared front-end bundle, sent to the page once

    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    n_test = traitlets.Int(0).tag(sync=True)
    n_train = traitlets.Int(0).tag(sync=True)
    sweep = traitlets.Dict().tag(sync=True)  # LayerSweepResult.to_json(), JSON-safe
    heatmap_spec = traitlets.Dict().tag(sync=True)
    anti_spec = traitlets.Dict().tag(sync=True)
    suggested_layer = traitlets.Int(None, allow_none=True).tag(sync=True)
    reason = traitlets.Unicode("").tag(sync=True)
    thresholds = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        model: Any,
        vector_or_train_items: SteeringVector | Sequence[ABItem],
        test_items: Sequence[ABItem],
        layers: Sequence[int] | None = None,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        positions: Any = "last",
        *,
        autostart: bool = True,
        **kwargs: Any,
    ) -> None:
        require_model(model, type(self).__name__)  # before the widget (and its comm) exists
        super().__init__(**kwargs)
        self._setup(model, vector_or_train_items, test_items, strengths, positions)
        self.layers = check_sweep_layers(model, self.vector, layers)
        self.n_test = len(self.test_items)
        self.n_train = len(self._train or [])
        self.thresholds = {"notice": metrics.NOTICE_AT, "warning": metrics.WARNING_AT}
        self.result: LayerSweepResult | None = None
        self.stage = "Press Run to sweep the layers." if not autostart else "starting…"
        if autostart:
            self.run()

    def open_cell(self, layer: int, strength: float | None = None, index: int | None = None) -> Any:
        """Open ``layer`` and ``strength`` in a Playground, on test item ``index`` (default: the item
        with the lowest slope at that layer, or the first one before the sweep has finished)."""
        layer = int(layer)
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not swept; swept layers: {self.layers}")
        if strength is None:
            strength = abs(max(self.strengths, key=abs))
        if index is None:
            index = 0
            if self.result is not None and self.result.propensity is not None:
                index = int(np.argmin(self.result.propensity.slopes(layer)))
        index = int(index)
        if not 0 <= index < len(self.test_items):
            raise IndexError(f"item {index} does not exist; there are {len(self.test_items)} test items")
        return self._open_playground(
            self.test_items[index].question, layer, float(strength), f"item #{index}"
        )

    def _work(self, cancel: threading.Event) -> None:
        run = self._lab_run(cancel)
        fields = run_sweep(
            self.model, self.test_items, self.layers, self.strengths, self._positions, run,
            vector=self.vector, train=self._train,
        )  # fmt: skip
        self.result = fields.pop("result")
        self._apply(fields)

    def _on_custom(self, kind: str | None, content: dict) -> None:
        if kind == "open":
            strength = content.get("strength")
            index = content.get("index")
            self.open_cell(
                int(content["layer"]),
                None if strength is None else float(strength),
                None if index is None else int(index),
            )

    def snapshot_html(self) -> str:
        """Escaped HTML of the current state, charts as inline SVG."""
        return sweep_snapshot_html(self)
