"""The Playground's pipeline: one frozen :class:`Request` in, a stream of typed updates out.

This is the whole of what a slider move does, with no traitlets, threads or browser: the widget
(``widgets/playground.py``) turns its traits into a ``Request``, runs :meth:`Pipeline.run` on its
runner, and copies each update's :meth:`~Update.fields` onto the traits of the same names; the front
end (``js/src/playground.js``) draws those traits. The order of the updates is the order a user sees
things arrive: the steered text streams first, then the unsteered one (only when its key changed), the
colouring and top-k, the target chart and its verdict, and last the attached A/B check.

The pipeline owns every cache an update needs, each bounded and keyed by exactly what it depends on,
so a strength drag reuses the unsteered text, the prompt's tokens and the chart points already scored.

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
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import data, interventions, methods, prompts
from .capabilities import capability_check
from .codegen import CodeRow, render_code
from .conditional import ConditionalSteering, condition_met
from .data import ABItem, builtin_pairs
from .engine import GenerationCancelled, generate, propensity_sweep, score
from .fluency import fluency_warnings
from .interventions import Steering, SteeringError, check_position_spec, position_mask
from .target_check import TargetChart, target_verdict, target_warnings
from .vectors import SteeringVector, VectorError, random_like
from .verdicts import ab_check_lines

BUILTIN_VECTORS = ("sentiment", "formality")
ACTADD = "actadd"  # the vector chooser's entry for a quick ActAdd from two typed phrases
DEFAULT_PROMPT = "Tell me about your day."
TOP_K = 8
STREAM_INTERVAL_S = 0.05  # at most 20 streamed text updates per second
AB_LIMIT = 20
AB_GRID = (-1.0, 0.0, 1.0)  # times the strength: a slope needs no more (each point is a batch row)
AB_NULL_DIRECTIONS = 16  # random directions of the vector's norm behind the A/B check's verdicts
TARGET_NULL_DIRECTIONS = 8  # random directions of the vector's norm behind the target check's verdict
CAPABILITY_MAX = 60  # the built-in capability sets have 55–60 items


# ----------------------------------------------------------------------------------------------
# The request
# ----------------------------------------------------------------------------------------------
STACK_KEYS = ("vector_name", "layer", "strength", "positions", "relative")


@dataclass(frozen=True)
class StackRow:
    """One extra steering of the Playground's stack, applied together with the main vector: a vector by
    its chooser name (a built-in or a named vector; not ActAdd), its own layer, strength and positions."""

    vector_name: str
    layer: int
    strength: float = 4.0
    positions: str = "all"
    relative: bool = False

    @classmethod
    def from_dict(cls, row: Any, index: int = 0) -> StackRow:
        """A row from the widget's ``stack`` trait (a dict); a bad entry names the row and the fix."""
        where = f"stack row {index + 1} (stack[{index}])"
        if isinstance(row, StackRow):
            return row
        if not isinstance(row, Mapping):
            raise TypeError(
                f"{where} must be a dict like {{'vector_name': 'formality', 'layer': 10, 'strength': 4.0}}, "
                f"got {type(row).__name__}"
            )
        unknown = set(row) - set(STACK_KEYS)
        if unknown:
            raise TypeError(f"{where} has unknown keys {sorted(unknown)}; use some of {list(STACK_KEYS)}")
        if "vector_name" not in row or "layer" not in row:
            raise TypeError(f"{where} needs at least 'vector_name' and 'layer', e.g. "
                            "{'vector_name': 'formality', 'layer': 10}")  # fmt: skip
        name, layer = row["vector_name"], row["layer"]
        strength = row.get("strength", 4.0)
        positions, relative = row.get("positions", "all"), row.get("relative", False)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{where}: vector_name must be a non-empty str, got {name!r}")
        if isinstance(layer, float) and layer.is_integer():
            layer = int(layer)  # a JSON number from the front end
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{where}: layer must be an int, got {layer!r}")
        if (
            isinstance(strength, bool)
            or not isinstance(strength, (int, float))
            or not math.isfinite(strength)
        ):
            raise TypeError(f"{where}: strength must be a finite number, got {strength!r}; e.g. 4.0")
        if not isinstance(positions, str):
            raise TypeError(
                f"{where}: positions must be a str ('all', 'last', '3,4', '-3:'), got {positions!r}"
            )
        if not isinstance(relative, bool):
            raise TypeError(f"{where}: relative must be True or False, got {relative!r}")
        return cls(name, layer, float(strength), positions, relative)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Request:
    """Everything one Playground update depends on (the controls, the targets and the A/B items).

    Frozen and hashable, so caches can key on its parts and a test can build one by hand.
    """

    prompt: str = DEFAULT_PROMPT
    vector_name: str = "sentiment"
    layer: int = 0
    strength: float = 4.0
    relative: bool = False
    positions: str = "all"
    max_new_tokens: int = 32
    seed: int = 0
    actadd_positive: str = "Love"
    actadd_negative: str = "Hate"
    targets: tuple[str, str] | None = None
    ab_items: tuple[ABItem, ...] = ()
    stack: tuple[StackRow, ...] = ()  # extra steerings applied with the main one (generation, colouring)
    capability: int = 0  # items per capability set for the side-effect line (0: no capability check)

    @property
    def vector_key(self) -> tuple:
        """What identifies the chosen vector for caching (the phrases too, for ActAdd)."""
        if self.vector_name == ACTADD:
            return (ACTADD, self.actadd_positive, self.actadd_negative)
        return (self.vector_name,)

    def steering(self, vector: SteeringVector, strength: float | None = None) -> Steering:
        return Steering(
            vector,
            self.layer,
            float(self.strength if strength is None else strength),
            self.positions,
            relative=self.relative,
        )

    def check(self) -> None:
        """The checks a run makes before any model work (a bad value names itself and the fix)."""
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
            raise SteeringError(f"max new tokens must be between 1 and 1024, got {n!r}")
        if not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be a str, got {type(self.prompt).__name__}")
        n = self.capability
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= CAPABILITY_MAX:
            raise SteeringError(
                f"capability must be the number of items per capability set, 0 (off) to {CAPABILITY_MAX}, "
                f"got {n!r}; e.g. capability=10"
            )
        for index, row in enumerate(self.stack):
            if not isinstance(row, StackRow):
                raise TypeError(f"stack[{index}] must be a StackRow, got {type(row).__name__}")


