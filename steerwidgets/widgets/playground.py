"""The steering Playground widget: traits in, a :class:`~steerwidgets.playground.Request` to the
pipeline, its updates back onto traits.

Everything a slider move does lives in ``steerwidgets/playground.py`` (plain Python, tested without a
browser); this file only maps traits to a request, runs it on the widget's background runner (latest
wins: a new change cancels the run in flight) and writes each update's fields onto the traits of the same
names, which ``js/src/playground.js`` draws.

>>> import steerwidgets as sw
>>> from steerwidgets.widgets.playground import Playground
>>> Playground(sw.load_model(), targets=(" I love it", " I hate it"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anywidget
import numpy as np
import traitlets

import steerwidgets as sw

from ..engine import GenerationCancelled
from ..interventions import require_model
from ..playground import (
    AB_LIMIT,
    ACTADD,
    BUILTIN_VECTORS,
    DEFAULT_PROMPT,
    Done,
    Pipeline,
    Request,
    StackRow,
    Update,
    builtin_vector,
    error_message,
)
from ..snapshot import playground_html
from ._frontend import bundle, css, shared_bundle_trait
from ._runner import Runner

__all__ = ["ACTADD", "BUILTIN_VECTORS", "Playground", "builtin_vector", "positions_to_str"]

log = logging.getLogger(__name__)

PRESETS = ("all", "prompt", "last", "generated")

# Controls: a change to any of these starts a new request.
CONTROLS = (
    "prompt",
    "layer",
    "strength",
    "relative",
    "positions",
    "max_new_tokens",
    "seed",
    "vector_name",
    "actadd_positive",
    "actadd_negative",
    "stack",
    "capability",
)


class _Stale(Exception):
    """A newer request exists; this run's results would be dropped anyway."""


@dataclass
class _Job:
    request: int
    started: float
    cancel: threading.Event
    spec: Request | Exception  # an Exception: the controls could not be read (shown as the error)


