"""What to change in the residual stream, and where: the ``Steering`` spec, position masks and operators.

Operators live in a registry (:data:`OPERATORS`, name → function): a new one is one function under
``@register_operator("name")``, and ``Steering(..., operator="name")`` then works everywhere.

Positions index the token sequence the model sees: prompt tokens are ``0 .. n-1`` and the *k*-th generated
token sits at ``n + k``. The first generated token is predicted at position ``n-1`` (the last prompt token),
so ``"generated"`` steering does not change the first new token; ``"last"`` or ``"continuation"`` does.
Everything here is pure tensor code; the engine calls it inside nnsight traces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from .vectors import SteeringVector, VectorError

PositionSpec = str | int | slice | Sequence[int]
PRESETS = ("all", "prompt", "generated", "last", "continuation", "front")
_SLICE_RE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


class SteeringError(ValueError):
    """A steering request that cannot be applied; the message names the fix."""


@dataclass(frozen=True)
class AffineMap:
    """h ↦ W(h − μ_src) + μ_tgt at one layer (Singh et al. 2024), used as ``Steering.vector``.

    With ``operator="affine"`` a strength λ interpolates: h' = h + λ·(W(h − μ_src) + μ_tgt − h), so λ = 0
    is the unsteered model and λ = 1 the full map. ``direction()`` of such a steering is the shift of the
    mean, μ_tgt − μ_src (what norm ratios and relative strengths are measured against).
    """

    weight: torch.Tensor  # [d, d]
    mu_src: torch.Tensor  # [d]
    mu_tgt: torch.Tensor  # [d]
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("weight", "mu_src", "mu_tgt"):
            value = torch.as_tensor(getattr(self, name)).detach().to(torch.float32).cpu()
            object.__setattr__(self, name, value)
        d = self.mu_src.shape[-1] if self.mu_src.ndim == 1 else -1
        if self.mu_src.ndim != 1 or self.mu_tgt.shape != self.mu_src.shape or self.weight.shape != (d, d):
            raise VectorError(
                f"an AffineMap needs weight [d, d] and means [d]; got {tuple(self.weight.shape)}, "
                f"{tuple(self.mu_src.shape)}, {tuple(self.mu_tgt.shape)}"
            )
        if not all(torch.isfinite(t).all() for t in (self.weight, self.mu_src, self.mu_tgt)):
            raise VectorError("the affine map contains NaN or inf")
        object.__setattr__(self, "_placed", {})

    def __getstate__(self) -> dict:
        # The device copies are a cache: they neither pickle (remote runs ship the map) nor compare.
        return {k: v for k, v in self.__dict__.items() if k != "_placed"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_placed", {})

    def on(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, μ_src, μ_tgt) on ``like``'s device and in its dtype, copied once per (device, dtype): a
        d×d map moved at every generated token would cost more than the step it edits."""
        key = (like.device, like.dtype)
        placed = self._placed.get(key)
        if placed is None:
            placed = tuple(to_like(t, like) for t in (self.weight, self.mu_src, self.mu_tgt))
            self._placed[key] = placed
        return placed

    @property
    def shift(self) -> torch.Tensor:
        return self.mu_tgt - self.mu_src

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The full map W(h − μ_src) + μ_tgt on the last dimension (on ``hidden``'s device and dtype)."""
        w, mu_src, mu_tgt = self.on(hidden)
        return (hidden - mu_src) @ w.T + mu_tgt


@dataclass(frozen=True)
class Steering:
    """Add ``strength * vector[layer]`` to the output of block ``layer`` at ``positions``.

    ``relative=True`` reads ``strength`` as a multiple of the mean residual norm at that layer, so
    ``strength=0.5`` means ``‖λv‖ = 0.5 · mean‖h‖``. ``operator`` is ``"add"``, ``"ablate"`` (remove the
    component along v), ``"clamp"`` (set that component to ``strength · ‖v‖``), ``"add_norm_preserving"``
    (add, then rescale each position to its old norm, as ICV does) or ``"affine"`` (``vector`` is an
    :class:`AffineMap`; see there).
    """

    vector: SteeringVector | torch.Tensor | AffineMap
    layer: int
    strength: float = 1.0
    positions: PositionSpec = "all"
    operator: str = "add"
    relative: bool = False

    def __post_init__(self) -> None:
        # A raw tensor is kept on the CPU in float32, as SteeringVector keeps its vectors: results that
        # carry this steering back (GenerationResult.steering) then hold no device memory.
        if isinstance(self.vector, torch.Tensor):
            object.__setattr__(self, "vector", self.vector.detach().to(torch.float32).cpu())

    def direction(self) -> torch.Tensor:
        if isinstance(self.vector, AffineMap):
            return self.vector.shift
        vec = self.vector[self.layer] if isinstance(self.vector, SteeringVector) else self.vector
        # On the CPU whatever the tensor's device: the engine moves it to each layer's device when it meets
        # the hidden state, and norms, masks and ratios are computed beside other CPU values.
        return torch.as_tensor(vec, dtype=torch.float32).detach().cpu()

    def operand(self) -> torch.Tensor | AffineMap:
        """What :func:`apply_operator` needs: the direction, or the map itself for ``"affine"``."""
        return self.vector if isinstance(self.vector, AffineMap) else self.direction()

    def validate(self, model: Any) -> None:
        """Check everything that can be checked before a forward pass; raise with the fix."""
        model.check_layer(self.layer)
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)):
            raise SteeringError(f"strength must be a number, got {self.strength!r}")
        if not math.isfinite(self.strength):
            raise SteeringError(f"strength must be finite, got {self.strength}; use e.g. 4.0")
        if self.operator not in OPERATORS:
            raise SteeringError(f"unknown operator {self.operator!r}; use one of {tuple(OPERATORS)}")
        if isinstance(self.vector, SteeringVector):
            self.vector.check_model(model)
        if (self.operator == "affine") != isinstance(self.vector, AffineMap):
            raise SteeringError(
                "operator 'affine' goes with an AffineMap as vector (and an AffineMap only with "
                "operator='affine'); build one with steerwidgets.methods.affine(...)"
            )
        vec = self.direction()
        if vec.shape[-1] != model.d_model:
            raise VectorError(
                f"vector has size {vec.shape[-1]} but {model.name} has d_model {model.d_model}; "
                "build the vector on this model"
            )
        if not torch.isfinite(vec).all():
            raise VectorError("the steering vector contains NaN or inf")
        if vec.ndim == 2 and self.operator != "add":
            raise SteeringError("a per-position (ActAdd) vector can only be used with operator='add'")
        if vec.ndim == 2 and self.positions not in ("all", "front"):
            raise SteeringError(
                "a per-position (ActAdd) vector is added at the first positions of the user's text; "
                "use positions='front' (or 'all')"
            )
        if self.operator == "affine" and self.relative:
            raise SteeringError("an affine map's strength is an interpolation weight; use relative=False")
        if self.operator in ("ablate", "clamp") and float(vec.norm()) == 0.0:
            raise SteeringError(f"operator {self.operator!r} needs a non-zero vector")
        check_position_spec(self.positions)


