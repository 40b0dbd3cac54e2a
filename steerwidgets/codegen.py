"""Copy-as-code: runnable Python for a model, a prompt, generation settings and a stack of steerings.

Pure text: :func:`render_code` builds nothing and loads nothing, so the Playground (and anything else that
wants to hand a user the code for what it shows) calls it with plain values. One row gives the
single-steering script the Playground has always copied; several rows give one ``sw.Steering`` each,
applied together (``sw.generate(model, PROMPT, steerings, ...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .models import DEFAULT_MODEL

SOURCES = ("builtin", "actadd", "file", "variable")


@dataclass(frozen=True)
class CodeRow:
    """One steering of the stack, as the code should build it.

    ``source`` says where its vector comes from, and ``vector`` names it:

    - ``"builtin"``: a built-in contrast set (``vector="sentiment"``), built with ``sw.mean_difference``
      (at ``builtin_layers`` only when given, else at every layer);
    - ``"actadd"``: ActAdd from the phrase pair ``actadd=(positive, negative)``, built at ``layer``;
    - ``"file"``: a vector the user passed under the name ``vector``; the code loads
      ``<name>.safetensors`` and says how to save it first;
    - ``"variable"``: a ``SteeringVector`` already bound to the Python name ``vector`` in the user's
      namespace (the code uses it as is).
    """

    vector: str
    layer: int
    strength: float
    positions: Any = "all"
    relative: bool = False
    source: str = "builtin"
    actadd: tuple[str, str] | None = None
    builtin_layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown vector source {self.source!r}; use one of {SOURCES}")
        if self.source == "actadd" and (self.actadd is None or len(self.actadd) != 2):
            raise ValueError("an ActAdd row needs actadd=(positive phrase, negative phrase)")
        if self.source == "variable" and not self.vector.isidentifier():
            raise ValueError(f"a 'variable' row's vector must be a Python name, got {self.vector!r}")


def safe_filename(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "vector"


def render_code(
    model_name: str,
    prompt: str,
    rows: Sequence[CodeRow],
    *,
    max_new_tokens: int = 32,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat: bool | None = None,
) -> str:
    """A runnable script that loads the model, builds each row's vector, and prints the steered text.

    Generation settings left at :func:`~steerwidgets.generate`'s defaults are not written out. With no
    rows the script prints the unsteered text.
    """
    rows = list(rows)
    model_arg = "" if model_name in ("", DEFAULT_MODEL) else repr(model_name)
    lines = ["import steerwidgets as sw", "", f"model = sw.load_model({model_arg})"]
    single = len(rows) == 1
    names: dict[tuple, str] = {}  # one build per distinct vector
    refs = []
    for row in rows:
        key = _vector_key(row)
        if key not in names:
            if row.source == "variable":
                names[key] = row.vector
            else:
                names[key] = "vector" if single else f"vector_{len(names) + 1}"
                lines += _build_lines(names[key], row)
        refs.append(names[key])
    steerings = [_steering_expr(ref, row) for ref, row in zip(refs, rows)]
    if single:
        lines.append(f"steering = {steerings[0]}")
        target = "steering"
    elif rows:
        lines.append("steerings = [")
        lines += [f"    {expr}," for expr in steerings]
        lines.append("]")
        target = "steerings"
    else:
        target = "None"
    settings = f"max_new_tokens={max_new_tokens}, seed={seed}"
    if do_sample:
        settings += f", do_sample=True, temperature={float(temperature)!r}, top_p={float(top_p)!r}"
    if chat is not None:
        settings += f", chat={chat!r}"
    lines += [
        f"PROMPT = {prompt!r}",
        f"result = sw.generate(model, PROMPT, {target}, {settings})",
        f"print(result.{'steered' if rows else 'base'}.text)",
    ]
    return "\n".join(lines) + "\n"


def _vector_key(row: CodeRow) -> tuple:
    if row.source == "actadd":
        return ("actadd", *row.actadd, row.layer)
    if row.source == "builtin":
        return ("builtin", row.vector, tuple(row.builtin_layers or ()))
    return (row.source, row.vector)


def _build_lines(name: str, row: CodeRow) -> list[str]:
    if row.source == "builtin":
        layers = "" if row.builtin_layers is None else f", layers={list(row.builtin_layers)}"
        return [f"{name} = sw.mean_difference(model, sw.builtin_pairs({row.vector!r}){layers})"]
    if row.source == "actadd":
        positive, negative = row.actadd
        return [f"{name} = sw.actadd(model, {positive!r}, {negative!r}, {row.layer})"]
    path = f"{safe_filename(row.vector)}.safetensors"
    return [
        f"# The vector you passed as {row.vector!r}; save it first with vector.save({path!r})",
        f"{name} = sw.SteeringVector.load({path!r}, model)",
    ]


def _steering_expr(ref: str, row: CodeRow) -> str:
    relative = ", relative=True" if row.relative else ""
    return (
        f"sw.Steering({ref}, layer={row.layer}, strength={float(row.strength)!r}, "
        f"positions={row.positions!r}{relative})"
    )