class Playground(anywidget.AnyWidget):
    """Steer a model interactively and see, beside the steered text, whether the steering worked.

    ``vector`` is a :class:`~steerwidgets.SteeringVector`, the name of a built-in contrast set
    (``"sentiment"``, ``"formality"``) or ``None`` (sentiment). ``vectors`` adds more named
    vectors to the chooser. ``targets=(target, contrast)`` adds the strength-sweep chart;
    ``ab_items`` (the first 20 are used) adds the anti-steerable check. Results live in synced
    traits, so a saved notebook with widget state shows them without a kernel;
    ``_repr_mimebundle_`` also carries an HTML snapshot.

    ``stack`` adds more vectors applied together with the main one, each a dict ``{"vector_name",
    "layer", "strength", "positions", "relative"}`` (or use :meth:`add_row` / :meth:`remove_row`); the
    text and its colouring are steered by all of them, ``norm_ratios`` has one ratio per steering (main
    first), and the chart and A/B check measure the main vector with the rows held on as background.

    ``condition`` (a :class:`~steerwidgets.conditional.ConditionalSteering`, e.g. from ``grid_search``) steers
    only prompts that meet it (CAST): a line says "condition met / not met (similarity x vs threshold y)", and
    an unmet prompt's steered text is the unsteered one; the chart and A/B check still measure the vector
    itself. ``capability=n`` adds a side-effect line: accuracy on the first n items of each built-in
    capability set, unsteered vs under the steering as applied, with the paired 95 % interval.
    """

    _esm = bundle("playground")
    _css = css()
    _bundle = shared_bundle_trait()  # the shared front-end bundle, sent to the page once

    # --- controls (front end -> Python) ---
    prompt = traitlets.Unicode(DEFAULT_PROMPT).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    strength = traitlets.Float(4.0).tag(sync=True)
    relative = traitlets.Bool(False).tag(sync=True)
    positions = traitlets.Unicode("all").tag(sync=True)
    max_new_tokens = traitlets.Int(32).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    vector_name = traitlets.Unicode("sentiment").tag(sync=True)
    actadd_positive = traitlets.Unicode("Love").tag(sync=True)
    actadd_negative = traitlets.Unicode("Hate").tag(sync=True)
    stack = traitlets.List(traitlets.Dict()).tag(sync=True)  # the extra rows (StackRow fields)
    capability = traitlets.Int(0).tag(sync=True)  # items per capability set for its line; 0: off

    # --- what the front end needs to draw the controls (Python -> front end) ---
    n_layers = traitlets.Int(1).tag(sync=True)
    model_name = traitlets.Unicode("").tag(sync=True)
    vector_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    vector_norms = traitlets.List(traitlets.Float()).tag(sync=True)
    prompt_tokens = traitlets.List(traitlets.Dict()).tag(sync=True)
    steer_mask = traitlets.List(traitlets.Bool()).tag(sync=True)
    steer_generated = traitlets.Bool(True).tag(sync=True)
    targets = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_ab_items = traitlets.Int(0).tag(sync=True)

    # --- results (Python -> front end) ---
    status = traitlets.Unicode("starting").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    base_text = traitlets.Unicode("").tag(sync=True)
    steered_text = traitlets.Unicode("").tag(sync=True)
    steered_tokens = traitlets.List(traitlets.Dict()).tag(sync=True)
    norm_ratio = traitlets.Float(None, allow_none=True).tag(sync=True)
    norm_ratios = traitlets.List(traitlets.Float(None, allow_none=True)).tag(sync=True)  # main, then stack
    topk = traitlets.List(traitlets.Dict()).tag(sync=True)
    chart_spec = traitlets.Dict().tag(sync=True)
    warnings = traitlets.List(traitlets.Dict()).tag(sync=True)
    timings = traitlets.Dict().tag(sync=True)
    code = traitlets.Unicode("").tag(sync=True)

    # How long a display waits for the first result, so the HTML snapshot shows it.
    snapshot_wait_s: float = 60.0

    def __init__(
        self,
        model: Any = None,
        vector: sw.SteeringVector | str | None = None,
        prompt: str = DEFAULT_PROMPT,
        layer: int | None = None,
        strength: float = 4.0,
        positions: Any = "all",
        max_new_tokens: int = 32,
        seed: int = 0,
        targets: Sequence[str] | None = None,
        ab_items: Sequence[Any] | None = None,
        *,
        vectors: Mapping[str, sw.SteeringVector] | None = None,
        relative: bool = False,
        stack: Sequence[Mapping[str, Any]] | None = None,
        condition: sw.conditional.ConditionalSteering | None = None,
        capability: int = 0,
        **kwargs: Any,
    ) -> None:
        self.model = sw.load_model() if model is None else model
        require_model(self.model, "Playground")
        _check_controls(self.model, prompt, layer, strength, max_new_tokens, seed)
        Request(capability=capability).check()  # before the widget (and its comm) exists
        self._pipeline = Pipeline(self.model, vectors, condition)
        if isinstance(vector, sw.SteeringVector):
            self._pipeline.add_vector("vector", vector)
            chosen = "vector"
        elif vector is None:
            chosen = next(iter(self._pipeline.vectors), BUILTIN_VECTORS[0])
        elif isinstance(vector, str):
            chosen = vector
        else:
            raise TypeError(
                f"vector must be a SteeringVector, a built-in name or None, got {type(vector).__name__}"
            )
        rows = self._stack_rows(stack or [])
        self._targets = _check_targets(targets)
        self._ab_items = tuple(list(ab_items or [])[:AB_LIMIT])

        self._req_lock = threading.RLock()
        self._request = 0
        self._cancel: threading.Event | None = None
        self._landed: list[int] = []  # requests whose results completed (newest last), for tests
        self._closed = False
        self._worker = Runner(self._run_job, lock=getattr(self.model, "lock", None))

        if layer is None:
            layer = self._pipeline.default_layer(chosen)
        try:
            positions = positions_to_str(positions)
        except (sw.SteeringError, TypeError, ValueError):
            positions = repr(positions)  # shown as an error by the first run
        super().__init__(
            prompt=prompt,
            layer=int(layer),
            strength=float(strength),
            relative=bool(relative),
            positions=positions,
            max_new_tokens=int(max_new_tokens),
            seed=int(seed),
            vector_name=chosen,
            stack=[row.to_dict() for row in rows],
            capability=int(capability),
            n_layers=int(self.model.n_layers),
            model_name=str(getattr(self.model, "name", "")),
            vector_names=self._pipeline.vector_names,
            targets=list(self._targets or []),
            n_ab_items=len(self._ab_items),
            **kwargs,
        )
        self.observe(self._on_control, names=list(CONTROLS))
        self._schedule()

    @traitlets.validate("stack")
    def _normalise_stack(self, proposal: dict) -> list:
        """Rows from the front end in their full form (floats, defaults filled in); a row that cannot be
        read is kept as sent, so the next run shows what is wrong with it."""
        try:
            return [StackRow.from_dict(row, i).to_dict() for i, row in enumerate(proposal["value"])]
        except (TypeError, ValueError):
            return proposal["value"]

    # --- public helpers -------------------------------------------------------------------------
    def set(self, **controls: Any) -> None:
        """Change several controls at once (one request, like one slider release)."""
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise TypeError(f"unknown controls {sorted(unknown)}; use some of {list(CONTROLS)}")
        if "positions" in controls:
            controls["positions"] = positions_to_str(controls["positions"])
        with self.hold_trait_notifications():
            for name, value in controls.items():
                setattr(self, name, value)

    def add_row(
        self,
        vector_name: str,
        layer: int,
        strength: float = 4.0,
        positions: Any = "all",
        relative: bool = False,
    ) -> None:
        """Add a vector to the stack (applied together with the main one); checked before any work."""
        row = dict(
            vector_name=vector_name,
            layer=layer,
            strength=strength,
            positions=positions_to_str(positions),
            relative=relative,
        )
        (checked,) = self._stack_rows([row], start=len(self.stack))
        self.stack = [*self.stack, checked.to_dict()]

    def remove_row(self, index: int) -> None:
        """Remove the stack's row ``index`` (0 is the first extra row; the main vector is not a row)."""
        rows = list(self.stack)
        if isinstance(index, bool) or not isinstance(index, int) or not -len(rows) <= index < len(rows):
            raise IndexError(
                f"no stack row {index!r}; the stack has {len(rows)} rows (index 0..{len(rows) - 1})"
            )
        del rows[index]
        self.stack = rows

    def _stack_rows(self, rows: Sequence[Any], start: int = 0) -> list[StackRow]:
        if isinstance(rows, (str, Mapping)) or not isinstance(rows, Sequence):
            raise TypeError(
                "stack must be a list of rows, e.g. "
                "[{'vector_name': 'formality', 'layer': 10, 'strength': 4.0}]"
            )
        out = []
        for index, row in enumerate(rows, start):
            if isinstance(row, Mapping) and not isinstance(row.get("positions", "all"), str):
                row = {**row, "positions": positions_to_str(row["positions"])}
            checked = StackRow.from_dict(row, index)
            self._pipeline.check_row(index, checked)
            out.append(checked)
        return out

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Block until the newest request has finished (for scripts and tests); False on timeout."""
        return self._worker.wait_idle(timeout)

    def refresh(self) -> None:
        """Run the current controls again (e.g. after changing a vector in place)."""
        self._schedule()

    def set_condition(self, condition: sw.conditional.ConditionalSteering | None) -> None:
        """Gate the steering with a CAST condition (``None``: steer every prompt) and run again."""
        self._pipeline.set_condition(condition)
        self._schedule()

    def add_vector(self, name: str, vector: sw.SteeringVector, select: bool = True) -> None:
        """Add a named vector to the chooser (and select it)."""
        self._pipeline.add_vector(name, vector)
        self.vector_names = self._pipeline.vector_names
        if select:
            if self.vector_name == name:
                self._schedule()
            else:
                self.vector_name = name

    def request(self) -> Request:
        """The current controls as the pipeline's frozen request."""
        return Request(
            **{name: getattr(self, name) for name in CONTROLS if name != "stack"},
            stack=tuple(StackRow.from_dict(row, i) for i, row in enumerate(self.stack)),
            targets=self._targets,
            ab_items=self._ab_items,
        )

    def copy_code(self) -> str:
        """A runnable Python cell reproducing the current steered continuation."""
        return self._pipeline.code(self.request())

    def close(self) -> None:
        """Stop the background thread and close the widget.

        Also runs from ``Widget.__del__`` after a constructor raised, before the attributes below exist.
        """
        lock = getattr(self, "_req_lock", None)
        if lock is not None:
            with lock:
                self._closed = True
                self._request += 1
                if self._cancel is not None:
                    self._cancel.set()
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.close()
        super().close()

    # --- request -> runner -> pipeline -> traits ------------------------------------------------
    def _on_control(self, change: dict) -> None:
        self._schedule()

    def _schedule(self) -> None:
        started = time.perf_counter()
        with self._req_lock:
            if self._closed:
                return
            self._request += 1
            if self._cancel is not None:
                self._cancel.set()
            self._cancel = threading.Event()
            try:
                spec: Request | Exception = self.request()
            except (TypeError, ValueError) as exc:  # e.g. a stack row from the front end with a bad value
                spec = exc
            job = _Job(self._request, started, self._cancel, spec)
        self._worker.submit(job)

    def _run_job(self, job: _Job) -> None:
        def emit(update: Update) -> None:
            values = update.fields()
            if isinstance(update, Done):
                values["timings"] = {**update.timings, "request": job.request}
            self._publish(job, values)

        try:
            if isinstance(job.spec, Exception):
                raise job.spec
            self._pipeline.run(job.spec, emit, job.cancel, started=job.started)
        except (_Stale, GenerationCancelled):
            return
        except Exception as exc:
            if not isinstance(exc, (ValueError, TypeError, LookupError, sw.ModelLoadError)):
                log.exception("playground request failed")
            try:
                self._publish(job, {"error": error_message(exc), "status": "error"})
            except _Stale:
                pass
            return
        self._landed = [*self._landed[-99:], job.request]

    def _publish(self, job: _Job, values: dict[str, Any]) -> None:
        """Write result traits, unless a newer request exists (then stop this run)."""
        with self._req_lock:
            if job.request != self._request:
                raise _Stale()
            with self.hold_sync():
                for name, value in values.items():
                    setattr(self, name, value)

    # --- static snapshot ------------------------------------------------------------------------
    def snapshot_html(self) -> str:
        """An escaped HTML snapshot of the last result and the chart as inline SVG (what notebook viewers
        without a kernel or widget manager show: GitHub, nbconvert)."""
        names = (*CONTROLS, "model_name", "base_text", "steered_text", "error", "warnings", "chart_spec")
        return playground_html({name: getattr(self, name) for name in names})

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        out = super()._repr_mimebundle_(**kwargs)
        if out is None:
            return out
        # Give the first result a moment so the saved snapshot shows it (the worker does the work).
        self.wait(self.snapshot_wait_s)
        if isinstance(out, tuple):
            data, meta = out
            return {**data, "text/html": self.snapshot_html()}, meta
        return {**out, "text/html": self.snapshot_html()}