# ----------------------------------------------------------------------------------------------
# The updates (field names are the widget's trait names)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Update:
    """One step of a run. :meth:`fields` is what the widget writes onto its traits."""

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Status(Update):
    status: str


@dataclass(frozen=True)
class Prepared(Update):
    """The prompt's tokens and which of them the steering touches, before any generation."""

    prompt_tokens: list
    steer_mask: list
    steer_generated: bool
    vector_norms: list
    base_text: str  # the cached unsteered text of this prompt, or "" (never another prompt's text)
    status: str = "generating"
    error: str = ""


@dataclass(frozen=True)
class Text(Update):
    """The ``run`` ("steered" or "base") continuation so far (``final`` once complete)."""

    run: str
    text: str
    final: bool = False

    def fields(self) -> dict[str, Any]:
        return {f"{self.run}_text": self.text}


@dataclass(frozen=True)
class FirstToken(Update):
    """The first steered token arrived (the latency a user feels first)."""

    ms: float

    def fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Scored(Update):
    """Per-token likelihood shifts of the steered text, the top-k next-token changes, the norm ratios
    (``norm_ratio``: the main vector's; ``norm_ratios``: one per steering, main first, then the stack)."""

    steered_tokens: list
    topk: list
    norm_ratio: float | None
    code: str
    norm_ratios: list = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class Chart(Update):
    chart_spec: dict


