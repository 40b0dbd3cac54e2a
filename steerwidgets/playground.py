"""The Playground's pipeline: one frozen :class:`Request` in, a stream of typed updates out.

This is the whole of what a slider move does, with no traitlets, threads or browser: the widget
(``widgets/playground.py``) turns its traits into a ``Request``, runs :meth:`Pipeline.run` on its
runner, and copies each update's :meth:`~Update.fields` onto the traits of the same names; the front
end (``js/src/playground.js``) draws those traits. The order of the updates is the order a user sees
things arrive: the steered text streams first, then the unsteered one (only when its key changed), the
colouring and top-k, the target chart and its verdict, and last the attached A/B check.

The pipeline owns every cache an update needs, each bounded and keyed by exactly what it depends on,
so a strength drag reuses the unsteered text, the prompt's tokens and the chart points already scored.

The pipeline's parts have their own modules, whose names are re-exported here:
:mod:`~steerwidgets.playground_request` (the :class:`Request`, its :class:`StackRow`s and the updates),
:mod:`~steerwidgets.playground_ab` (the attached A/B check), :mod:`~steerwidgets.playground_lines` (the
condition's and the capability's notice lines), :mod:`~steerwidgets.playground_tokens` (prompt chips,
token pieces, top-k changes), :mod:`~steerwidgets.playground_code` (copy-as-code) and
:mod:`~steerwidgets.lru` (the bounded caches).

>>> import steerwidgets as sw
>>> from steerwidgets.playground import Pipeline, Request
>>> pipe = Pipeline(sw.load_model())  # doctest: +SKIP
>>> updates = pipe.collect(Request(strength=4.0, layer=10))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import interventions, methods
from .conditional import ConditionalSteering
from .data import builtin_pairs
from .engine import GenerationCancelled, generate, score, score_choices
from .fluency import fluency_warnings
from .interventions import Steering, SteeringError, check_position_spec, position_mask
from .lru import LRU
from .playground_ab import AB_LIMIT, AB_NULL_DIRECTIONS, ab_check
from .playground_code import builtin_origin, request_code
from .playground_lines import capability_line, condition_line
from .playground_request import (
    ACTADD,
    BUILTIN_VECTORS,
    CAPABILITY_MAX,
    DEFAULT_PROMPT,
    ABVerdict,
    Chart,
    Done,
    Emit,
    FirstToken,
    Prepared,
    Request,
    Scored,
    StackRow,
    Status,
    Text,
    Update,
    Warnings,
    n_rows,
)
from .playground_tokens import TOP_K, prompt_chips, rounded, token_pieces, topk_changes
from .target_check import TargetChart, target_verdict, target_warnings
from .vectors import SteeringVector, VectorError, random_like

STREAM_INTERVAL_S = 0.05  # at most 20 streamed text updates per second
TARGET_NULL_DIRECTIONS = 8  # random directions of the vector's norm behind the target check's verdict


def builtin_vector(model: Any, name: str) -> SteeringVector:
    """Mean-difference vector of a built-in contrast set at every layer, built once per model (kept on
    the model, so every view of it shares the one build)."""
    with model.lock:
        cache = model.extra.setdefault("builtin_vectors", {})
        if name not in cache:
            cache[name] = methods.mean_difference(model, builtin_pairs(name))
        return cache[name]


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------
class Pipeline:
    """Runs Playground requests on one model and owns their caches.

    ``vectors`` are the user's named vectors (beside the built-ins and ActAdd). Not thread-safe by
    itself: one runner calls :meth:`run` at a time (the widget's).
    """

    def __init__(
        self,
        model: Any,
        vectors: Mapping[str, SteeringVector] | None = None,
        condition: ConditionalSteering | None = None,
    ):
        interventions.require_model(model, "Playground")
        self.model = model
        self.condition: ConditionalSteering | None = None
        self.similarity = LRU(32)  # prompt -> the condition's similarity (for the current condition)
        self.capability_base = LRU(4)  # items per set -> the unsteered CapabilityResult
        self.vectors: dict[str, SteeringVector] = {}
        self.base = LRU(32)  # (prompt, max_new_tokens, seed) -> unsteered Continuation
        self.tokens = LRU(32)  # prompt -> (ids, user_start, chips)
        self.points = LRU(512)  # chart point -> (log p target, log p contrast)
        self.units = LRU(64)  # chart setting -> the strength unit its grid is drawn around
        self.ab = LRU(16)  # (vector, layer, grid, relative, items) -> A/B lines
        self.actadd = LRU(8)  # (positive, negative) -> ActAdd vector
        # the A/B items' unsteered prefixes and option-swap readings (they depend only on the tokens): both
        # protocols' prompts for AB_LIMIT items and the swap, so a strength or layer change runs suffixes only
        self.ab_prefixes = LRU(2 * AB_LIMIT + 2)
        for name, vector in (vectors or {}).items():
            self.add_vector(name, vector)
        self.set_condition(condition)

    # --- vectors ----------------------------------------------------------------------------------
    @property
    def vector_names(self) -> list[str]:
        return [*BUILTIN_VECTORS, *self.vectors, ACTADD]

    def add_vector(self, name: str, vector: SteeringVector) -> None:
        if not isinstance(vector, SteeringVector):
            raise TypeError(f"vectors[{name!r}] must be a SteeringVector, got {type(vector).__name__}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"a vector's name must be a non-empty str, got {name!r}")
        if name in BUILTIN_VECTORS or name == ACTADD:
            raise ValueError(f"the vector name {name!r} is reserved; pick another name")
        self.vectors[name] = vector
        self.points.clear()  # results keyed by this name may belong to an older vector
        self.ab.clear()

    def set_condition(self, condition: ConditionalSteering | None) -> None:
        """Steer only prompts that meet ``condition`` (CAST); ``None`` steers every prompt.

        Only the condition's vector, layer, threshold and direction are used: the steering it gates is
        the Playground's own (main vector and stack), not ``condition.behaviour``.
        """
        if condition is not None:
            if not isinstance(condition, ConditionalSteering):
                raise TypeError(
                    "condition must be a sw.conditional.ConditionalSteering (e.g. "
                    f"grid_search(...).steering(cond, behaviour)) or None, got {type(condition).__name__}"
                )
            self.model.check_layer(condition.layer)
            width = int(condition.condition.directions[condition.layer].shape[-1])
            if width != int(self.model.d_model):
                raise SteeringError(
                    f"the condition vector has width {width} but {self.model.name} has d_model "
                    f"{self.model.d_model}; read the condition from this model's activations"
                )
        self.condition = condition
        self.similarity.clear()

    def condition_line(self, prompt: str) -> tuple[bool, dict | None]:
        """Whether the steering applies to ``prompt`` and the line that says why (None: no condition)."""
        return condition_line(self.model, self.condition, self.similarity, prompt)

    def vector(self, request: Request) -> SteeringVector:
        name = request.vector_name
        if name in self.vectors:
            return self.vectors[name]
        if name == ACTADD:
            key = (request.actadd_positive, request.actadd_negative)
            if key not in self.actadd:
                layers = list(range(self.model.n_layers))
                self.actadd[key] = methods.actadd(self.model, key[0], key[1], layers)
            return self.actadd[key]
        if name in BUILTIN_VECTORS:
            return builtin_vector(self.model, name)
        raise VectorError(
            f"unknown vector {name!r}; pick one of {self.vector_names} "
            "or pass your own with Playground(..., vectors={'name': vector})"
        )

    def named_vector(self, name: str, where: str = "") -> SteeringVector:
        """A built-in or named vector by its chooser name (the stack's rows; not ActAdd)."""
        if name in self.vectors:
            return self.vectors[name]
        if name in BUILTIN_VECTORS:
            return builtin_vector(self.model, name)
        raise VectorError(
            f"{where}unknown vector {name!r}; pick one of {[*BUILTIN_VECTORS, *self.vectors]} "
            "or pass your own with Playground(..., vectors={'name': vector})"
        )

    def check_stack(self, request: Request) -> None:
        """The stack's checks that need no model work: known names (ActAdd refused), layers in range, the
        named vector has the layer, readable positions. Errors name the row and the fix."""
        for index, row in enumerate(request.stack):
            self.check_row(index, row)

    def check_row(self, index: int, row: StackRow) -> None:
        """One row's checks of :meth:`check_stack` (``index``: its place in the stack)."""
        where = row.where(index)
        if row.vector_name == ACTADD:
            raise SteeringError(
                f"{where}: ActAdd cannot be a stack row (its vector is per position and built from the "
                "main controls' phrases); choose ActAdd as the main vector, or pick a built-in or named "
                "vector for this row"
            )
        if row.vector_name not in BUILTIN_VECTORS and row.vector_name not in self.vectors:
            self.named_vector(row.vector_name, f"{where}: ")
        try:
            self.model.check_layer(row.layer)
            vec = self.vectors.get(row.vector_name)
            if vec is not None and row.layer not in vec.layers:
                raise VectorError(
                    f"the vector {row.vector_name!r} has no direction at layer {row.layer}; "
                    f"use one of its layers {vec.layers}"
                )
            check_position_spec(row.positions)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc

    def stack_steerings(self, request: Request) -> list[Steering]:
        """The stack's rows as steerings (after :meth:`check_stack`), each validated; errors name the row."""
        out = []
        for index, row in enumerate(request.stack):
            vector = self.named_vector(row.vector_name, f"{row.where(index)}: ")
            steering = Steering(vector, row.layer, float(row.strength), row.positions, relative=row.relative)
            try:
                steering.validate(self.model)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{row.where(index)}: {exc}") from exc
            out.append(steering)
        return out

    def default_layer(self, name: str) -> int:
        """A third of the way up: early enough to change content, late enough to keep grammar."""
        n_layers = int(self.model.n_layers)
        want = max(0, round(n_layers / 3))
        vec = self.vectors.get(name)
        if vec is not None and want not in vec.layers:
            return min(vec.layers, key=lambda layer: abs(layer - want))
        return min(want, n_layers - 1)

    def code(self, request: Request) -> str:
        """A runnable Python cell reproducing the request's steered continuation."""
        return request_code(self.model, request, self.vectors.get(request.vector_name), self.vectors)

    # --- one run ----------------------------------------------------------------------------------
    def collect(self, request: Request, cancel: threading.Event | None = None) -> list[Update]:
        """Run ``request`` and return its updates (for scripts and tests)."""
        out: list[Update] = []
        self.run(request, out.append, cancel)
        return out

    def run(
        self,
        request: Request,
        emit: Emit,
        cancel: threading.Event | None = None,
        started: float | None = None,
    ) -> dict:
        """Compute ``request``, calling ``emit`` with each update as soon as it exists.

        ``emit`` may raise to stop the run (e.g. a newer request arrived); setting ``cancel`` stops it
        at the next token or stage with :class:`GenerationCancelled`. Timings count from ``started`` (a
        ``time.perf_counter()`` value: e.g. when the slider was released; default now); returned too.
        """
        started = time.perf_counter() if started is None else started
        cancel = cancel or threading.Event()
        timings: dict[str, Any] = {}

        def check() -> None:
            if cancel.is_set():
                raise GenerationCancelled("the request was superseded or cancelled")

        model = self.model
        request.check()
        self.check_stack(request)
        t_vec = time.perf_counter()
        vector = self.vector(request)
        if time.perf_counter() - t_vec > 0.01:
            timings["vector_ms"] = _ms(t_vec)  # built in this request (counts in the total)
        check()
        steering = request.steering(vector)
        steering.validate(model)
        extra = self.stack_steerings(request)
        steerings = [steering, *extra]
        check()
        ids, user_start, chips = self._tokens(request.prompt)
        direction = steering.direction()
        spec = "front" if direction.ndim == 2 else request.positions
        front_len = direction.shape[0] if direction.ndim == 2 else 0
        new = request.max_new_tokens
        mask = position_mask(spec, len(ids), len(ids) + new, user_start, front_len)
        norms = vector.norms()
        base_key = (request.prompt, new, request.seed)
        base = self.base.get(base_key)
        emit(
            Prepared(
                prompt_tokens=chips,
                steer_mask=[bool(x) for x in mask[: len(ids)]],
                steer_generated=bool(mask[len(ids) :].any()),
                vector_norms=[float(norms.get(layer, 0.0)) for layer in range(model.n_layers)],
                base_text=base.text if base is not None else "",
            )
        )
        timings["base_cached"] = base is not None
        # 0. conditional steering: the condition decides whether this prompt is steered at all
        met, condition = self.condition_line(request.prompt)
        notes = [] if condition is None else [condition]
        if notes:
            emit(Warnings(list(notes)))
        applied = steerings if met else []

        # 1. the steered continuation, streamed (first, so the first steered token comes soonest)
        if applied:
            steered = self._generate(request, applied, "steered", emit, cancel, started, timings)
        else:  # the condition is not met: the "steered" text is the unsteered one
            if base is None:
                base = self._generate(request, None, "base", emit, cancel, started, timings)
                self.base[base_key] = base
            steered = base
            emit(Text("steered", base.text, final=True))
        timings["steered_ms"] = _ms(started)
        # 2. the unsteered continuation, only when its key changed
        if base is None:
            base = self._generate(request, None, "base", emit, cancel, started, timings)
            self.base[base_key] = base
        check()
        # 3. scoring: the unsteered model on the steered text (per-token shifts), then every chart point
        #    not cached yet (target and contrast; the vector and random directions), batched
        emit(Status("scoring"))
        chart = self._chart(request, vector, extra) if request.targets else None
        tokens = self._score(request, steered, applied, chart, check)
        emit(
            Scored(
                steered_tokens=tokens,
                topk=topk_changes(model.tokenizer, base, steered),
                norm_ratio=_finite_or_none(steered.norm_ratio),
                code=self.code(request),
                norm_ratios=[_finite_or_none(x) for x in steered.norm_ratios],
            )
        )
        # 4. the target chart against random directions of equal norm, and the warnings so far
        warnings: list[dict] = notes + fluency_warnings(base, steered, tokens, model.tokenizer)
        if chart is not None:
            spec_, lines = self._target_check(request, chart)
            emit(Chart(spec_))
            warnings += lines
        else:
            emit(Chart({}))
        timings["charts_ms"] = _ms(started)
        # 5. what the steering costs in capability (the built-in sets, the steering as applied here)
        if request.capability:
            emit(Warnings(list(warnings)))
            emit(Status("checking capability"))
            t_cap = time.perf_counter()
            line = capability_line(self.model, request.capability, applied, self.capability_base, check)
            warnings.append(line)
            timings["capability_ms"] = _ms(t_cap)
            emit(Warnings(list(warnings)))
        # 6. the attached A/B check
        if request.ab_items:
            emit(Warnings(list(warnings)))
            emit(Status("checking A/B items"))
            t_ab = time.perf_counter()

            def letter_first(lines: list[dict]) -> None:
                # the letter protocol is cheap once the items' prefixes are cached: show it while the
                # answer-text protocol (every answer token × strength) still runs
                timings["ab_letter_ms"] = _ms(t_ab)
                timings["ab_letter_done_ms"] = _ms(started)  # from the slider release, like total_ms
                emit(ABVerdict([*warnings, *lines], lines))
                emit(Status("checking A/B items (answer text)"))

            lines = ab_check(model, request, vector, extra, cancel, self.ab, self.ab_prefixes, letter_first)
            warnings += lines
            timings["ab_ms"] = _ms(t_ab)
            emit(ABVerdict(list(warnings), lines))
        timings["total_ms"] = _ms(started)
        emit(Done(dict(timings), list(warnings)))
        return timings

    # --- stages -----------------------------------------------------------------------------------
    def _tokens(self, prompt: str) -> tuple[list[int], int, list[dict]]:
        """Prompt ids, where the user's text starts, and one chip per token (cached per prompt)."""
        hit = self.tokens.get(prompt)
        if hit is None:
            hit = prompt_chips(self.model, prompt)
            self.tokens[prompt] = hit
        return hit

    def _generate(
        self,
        request: Request,
        steering: list[Steering] | None,
        run: str,
        emit: Emit,
        cancel: threading.Event,
        started: float,
        timings: dict,
    ) -> Any:
        """One continuation, streamed as :class:`Text` updates at most 20 times a second."""
        tok = self.model.tokenizer
        ids: list[int] = []
        last = [0.0]

        def on_token(_run: str, step: int, new_ids: list[int]) -> None:
            ids.append(new_ids[0])
            now = time.perf_counter()
            first = len(ids) == 1
            if first and run == "steered":
                timings["first_token_ms"] = _ms(started, now)
                emit(FirstToken(timings["first_token_ms"]))
            if first or now - last[0] >= STREAM_INTERVAL_S:
                last[0] = now
                emit(Text(run, tok.decode(ids, skip_special_tokens=True)))

        result = generate(
            self.model,
            request.prompt,
            steering,
            max_new_tokens=request.max_new_tokens,
            seed=request.seed,
            baseline=steering is None,
            on_token=on_token,
            cancel=cancel,
        )
        out = result.base if steering is None else result.steered
        emit(Text(run, out.text, final=True))
        return out

    def _score(
        self,
        request: Request,
        steered: Any,
        steering: list[Steering],
        chart: TargetChart | None,
        check: Callable[[], None],
    ) -> list[dict]:
        """Score everything the update needs in two batched passes (the steered text; the chart's points,
        each prompt once for both targets); fills the chart's point cache and returns the per-token
        shifts log p_steered − log p_base of the steered text."""
        tok = self.model.tokenizer
        prompts: list[str] = []
        completions: list[str] = []
        rows: list[Any] = []

        def add(completion: str, row_steering: Any) -> int:
            prompts.append(request.prompt)
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
        check()
        lp = score(self.model, prompts, completions, row_steerings=rows, batch_size=64) if rows else []
        points = chart.missing(self.points) if chart is not None else []
        if points:
            # each point's prompt runs once for both targets (packed candidates; same numbers as two rows)
            check()
            got = score_choices(
                self.model, [request.prompt] * len(points), [list(request.targets)] * len(points),
                row_steerings=[point_steering for _, point_steering in points], batch_size=64,
            )  # fmt: skip
            for (key, _), (target_lp, contrast_lp) in zip(points, got):
                self.points[key] = (float(target_lp.sum()), float(contrast_lp.sum()))
        if base_row is None:
            return []
        base_lp = lp[base_row].tolist()
        steered_lp = gen_lp if steered_row is None else lp[steered_row].tolist()
        return [
            {"text": piece, "shift": rounded(s - b), "lp_steered": rounded(s), "lp_base": rounded(b)}
            for piece, s, b in zip(token_pieces(tok, ids), steered_lp, base_lp)
        ]

    def _chart(self, request: Request, vector: SteeringVector, extra: list[Steering]) -> TargetChart:
        """The chart's grid: ±U, ±2U and 0 around a unit U kept while the strength stays near it, plus
        the current strength, so moving the strength slider reuses the cached points. The stack's other
        rows are on at every point (strength 0 included): the chart is the main vector's, over them."""
        strength = float(request.strength)
        setting = (
            request.prompt, tuple(request.targets), request.vector_key, request.layer,
            request.positions, request.relative, request.stack,
        )  # fmt: skip
        unit = self.units.get(setting)
        if unit is None or (strength != 0 and not unit / 4 <= abs(strength) <= 2 * unit):
            unit = abs(strength) if strength != 0 else (0.25 if request.relative else 1.0)
            self.units[setting] = unit
        nulls = [random_like(vector, seed=k) for k in range(1, TARGET_NULL_DIRECTIONS)]
        chart = TargetChart.around(setting, unit, strength, vector, random_like(vector, seed=0), nulls,
                                   request.steering)  # fmt: skip
        return dataclasses.replace(chart, background=list(extra), background_key=request.stack)

    def _target_check(self, request: Request, chart: TargetChart) -> tuple[dict, list[dict]]:
        from .charts import strength_sweep_spec

        vec_curve = chart.curve("vector", self.points)
        rnd_curve = chart.curve("random", self.points)
        strength = float(request.strength)
        title = f"layer {request.layer}, sum of token log-probs"
        spec = strength_sweep_spec(chart.grid, vec_curve, rnd_curve, strength, title=title)
        # the one random curve is drawn; the verdict compares with all the random directions instead
        lines = target_warnings(chart.grid, vec_curve, None, strength, request.targets)
        if strength != 0:
            here = chart.grid.index(strength + 0.0)
            effect = vec_curve[here] - vec_curve[chart.grid.index(0.0)]
            where = f"layer {request.layer}, positions {request.positions!r}, strength {strength:+g}"
            if request.stack:
                where += f", with {n_rows(len(request.stack))} of the stack on"
            lines.insert(0, target_verdict(effect, chart.null_effects(self.points), strength, where))
        return spec, lines


# ----------------------------------------------------------------------------------------------
# Pure helpers (tested without a model where they can be)
# ----------------------------------------------------------------------------------------------


def error_message(exc: BaseException) -> str:
    """What the widget shows for a failed run: a user error's own words; otherwise its type too."""
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, (ValueError, TypeError)):
        message = f"{type(exc).__name__}: {message}"
    return message


def _ms(start: float, end: float | None = None) -> float:
    return round(((time.perf_counter() if end is None else end) - start) * 1000.0, 1)


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


__all__ = [
    "AB_LIMIT",
    "LRU",
    "AB_NULL_DIRECTIONS",
    "ACTADD",
    "BUILTIN_VECTORS",
    "CAPABILITY_MAX",
    "DEFAULT_PROMPT",
    "TOP_K",
    "ABVerdict",
    "Chart",
    "Done",
    "FirstToken",
    "Pipeline",
    "Prepared",
    "Request",
    "Scored",
    "StackRow",
    "Status",
    "Text",
    "Update",
    "Warnings",
    "builtin_origin",
    "builtin_vector",
    "error_message",
    "prompt_chips",
    "request_code",
    "token_pieces",
    "topk_changes",
]