# ----------------------------------------------------------------------------------------------
# Checks and conversions of the constructor's arguments
# ----------------------------------------------------------------------------------------------
def positions_to_str(positions: Any) -> str:
    """The position spec as the string the widget syncs ("all", "3,4,5", "-3:")."""
    if isinstance(positions, str):
        return positions
    if isinstance(positions, bool):
        raise sw.SteeringError(f"positions must not be a bool, got {positions!r}")
    if isinstance(positions, int):
        return str(positions)
    if isinstance(positions, slice):
        start = "" if positions.start is None else str(positions.start)
        stop = "" if positions.stop is None else str(positions.stop)
        return f"{start}:{stop}"
    if isinstance(positions, Sequence):
        return ",".join(str(int(i)) for i in positions)
    raise sw.SteeringError(f"cannot read positions={positions!r}; use a preset, an int or a list")


def _check_controls(
    model: Any, prompt: Any, layer: Any, strength: Any, max_new_tokens: Any, seed: Any
) -> None:
    """Check the constructor's controls before any work, so a typo names itself instead of failing deep
    inside traitlets or the first background run."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}; e.g. prompt='Tell me a story.'")
    if layer is not None:
        model.check_layer(layer)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise TypeError(f"strength must be a finite number, got {strength!r}; e.g. strength=4.0")
    for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise TypeError(f"{name} must be an int >= {low}, got {value!r}")


def _check_targets(targets: Sequence[str] | None) -> tuple[str, str] | None:
    if targets is None:
        return None
    if isinstance(targets, str) or len(targets) != 2:
        raise ValueError("targets must be a pair (target_completion, contrast_completion)")
    target, contrast = targets
    if not (isinstance(target, str) and isinstance(contrast, str) and target and contrast):
        raise ValueError("targets must be two non-empty strings, e.g. (' I love it', ' I hate it')")
    return target, contrast
