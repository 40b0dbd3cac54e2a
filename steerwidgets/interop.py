"""Exchange vectors with other tools: llama.cpp / repeng GGUF control vectors and steering-vectors.

Layer convention (checked against the sources, not assumed):

- steerwidgets layer ``L`` is the *output* of decoder block ``L`` (0-based), i.e. ``model.layers[L]``.
- llama.cpp reads ``direction.N`` into its per-layer tensor ``N`` and adds it with ``build_cvec(cur, il)``
  right after block ``il``'s final residual add, at every position, prompt included. The loader stores
  ``direction.N`` at offset ``N − 1`` only because it never keeps data for layer 0 (``direction.0`` is
  rejected as an invalid index); the apply step reads that offset back into tensor ``il = N``. So
  ``direction.N`` acts on the output of 0-based block ``N`` — the same place as steerwidgets layer ``N``.
- repeng's ``ControlVector.directions[k]`` is applied to ``model.layers[k]``'s output and exported as
  ``direction.k``; recent repeng also *reads* at that block's output (``hidden_states[k + 1]``).

So the mapping is the identity: ``direction.N`` ⇄ steerwidgets layer ``N``. Layer 0 cannot be exported
(llama.cpp refuses index 0), and several tensors with one index are summed on import, as llama.cpp does.

steering-vectors (``SteeringVector.layer_activations``, ``layer_type="decoder_block"``) also adds to the
output of ``model.layers[L]``, so its layer dict maps one to one. Its own files are ``torch.save``
pickles, which can run code when loaded: they are refused here; save the dict as safetensors instead.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .vectors import SteeringVector, VectorError

ARCH = "controlvector"
_META_KEY = "steerwidgets.metadata"
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}
_KEY_RE = re.compile(r"^(?:.*?[._-])?(\d+)$")
_SAFETENSORS_HINT = (
    "save it as safetensors where it was made, e.g.\n"
    "    from safetensors.torch import save_file\n"
    "    save_file({str(k): v.contiguous() for k, v in sv.layer_activations.items()}, 'vector.safetensors')"
)


def export_gguf(vector: SteeringVector, path: str | Path, *, model_hint: str | None = None) -> Path:
    """Write a llama.cpp / repeng control-vector GGUF: f32 tensors ``direction.<layer>``.

    ``model_hint`` (``controlvector.model_hint``) defaults to the vector's model id; llama.cpp ignores it,
    repeng requires it. steerwidgets' provenance is kept under ``steerwidgets.metadata`` (JSON).
    Use with ``llama-cli --control-vector FILE`` (or ``--control-vector-scaled FILE λ``).
    """
    import gguf

    if 0 in vector.directions:
        raise VectorError(
            "llama.cpp cannot steer layer 0 (it rejects 'direction.0'); drop it first, e.g. "
            "SteeringVector({k: v for k, v in vec.directions.items() if k > 0}, ...)"
        )
    for layer, vec in vector.directions.items():
        if vec.ndim != 1:
            raise VectorError(
                f"layer {layer} has a per-position (ActAdd) direction {tuple(vec.shape)}; GGUF control "
                "vectors hold one [d_model] direction per layer"
            )
    path = Path(path)
    hint = model_hint if model_hint is not None else (vector.meta.get("model_hint") or vector.model_id)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", str(hint))
    writer.add_uint32(f"{ARCH}.layer_count", len(vector.directions))
    writer.add_string(_META_KEY, json.dumps(vector.metadata()))
    for layer, vec in vector.directions.items():
        writer.add_tensor(f"direction.{layer}", vec.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _field_text(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else str(value)


def import_gguf(path: str | Path, model: Any = None) -> SteeringVector:
    """Read a llama.cpp / repeng control vector (``direction.N`` → steerwidgets layer N, see module doc).

    Raises ``VectorError`` for a file that is not a control vector; with ``model``, also checks it fits.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise VectorError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise VectorError(f"{path} is not a readable GGUF file ({exc})") from exc
    arch = _field_text(reader, "general.architecture")
    if arch != ARCH:
        raise VectorError(
            f"{path} has general.architecture={arch!r}, not {ARCH!r}: it is a model or another kind of "
            "GGUF, not a control vector"
        )
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise VectorError(f"{path}: unexpected tensor {name!r}; control vectors hold 'direction.<N>'")
        data = np.asarray(tensor.data)
        if data.dtype != np.float32 or data.ndim != 1:
            raise VectorError(f"{path}: {name} must be a 1-D float32 tensor, got {data.dtype} {data.shape}")
        layer = int(index)
        if layer == 0:
            warnings.warn(
                f"{path}: 'direction.0' is ignored by llama.cpp; keeping it as layer 0", stacklevel=2
            )
        value = torch.from_numpy(data.copy())
        directions[layer] = directions[layer] + value if layer in directions else value
    if not directions:
        raise VectorError(f"{path} holds no direction tensors")
    hint = _field_text(reader, f"{ARCH}.model_hint") or ""
    meta_raw = _field_text(reader, _META_KEY)
    saved = json.loads(meta_raw) if meta_raw else {}
    extra = dict(saved.get("meta", {}))
    extra.update(model_hint=hint, source=f"gguf:{path.name}")
    vec = SteeringVector(
        directions=directions,
        model_id=saved.get("model_id", hint),
        method=saved.get("method", "gguf control vector"),
        read_position=saved.get("read_position", ""),
        dataset_fingerprint=saved.get("dataset_fingerprint", ""),
        meta=extra,
    )
    if "created" in saved:
        vec.created = saved["created"]
    if model is not None:
        vec.check_model(model)
    return vec


