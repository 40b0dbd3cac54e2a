"""The reliability lab: does this steering vector really work, for which inputs, and at which layer?

- :class:`ReliabilityReport` — one layer: the pre-check (when built from training items), the mean
  propensity curve and p(match), per-example slopes, the anti-steerable fraction with its notice /
  warning level, the anti-steerable then non-monotonic items (each opens in the Playground), the A/B-bias
  warning, an optional generalisation check and HTML / JSON export.
- :class:`LayerSweep` — every layer × strength: heatmaps of propensity and KL side effects, steerability
  and anti-steerable fraction per layer, the suggested layer with its reason, progress and Cancel; a click
  on a cell opens that layer and strength in the Playground.

Both are thin: Python holds the traits and runs the engine (:mod:`steerwidgets.reliability`,
:mod:`steerwidgets.report`) on the widget's :class:`~steerwidgets.widgets._runner.Runner`, so the kernel
stays free for Cancel and runs on one model take turns on its ``model.lock``; the front ends
(``js/src/reliability.js``, ``js/src/layersweep.js``) only draw traits and send button clicks.

>>> import steerwidgets as sw
>>> from steerwidgets.widgets.reliability import LayerSweep, ReliabilityReport
>>> items = sw.builtin_ab("sentiment")
>>> ReliabilityReport(model, items[:20], items[20:40], layer=10)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from .. import metrics
from .. import report as R
from ..charts import anti_chart, heatmap_chart, propensity_chart, slopes_chart, to_svg
from ..contexts import ContextEffect, context_effect_ab, embed_all
from ..data import ABItem
from ..engine.generation import GenerationCancelled
from ..engine.sweep import DEFAULT_STRENGTHS, PropensityResult, propensity_sweep
from ..interventions import SteeringError, require_model
from ..methods import caa
from ..reliability import LayerSweepResult, PreCheck, generalisation, layer_sweep, prechecks
from ..vectors import SteeringVector
from ..verdicts import NULL_DIRECTIONS
from ._frontend import bundle, css, shared_bundle_trait
from ._runner import Runner

log = logging.getLogger(__name__)

DEFAULT_HTML = "reliability_report.html"
PLAYGROUND_STOP_S = 30.0  # how long to wait for a closed Playground's last request to end
DEFAULT_JSON = "reliability_report.json"
LEVEL_COLOURS = {"green": "#188038", "amber": "#b06000", "red": "#d93025"}


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
        self.vector: SteeringVector | None = None
        self._train: list[ABItem] | None = None
        if isinstance(vector_or_train_items, SteeringVector):
            self.vector = vector_or_train_items
        elif isinstance(vector_or_train_items, (str, bytes)) or not isinstance(
            vector_or_train_items, Sequence
        ):
            raise TypeError(
                "vector_or_train_items must be a SteeringVector or a list of ABItem training items, got "
                f"{type(vector_or_train_items).__name__}"
            )
        else:
            self._train = _check_items(vector_or_train_items, "training items")
            if len(self._train) < 2:
                raise SteeringError("give at least two training items to build a CAA vector")
        self.test_items = _check_items(test_items, "test items")
        if not self.test_items:
            raise SteeringError("no test items given; the report needs held-out A/B items")
        lam = [float(s) for s in strengths]
        if len(lam) < 2 or len(set(lam)) < 2 or not all(math.isfinite(s) for s in lam):
            raise SteeringError(f"give at least two different finite strengths, got {list(strengths)}")
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
        self.positions = _positions_str(positions)
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

    def _stage(self, text: str, progress: float | None = None) -> None:
        with self.hold_sync():
            self.stage = text
            if progress is not None:
                self.progress = float(progress)

    @staticmethod
    def _check_cancel(cancel: threading.Event) -> None:
        if cancel.is_set():
            raise GenerationCancelled("run cancelled")

    def _progress_between(self, low: float, high: float, label: str) -> Callable[[int, int], None]:
        def callback(done: int, total: int) -> None:
            frac = done / max(total, 1)
            with self.hold_sync():
                self.progress = low + (high - low) * frac
                self.stage = f"{label}: {done}/{total}"

        return callback

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
        if not isinstance(contexts, bool):
            raise TypeError(f"contexts must be True or False, got {contexts!r}")
        if contexts:
            embed_all(model, list(test_items)[:1])  # a template that cannot hold the contexts fails here
        super().__init__(**kwargs)
        self._setup(model, vector_or_train_items, test_items, strengths, positions)
        model.check_layer(layer)
        if self.vector is not None:
            self.vector.check_model(model)
            if layer not in self.vector.layers:
                raise SteeringError(
                    f"the vector has no direction at layer {layer}; it has {self.vector.layers}"
                )
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
        model, layer = self.model, self.layer
        timings: dict[str, float] = {}
        pre = None
        if self._train is not None:
            start = time.perf_counter()
            self._stage(f"building the CAA vector from {len(self._train)} training items", 0.02)
            self.vector = caa(model, self._train, [layer])
            self._check_cancel(cancel)
            self._stage("pre-check (consistency and separation of the training differences)", 0.08)
            pre = prechecks(model, self._train, [layer])[layer]
            self.precheck_result = pre
            self.precheck = _jsonable(asdict(pre))
            timings["vector_and_precheck_s"] = round(time.perf_counter() - start, 2)
            self._check_cancel(cancel)
        assert self.vector is not None
        self.vector_method = self.vector.method
        want_gen = bool(self.shift_prefix) and self._train is not None
        high = 0.98 - (0.28 if want_gen else 0.0) - (0.45 if self.contexts else 0.0)
        start = time.perf_counter()
        middle = 0.12 + (high - 0.12) * 0.4
        result = propensity_sweep(
            model,
            self.test_items,
            self.vector,
            [layer],
            self.strengths,
            positions=self._positions,
            null_directions=NULL_DIRECTIONS,
            progress=self._progress_between(0.12, middle, "letter protocol with its null, items"),
            cancel=cancel,
        )
        timings["sweep_s"] = round(time.perf_counter() - start, 2)
        self._check_cancel(cancel)
        start = time.perf_counter()
        try:
            self.answer_text_result = propensity_sweep(
                model,
                self.test_items,
                self.vector,
                [layer],
                self.strengths,
                protocol="answer_text",
                null_directions=NULL_DIRECTIONS,
                progress=self._progress_between(middle, high, "answer-text protocol with its null, items"),
                cancel=cancel,
            )
        except SteeringError as exc:  # no item lists its options: the letter protocol stands alone
            self.answer_text_result = None
            log.info("answer-text protocol skipped: %s", exc)
        timings["answer_text_s"] = round(time.perf_counter() - start, 2)
        self._check_cancel(cancel)
        gen: dict[str, Any] = {}
        if self.shift_prefix and self._train is None:
            gen = {
                "skipped": "the generalisation check builds a second vector on the shifted training "
                "items, so it needs training items rather than a ready vector"
            }
        elif want_gen:
            start = time.perf_counter()
            self._stage(f"generalisation under the prefix {self.shift_prefix!r}", high)
            self.generalisation_result = generalisation(
                model, self._train, self.test_items, layer, self.shift_prefix, self.strengths, self._positions
            )
            gen = _jsonable(self.generalisation_result)
            timings["generalisation_s"] = round(time.perf_counter() - start, 2)
            self._check_cancel(cancel)
        if self.contexts:
            start = time.perf_counter()
            self.context_results = self._context_effects(result, high + (0.28 if want_gen else 0.0), cancel)
            timings["contexts_s"] = round(time.perf_counter() - start, 2)
        self.result = result
        with self.hold_sync():
            self.generalisation = gen
            self.context_effects = {k: _jsonable(v.summary()) for k, v in self.context_results.items()}
            self.timings = timings
            self._publish_report()
            self.stage = (
                f"Done: {len(self.test_items)} items × {len(self.strengths)} strengths at layer {layer} "
                f"in {sum(timings.values()):.1f} s."
            )

    def _context_effects(
        self, letter: PropensityResult, low: float, cancel: threading.Event
    ) -> dict[str, ContextEffect]:
        """Both protocols on the test items inside dialogues and tool-use contexts (bare sweeps reused)."""
        runs = [("letter", letter, self._positions)]
        if self.answer_text_result is not None:
            runs.append(("answer_text", self.answer_text_result, None))
        out = {}
        width = (0.98 - low) / len(runs)
        for k, (protocol, bare, positions) in enumerate(runs):
            label = f"realistic contexts ({protocol.replace('_', '-')} protocol with its null), items"
            out[protocol] = context_effect_ab(
                self.model, self.test_items, self.vector, self.layer, self.strengths, positions=positions,
                protocol=protocol, null_directions=NULL_DIRECTIONS, bare=bare, cancel=cancel,
                progress=self._progress_between(low + k * width, low + (k + 1) * width, label),
            )  # fmt: skip
            self._check_cancel(cancel)
        return out

    def _publish_report(self) -> None:
        assert self.result is not None and self.vector is not None
        rep = R.build_report(
            self.result,
            self.layer,
            precheck=self.precheck_result,
            sweep=self.sweep_result,
            generalisation=self.generalisation_result,
            model_name=self.model_name,
            vector_method=self.vector.method,
            answer_text=self.answer_text_result,
            contexts=self.context_results,
        )
        rep = _jsonable(rep)
        self._report = rep
        with self.hold_sync():
            self.report = rep
            self.anti = anti_summary(rep)
            self.items = listed_items(rep, self.test_items)
            self.propensity_spec = propensity_chart(rep)
            self.slopes_spec = slopes_chart(rep)

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
        esc = html.escape
        head = (
            f"<b>Reliability report</b> — {esc(self.model_name)}, {esc(self.vector_method)} vector, layer "
            f"{self.layer}, positions <code>{esc(self.positions)}</code>, {self.n_test} test items, "
            f"strengths {esc(', '.join(f'{s:+g}' for s in self.strengths))}"
        )
        parts = [f"<div class='sw-reliability-snapshot' style='{_SNAP_STYLE}'>", f"<div>{head}</div>"]
        if self.error:
            parts.append(f"<div style='color:#d32f2f'><b>Error:</b> {esc(self.error)}</div>")
        if self.precheck:
            pre = self.precheck
            colour = LEVEL_COLOURS.get(pre.get("level", ""), "#555")
            parts.append(
                f"<div><b>Pre-check:</b> <span style='color:{colour}'>● "
                f"{esc(str(pre['level']).upper())}</span> — {esc(pre['reason'])}; effect size d = "
                f"{pre['effect_size']:.2f}</div>"
            )
        rep = self.report
        if not rep:
            parts.append(f"<div><i>{esc(self.status)}: {esc(self.stage)}</i></div></div>")
            return "\n".join(parts)
        r2 = rep.get("ab_bias_r2")
        parts.append(
            f"<div>Steerability <b>{rep['steerability']:.3f}</b> per unit λ · anti-steerable (s ≤ 0) "
            f"<b>{rep['anti_steerable_fraction']:.0%}</b> · non-monotonic {rep['non_monotonic_fraction']:.0%}"
            f" · A/B-bias R² {'–' if r2 is None else f'{r2:.2f}'}</div>"
        )
        parts.append(f"<div>{esc(self.anti.get('message', ''))}</div>")
        for warning in rep.get("warnings", []):
            colour = "#d32f2f" if warning["level"] == "warning" else "#b06000"
            parts.append(f"<div style='color:{colour}'>{esc(warning['message'])}</div>")
        parts.append(f"<div>{to_svg(self.propensity_spec)}</div><div>{to_svg(self.slopes_spec)}</div>")
        gen = self.generalisation
        if gen.get("skipped"):
            parts.append(f"<div><b>Generalisation:</b> skipped — {esc(gen['skipped'])}</div>")
        elif gen:
            parts.append(
                f"<div><b>Generalisation</b> under <code>{esc(gen['prefix'])}</code>: relative "
                f"steerability {esc(_fmt(gen['relative_steerability']))} ({esc(gen['definition'])})</div>"
            )
        parts.append(_items_table(self.items))
        parts.append(
            "<div style='color:#888'><i>Static snapshot; run the notebook for the live widget.</i></div>"
        )
        parts.append("</div>")
        return "\n".join(parts)


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
        layer_list = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
        if not layer_list:
            raise SteeringError("give at least one layer to sweep")
        for layer in layer_list:
            model.check_layer(layer)
        if self.vector is not None:
            self.vector.check_model(model)
            missing = [layer for layer in layer_list if layer not in self.vector.layers]
            if missing:
                raise SteeringError(
                    f"the vector has no direction at layers {missing}; it has {self.vector.layers}"
                )
        self.layers = layer_list
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
        timings: dict[str, float] = {}
        if self._train is not None:
            start = time.perf_counter()
            self._stage(
                f"building CAA vectors at {len(self.layers)} layers from {len(self._train)} items", 0.02
            )
            self.vector = caa(self.model, self._train, self.layers)
            self.vector_method = self.vector.method
            timings["vector_s"] = round(time.perf_counter() - start, 2)
            self._check_cancel(cancel)
        assert self.vector is not None
        start = time.perf_counter()
        result = layer_sweep(
            self.model,
            self.test_items,
            self.vector,
            self.layers,
            self.strengths,
            positions=self._positions,
            progress=self._progress_between(0.05, 0.99, "items (then neutral prompts for KL)"),
            cancel=cancel,
        )
        timings["sweep_s"] = round(time.perf_counter() - start, 2)
        self.result = result
        sweep = _jsonable(result.to_json())
        with self.hold_sync():
            self.sweep = sweep
            self.heatmap_spec = heatmap_chart(sweep)
            self.anti_spec = anti_chart(sweep)
            self.suggested_layer = result.suggested_layer
            self.reason = result.reason
            self.timings = timings
            self.stage = (
                f"Done: {len(self.layers)} layers × {len(self.strengths)} strengths × {len(self.test_items)} "
                f"items in {timings['sweep_s']:.1f} s."
            )

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
        esc = html.escape
        head = (
            f"<b>Layer sweep</b> — {esc(self.model_name)}, {esc(self.vector_method)} vector, layers "
            f"{esc(_layer_range(self.layers))}, positions <code>{esc(self.positions)}</code>, "
            f"{self.n_test} test items, strengths {esc(', '.join(f'{s:+g}' for s in self.strengths))}"
        )
        parts = [f"<div class='sw-layersweep-snapshot' style='{_SNAP_STYLE}'>", f"<div>{head}</div>"]
        if self.error:
            parts.append(f"<div style='color:#d32f2f'><b>Error:</b> {esc(self.error)}</div>")
        if not self.sweep:
            parts.append(f"<div><i>{esc(self.status)}: {esc(self.stage)}</i></div></div>")
            return "\n".join(parts)
        suggested = "none" if self.suggested_layer is None else str(self.suggested_layer)
        parts.append(f"<div><b>Suggested layer: {esc(suggested)}</b> — {esc(self.reason)}</div>")
        parts.append(f"<div>{to_svg(self.heatmap_spec)}</div><div>{to_svg(self.anti_spec)}</div>")
        parts.append(
            "<div style='color:#888'><i>Static snapshot; run the notebook for the live widget.</i></div>"
        )
        parts.append("</div>")
        return "\n".join(parts)


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


def _check_items(items: Any, what: str) -> list[ABItem]:
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, ABItem):
            raise TypeError(f"{what}[{i}] is a {type(item).__name__}, not an ABItem (see sw.builtin_ab)")
    return out


def _positions_str(positions: Any) -> str:
    if isinstance(positions, str):
        return positions
    if isinstance(positions, slice):
        start = "" if positions.start is None else str(positions.start)
        stop = "" if positions.stop is None else str(positions.stop)
        return f"{start}:{stop}"
    if isinstance(positions, (list, tuple)):
        return ",".join(str(int(i)) for i in positions)
    return str(positions)


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: NaN and infinities become None (the front end's JSON cannot read them)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, slice):
        return _positions_str(value)
    return value


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


_SNAP_STYLE = "font-family:sans-serif;font-size:13px;line-height:1.45"


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
