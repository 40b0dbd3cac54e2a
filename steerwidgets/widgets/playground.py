"""The steering playground: change a control, see unsteered and steered text side by side, and
the checks (likelihood shifts, a strength sweep against a random vector, anti-steerable A/B items)
that say whether the steering did what it seems to do.

The widget is thin: Python holds the traits and calls the engine (``sw.generate``, ``sw.score``,
``sw.propensity_sweep``); the front end (``js/src/playground.js``) only draws traits and sets
controls. All model work runs on one background thread per widget, so the kernel keeps receiving
slider moves; each change bumps a request id, cancels the run in flight, and results of older
requests are dropped.

>>> import steerwidgets as sw
>>> from steerwidgets.widgets.playground import Playground
>>> Playground(sw.load_model(), targets=(" I love it", " I hate it"))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anywidget
import numpy as np
import traitlets

import steerwidgets as sw

from .. import metrics
from ..fluency import fluency_verdict
from ..interventions import require_model
from ..verdicts import null_band, warnings_for
from ._frontend import bundle, css, shared_bundle_trait
from ._worker import LatestWorker

log = logging.getLogger(__name__)

BUILTIN_VECTORS = ("sentiment", "formality")
ACTADD = "actadd"  # the vector chooser's entry for a quick ActAdd from two typed phrases
PRESETS = ("all", "prompt", "last", "generated")
TOP_K = 8
STREAM_INTERVAL_S = 0.05  # at most 20 streamed text updates per second
AB_LIMIT = 20
AB_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)  # times the strength
AB_NULL_DIRECTIONS = 16  # random directions of the vector's norm behind the A/B check's verdicts
SWEEP_GRID = (-2.0, -1.0, 0.0, 1.0, 2.0)  # times the chart's unit (the strength it was first drawn at)
AGAINST_EPS = 0.05  # log-odds changes smaller than this are noise, not "against the sign"
TARGET_NULL_DIRECTIONS = 8  # random directions of the vector's norm behind the target check's verdict
DEFAULT_PROMPT = "Tell me about your day."

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
)

# Built-in vectors are shared by the playgrounds of one model: {id(model): (model, {name: vec})}.
_BUILTIN_CACHE: dict[int, tuple[Any, dict[str, sw.SteeringVector]]] = {}
_BUILTIN_LOCK = threading.Lock()


def builtin_vector(model: Any, name: str) -> sw.SteeringVector:
    """Mean-difference vector of a built-in contrast set at every layer, built once per model."""
    with _BUILTIN_LOCK:
        entry = _BUILTIN_CACHE.get(id(model))
        if entry is None or entry[0] is not model:
            entry = (model, {})
            _BUILTIN_CACHE[id(model)] = entry
        cache = entry[1]
        if name not in cache:
            cache[name] = sw.mean_difference(model, sw.builtin_pairs(name))
        return cache[name]


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


class _Stale(Exception):
    """A newer request exists; this run's results would be dropped anyway."""


@dataclass
class _Chart:
    """The target-vs-contrast chart's points for one setting: cache keys and their steerings.

    Besides the grid's vector and random curves, ``nulls`` more random directions of the vector's norm are
    scored at the current strength only: the null the target check's verdict needs.
    """

    setting: tuple
    grid: list[float]
    vector: sw.SteeringVector
    random: sw.SteeringVector
    controls: dict[str, Any]
    nulls: list[sw.SteeringVector] = field(default_factory=list)

    def key(self, series: str, strength: float) -> tuple:
        # every series shares the unsteered point at strength 0
        return self.setting[:2] if strength == 0 else (*self.setting, series, strength)

    def _vector(self, series: str) -> sw.SteeringVector:
        if series == "vector":
            return self.vector
        if series == "random":
            return self.random
        return self.nulls[int(series.removeprefix("null")) - 1]

    def steering(self, series: str, strength: float) -> sw.Steering | None:
        if strength == 0:
            return None
        c = self.controls
        return sw.Steering(self._vector(series), c["layer"], strength, c["positions"], relative=c["relative"])

    @property
    def strength(self) -> float:
        return float(self.controls["strength"])

    def missing(self, cache: Mapping[tuple, Any]) -> list[tuple[tuple, sw.Steering | None]]:
        out: dict[tuple, sw.Steering | None] = {}
        wanted = [(series, s) for series in ("vector", "random") for s in self.grid]
        wanted += [(f"null{k}", self.strength) for k in range(1, len(self.nulls) + 1)]
        for series, s in wanted:
            key = self.key(series, s)
            if key not in cache and key not in out:
                out[key] = self.steering(series, s)
        return list(out.items())

    def curve(self, series: str, cache: Mapping[tuple, tuple[float, float]]) -> list[float]:
        """log p(target) − log p(contrast) at each grid strength."""
        return [target - contrast for target, contrast in (cache[self.key(series, s)] for s in self.grid)]

    def null_effects(self, cache: Mapping[tuple, tuple[float, float]]) -> list[float]:
        """How much each random direction (the random curve's and the nulls) moves the log-odds at the
        current strength, relative to the unsteered point."""
        t0, c0 = cache[self.key("vector", 0.0)]
        series = ["random", *(f"null{k}" for k in range(1, len(self.nulls) + 1))]
        return [cache[self.key(name, self.strength)][0] - cache[self.key(name, self.strength)][1] - (t0 - c0)
                for name in series]  # fmt: skip