@dataclass(frozen=True)
class Warnings(Update):
    """Every warning so far (fluency, the target check's verdict)."""

    warnings: list


@dataclass(frozen=True)
class ABVerdict(Update):
    """The attached A/B check's lines (``lines``), and every warning with them (``warnings``)."""

    warnings: list
    lines: list

    def fields(self) -> dict[str, Any]:
        return {"warnings": self.warnings}


@dataclass(frozen=True)
class Done(Update):
    timings: dict
    warnings: list
    status: str = "done"


Emit = Callable[[Update], None]


# ----------------------------------------------------------------------------------------------
# Caches
# ----------------------------------------------------------------------------------------------
class LRU(MutableMapping):
    """A small bounded mapping: the least recently used entry goes when it is full (a drag must not grow
    memory)."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        return default

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __getitem__(self, key: Hashable) -> Any:
        return self._data[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __delitem__(self, key: Hashable) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


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
                    "condition must be a sw.ConditionalSteering (e.g. grid_search(...).steering(cond, "
                    f"behaviour)) or None, got {type(condition).__name__}"
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
        if self.condition is None:
            return True, None
        sim = self.similarity.get(prompt)
        if sim is None:
            sim = float(self.condition.similarities(self.model, [prompt])[0])
            self.similarity[prompt] = sim
        met = bool(condition_met(sim, self.condition.threshold, self.condition.direction))
        what = "the steering is applied" if met else "the steering is not applied (steered = unsteered)"
        decision = self.condition.describe(sim)
        message = f"Conditional steering (CAST), layer {self.condition.layer}: {decision}; {what}."
        return met, {"level": "notice", "message": message, "condition_met": met, "similarity": sim}

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
        where = _row_where(index, row)
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
            vector = self.named_vector(row.vector_name, f"{_row_where(index, row)}: ")
            steering = Steering(vector, row.layer, float(row.strength), row.positions, relative=row.relative)
            try:
                steering.validate(self.model)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{_row_where(index, row)}: {exc}") from exc
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
        # 3. one batched scoring pass: the unsteered model on the steered text (per-token shifts) and
        #    every chart point not cached yet (target and contrast; the vector and random directions)
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
            warnings.append(self._capability(request.capability, applied, check))
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

            lines = self._ab_check(request, vector, extra, cancel, letter_first)
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
        """Score everything the update needs in one batched pass; fills the chart's point cache and
        returns the per-token shifts log p_steered − log p_base of the steered text."""
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
        point_rows = []
        if chart is not None:
            target, contrast = request.targets
            for key, point_steering in chart.missing(self.points):
                point_rows.append((key, add(target, point_steering), add(contrast, point_steering)))
        check()
        lp = score(self.model, prompts, completions, row_steerings=rows, batch_size=64) if rows else []
        for key, t_row, k_row in point_rows:
            self.points[key] = (float(lp[t_row].sum()), float(lp[k_row].sum()))
        if base_row is None:
            return []
        base_lp = lp[base_row].tolist()
        steered_lp = gen_lp if steered_row is None else lp[steered_row].tolist()
        return [
            {"text": piece, "shift": _round(s - b), "lp_steered": _round(s), "lp_base": _round(b)}
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
                where += f", with {_rows(len(request.stack))} of the stack on"
            lines.insert(0, target_verdict(effect, chart.null_effects(self.points), strength, where))
        return spec, lines

    def _capability(self, n: int, steerings: list[Steering], check: Callable[[], None]) -> dict:
        """The capability side-effect line: accuracy on the first ``n`` items of each built-in set,
        unsteered (computed once per ``n``) vs under ``steerings``, with the paired interval's verdict."""
        base = self.capability_base.get(n)
        if base is None:
            base = capability_check(self.model, None, n=n)
            self.capability_base[n] = base
        check()
        if not steerings:
            message = base.side_effect_line() + " — nothing steered, so no change to measure"
            return {"level": "notice", "message": message, "capability": base.summary()}
        result = capability_check(self.model, steerings, n=n, baseline=base)
        line = f"{result.side_effect_line()} (first {n} items per set; Δ: the paired 95 % CI of the change)"
        level = "warning" if result.costly_sets else "notice"
        return {"level": level, "message": line, "capability": result.summary()}

    def _ab_check(
        self,
        request: Request,
        vector: SteeringVector,
        extra: list[Steering],
        cancel: threading.Event,
        letter_first: Callable[[list[dict]], None] | None = None,
    ) -> list[dict]:
        """The attached A/B check: each protocol's verdict against random directions, at the protocol's
        own positions (the letter from the last prompt token on; the answer text through the answer).
        The stack's other rows are on throughout as fixed background (absolute rows only).
        ``letter_first(lines)`` receives the letter protocol's lines as soon as they exist."""
        strength = float(request.strength)
        unit = abs(strength) if strength != 0 else 1.0
        grid = tuple(k * unit for k in AB_GRID)
        key = (request.vector_key, request.layer, grid, request.relative, request.ab_items, request.stack)
        hit = self.ab.get(key)
        if hit is not None:
            return hit
        relative = [i for i, row in enumerate(request.stack) if row.relative]
        if relative:
            i = relative[0]
            out = [
                {
                    "level": "notice",
                    "message": f"A/B check skipped: {_row_where(i, request.stack[i])} has a relative "
                    "strength, and the check holds the stack's rows on as fixed background at absolute "
                    "strengths only. Untick 'relative' on that row (strength = ratio × mean‖h‖ / ‖v‖) to "
                    "get the check.",
                }
            ]
            self.ab[key] = out
            return out
        if vector[request.layer].ndim != 1:
            out = [
                {
                    "level": "notice",
                    "message": "A/B check skipped: it needs one [d_model] direction per layer, "
                    "and an ActAdd vector is per position. Pick a built-in or CAA vector for it.",
                }
            ]
            self.ab[key] = out
            return out
        results = []
        try:
            for protocol in ("letter", "answer_text"):
                results.append(
                    propensity_sweep(
                        self.model,
                        list(request.ab_items),
                        vector,
                        request.layer,
                        grid,
                        protocol=protocol,
                        relative=request.relative,
                        null_directions=AB_NULL_DIRECTIONS,
                        cancel=cancel,
                        cache=self.ab_prefixes,
                        background=extra,
                    )
                )
                if protocol == "letter" and letter_first is not None:
                    letter_first(ab_check_lines(results[0], request.layer))
        except SteeringError as exc:
            if not results:
                out = [{"level": "notice", "message": f"A/B check skipped: {exc}"}]
                self.ab[key] = out
                return out
        out = ab_check_lines(results[0], request.layer, results[1] if len(results) > 1 else None)
        if extra:
            labels = ", ".join(_row_label(row) for row in request.stack)
            out.insert(0, {
                "level": "notice",
                "message": f"A/B check of the main vector with {_rows(len(extra))} of the stack held on at "
                f"fixed strength as background ({labels}).",
            })  # fmt: skip
        self.ab[key] = out
        return out


