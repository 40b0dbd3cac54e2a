"""The Playground's copy-as-code: Python that reproduces a request's steered continuation.

:func:`request_code` writes one ``sw.Steering`` for the main vector, then one per stack row
(:mod:`steerwidgets.codegen` renders the cell); :func:`builtin_origin` recognises a vector built from a
built-in pair set, so the code rebuilds it instead of loading a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import data
from .codegen import CodeRow, render_code
from .data import builtin_pairs
from .playground_request import ACTADD, BUILTIN_VECTORS, Request
from .vectors import SteeringVector


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
