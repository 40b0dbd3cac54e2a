"""A stand-in accelerator for CPU-only machines: tensors that *say* they live on another device.

Why this is a faithful test of placement. The bug class we guard against is "a tensor made on the CPU meets
a tensor on the accelerator" (``Expected all tensors to be on the same device``), and "a result handed back
still lives on the accelerator". Both depend only on where each tensor *reports* it lives and on the rule
the accelerator applies when an op mixes devices, not on the accelerator's arithmetic. So:

- :class:`Far` is a tensor subclass that reports ``device='meta'`` (so ``tensor.device``, ``x.to(y.device)``,
  ``torch.zeros(..., device=model.device)`` all behave as on a second device) while keeping its real values
  in a CPU tensor, so a whole model can run and its outputs can be compared with the CPU twin.
- Every op on a :class:`Far` applies CUDA's mixing rule: a CPU tensor may take part only as a 0-dim scalar
  (as CUDA allows) or as an index (``x[cpu_index]``, which CUDA also allows); any other mix raises the
  same ``RuntimeError`` CUDA raises. Moving (``.to``, ``.cpu()``, ``copy_``) is always allowed.
- :class:`StandIn` (a dispatch mode) makes factory functions called with ``device='meta'`` return
  :class:`Far` tensors with real values. It is per thread, as torch's modes are; threads that nnsight or
  the widgets start get it through :func:`patched_threads`.

A plain ``meta`` tensor (no values) cannot run a model end to end: greedy generation and every statistic
read values. A real GPU is what ``benchmarks/gpu_check.py`` is for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")

# Ops whose tensor arguments after the first may be CPU index tensors on CUDA (x[idx], x[idx] = v).
_INDEX_OPS = {"aten::index.Tensor", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"}
# Ops that move data between devices, which is always allowed.
_MOVE_OPS = {"aten::_to_copy", "aten::copy_", "aten::to", "aten::_copy_from", "aten::lift_fresh"}


class DeviceMismatch(RuntimeError):
    """Raised where CUDA would raise 'Expected all tensors to be on the same device'."""


class Far(torch.Tensor):
    """A tensor on the stand-in device: reports ``device='meta'``, computes with real CPU values."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Far:
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=DEVICE,
            requires_grad=elem.requires_grad,
        )
        out.elem = elem
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl

    def tolist(self) -> Any:  # CUDA tensors support it (a copy to the host); wrapper subclasses do not
        return self.elem.tolist()

    def numpy(self, *args: Any, **kwargs: Any) -> Any:  # as CUDA: numpy needs the host
        raise TypeError("can't convert meta (stand-in accelerator) tensor to numpy; use Tensor.cpu() first")

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Far({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _run(func, args, kwargs or {})


def _is_far_device(value: Any) -> bool:
    if value is None:
        return False
    return torch.device(value).type == DEVICE.type


def _check_mix(name: str, args: tuple, kwargs: dict) -> None:
    flat, _ = tree_flatten((args[1:], kwargs) if name in _INDEX_OPS else (args, kwargs))
    if name in _INDEX_OPS:  # the indices may be CPU tensors; self and the values may not
        flat = [args[0], *[v for v in flat if isinstance(v, torch.Tensor) and v.is_floating_point()]]
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    if any(isinstance(t, Far) for t in tensors) and any(
        not isinstance(t, Far) and t.device.type == "cpu" and t.dim() > 0 for t in tensors
    ):
        shapes = [(type(t).__name__, tuple(t.shape)) for t in tensors]
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found at least two devices, meta "
            f"(stand-in accelerator) and cpu! (in {name}, tensors {shapes})"
        )
    bare = [t for t in tensors if not isinstance(t, Far) and t.device.type == DEVICE.type]
    if bare:
        raise DeviceMismatch(f"a value-less meta tensor reached {name}; it was made outside the stand-in")


def _unwrap(value: Any) -> Any:
    return value.elem if isinstance(value, Far) else value


def _run(func: Any, args: tuple, kwargs: dict) -> Any:
    name = func._schema.name + ("." + func._schema.overload_name if func._schema.overload_name else "")
    base = func._schema.name
    kwargs = dict(kwargs)
    to_far = _is_far_device(kwargs.get("device"))
    if to_far:
        kwargs["device"] = torch.device("cpu")
    flat, _ = tree_flatten((args, kwargs))
    has_far = any(isinstance(t, Far) for t in flat)
    if base not in _MOVE_OPS and not to_far:
        _check_mix(name if base not in ("aten::index_put_", "aten::index_put") else base, args, kwargs)
    if base == "aten::_to_copy" and "device" in kwargs and not to_far:
        return func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))  # to the CPU: a plain tensor
    if base == "aten::copy_":  # dst.copy_(src) between devices is allowed; dst keeps its kind
        dst, src = args[0], args[1]
        _unwrap(dst).copy_(_unwrap(src), *args[2:])
        return dst
    if not has_far and not to_far:
        return func(*args, **kwargs)
    inputs = {id(t.elem): t for t in flat if isinstance(t, Far)}
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))

    def wrap(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and not isinstance(value, Far):
            same = inputs.get(id(value))  # an in-place op returns its own input
            return Far(value) if same is None else same
        return value

    return tree_map(wrap, out)


class StandIn(TorchDispatchMode):
    """Factory functions with ``device='meta'`` (and ``.to('meta')``) give :class:`Far` tensors."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _run(func, args, kwargs or {})


class StandInFactories(TorchFunctionMode):
    """``torch.tensor(data, device='meta')`` and other Python-level factories: real values, then wrapped.

    (``torch.tensor`` copies its data onto the device below the dispatcher, where :class:`StandIn` would
    only see a value-less result.)
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        flat, _ = tree_flatten(args)
        if not _is_far_device(kwargs.get("device")) or any(isinstance(t, torch.Tensor) for t in flat):
            return func(*args, **kwargs)  # moves of tensors go through the dispatcher (autograd intact)
        out = func(*args, **{**kwargs, "device": torch.device("cpu")})
        return tree_map(
            lambda t: Far(t) if isinstance(t, torch.Tensor) and not isinstance(t, Far) else t, out
        )


@contextmanager
def modes() -> Iterator[None]:
    with StandInFactories(), StandIn():
        yield


@contextmanager
def patched_threads() -> Iterator[None]:
    """Threads started inside the block run under :class:`StandIn` too (torch's modes are per thread)."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        with modes():
            original(self)

    threading.Thread.run = run
    try:
        yield
    finally:
        threading.Thread.run = original


@contextmanager
def stand_in() -> Iterator[None]:
    """The stand-in accelerator, in this thread and in threads started inside the block."""
    with patched_threads(), modes():
        yield


def to_far(module: torch.nn.Module) -> torch.nn.Module:
    """Move a module's parameters and buffers onto the stand-in device (values kept)."""
    return module._apply(lambda t: t if isinstance(t, Far) else Far(t.detach()))


def real(value: Any) -> Any:
    """The CPU values behind a (nest of) tensors."""
    return tree_map(lambda t: t.elem if isinstance(t, Far) else t, value)