# ----------------------------------------------------------------------------------------------
# Pure helpers (tested without a model where they can be)
# ----------------------------------------------------------------------------------------------
def prompt_chips(model: Any, prompt: str) -> tuple[list[int], int, list[dict]]:
    """The prompt's ids, where the user's text starts, and one chip per token (``user``: typed by the
    user rather than added by the chat template)."""
    tok = model.tokenizer
    ids, user_start = prompts.tokenize_prompt(model, prompt)
    text, char_start = prompts.prompt_text(model, prompt)
    user_end = len(ids)
    if char_start or text != prompt:
        user_end = len(tok(text[: char_start + len(prompt)], add_special_tokens=False)["input_ids"])
    chips = [
        {"i": i, "text": piece, "user": user_start <= i < user_end}
        for i, piece in enumerate(token_pieces(tok, ids))
    ]
    return ids, user_start, chips


def topk_changes(tok: Any, base: Any, steered: Any, k: int = TOP_K) -> list[dict]:
    """The k next tokens whose probability changed most at the first generated position."""
    lp_b = base.first_logprobs[0].float()
    lp_s = steered.first_logprobs[0].float()
    p_b, p_s = lp_b.exp(), lp_s.exp()
    delta = p_s - p_b
    idx = delta.abs().topk(min(k, delta.numel())).indices.tolist()
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