@dataclass
class _Job:
    request: int
    started: float
    cancel: threading.Event
    controls: dict[str, Any]
    first_token: float | None = None
    timings: dict[str, Any] = field(default_factory=dict)


class Playground(anywidget.AnyWidget):
    """Steer a model interactively and see, beside the steered text, whether the steering worked.

    ``vector`` is a :class:`~steerwidgets.SteeringVector`, the name of a built-in contrast set
    (``"sentiment"``, ``"formality"``) or ``None`` (sentiment). ``vectors`` adds more named
    vectors to the chooser. ``targets=(target, contrast)`` adds the strength-sweep chart;
    ``ab_items`` (the first 20 are used) adds the anti-steerable check. Results live in synced
    traits, so a saved notebook with widget state shows them without a kernel;
    ``_repr_mimebundle_`` also carries an HTML snapshot.
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
        **kwargs: Any,
    ) -> None:
        self.model = sw.load_model() if model is None else model
        require_model(self.model, "Playground")
        _check_controls(self.model, prompt, layer, strength, max_new_tokens, seed)
        self._vectors: dict[str, sw.SteeringVector] = {}
        for name, vec in (vectors or {}).items():
            self._add_vector(name, vec)
        if isinstance(vector, sw.SteeringVector):
            self._add_vector("vector", vector)
            chosen = "vector"
        elif vector is None:
            chosen = next(iter(self._vectors), BUILTIN_VECTORS[0])
        elif isinstance(vector, str):
            chosen = vector
        else:
            raise TypeError(
                f"vector must be a SteeringVector, a built-in name or None, got {type(vector).__name__}"
            )
        self._targets = _check_targets(targets)
        self._ab_items = list(ab_items or [])[:AB_LIMIT]

        self._req_lock = threading.RLock()
        self._request = 0
        self._cancel: threading.Event | None = None
        self._base_cache: OrderedDict[tuple, Any] = OrderedDict()
        self._token_cache: OrderedDict[str, tuple] = OrderedDict()
        self._point_cache: OrderedDict[tuple, tuple[float, float]] = OrderedDict()
        self._chart_units: dict[tuple, float] = {}
        self._ab_cache: dict[tuple, list[dict]] = {}
        self._actadd_cache: dict[tuple[str, str], sw.SteeringVector] = {}
        self._landed: list[int] = []  # requests whose results completed (newest last), for tests
        self._closed = False
        self._worker = LatestWorker(self._run_job)

        n_layers = int(self.model.n_layers)
        if layer is None:
            layer = self._default_layer(chosen, n_layers)
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
            n_layers=n_layers,
            model_name=str(getattr(self.model, "name", "")),
            vector_names=[*BUILTIN_VECTORS, *self._vectors, ACTADD],
            targets=list(self._targets or []),
            n_ab_items=len(self._ab_items),
            **kwargs,
        )
        self.observe(self._on_control, names=list(CONTROLS))
        self._schedule()

    # ------------------------------------------------------------------------------------------
    # Public helpers
    # ------------------------------------------------------------------------------------------
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

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Block until the newest request has finished (for scripts and tests); False on timeout."""
        return self._worker.wait_idle(timeout)

    def refresh(self) -> None:
        """Run the current controls again (e.g. after changing a vector in place)."""
        self._schedule()

    def add_vector(self, name: str, vector: sw.SteeringVector, select: bool = True) -> None:
        """Add a named vector to the chooser (and select it)."""
        self._add_vector(name, vector)
        self._point_cache.clear()  # results keyed by this name may belong to an older vector
        self._ab_cache.clear()
        names = [*BUILTIN_VECTORS, *self._vectors, ACTADD]
        self.vector_names = names
        if select:
            if self.vector_name == name:
                self._schedule()
            else:
                self.vector_name = name

    def copy_code(self) -> str:
        """A runnable Python cell reproducing the current steered continuation."""
        return self._code_for(self._controls())

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

    # ------------------------------------------------------------------------------------------
    # Requests
    # ------------------------------------------------------------------------------------------
    def _add_vector(self, name: str, vector: sw.SteeringVector) -> None:
        if not isinstance(vector, sw.SteeringVector):
            raise TypeError(f"vectors[{name!r}] must be a SteeringVector, got {type(vector).__name__}")
        if name in BUILTIN_VECTORS or name == ACTADD:
            raise ValueError(f"the vector name {name!r} is reserved; pick another name")
        self._vectors[name] = vector

    def _default_layer(self, name: str, n_layers: int) -> int:
        """A third of the way up: early enough to change content, late enough to keep grammar."""
        want = max(0, round(n_layers / 3))
        vec = self._vectors.get(name)
        if vec is not None and want not in vec.layers:
            return min(vec.layers, key=lambda layer: abs(layer - want))
        return min(want, n_layers - 1)

    def _controls(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONTROLS}

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
            job = _Job(self._request, started, self._cancel, self._controls())
        self._worker.submit(job)

    def _current(self, job: _Job) -> bool:
        return job.request == self._request and not job.cancel.is_set()

    def _publish(self, job: _Job, **values: Any) -> None:
        """Write result traits, unless a newer request exists (then stop this run)."""
        with self._req_lock:
            if job.request != self._request:
                raise _Stale()
            with self.hold_sync():
                for name, value in values.items():
                    setattr(self, name, value)

    def _check(self, job: _Job) -> None:
        if job.cancel.is_set() or job.request != self._request:
            raise _Stale()

    # ------------------------------------------------------------------------------------------
    # The work (background thread)
    # ------------------------------------------------------------------------------------------
    def _run_job(self, job: _Job) -> None:
        try:
            self._compute(job)
        except (_Stale, sw.GenerationCancelled):
            return
        except Exception as exc:
            if not isinstance(exc, (ValueError, TypeError, LookupError, sw.ModelLoadError)):
                log.exception("playground request failed")
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, (ValueError, TypeError)):
                message = f"{type(exc).__name__}: {message}"
            try:
                self._publish(job, error=message, status="error")
            except _Stale:
                pass

    def _compute(self, job: _Job) -> None:
        c = job.controls
        model = self.model
        vector = self._resolve_vector(c, job)
        self._check(job)
        steering = sw.Steering(
            vector, c["layer"], float(c["strength"]), c["positions"], relative=c["relative"]
        )
        steering.validate(model)
        max_new = c["max_new_tokens"]
        if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= 1024:
            raise sw.SteeringError(f"max new tokens must be between 1 and 1024, got {max_new!r}")
        ids, user_start, chips = self._tokens(c["prompt"])
        direction = steering.direction()
        spec = "front" if direction.ndim == 2 else c["positions"]
        front_len = direction.shape[0] if direction.ndim == 2 else 0
        mask = sw.position_mask(spec, len(ids), len(ids) + max_new, user_start, front_len)
        norms = vector.norms()
        base_key = (c["prompt"], max_new, c["seed"])
        base = self._base_cache.get(base_key)
        self._publish(
            job,
            error="",
            status="generating",
            prompt_tokens=chips,
            steer_mask=[bool(x) for x in mask[: len(ids)]],
            steer_generated=bool(mask[len(ids) :].any()),
            vector_norms=[float(norms.get(layer, 0.0)) for layer in range(model.n_layers)],
            base_text=base.text if base is not None else "",  # never another prompt's text
        )
        job.timings["base_cached"] = base is not None

        # 1. steered continuation, streamed (first, so the first steered token comes soonest)
        steered = self._generate(job, c, steering, "steered")
        job.timings["steered_ms"] = _ms(job.started)
        # 2. unsteered continuation, only when its key changed
        if base is None:
            base = self._generate(job, c, None, "base")
            self._base_cache[base_key] = base
            while len(self._base_cache) > 32:
                self._base_cache.popitem(last=False)
        self._check(job)
        # 3. one batched scoring pass: the unsteered model on the steered text (per-token shift) and
        #    every chart point not cached yet (target and contrast, vector and random reference)
        self._publish(job, status="scoring")
        chart = self._chart_points(c, vector) if self._targets else None
        tokens = self._score_batch(job, c, steered, steering, chart)
        self._publish(
            job,
            steered_tokens=tokens,
            topk=self._topk(base, steered),
            norm_ratio=_finite_or_none(steered.norm_ratio),
            code=self._code_for(c),
        )
        # 4. the strength chart against a random vector of equal norm, and its warnings
        warnings: list[dict] = fluency_warnings(base, steered, tokens, self.model.tokenizer)
        if chart is not None:
            warnings += self._target_chart(job, c, chart)
        else:
            self._publish(job, chart_spec={})
        job.timings["charts_ms"] = _ms(job.started)
        # 5. anti-steerable A/B items
        if self._ab_items:
            self._publish(job, status="checking A/B items", warnings=warnings)
            t_ab = time.perf_counter()
            warnings += self._ab_warnings(job, c, vector)
            job.timings["ab_ms"] = _ms(t_ab)
        job.timings["total_ms"] = _ms(job.started)
        job.timings["request"] = job.request
        self._publish(job, warnings=warnings, timings=dict(job.timings), status="done")
        self._landed = [*self._landed[-99:], job.request]

    # --- pieces ---------------------------------------------------------------------------------
    def _resolve_vector(self, c: dict[str, Any], job: _Job | None = None) -> sw.SteeringVector:
        started = time.perf_counter()
        vector = self._find_vector(c)
        if job is not None and time.perf_counter() - started > 0.01:
            job.timings["vector_ms"] = _ms(started)  # built in this request (counts in the total)
        return vector

    def _find_vector(self, c: dict[str, Any]) -> sw.SteeringVector:
        name = c["vector_name"]
        if name in self._vectors:
            return self._vectors[name]
        if name == ACTADD:
            key = (c["actadd_positive"], c["actadd_negative"])
            if key not in self._actadd_cache:
                layers = list(range(self.model.n_layers))
                self._actadd_cache[key] = sw.actadd(self.model, key[0], key[1], layers)
            return self._actadd_cache[key]
        if name in BUILTIN_VECTORS:
            return builtin_vector(self.model, name)
        raise sw.VectorError(
            f"unknown vector {name!r}; pick one of {[*BUILTIN_VECTORS, *self._vectors, ACTADD]} "
            "or pass your own with Playground(..., vectors={'name': vector})"
        )

    def _tokens(self, prompt: str) -> tuple[list[int], int, list[dict]]:
        """Prompt ids, where the user's text starts, and one chip per token (cached per prompt)."""
        hit = self._token_cache.get(prompt)
        if hit is not None:
            return hit
        model, tok = self.model, self.model.tokenizer
        ids, user_start = sw.engine.tokenize_prompt(model, prompt)
        text, char_start = sw.engine.prompt_text(model, prompt)
        user_end = len(ids)
        if char_start or text != prompt:
            user_end = len(tok(text[: char_start + len(prompt)], add_special_tokens=False)["input_ids"])
        pieces = _pieces(tok, ids)
        chips = [
            {"i": i, "text": piece, "user": user_start <= i < user_end} for i, piece in enumerate(pieces)
        ]
        hit = (ids, user_start, chips)
        self._token_cache[prompt] = hit
        while len(self._token_cache) > 32:
            self._token_cache.popitem(last=False)
        return hit

    def _generate(self, job: _Job, c: dict[str, Any], steering: Any, run: str) -> Any:
        """One continuation, streamed into ``<run>_text`` at most 20 times a second."""
        tok = self.model.tokenizer
        trait = f"{run}_text"
        ids: list[int] = []
        last = [0.0]

        def on_token(_run: str, step: int, new_ids: list[int]) -> None:
            ids.append(new_ids[0])
            now = time.perf_counter()
            first = len(ids) == 1
            if first and run == "steered":
                job.first_token = now
                job.timings["first_token_ms"] = _ms(job.started, now)
            if first or now - last[0] >= STREAM_INTERVAL_S:
                last[0] = now
                self._publish(job, **{trait: tok.decode(ids, skip_special_tokens=True)})

        result = sw.generate(
            self.model,
            c["prompt"],
            steering,
            max_new_tokens=c["max_new_tokens"],
            seed=c["seed"],
            baseline=steering is None,
            on_token=on_token,
            cancel=job.cancel,
        )
        out = result.base if steering is None else result.steered
        self._publish(job, **{trait: out.text})
        return out

    def _score_batch(
        self, job: _Job, c: dict[str, Any], steered: Any, steering: Any, chart: _Chart | None
    ) -> list[dict]:
        """Score everything the update needs in one batched pass; fills the chart's point cache and
        returns the per-token shifts log p_steered − log p_base of the steered text."""
        tok = self.model.tokenizer
        prompts: list[str] = []
        completions: list[str] = []
        rows: list[Any] = []

        def add(completion: str, row_steering: Any) -> int:
            prompts.append(c["prompt"])
            completions.append(completion)
            rows.append(row_steering)
            return len(rows) - 1

        text = steered.text
        stop = {tok.eos_token_id, tok.pad_token_id} - {None}
        gen_ids = list(steered.token_ids[0])
        gen_lp = list(steered.token_logprobs[0])
        while gen_ids and gen_ids[-1] in stop:
            gen_ids.pop()
            gen_lp.pop()
        base_row = steered_row = None
        ids = tok(text, add_special_tokens=False)["input_ids"] if text else []  # the tokens base scores
        if text:
            base_row = add(text, None)
            if ids != gen_ids:
                # the text does not re-tokenise to the generated ids: score both on the same tokens
                steered_row = add(text, steering)
        missing = chart.missing(self._point_cache) if chart is not None else []
        point_rows = []
        for key, point_steering in missing:
            target, contrast = self._targets
            point_rows.append((key, add(target, point_steering), add(contrast, point_steering)))
        self._check(job)
        lp = sw.score(self.model, prompts, completions, row_steerings=rows, batch_size=64) if rows else []
        for key, t_row, k_row in point_rows:
            self._point_cache[key] = (float(lp[t_row].sum()), float(lp[k_row].sum()))
        while len(self._point_cache) > 512:
            self._point_cache.popitem(last=False)
        if base_row is None:
            return []
        base_lp = lp[base_row].tolist()
        steered_lp = gen_lp if steered_row is None else lp[steered_row].tolist()
        return [
            {
                "text": piece,
                "shift": _round(lp_s - lp_b),
                "lp_steered": _round(lp_s),
                "lp_base": _round(lp_b),
            }
            for piece, lp_s, lp_b in zip(_pieces(tok, ids), steered_lp, base_lp)
        ]

    def _topk(self, base: Any, steered: Any) -> list[dict]:
        """The k next tokens whose probability changed most at the first generated position."""
        tok = self.model.tokenizer
        lp_b = base.first_logprobs[0].float()
        lp_s = steered.first_logprobs[0].float()
        p_b, p_s = lp_b.exp(), lp_s.exp()
        delta = p_s - p_b
        idx = delta.abs().topk(min(TOP_K, delta.numel())).indices.tolist()
        rows = [
            {
                "token": tok.decode([i]),
                "id": int(i),
                "p_base": _round(float(p_b[i]), 4),
                "p_steered": _round(float(p_s[i]), 4),
                "delta": _round(float(delta[i]), 4),
                "logp_shift": _round(float(lp_s[i] - lp_b[i])),
            }
            for i in idx
        ]
        return sorted(rows, key=lambda r: -r["delta"])

    def _chart_points(self, c: dict[str, Any], vector: sw.SteeringVector) -> _Chart:
        """The chart's grid: ±U, ±2U and 0 around a unit U kept while the strength stays near it, plus
        the current strength, so moving the strength slider reuses the cached points."""
        strength = float(c["strength"])
        setting = (
            c["prompt"], tuple(self._targets), _vector_key(c), c["layer"], c["positions"], c["relative"]
        )  # fmt: skip
        unit = self._chart_units.get(setting)
        if unit is None or (strength != 0 and not unit / 4 <= abs(strength) <= 2 * unit):
            unit = abs(strength) if strength != 0 else (0.25 if c["relative"] else 1.0)
            self._chart_units[setting] = unit
        grid = sorted({k * unit + 0.0 for k in SWEEP_GRID} | {strength + 0.0})  # + 0.0: no -0
        nulls = [sw.random_like(vector, seed=k) for k in range(1, TARGET_NULL_DIRECTIONS)]
        return _Chart(setting, grid, vector, sw.random_like(vector, seed=0), c, nulls)

    def _target_chart(self, job: _Job, c: dict[str, Any], chart: _Chart) -> list[dict]:
        from .charts import strength_sweep_spec

        self._check(job)
        vec_curve = chart.curve("vector", self._point_cache)
        rnd_curve = chart.curve("random", self._point_cache)
        title = f"layer {c['layer']}, sum of token log-probs"
        strength = float(c["strength"])
        spec = strength_sweep_spec(chart.grid, vec_curve, rnd_curve, strength, title=title)
        self._publish(job, chart_spec=spec)
        # the one random curve is drawn; the verdict compares with all the random directions instead
        out = target_warnings(chart.grid, vec_curve, None, strength, self._targets)
        if strength != 0:
            here = chart.grid.index(strength + 0.0)
            effect = vec_curve[here] - vec_curve[chart.grid.index(0.0)]
            where = f"layer {c['layer']}, positions {c['positions']!r}, strength {strength:+g}"
            out.insert(0, target_verdict(effect, chart.null_effects(self._point_cache), strength, where))
        return out

    def _ab_warnings(self, job: _Job, c: dict[str, Any], vector: sw.SteeringVector) -> list[dict]:
        """The attached A/B check: each protocol's verdict against random directions, at the protocol's
        own positions (the letter from the last prompt token on; the answer text through the answer)."""
        strength = float(c["strength"])
        unit = abs(strength) if strength != 0 else 1.0
        grid = tuple(k * unit for k in AB_GRID)
        key = (_vector_key(c), c["layer"], grid, c["relative"])
        if key in self._ab_cache:
            return self._ab_cache[key]
        if vector[c["layer"]].ndim != 1:
            out = [
                {
                    "level": "notice",
                    "message": "A/B check skipped: it needs one [d_model] direction per layer, "
                    "and an ActAdd vector is per position. Pick a built-in or CAA vector for it.",
                }
            ]
            self._ab_cache[key] = out
            return out
        results = []
        try:
            for protocol in ("letter", "answer_text"):
                results.append(
                    sw.propensity_sweep(
                        self.model,
                        self._ab_items,
                        vector,
                        c["layer"],
                        grid,
                        protocol=protocol,
                        relative=c["relative"],
                        null_directions=AB_NULL_DIRECTIONS,
                        cancel=job.cancel,
                    )
                )
        except sw.SteeringError as exc:
            if not results:
                out = [{"level": "notice", "message": f"A/B check skipped: {exc}"}]
                self._ab_cache[key] = out
                return out
        out = ab_warnings(results[0], c["layer"], results[1] if len(results) > 1 else None)
        self._ab_cache[key] = out
        return out

    # --- copy as code ---------------------------------------------------------------------------
    def _code_for(self, c: dict[str, Any]) -> str:
        from ..codegen import CodeRow, render_code

        name = c["vector_name"]
        builtin = name if name in BUILTIN_VECTORS else _builtin_origin(self._vectors.get(name))
        row = dict(layer=c["layer"], strength=c["strength"], positions=c["positions"], relative=c["relative"])
        if builtin is not None:
            vec = self._vectors.get(name)
            layers = None
            if vec is not None and vec.layers != list(range(self.model.n_layers)):
                layers = vec.layers
            code_row = CodeRow(builtin, source="builtin", builtin_layers=layers, **row)
        elif name == ACTADD:
            pair = (c["actadd_positive"], c["actadd_negative"])
            code_row = CodeRow(ACTADD, source="actadd", actadd=pair, **row)
        else:
            code_row = CodeRow(name, source="file", **row)
        return render_code(
            getattr(self.model, "name", ""),
            c["prompt"],
            [code_row],
            max_new_tokens=c["max_new_tokens"],
            seed=c["seed"],
        )

    # --- static snapshot ------------------------------------------------------------------------
    def snapshot_html(self) -> str:
        """An escaped HTML snapshot of the last result and the chart as inline SVG.

        It is what notebook viewers without a kernel or widget manager show (GitHub, nbconvert).
        """
        from .charts import to_svg

        esc = html.escape
        c = self._controls()
        head = (
            f"vector <b>{esc(c['vector_name'])}</b>, layer {int(c['layer'])}, "
            f"strength {float(c['strength']):+g}{' (relative)' if c['relative'] else ''}, "
            f"positions {esc(str(c['positions']))}, {int(c['max_new_tokens'])} new tokens, "
            f"seed {int(c['seed'])}"
        )
        cell = "vertical-align:top;padding:4px 8px;border:1px solid #ccc;white-space:pre-wrap;width:50%"
        parts = [
            '<div class="sw-playground-snapshot" style="font-family:sans-serif;font-size:13px">',
            f"<div><b>Steering playground</b> ({esc(self.model_name)}): {head}</div>",
            f"<div><b>Prompt:</b> <span style='white-space:pre-wrap'>{esc(c['prompt'])}</span></div>",
            "<table style='border-collapse:collapse;width:100%;margin:4px 0'>",
            "<tr><th style='text-align:left'>Unsteered</th><th style='text-align:left'>Steered</th></tr>",
            f"<tr><td style='{cell}'>{esc(self.base_text)}</td>"
            f"<td style='{cell}'>{esc(self.steered_text)}</td></tr></table>",
        ]
        if self.error:
            parts.append(f"<div style='color:#d32f2f'><b>Error:</b> {esc(self.error)}</div>")
        if self.warnings:
            parts.append("<ul>")
            for w in self.warnings:
                level = esc(str(w.get("level", "")))
                message = esc(str(w.get("message", "")))
                parts.append(f"<li style='white-space:pre-wrap'><b>{level}:</b> {message}</li>")
            parts.append("</ul>")
        if self.chart_spec:
            parts.append(f"<div>{to_svg(self.chart_spec)}</div>")
        parts.append(
            "<div style='color:#888'><i>Static snapshot; run the notebook for the live widget.</i></div>"
        )
        parts.append("</div>")
        return "\n".join(parts)

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
# Warnings (pure functions, so they can be tested without a model)
# ----------------------------------------------------------------------------------------------
def target_verdict(effect: float, null_effects: Sequence[float], strength: float, where: str) -> dict:
    """The target check's verdict line: the vector's log-odds change at this strength against what random
    directions of its norm do there (their 95 % prediction band, docs/verdicts.md). "Steers" means moved
    beyond the band in the strength's direction, "backfires" beyond it the other way."""
    lo, hi = (float(x) for x in null_band(np.asarray(null_effects, dtype=float)))
    sign = 1.0 if strength > 0 else -1.0
    band = f"{len(null_effects)} random directions of the same norm move them {lo:+.2f}..{hi:+.2f} (95 %)"
    if effect > hi or effect < lo:
        verdict = "steers" if (effect - (hi if effect > hi else lo)) * sign > 0 else "backfires"
    else:
        verdict = "no_detectable_effect"
    words = {"steers": "steers", "backfires": "backfires", "no_detectable_effect": "no detectable effect"}
    level = {"steers": "ok", "backfires": "warning", "no_detectable_effect": "notice"}[verdict]
    return {
        "level": level,
        "message": f"Target check ({where}): {words[verdict]} — the target's log-odds moved "
        f"{effect:+.2f}; {band}.",
        "verdict": verdict,
        "protocol": "target",
    }


