"""Steering vectors: one tensor per layer plus the provenance needed to trust and reuse them.

Vectors are saved as safetensors with JSON metadata, never pickled, so loading a vector file cannot run code.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

_META_KEY = "steerwidgets"


class VectorError(ValueError):
    """A steering vector does not fit the model or the file is not a steering vector."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class SteeringVector:
    """Per-layer steering directions with provenance.

    ``directions[layer]`` is a tensor of shape ``[d_model]`` (added at every steered position) or
    ``[n_positions, d_model]`` (ActAdd: row *i* is added at the *i*-th position of the user's text).
    """

    directions: dict[int, torch.Tensor]
    model_id: str = ""
    method: str = "custom"
    read_position: str = ""
    dataset_fingerprint: str = ""
    created: str = field(default_factory=_now)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise VectorError("a SteeringVector needs at least one layer")
        clean: dict[int, torch.Tensor] = {}
        sizes = set()
        for layer, vec in self.directions.items():
            if not isinstance(vec, torch.Tensor):
                vec = torch.as_tensor(vec)
            vec = vec.detach().to(torch.float32).cpu()
            if vec.ndim not in (1, 2) or vec.shape[-1] == 0:
                raise VectorError(
                    f"layer {layer}: a direction must have shape [d_model] or [positions, d_model], "
                    f"got {tuple(vec.shape)}"
                )
            if not torch.isfinite(vec).all():
                raise VectorError(f"layer {layer}: the direction contains NaN or inf")
            sizes.add(vec.shape[-1])
            clean[int(layer)] = vec
        if len(sizes) > 1:
            raise VectorError(f"all layers must share one hidden size, got {sorted(sizes)}")
        self.directions = dict(sorted(clean.items()))

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[-1]

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.directions:
            raise VectorError(
                f"this vector has no direction for layer {layer}; it has layers {self.layers}. "
                f"Build it at layer {layer} (e.g. caa(..., layers=[{layer}])) or pick one of those."
            )
        return self.directions[layer]

    def norms(self) -> dict[int, float]:
        """L2 norm per layer (for [positions, d] directions, the norm of the whole block)."""
        return {layer: float(vec.norm()) for layer, vec in self.directions.items()}

    # --- arithmetic: results keep provenance in ``method`` so a saved file says how it was made ---
    def _combine(self, other: SteeringVector, sign: float, symbol: str) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model:
            raise VectorError(f"hidden sizes differ: {self.d_model} vs {other.d_model}")
        out = {}
        for layer in sorted(set(self.directions) | set(other.directions)):
            a = self.directions.get(layer)
            b = other.directions.get(layer)
            if a is not None and b is not None and a.shape != b.shape:
                raise VectorError(f"layer {layer}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
            if a is None:
                out[layer] = sign * b
            elif b is None:
                out[layer] = a.clone()
            else:
                out[layer] = a + sign * b
        return replace(
            self, directions=out, method=f"({self.method} {symbol} {other.method})", created=_now()
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, scalar: float) -> SteeringVector:
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            return NotImplemented
        if not math.isfinite(scalar):
            raise VectorError(f"cannot scale a vector by {scalar}")
        out = {layer: vec * float(scalar) for layer, vec in self.directions.items()}
        return replace(self, directions=out, method=f"{scalar:g}*{self.method}", created=_now())

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def check_model(self, model: Any) -> None:
        """Raise if this vector cannot be applied to ``model`` (hidden size or layer mismatch)."""
        d = getattr(model, "d_model", None)
        if d is not None and d != self.d_model:
            raise VectorError(
                f"this vector has hidden size {self.d_model} (made on {self.model_id or 'unknown'}) "
                f"but {getattr(model, 'name', 'the model')} has d_model {d}; build the vector on this "
                "model instead"
            )
        n = getattr(model, "n_layers", None)
        if n is not None and max(self.layers) >= n:
            raise VectorError(
                f"this vector has layers up to {max(self.layers)} but the model has only {n} blocks"
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "method": self.method,
            "read_position": self.read_position,
            "dataset_fingerprint": self.dataset_fingerprint,
            "created": self.created,
            "d_model": self.d_model,
            "layers": self.layers,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file: tensors ``layer.<L>``, provenance as JSON metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"layer.{layer}": vec.contiguous() for layer, vec in self.directions.items()}
        save_file(tensors, str(path), metadata={_META_KEY: json.dumps(self.metadata())})
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> SteeringVector:
        """Read a vector saved by :meth:`save`; with ``model``, also check it fits that model."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise VectorError(f"no vector file at {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta_raw = (fh.metadata() or {}).get(_META_KEY)
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise VectorError(
                f"{path} is not a safetensors steering-vector file ({exc}). steerwidgets never "
                "unpickles files; re-save the vector with SteeringVector.save()"
            ) from exc
        fix = "re-save the vector with SteeringVector.save()"
        directions = {}
        for key, tensor in tensors.items():
            index = key[len("layer.") :] if key.startswith("layer.") else ""
            if not index.isdigit():
                raise VectorError(
                    f"{path}: unexpected tensor {key!r}; expected 'layer.<int>' keys (layer >= 0); {fix}"
                )
            if not tensor.is_floating_point():
                raise VectorError(f"{path}: tensor {key!r} has dtype {tensor.dtype}, not a float type; {fix}")
            directions[int(index)] = tensor
        if not directions:
            raise VectorError(f"{path} holds no 'layer.<int>' tensors, so it is not a steering vector; {fix}")
        meta = _read_meta(path, meta_raw, fix)
        try:
            vec = cls(directions=directions, **meta)
        except VectorError as exc:
            raise VectorError(f"{path}: {exc}; {fix}") from exc
        if model is not None:
            vec.check_model(model)
        return vec

    def __repr__(self) -> str:
        norms = ", ".join(f"{k}: {v:.2f}" for k, v in list(self.norms().items())[:6])
        more = "…" if len(self.directions) > 6 else ""
        return (
            f"SteeringVector(method={self.method!r}, model={self.model_id!r}, d_model={self.d_model}, "
            f"norms={{{norms}{more}}})"
        )


_TEXT_FIELDS = ("model_id", "method", "read_position", "dataset_fingerprint", "created")


def _read_meta(path: Path, raw: str | None, fix: str) -> dict[str, Any]:
    """The provenance fields of a vector file, type-checked: the file may be crafted or hand-edited."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise VectorError(f"{path}: the '{_META_KEY}' metadata is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(meta, dict):
        raise VectorError(f"{path}: the '{_META_KEY}' metadata must be a JSON object; {fix}")
    out: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        if name in meta:
            if not isinstance(meta[name], str):
                got = repr(meta[name])[:60]
                raise VectorError(f"{path}: metadata field {name!r} must be a string, got {got}; {fix}")
            out[name] = meta[name]
    if "meta" in meta:
        if not isinstance(meta["meta"], dict):
            raise VectorError(f"{path}: metadata field 'meta' must be a JSON object; {fix}")
        out["meta"] = meta["meta"]
    return out


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A random direction with the same per-layer norm: the control every steering claim needs."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer, vec in vector.directions.items():
        rnd = torch.randn(vec.shape, generator=gen)
        out[layer] = rnd * (vec.norm() / rnd.norm().clamp_min(1e-12))
    return replace(vector, directions=out, method=f"random(seed={seed}, like {vector.method})")