def token_pieces(tok: Any, ids: Sequence[int]) -> list[str]:
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


def request_code(
    model: Any,
    request: Request,
    user_vector: SteeringVector | None = None,
    vectors: Mapping[str, SteeringVector] | None = None,
) -> str:
    """Python that reproduces ``request``'s steered continuation (the Playground's copy-as-code): one
    ``sw.Steering`` for the main vector, then one per stack row.

    A built-in vector (or a user vector built from a built-in set) is rebuilt from its pairs; ActAdd
    from its phrases; any other vector is loaded from a file the comment tells the user to save.
    ``user_vector`` is the main vector when it is the user's; ``vectors`` the user's named vectors (for
    the stack's rows).
    """
    vectors = dict(vectors or {})
    if user_vector is not None:
        vectors[request.vector_name] = user_vector
    rows = [
        (request.vector_name, request.layer, request.strength, request.positions, request.relative),
        *((r.vector_name, r.layer, r.strength, r.positions, r.relative) for r in request.stack),
    ]
    code_rows = []
    for name, layer, strength, positions, relative in rows:
        row = dict(layer=layer, strength=strength, positions=positions, relative=relative)
        vec = vectors.get(name) if name not in BUILTIN_VECTORS else None
        builtin = name if name in BUILTIN_VECTORS else builtin_origin(vec)
        if builtin is not None:
            layers = None
            if vec is not None and vec.layers != list(range(model.n_layers)):
                layers = vec.layers
            code_rows.append(CodeRow(builtin, source="builtin", builtin_layers=layers, **row))
        elif name == ACTADD:
            pair = (request.actadd_positive, request.actadd_negative)
            code_rows.append(CodeRow(ACTADD, source="actadd", actadd=pair, **row))
        else:
            code_rows.append(CodeRow(name, source="file", **row))
    return render_code(
        getattr(model, "name", ""),
        request.prompt,
        code_rows,
        max_new_tokens=request.max_new_tokens,
        seed=request.seed,
    )


def builtin_origin(vector: SteeringVector | None) -> str | None:
    """The built-in pair set a mean-difference vector was built from (by its data fingerprint)."""
    if vector is None or vector.method != "mean_difference" or not vector.dataset_fingerprint:
        return None
    for name in BUILTIN_VECTORS:
        try:
            if data.fingerprint(builtin_pairs(name)) == vector.dataset_fingerprint:
                return name
        except (data.DatasetError, OSError):
            continue
    return None


def _row_where(index: int, row: StackRow) -> str:
    return f"stack row {index + 1} (stack[{index}], {_row_label(row)})"


def _row_label(row: StackRow) -> str:
    return f"{row.vector_name}@{row.layer}"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def error_message(exc: BaseException) -> str:
    """What the widget shows for a failed run: a user error's own words; otherwise its type too."""
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, (ValueError, TypeError)):
        message = f"{type(exc).__name__}: {message}"
    return message


def _ms(start: float, end: float | None = None) -> float:
    return round(((time.perf_counter() if end is None else end) - start) * 1000.0, 1)


def _round(x: float, digits: int = 3) -> float | None:
    return round(float(x), digits) if math.isfinite(x) else None


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


__all__ = [
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
    "builtin_vector",
]
