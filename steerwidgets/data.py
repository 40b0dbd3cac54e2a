"""Datasets for steering: A/B items, contrastive pairs, open-ended items, and the built-in sets.

Loaders accept CAA JSON, positive/negative strings ending in ``(A)``/``(B)``, JSONL and CSV. A malformed
item raises :class:`DatasetError` naming the source, the item and the field, so a user can fix the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_LETTERS = ("A", "B")
_LETTER_RE = re.compile(r"^\s*\(?\s*([AB])\s*\)?\s*$")
_TRAILING_RE = re.compile(r"\(([AB])\)\s*$")
SUFFIXES = (".json", ".jsonl", ".csv")


class DatasetError(ValueError):
    """A dataset item or file is malformed; the message names the source, item and field."""


@dataclass(frozen=True)
class ABItem:
    """A multiple-choice question with the letter that matches the behaviour and the one that does not."""

    question: str
    matching: str
    not_matching: str

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise DatasetError("ABItem: field 'question' is empty; give the question text")
        for name in ("matching", "not_matching"):
            if getattr(self, name) not in _LETTERS:
                raise DatasetError(f"ABItem: field {name!r} is {getattr(self, name)!r}; use 'A' or 'B'")
        if self.matching == self.not_matching:
            raise DatasetError("ABItem: 'matching' and 'not_matching' are the same letter")


@dataclass(frozen=True)
class ContrastPair:
    """Two texts that differ in the behaviour only (e.g. positive vs negative sentiment)."""

    positive: str
    negative: str

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DatasetError(f"ContrastPair: field {name!r} is empty")


@dataclass(frozen=True)
class OpenEndedItem:
    """A query with a behaviour-matching continuation and an opposing one (Pres et al. 2024)."""

    query: str
    positive: str
    negative: str

    def __post_init__(self) -> None:
        for name in ("query", "positive", "negative"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DatasetError(f"OpenEndedItem: field {name!r} is empty")


def normalise_letter(answer: str) -> str:
    """``"(A)"``, ``" (A)"``, ``"A"`` → ``"A"``; anything else raises ValueError."""
    match = _LETTER_RE.match(answer) if isinstance(answer, str) else None
    if not match:
        raise ValueError(f"{answer!r} is not an answer letter")
    return match.group(1)


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------
def _read_rows(source: str | Path | Sequence[dict]) -> tuple[str, list[Any]]:
    if isinstance(source, (list, tuple)):
        return "<list>", list(source)
    path = Path(source)
    name = path.name
    if path.suffix.lower() not in SUFFIXES:
        raise DatasetError(f"{name}: unsupported file type {path.suffix!r}; use one of {SUFFIXES}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if isinstance(rows, dict) and isinstance(rows.get("items"), list):
            rows = rows["items"]
        if not isinstance(rows, list):
            raise DatasetError(f"{name}: expected a JSON list of objects, got {type(rows).__name__}")
    elif suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{name}: invalid JSON on line {lineno}: {exc.msg}") from exc
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise DatasetError(f"{name}: the file has no items")
    return name, rows


def _field(source: str, index: int, row: Any, name: str) -> str:
    if not isinstance(row, dict):
        raise DatasetError(f"{source}: item {index}: expected an object, got {type(row).__name__}")
    if name not in row or row[name] is None:
        raise DatasetError(f"{source}: item {index}: field {name!r} is missing")
    value = row[name]
    if not isinstance(value, str):
        raise DatasetError(
            f"{source}: item {index}: field {name!r} must be a string, got {type(value).__name__}"
        )
    if not value.strip():
        raise DatasetError(f"{source}: item {index}: field {name!r} is empty")
    return value


def _letter(source: str, index: int, row: dict, name: str) -> str:
    value = _field(source, index, row, name)
    try:
        return normalise_letter(value)
    except ValueError:
        raise DatasetError(
            f"{source}: item {index}: field {name!r} is {value!r}; expected one of "
            "'(A)', ' (A)', 'A', '(B)', ' (B)', 'B'"
        ) from None


def _ab_from_row(source: str, index: int, row: Any) -> ABItem:
    if isinstance(row, dict) and "question" not in row and "positive" in row:
        pos = _field(source, index, row, "positive")
        neg = _field(source, index, row, "negative")
        pos_m, neg_m = _TRAILING_RE.search(pos), _TRAILING_RE.search(neg)
        for name, match in (("positive", pos_m), ("negative", neg_m)):
            if match is None:
                raise DatasetError(f"{source}: item {index}: field {name!r} must end in '(A)' or '(B)'")
        question = pos[: pos_m.start()].rstrip()
        if question != neg[: neg_m.start()].rstrip():
            raise DatasetError(
                f"{source}: item {index}: fields 'positive' and 'negative' must share the same text "
                "before the final '(A)'/'(B)'"
            )
        matching, not_matching = pos_m.group(1), neg_m.group(1)
    else:
        question = _field(source, index, row, "question")
        matching = _letter(source, index, row, "answer_matching_behavior")
        not_matching = _letter(source, index, row, "answer_not_matching_behavior")
    if matching == not_matching:
        raise DatasetError(
            f"{source}: item {index}: field 'answer_not_matching_behavior' has the same letter "
            f"({matching}) as the matching answer"
        )
    return ABItem(question, matching, not_matching)


def _load(source: Any, build: Callable[[str, int, Any], T]) -> list[T]:
    name, rows = _read_rows(source)
    return [build(name, i, row) for i, row in enumerate(rows)]


def load_ab_items(source: str | Path | Sequence[dict]) -> list[ABItem]:
    """A/B items from a file (``.json``, ``.jsonl``, ``.csv``) or a list of dicts, CAA or pos/neg style."""
    return _load(source, _ab_from_row)


def load_pairs(source: str | Path | Sequence[dict]) -> list[ContrastPair]:
    """Contrast pairs (fields ``positive``, ``negative``)."""
    return _load(
        source,
        lambda src, i, row: ContrastPair(_field(src, i, row, "positive"), _field(src, i, row, "negative")),
    )


def load_open_ended(source: str | Path | Sequence[dict]) -> list[OpenEndedItem]:
    """Open-ended items (fields ``query``, ``positive``, ``negative``)."""
    return _load(
        source,
        lambda src, i, row: OpenEndedItem(
            _field(src, i, row, "query"), _field(src, i, row, "positive"), _field(src, i, row, "negative")
        ),
    )


def fingerprint(items: Iterable[Any]) -> str:
    """A short stable hash of a dataset: provenance for vectors built from it."""
    rows = [asdict(item) if hasattr(item, "__dataclass_fields__") else item for item in items]
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Built-in datasets (written for this project; see steerwidgets/datasets/)
# ------------------------------------------------------------------------------------------------
_KINDS = {"ab": "ab_", "pairs": "pairs_", "open_ended": "open_"}


def _dataset_dir() -> Any:
    return resources.files("steerwidgets") / "datasets"


def list_builtin() -> dict[str, list[str]]:
    """Built-in dataset names by kind (``ab``, ``pairs``, ``open_ended``, ``reference``)."""
    names = sorted(entry.name for entry in _dataset_dir().iterdir() if entry.name.endswith(".json"))
    out: dict[str, list[str]] = {kind: [] for kind in (*_KINDS, "reference")}
    for name in names:
        stem = name[: -len(".json")]
        for kind, prefix in _KINDS.items():
            if stem.startswith(prefix):
                out[kind].append(stem[len(prefix) :])
        if stem == "reference_passages":
            out["reference"].append("passages")
    return out


def _builtin_rows(kind: str, name: str) -> list[Any]:
    available = list_builtin()[kind]
    if name not in available:
        raise DatasetError(f"no built-in {kind} dataset {name!r}; available: {available}")
    return json.loads((_dataset_dir() / f"{_KINDS[kind]}{name}.json").read_text(encoding="utf-8"))


def builtin_ab(name: str = "sentiment") -> list[ABItem]:
    """A built-in A/B behaviour set (letters balanced 50/50 so a letter-encoding vector shows up)."""
    return load_ab_items(_builtin_rows("ab", name))


def builtin_pairs(name: str = "sentiment") -> list[ContrastPair]:
    """A built-in set of contrastive sentence pairs."""
    return load_pairs(_builtin_rows("pairs", name))


def builtin_open_ended(name: str = "sentiment") -> list[OpenEndedItem]:
    """A built-in open-ended set: queries with a matching and an opposing continuation."""
    return load_open_ended(_builtin_rows("open_ended", name))


def reference_passages() -> list[str]:
    """Clean reference prose for perplexity side effects."""
    rows = json.loads((_dataset_dir() / "reference_passages.json").read_text(encoding="utf-8"))
    return [str(row) for row in rows]
