"""What goes into a Playground run and what comes out: one frozen :class:`Request`, typed :class:`Update`s.

The widget (``widgets/playground.py``) turns its traits into a ``Request`` (with one :class:`StackRow` per
extra steering); :class:`~steerwidgets.playground.Pipeline` answers with updates whose :meth:`Update.fields`
are the widget's trait names. Both are plain frozen dataclasses, so a test can build them by hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .data import ABItem
from .interventions import Steering, SteeringError
from .vectors import SteeringVector

BUILTIN_VECTORS = ("sentiment", "formality")
ACTADD = "actadd"  # the vector chooser's entry for a quick ActAdd from two typed phrases
DEFAULT_PROMPT = "Tell me about your day."
CAPABILITY_MAX = 60  # the built-in capability sets have 55–60 items


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

    @property
    def label(self) -> str:
        """``vector@layer``, as the A/B check's notices name the row."""
        return f"{self.vector_name}@{self.layer}"

    def where(self, index: int) -> str:
        """How an error names the row at ``index`` of the stack."""
        return f"stack row {index + 1} (stack[{index}], {self.label})"


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


def n_rows(n: int) -> str:
    """``"1 row"``, ``"2 rows"``."""
    return f"{n} row" if n == 1 else f"{n} rows"
