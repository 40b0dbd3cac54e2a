"""Several steerings at once: a stack as a list of :class:`~steerwidgets.Steering`, and its JSON form.

A stack is applied in list order; steerings at the same layer edit that layer's output in turn (each
relative strength is measured on the unedited output). The JSON / dict form, one entry per steering::

    [{"vector": "sentiment", "layer": 10, "strength": 4},
     {"vector": "formality.safetensors", "layer": 14, "strength": 2, "positions": "all", "relative": false}]

``vector`` is a saved vector file (``.safetensors``; relative paths are read from the spec file's folder),
a built-in contrast set (``"sentiment"``, ``"formality"``: the mean difference of its pairs, as the
Playground builds it) or a name in the ``vectors`` mapping you pass (your own vectors in the notebook).
``strength`` (default 1), ``positions`` (default ``"all"``), ``relative`` (default false) and ``operator``
(default ``"add"``) are as in :class:`~steerwidgets.Steering`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .interventions import (
    OPERATORS,
    Steering,
    SteeringError,
    check_position_spec,
    check_steerings,
    require_model,
    vector_label,
)
from .vectors import SteeringVector, VectorError

SPEC_KEYS = ("vector", "layer", "strength", "positions", "relative", "operator")
EXAMPLE = '{"vector": "sentiment", "layer": 10, "strength": 4}'


def builtin_vector_names() -> list[str]:
    """Built-in contrast sets a spec may name as ``vector`` (each gives a mean-difference vector)."""
    from .data import list_builtin

    return list(list_builtin()["pairs"])


def load_steerings(
    spec: str | Path | Sequence[Mapping[str, Any] | Steering],
    model: Any,
    *,
    vectors: Mapping[str, SteeringVector] | None = None,
    base_dir: str | Path | None = None,
) -> list[Steering]:
    """A validated stack from its JSON / dict form (see the module docstring), a JSON file or JSON text.

    ``Steering`` objects in the list pass through (checked like the rest). Every error names the entry
    (``steering [1]``) and the fix; nothing is built until every entry has been read.
    """
    require_model(model, "load_steerings")
    entries, folder = _entries(spec)
    folder = Path(base_dir) if base_dir is not None else folder
    named = dict(vectors or {})
    bad = [key for key, value in named.items() if not isinstance(value, SteeringVector)]
    if bad:
        raise SteeringError(
            f"vectors[{bad[0]!r}] must be a sw.SteeringVector, got {type(named[bad[0]]).__name__}"
        )
    parsed = [
        entry if isinstance(entry, Steering) else _read_entry(i, entry) for i, entry in enumerate(entries)
    ]
    builtin_layers: dict[str, set[int]] = {}
    for entry in parsed:
        if isinstance(entry, dict) and _kind(entry["vector"], named, folder) == "builtin":
            builtin_layers.setdefault(entry["vector"], set()).add(entry["layer"])
    for i, entry in enumerate(parsed):  # layers first: a bad layer should not cost a vector build
        if isinstance(entry, dict):
            try:
                model.check_layer(entry["layer"])
            except (ValueError, TypeError) as exc:
                raise SteeringError(f"steering [{i}]: {exc}") from exc
    built: dict[str, SteeringVector] = {}
    out: list[Steering] = []
    for i, entry in enumerate(parsed):
        if isinstance(entry, Steering):
            out.append(entry)
            continue
        source = entry["vector"]
        kind = _kind(source, named, folder)
        if kind == "named":
            vector = named[source]
        elif kind == "builtin":
            if source not in built:
                built[source] = _builtin(model, source, sorted(builtin_layers[source]))
            vector = built[source]
        elif kind == "file":
            if source not in built:
                try:
                    built[source] = SteeringVector.load(_path(source, folder))
                except VectorError as exc:
                    raise VectorError(f"steering [{i}]: {exc}") from exc
                built[source].meta["source"] = source
            vector = built[source]
        else:
            choices = [*sorted(named), *builtin_vector_names()]
            raise SteeringError(
                f"steering [{i}]: vector {source!r} is not a file, a built-in set or a name you passed; "
                f"give a .safetensors path, one of {choices}, or pass vectors={{{source!r}: vector}}"
            )
        out.append(
            Steering(
                vector,
                entry["layer"],
                entry["strength"],
                entry["positions"],
                entry["operator"],
                entry["relative"],
            )
        )
    return check_steerings(out, model)


def read_spec(spec: str | Path | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The entries of a spec (file, JSON text or list of dicts), checked and completed with defaults, without
    a model: what can be wrong with the spec itself fails here, before any model work."""
    entries, _ = _entries(spec)
    return [_read_entry(i, entry) for i, entry in enumerate(entries)]