def target_warnings(
    strengths: Sequence[float],
    vector_curve: Sequence[float],
    random_curve: Sequence[float] | None,
    strength: float,
    targets: Sequence[str],
) -> list[dict]:
    """Warnings from the log-odds of target over contrast across strengths (sorted ascending)."""
    lam = np.asarray(strengths, dtype=float)
    d = np.asarray(vector_curve, dtype=float)
    target, contrast = targets
    out = []
    zero = int(np.argmin(np.abs(lam)))
    here = int(np.argmin(np.abs(lam - strength)))
    effect = float(d[here] - d[zero])
    if strength != 0 and abs(effect) > AGAINST_EPS and math.copysign(1, effect) != math.copysign(1, strength):
        moved = "more" if effect > 0 else "less"
        out.append(
            {
                "level": "warning",
                "message": f"At strength {strength:+g} the target {target!r} became {moved} likely "
                f"relative to {contrast!r} (log-odds {effect:+.2f}), against the sign of the "
                "strength: this vector pushes the other way here. Flip the sign, try another "
                "layer, or check that the vector was built with the positive side first.",
            }
        )
    if bool(metrics.non_monotonic(d[None, :])[0]):
        values = ", ".join(f"{s:+g}: {v:+.2f}" for s, v in zip(lam, d))
        out.append(
            {
                "level": "notice",
                "message": "The effect is non-monotonic across strengths (log-odds by strength "
                f"{values}): more steering does not simply mean more effect, so a larger strength "
                "may backfire. Prefer strengths where the curve still rises.",
            }
        )
    if random_curve is not None and strength != 0:
        r = np.asarray(random_curve, dtype=float)
        rnd = float(r[here] - r[zero])
        if abs(effect) <= abs(rnd):
            out.append(
                {
                    "level": "notice",
                    "message": f"At strength {strength:+g} the vector moves the log-odds by "
                    f"{effect:+.2f}, no more than a random vector of equal norm ({rnd:+.2f}): the "
                    "change may be noise from the perturbation, not the direction.",
                }
            )
    return out