def _layer_key(key: Any) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    match = _KEY_RE.match(str(key))
    if not match:
        raise VectorError(f"cannot read a layer index from key {key!r}; use keys like 12 or 'layer.12'")
    return int(match.group(1))


def from_steering_vectors(source: Any, model: Any = None, *, model_id: str = "") -> SteeringVector:
    """Import steering-vectors' per-layer tensors: a ``{layer: tensor}`` dict, an object with
    ``layer_activations`` (its ``SteeringVector``; only ``layer_type="decoder_block"``), or a
    ``.safetensors`` file of such a dict (keys ``"12"``, ``"layer.12"``, ...). Pickle files are refused.
    """
    origin = "in-memory dict"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise VectorError(
                f"{path.name}: steerwidgets never unpickles files (a {path.suffix} file can run code when "
                f"loaded). {_SAFETENSORS_HINT}"
            )
        if not path.is_file():
            raise VectorError(f"no file at {path}")
        if path.suffix.lower() != ".safetensors":
            raise VectorError(f"{path.name}: expected a .safetensors file. {_SAFETENSORS_HINT}")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                if "steerwidgets" in (fh.metadata() or {}):
                    return SteeringVector.load(path, model)
                layers = {key: fh.get_tensor(key) for key in fh.keys()}
        except (SafetensorError, OSError) as exc:
            raise VectorError(f"{path} is not a readable safetensors file ({exc})") from exc
        origin = f"safetensors:{path.name}"
    elif isinstance(source, Mapping):
        layers = dict(source)
    elif hasattr(source, "layer_activations"):
        layer_type = getattr(source, "layer_type", "decoder_block")
        if layer_type != "decoder_block":
            raise VectorError(
                f"layer_type={layer_type!r}: only decoder-block vectors (added to a block's output) map "
                "onto steerwidgets layers"
            )
        layers = dict(source.layer_activations)
        origin = "steering_vectors.SteeringVector"
    else:
        raise VectorError(
            f"cannot import {type(source).__name__}; give a {{layer: tensor}} dict, a steering-vectors "
            "SteeringVector or a .safetensors file"
        )
    directions: dict[int, torch.Tensor] = {}
    for key, value in layers.items():
        layer = _layer_key(key)
        if layer in directions:
            raise VectorError(f"layer {layer} appears twice (key {key!r})")
        tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if tensor.ndim != 1:
            raise VectorError(f"layer {layer}: expected a [d_model] tensor, got {tuple(tensor.shape)}")
        directions[layer] = tensor
    if not directions:
        raise VectorError("no layers to import")
    vec = SteeringVector(
        directions=directions,
        model_id=model_id,
        method="steering-vectors import",
        meta={"source": origin, "layer_type": "decoder_block"},
    )
    if model is not None:
        vec.check_model(model)
    return vec


def to_steering_vectors(vector: SteeringVector) -> dict[int, torch.Tensor]:
    """The ``layer_activations`` dict steering-vectors expects (decoder-block outputs, same indices)."""
    for layer, vec in vector.directions.items():
        if vec.ndim != 1:
            raise VectorError(f"layer {layer} is per-position (ActAdd); steering-vectors needs [d_model]")
    return {layer: vec.clone() for layer, vec in vector.directions.items()}