def to_like(value: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` on ``like``'s device, in ``dtype`` (default: ``like``'s dtype); no copy when already there.

    Steering meets the model at the point of use: vectors, masks and scales are made on the CPU (seeded,
    reproducible on any machine) and moved to whatever device the hidden state they edit lives on, so a
    model split over several GPUs (``device_map="auto"``) is edited layer by layer on each layer's device.
    """
    return value.to(device=like.device, dtype=like.dtype if dtype is None else dtype)


def check_position_spec(spec: PositionSpec) -> None:
    """Raise ``SteeringError`` for a spec that can never be resolved (typos, wrong types)."""
    if isinstance(spec, str):
        text = spec.strip()
        if text in PRESETS:
            return
        match = _SLICE_RE.match(text)
        if match:
            start, stop = (int(g) if g is not None else None for g in match.groups())
            _check_slice_selects(start, stop, spec)
            return
        try:
            [int(part) for part in text.split(",")]
            return
        except ValueError:
            pass
        raise SteeringError(
            f"unknown position spec {spec!r}; use one of {PRESETS}, an index like '-1', "
            "a list like '3,4,5' or a slice like '-3:'"
        )
    if isinstance(spec, bool):
        raise SteeringError(f"positions must not be a bool, got {spec!r}")
    if isinstance(spec, slice):
        for part in (spec.start, spec.stop, spec.step):
            if part is not None and (isinstance(part, bool) or not isinstance(part, int)):
                raise SteeringError(f"position slices take ints, got {spec!r}; e.g. slice(-3, None)")
        if spec.step not in (None, 1):
            raise SteeringError(f"position slices must have step 1, got {spec!r}")
        _check_slice_selects(spec.start, spec.stop, spec)
        return
    if isinstance(spec, int):
        return
    if isinstance(spec, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        if len(spec) == 0:
            raise SteeringError("an empty list of positions steers nothing; pass at least one index")
        return
    raise SteeringError(f"cannot read positions={spec!r}; use a preset, an int, a list or a slice")


def _check_slice_selects(start: int | None, stop: int | None, spec: Any) -> None:
    """Raise for a slice that selects no position whatever the prompt length (e.g. ``5:2`` or ``:0``)."""
    if stop == 0 or (
        start is not None and stop is not None and (start >= 0) == (stop >= 0) and stop <= start
    ):
        raise SteeringError(
            f"positions={spec!r} selects no token, so nothing would be steered; a slice start:stop needs "
            "stop > start (e.g. '2:5', or '-3:' for the last three prompt tokens)"
        )


def check_selects(spec: PositionSpec, mask: torch.Tensor) -> None:
    """Raise when an explicit index/slice spec selects nothing in this batch (presets are left alone)."""
    if isinstance(spec, str) and spec.strip() in PRESETS:
        return
    if not bool(mask.any()):
        raise SteeringError(
            f"positions={spec!r} selects no token of this sequence, so nothing would be steered; "
            "pick indices inside the prompt (0..n-1, or -n..-1 from its end) or use 'all'"
        )


def position_mask(
    spec: PositionSpec, prompt_len: int, total_len: int, user_start: int = 0, front_len: int = 0
) -> torch.Tensor:
    """Boolean mask over ``total_len`` positions for one sequence whose prompt has ``prompt_len`` tokens.

    Non-negative indices count from the first prompt token (and may reach generated tokens);
    negative indices count back from the end of the prompt (``-1`` is the last prompt token).
    ``user_start`` is where the user's own text begins inside a chat template (for ``"front"``).
    """
    check_position_spec(spec)
    if prompt_len < 1:
        raise SteeringError("the prompt is empty; type at least one token of prompt")
    mask = torch.zeros(total_len, dtype=torch.bool)
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            mask[:] = True
            return mask
        if text == "prompt":
            mask[:prompt_len] = True
            return mask
        if text == "generated":
            mask[prompt_len:] = True
            return mask
        if text == "last":
            mask[prompt_len - 1] = True
            return mask
        if text == "continuation":
            mask[prompt_len - 1 :] = True
            return mask
        if text == "front":
            if user_start + front_len > prompt_len:
                raise SteeringError(
                    f"the per-position vector spans {front_len} tokens but the prompt has only "
                    f"{prompt_len - user_start} tokens of user text; use a longer prompt or shorter "
                    "ActAdd phrases"
                )
            mask[user_start : user_start + front_len] = True
            return mask
        match = _SLICE_RE.match(text)
        if match:
            start, stop = (int(g) if g is not None else None for g in match.groups())
            spec = slice(start, stop)
        else:
            spec = [int(part) for part in text.split(",")]
    if isinstance(spec, slice):
        if spec.step not in (None, 1):
            raise SteeringError("position slices must have step 1")
        start = _absolute(spec.start, prompt_len, total_len, default=0, for_slice=True)
        stop = _absolute(spec.stop, prompt_len, total_len, default=total_len, for_slice=True)
        mask[start:stop] = True
        return mask
    indices = [spec] if isinstance(spec, int) else list(spec)
    for index in indices:
        mask[_absolute(index, prompt_len, total_len)] = True
    return mask


def _absolute(
    index: int | None, prompt_len: int, total_len: int, default: int = 0, for_slice: bool = False
) -> int:
    if index is None:
        return default
    absolute = prompt_len + index if index < 0 else index
    upper = total_len if for_slice else total_len - 1
    if absolute < 0 or absolute > upper:
        raise SteeringError(
            f"position {index} is outside the sequence: the prompt has {prompt_len} tokens "
            f"(indices 0..{prompt_len - 1} or -{prompt_len}..-1) and {total_len - prompt_len} "
            "generated tokens follow"
        )
    return absolute


#: An operator edits hidden states: ``fn(hidden, vec, scale) -> edited`` at every position (the caller masks
#: where it applies). ``hidden`` is float32 ``[..., d]``; ``vec`` is the direction ``[d]`` in that dtype (an
#: :class:`AffineMap` for ``"affine"``); ``scale`` broadcasts against ``hidden[..., :1]``.
Operator = Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]

#: The operators by name, in registration order; filled by :func:`register_operator`.
OPERATORS: dict[str, Operator] = {}


def register_operator(name: str) -> Callable[[Operator], Operator]:
    """Register ``fn(hidden, vec, scale) -> edited`` as operator ``name`` (decorator; returns ``fn``).

    Afterwards ``Steering(vector, layer, strength, operator=name)`` validates and every engine call applies
    it. Remove one again with ``del OPERATORS[name]``.
    """
    if not isinstance(name, str) or not name:
        raise SteeringError(f"an operator's name must be a non-empty str, got {name!r}")

    def register(fn: Operator) -> Operator:
        OPERATORS[name] = fn
        return fn

    return register


@register_operator("add")
def _add(hidden: torch.Tensor, vec: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return hidden + scale * vec


@register_operator("ablate")
def _ablate(hidden: torch.Tensor, vec: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    unit = vec / vec.norm()
    projection = (hidden * unit).sum(-1, keepdim=True)
    return hidden - projection * unit


@register_operator("clamp")
def _clamp(hidden: torch.Tensor, vec: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    unit = vec / vec.norm()
    projection = (hidden * unit).sum(-1, keepdim=True)
    removed = hidden - projection * unit
    return removed + scale * vec.norm() * unit


@register_operator("add_norm_preserving")
def _add_norm_preserving(hidden: torch.Tensor, vec: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    added = hidden + scale * vec
    return added * (hidden.norm(dim=-1, keepdim=True) / added.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@register_operator("affine")
def _affine(hidden: torch.Tensor, vec: AffineMap, scale: torch.Tensor) -> torch.Tensor:
    return hidden + scale * (vec(hidden) - hidden)


def apply_operator(
    hidden: torch.Tensor, vec: torch.Tensor | AffineMap, scale: torch.Tensor, operator: str
) -> torch.Tensor:
    """The edited hidden states at every position (the caller masks where it applies).

    ``scale`` broadcasts against ``hidden[..., :1]`` (one multiplier per row, per position, or both).
    The edit is computed in float32 and returned in ``hidden``'s dtype, so bf16/fp16 models work and
    a float32 model's numbers are unchanged; ``vec`` and ``scale`` are moved to ``hidden``'s device.
    ``operator`` is looked up in :data:`OPERATORS`.
    """
    if isinstance(scale, torch.Tensor):
        scale = scale.to(hidden.device)
    if hidden.dtype == torch.float32:
        return _apply_operator(hidden, vec, scale, operator)
    return _apply_operator(hidden.float(), vec, scale, operator).to(hidden.dtype)


def _apply_operator(
    hidden: torch.Tensor, vec: torch.Tensor | AffineMap, scale: torch.Tensor, operator: str
) -> torch.Tensor:
    if operator == "affine" or isinstance(vec, AffineMap):
        if not isinstance(vec, AffineMap) or operator != "affine":
            raise SteeringError("operator 'affine' needs an AffineMap (and an AffineMap needs 'affine')")
    else:
        vec = to_like(vec, hidden)
    fn = OPERATORS.get(operator)
    if fn is None:
        raise SteeringError(f"unknown operator {operator!r}; use one of {tuple(OPERATORS)}")
    return fn(hidden, vec, scale)


def as_list(steering: Steering | Sequence[Steering] | None) -> list[Steering]:
    if steering is None:
        return []
    if isinstance(steering, Steering):
        return [steering]
    if not isinstance(steering, (list, tuple)):
        raise SteeringError(
            f"expected Steering objects, got {type(steering).__name__}; wrap a vector as "
            "sw.Steering(vector, layer, strength)"
        )
    items = list(steering)
    for item in items:
        if not isinstance(item, Steering):
            raise SteeringError(f"expected Steering objects, got {type(item).__name__}")
    return items


def vector_label(vector: Any) -> str:
    """A short name for a steering's vector: where it came from (``meta['source']``, set by
    :func:`~steerwidgets.stack.load_steerings`), else its method (``"caa"``, ``"affine"``, ``"tensor"``)."""
    if isinstance(vector, SteeringVector):
        return str(vector.meta.get("source") or vector.method)
    if isinstance(vector, AffineMap):
        return str(vector.meta.get("source") or "affine")
    return "tensor"


def steering_label(steering: Steering, name: str | None = None) -> str:
    """``"sentiment@10"``: the vector's name (or ``name``) at the steering's layer."""
    return f"{name or vector_label(steering.vector)}@{steering.layer}"


def stack_label(steerings: Steering | Sequence[Steering], names: Sequence[str | None] | None = None) -> str:
    """``"sentiment@10 + formality@14"``: a stack's label, in application order."""
    items = as_list(steerings)
    names = list(names) if names is not None else [None] * len(items)
    return " + ".join(steering_label(item, name) for item, name in zip(items, names))


def check_steerings(steerings: Steering | Sequence[Steering] | None, model: Any) -> list[Steering]:
    """A stack of steerings as a list, each validated against ``model``.

    Errors name the bad entry by its index and label (``steering [1] (formality@14): ...``), so a long
    stack says which row to fix. An empty stack is allowed (nothing is steered).
    """
    require_model(model, "check_steerings")
    if steerings is not None and not isinstance(steerings, (Steering, list, tuple)):
        raise SteeringError(
            f"a stack of steerings is a list of sw.Steering, got {type(steerings).__name__}; e.g. "
            "[sw.Steering(v1, 10, 4.0), sw.Steering(v2, 14, 2.0)] (or sw.load_steerings(spec, model))"
        )
    items = list(steerings) if isinstance(steerings, (list, tuple)) else as_list(steerings)
    for index, item in enumerate(items):
        if not isinstance(item, Steering):
            raise SteeringError(
                f"steering [{index}] is a {type(item).__name__}, not a sw.Steering; wrap it as "
                "sw.Steering(vector, layer, strength)"
            )
        try:
            item.validate(model)
        except (ValueError, TypeError) as exc:  # SteeringError, VectorError, the layer checks
            raise type(exc)(f"steering [{index}] ({steering_label(item)}): {exc}") from exc
    return items


# The steerings of enclosing ``steered(...)`` blocks, as (model, steering) pairs, outermost first. A
# ContextVar, so a block steers only the thread (or asyncio task) that entered it: a global registry keyed by
# model would also steer other threads' calls on the same model.
_ACTIVE: ContextVar[tuple[tuple[Any, Steering], ...]] = ContextVar("steerwidgets_active", default=())


@contextmanager
def steered(model: Any, *steerings: Steering | Sequence[Steering]) -> Iterator[Any]:
    """Apply ``steerings`` (several, or one list: a stack) to every engine call on ``model`` inside the
    ``with`` block.

    Nothing is written into the model: the engine adds these to each nnsight trace it runs, so leaving the
    block — normally, by an exception or by a cancel — leaves the unsteered model, bit for bit. Only calls
    from the same thread or asyncio task are steered (other threads using the model are not).
    """
    require_model(model, "steered")
    if len(steerings) == 1 and isinstance(steerings[0], (list, tuple)):  # steered(model, stack)
        steerings = tuple(steerings[0])
    check_steerings(list(steerings), model)
    token = _ACTIVE.set(_ACTIVE.get() + tuple((model, item) for item in steerings))
    try:
        yield model
    finally:
        _ACTIVE.reset(token)


def active_steerings(model: Any) -> list[Steering]:
    """Steerings of enclosing ``steered(...)`` blocks for this model in this thread/task, outermost first."""
    return [item for owner, item in _ACTIVE.get() if owner is model]


_MODEL_ATTRS = ("nn", "tokenizer", "n_layers", "d_model", "block", "check_layer")


def require_model(model: Any, where: str) -> None:
    """Raise ``TypeError`` naming the fix unless ``model`` is a loaded ``SteerableModel`` (or quacks like it).

    Without this a raw transformers model or a model name fails deep inside the engine with an AttributeError.
    """
    if all(hasattr(model, attr) for attr in _MODEL_ATTRS):
        return
    if model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        fix = f"load it first: model = sw.load_model({'' if model is None else repr(str(model))})"
    elif isinstance(model, torch.nn.Module):
        fix = "wrap it first: model = sw.load_model(hf_model, tokenizer=tokenizer)"
    else:
        fix = "pass the model returned by sw.load_model()"
    raise TypeError(
        f"{where}() needs a steerwidgets model (SteerableModel), got {type(model).__name__}; {fix}"
    )