def describe_steerings(steerings: Steering | Sequence[Steering]) -> list[dict[str, Any]]:
    """The stack as JSON-ready dicts in the spec's keys (plus each vector's norm at its layer).

    A stack loaded by :func:`load_steerings` describes itself with the ``vector`` it was given, so the
    result can be written out and read back.
    """
    items = check_list(steerings)
    out = []
    for item in items:
        positions = item.positions
        if isinstance(positions, slice):
            positions = f"{'' if positions.start is None else positions.start}:" + (
                "" if positions.stop is None else str(positions.stop)
            )
        elif not isinstance(positions, (str, int)):
            positions = [int(p) for p in positions]
        out.append(
            {
                "vector": vector_label(item.vector),
                "layer": item.layer,
                "strength": float(item.strength),
                "positions": positions,
                "relative": bool(item.relative),
                "operator": item.operator,
                "vector_norm": float(item.direction().norm()),
            }
        )
    return out


def check_list(steerings: Steering | Sequence[Steering]) -> list[Steering]:
    """``Steering`` or a list of them as a list (no model checks); raises naming the bad entry."""
    if isinstance(steerings, Steering):
        return [steerings]
    if isinstance(steerings, (str, bytes)) or not isinstance(steerings, Sequence):
        raise SteeringError(f"expected a list of sw.Steering, got {type(steerings).__name__}")
    for i, item in enumerate(steerings):
        if not isinstance(item, Steering):
            raise SteeringError(f"steering [{i}] is a {type(item).__name__}, not a sw.Steering")
    return list(steerings)


# ----------------------------------------------------------------------------------------------
def _entries(spec: Any) -> tuple[list[Any], Path | None]:
    """The raw entries of a spec and the folder relative vector paths are read from."""
    folder = None
    if isinstance(spec, Path) or (isinstance(spec, str) and not spec.lstrip().startswith(("[", "{"))):
        path = Path(spec)
        if not path.is_file():
            raise SteeringError(f"no steering spec file at {path}; write a JSON list like [{EXAMPLE}]")
        folder = path.parent
        text = path.read_text(encoding="utf-8")
        where = str(path)
    elif isinstance(spec, str):
        text, where = spec, "the steering spec"
    else:
        text, where = None, "the steering spec"
    if text is not None:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SteeringError(f"{where} is not valid JSON ({exc}); write a list like [{EXAMPLE}]") from exc
    if isinstance(spec, Mapping):
        spec = [spec]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise SteeringError(
            f"{where} must be a list of steerings, got {type(spec).__name__}; e.g. [{EXAMPLE}]"
        )
    if not spec:
        raise SteeringError(f"{where} is an empty list; give at least one steering, e.g. [{EXAMPLE}]")
    return list(spec), folder


def _read_entry(i: int, entry: Any) -> dict[str, Any]:
    """One dict entry checked and completed with defaults; errors name the entry and the fix."""
    at = f"steering [{i}]"
    if not isinstance(entry, Mapping):
        raise SteeringError(f"{at} must be an object like {EXAMPLE}, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(SPEC_KEYS))
    if unknown:
        raise SteeringError(f"{at}: unknown key(s) {unknown}; the keys are {list(SPEC_KEYS)}")
    for key in ("vector", "layer"):
        if key not in entry:
            raise SteeringError(f"{at} has no {key!r}; e.g. {EXAMPLE}")
    out = {"strength": 1.0, "positions": "all", "relative": False, "operator": "add", **entry}
    if not isinstance(out["vector"], str) or not out["vector"].strip():
        raise SteeringError(
            f"{at}: 'vector' must be a file path or a name (a str), got {out['vector']!r}; e.g. \"sentiment\""
        )
    layer = out["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise SteeringError(f"{at}: 'layer' must be an int, got {layer!r}; e.g. \"layer\": 10")
    strength = out["strength"]
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength != strength:
        raise SteeringError(f"{at}: 'strength' must be a number, got {strength!r}; e.g. \"strength\": 4")
    out["strength"] = float(strength)
    if not isinstance(out["relative"], bool):
        raise SteeringError(f"{at}: 'relative' must be true or false, got {out['relative']!r}")
    if out["operator"] not in OPERATORS:
        raise SteeringError(f"{at}: unknown operator {out['operator']!r}; use one of {list(OPERATORS)}")
    positions = out["positions"]
    if isinstance(positions, list):
        positions = tuple(positions)
    try:
        check_position_spec(positions)
    except SteeringError as exc:
        raise SteeringError(f"{at}: {exc}") from exc
    out["positions"] = list(positions) if isinstance(positions, tuple) else positions
    return out


def _kind(source: str, named: Mapping[str, Any], folder: Path | None) -> str:
    if source in named:
        return "named"
    if source.endswith(".safetensors") or _path(source, folder).is_file():
        return "file"
    if source in builtin_vector_names():
        return "builtin"
    return "unknown"


def _path(source: str, folder: Path | None) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() or folder is None else folder / path


def _builtin(model: Any, name: str, layers: list[int]) -> SteeringVector:
    from .data import builtin_pairs
    from .methods import mean_difference

    vector = mean_difference(model, builtin_pairs(name), layers)
    vector.meta["source"] = name
    return vector