def fluency_warnings(base: Any, steered: Any, tokens: list[dict], tok: Any) -> list[dict]:
    """A warning when the steered text is degraded (``steerwidgets.fluency``'s thresholds): its mean
    log-prob under the unsteered model far below the unsteered text's, or collapsed repetition. ``tokens``
    are the colouring rows (``lp_base``: the steered text's tokens under the unsteered model)."""
    stop = {tok.eos_token_id, tok.pad_token_id} - {None}
    base_lp = [lp for t, lp in zip(base.token_ids[0], base.token_logprobs[0]) if t not in stop]
    steered_ids = [t for t in steered.token_ids[0] if t not in stop]
    steered_lp = [row["lp_base"] for row in tokens if row.get("lp_base") is not None]
    verdict = fluency_verdict(base_lp, steered_lp, steered_ids)
    if not verdict.degraded:
        return []
    return [{"level": "warning", "message": f"Degraded text: {verdict.reason}", "fluency": verdict.kind}]


def ab_warnings(result: Any, layer: int, answer_text: Any = None, limit: int = 10) -> list[dict]:
    """The A/B check's verdict lines and backfiring items, in the same words as the lab widgets.

    ``result`` is the letter protocol's :class:`~steerwidgets.engine.PropensityResult`, ``answer_text`` the
    answer-text protocol's; where the letter protocol cannot judge, the answer-text verdict comes first.
    """
    parts = []
    for res in (result, answer_text):
        if res is None:
            continue
        verdict = res.verdict(layer)
        questions = [item.question for item in res.items]
        parts.append((verdict, warnings_for(verdict, questions, res.slopes(layer), layer, limit)))
    if len(parts) == 2 and parts[0][0].verdict == "cannot_judge":
        parts.reverse()
    return [w for _, lines in parts for w in lines]


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
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


def _pieces(tok: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text, such that the pieces concatenate to the decoded string.

    Decoding prefixes keeps leading spaces right; a character split across tokens shows on the
    token that completes it (the others get "").
    """
    out, prev = [], ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        if text.endswith("\ufffd") and n < len(ids):
            out.append("")
            continue
        out.append(text[len(prev) :] if text.startswith(prev) else tok.decode([ids[n - 1]]))
        prev = text
    return out


def _builtin_origin(vector: sw.SteeringVector | None) -> str | None:
    """The built-in pair set a mean-difference vector was built from (by its data fingerprint)."""
    if vector is None or vector.method != "mean_difference" or not vector.dataset_fingerprint:
        return None
    for name in BUILTIN_VECTORS:
        try:
            if sw.data.fingerprint(sw.builtin_pairs(name)) == vector.dataset_fingerprint:
                return name
        except (sw.DatasetError, OSError):
            continue
    return None


def _vector_key(c: dict[str, Any]) -> tuple:
    """What identifies the chosen vector for caching (the phrases too, for ActAdd)."""
    if c["vector_name"] == ACTADD:
        return (ACTADD, c["actadd_positive"], c["actadd_negative"])
    return (c["vector_name"],)


def _ms(start: float, end: float | None = None) -> float:
    return round(((time.perf_counter() if end is None else end) - start) * 1000.0, 1)


def _round(x: float, digits: int = 3) -> float | None:
    return round(float(x), digits) if math.isfinite(x) else None


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _safe_filename(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "vector"
