"""Datasets for steering: A/B items, contrastive pairs, open-ended items, and the built-in sets.

Loaders accept CAA JSON, positive/negative strings ending in ``(A)``/``(B)``, JSONL and CSV. A
malformed item raises :class:`DatasetError` naming the source, the item and the field, so a user can
find and fix the line instead of debugging a vector built from half-parsed data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Source = str | Path | Sequence[dict]

_LETTERS = ("A", "B")
_LETTER_RE = re.compile(r"^\s*(?:\(\s*([AB])\s*\)|([AB]))\s*$")
_TRAILING_RE = re.compile(r"\(([AB])\)\s*$")
_ACCEPTED = "'(A)', ' (A)', 'A', '(B)', ' (B)', 'B'"
_AB_FORMATS = (
    "give either 'question', 'answer_matching_behavior' and 'answer_not_matching_behavior' "
    "(CAA style) or 'positive' and 'negative' strings ending in '(A)'/'(B)'"
)
SUFFIXES = (".json", ".jsonl", ".csv")


class DatasetError(ValueError):
    """A dataset item or file is malformed; the message names the source, item and field."""


class UnknownDatasetError(DatasetError, KeyError):
    """No built-in dataset of that name; a KeyError too, so ``except KeyError`` also catches it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ABItem:
    """A multiple-choice question and which letter shows the behaviour.

    ``matching`` and ``not_matching`` are the bare letters ``"A"``/``"B"``: steering is scored by
    the probability of the matching letter, so they must differ.
    """

    question: str
    matching: str
    not_matching: str

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise DatasetError("ABItem: field 'question' is empty; give the question text")
        for name in ("matching", "not_matching"):
            value = getattr(self, name)
            if value not in _LETTERS:
                raise DatasetError(f"ABItem: field {name!r} is {value!r}; use 'A' or 'B'")
        if self.matching == self.not_matching:
            raise DatasetError(
                f"ABItem: fields 'matching' and 'not_matching' are both {self.matching!r}; "
                "one must be 'A' and the other 'B'"
            )


@dataclass(frozen=True)
class ContrastPair:
    """Two texts that differ in the behaviour only (e.g. positive vs negative sentiment)."""

    positive: str
    negative: str

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DatasetError(f"ContrastPair: field {name!r} is empty; give the text")


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
                raise DatasetError(f"OpenEndedItem: field {name!r} is empty; give the text")


def normalise_letter(answer: str) -> str:
    """``"(A)"``, ``" (A)"``, ``"A"`` → ``"A"``, so CAA files written either way load the same.

    Anything else (``"(C)"``, ``"a"``, ``"(A"``) raises ValueError.
    """
    match = _LETTER_RE.match(answer) if isinstance(answer, str) else None
    if not match:
        raise ValueError(f"{answer!r} is not an answer letter; expected one of {_ACCEPTED}")
    return match.group(1) or match.group(2)


# ------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------
def _read_rows(source: Source) -> tuple[str, list[Any]]:
    if isinstance(source, (list, tuple)):
        if not source:
            raise DatasetError("<list>: the list has no items; give at least one")
        return "<list>", list(source)
    if not isinstance(source, (str, Path)):
        raise DatasetError(
            f"<{type(source).__name__}>: expected a file path or a list of dicts, got {type(source).__name__}"
        )
    path = Path(source)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(
            f"{name}: unsupported file type {path.suffix or '(none)'!r}; "
            f"supported suffixes are {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise DatasetError(f"{name}: no such file; check the path")
    try:
        # utf-8-sig: CSVs saved by spreadsheets often start with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    if suffix == ".json":
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
        if isinstance(rows, dict) and isinstance(rows.get("items"), list):
            rows = rows["items"]
        if not isinstance(rows, list):
            raise DatasetError(
                f"{name}: expected a JSON list of objects, got a {type(rows).__name__}; "
                "wrap the items in [ ... ]"
            )
    elif suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{name}: invalid JSON on line {lineno}: {exc.msg}; each line must hold one JSON object"
                ) from exc
    else:
        # newline="" keeps newlines inside quoted fields (CAA questions contain "\n\nChoices:")
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise DatasetError(f"{name}: invalid CSV: {exc}") from exc
    if not rows:
        raise DatasetError(f"{name}: the file has no items; add at least one")
    return name, rows


def _field(source: str, index: int, row: Any, name: str, hint: str = "") -> str:
    if not isinstance(row, dict):
        raise DatasetError(
            f"{source}: item {index}: expected an object with field {name!r}, got a {type(row).__name__}"
        )
    if name not in row or row[name] is None:
        raise DatasetError(f"{source}: item {index}: field {name!r} is missing; {hint or 'add it'}")
    value = row[name]
    if not isinstance(value, str):
        raise DatasetError(
            f"{source}: item {index}: field {name!r} must be a string, got {type(value).__name__}"
        )
    if not value.strip():
        raise DatasetError(f"{source}: item {index}: field {name!r} is empty; give the text")
    return value


def _letter(source: str, index: int, row: dict, name: str) -> str:
    value = _field(source, index, row, name, _AB_FORMATS)
    try:
        return normalise_letter(value)
    except ValueError:
        raise DatasetError(
            f"{source}: item {index}: field {name!r} is {value!r}; expected one of {_ACCEPTED}"
        ) from None


def _ab_from_row(source: str, index: int, row: Any) -> ABItem:
    if isinstance(row, dict) and "question" not in row and "positive" in row:
        pos = _field(source, index, row, "positive")
        neg = _field(source, index, row, "negative", "give the same text with the other letter")
        matches = {"positive": _TRAILING_RE.search(pos), "negative": _TRAILING_RE.search(neg)}
        for name, match in matches.items():
            if match is None:
                raise DatasetError(
                    f"{source}: item {index}: field {name!r} must end in '(A)' or '(B)' (the answer letter)"
                )
        pos_m, neg_m = matches["positive"], matches["negative"]
        question = pos[: pos_m.start()].rstrip()
        if question != neg[: neg_m.start()].rstrip():
            raise DatasetError(
                f"{source}: item {index}: field 'negative' must share the text of 'positive' "
                "before the final '(A)'/'(B)'; only the letter may differ"
            )
        if not question.strip():
            raise DatasetError(
                f"{source}: item {index}: field 'positive' has no question before the letter; "
                "put the question text before '(A)'/'(B)'"
            )
        matching, not_matching = pos_m.group(1), neg_m.group(1)
        second = "negative"
    else:
        question = _field(source, index, row, "question", _AB_FORMATS)
        matching = _letter(source, index, row, "answer_matching_behavior")
        not_matching = _letter(source, index, row, "answer_not_matching_behavior")
        second = "answer_not_matching_behavior"
    if matching == not_matching:
        raise DatasetError(
            f"{source}: item {index}: field {second!r} has the same letter ({matching}) as the "
            "matching answer; one must be A and the other B"
        )
    return ABItem(question, matching, not_matching)


def _pair_from_row(source: str, index: int, row: Any) -> ContrastPair:
    return ContrastPair(_field(source, index, row, "positive"), _field(source, index, row, "negative"))


def _open_from_row(source: str, index: int, row: Any) -> OpenEndedItem:
    return OpenEndedItem(
        _field(source, index, row, "query"),
        _field(source, index, row, "positive"),
        _field(source, index, row, "negative"),
    )


def _load(source: Source, build: Callable[[str, int, Any], T]) -> list[T]:
    name, rows = _read_rows(source)
    return [build(name, i, row) for i, row in enumerate(rows)]


def load_ab_items(source: Source) -> list[ABItem]:
    """A/B items from a ``.json``/``.jsonl``/``.csv`` file or a list of dicts.

    Each item is CAA style (``question``, ``answer_matching_behavior``,
    ``answer_not_matching_behavior``) or a ``positive``/``negative`` pair of the same text ending in
    ``(A)``/``(B)``, so the common published formats load without conversion.
    """
    return _load(source, _ab_from_row)


def load_pairs(source: Source) -> list[ContrastPair]:
    """Contrast pairs (fields ``positive``, ``negative``) for mean-difference style vectors."""
    return _load(source, _pair_from_row)


def load_open_ended(source: Source) -> list[OpenEndedItem]:
    """Open-ended items (fields ``query``, ``positive``, ``negative``) for free-text evaluation."""
    return _load(source, _open_from_row)


def fingerprint(items: Iterable[Any]) -> str:
    """A short stable hash of a dataset, saved with vectors so their provenance can be checked."""
    rows = [asdict(item) if is_dataclass(item) else item for item in items]
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Built-in datasets (written for this project; see steerwidgets/datasets/)
# ------------------------------------------------------------------------------------------------
_KINDS = {"ab": "ab_", "pairs": "pairs_", "open_ended": "open_"}
_REFERENCE_FILE = "reference_passages.json"


def dataset_dir() -> Any:
    """The folder of the built-in datasets (``steerwidgets/datasets``, read as a package resource)."""
    return resources.files("steerwidgets") / "datasets"




def list_builtin() -> dict[str, list[str]]:
    """Built-in dataset names by kind (``ab``, ``pairs``, ``open_ended``, ``reference``)."""
    files = sorted(entry.name for entry in dataset_dir().iterdir() if entry.name.endswith(".json"))
    out: dict[str, list[str]] = {kind: [] for kind in (*_KINDS, "reference")}
    for file in files:
        stem = file[: -len(".json")]
        for kind, prefix in _KINDS.items():
            if stem.startswith(prefix):
                out[kind].append(stem[len(prefix) :])
        if file == _REFERENCE_FILE:
            out["reference"].append("passages")
    return out


def _builtin_rows(kind: str, name: str) -> list[Any]:
    available = list_builtin()[kind]
    if name not in available:
        raise UnknownDatasetError(
            f"no built-in {kind} dataset {name!r}; available: {', '.join(available) or 'none'}"
        )
    text = (dataset_dir() / f"{_KINDS[kind]}{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def builtin_ab(name: str = "sentiment") -> list[ABItem]:
    """A built-in A/B set; letters are balanced 50/50 so a letter-encoding vector cannot score."""
    return load_ab_items(_builtin_rows("ab", name))


def builtin_pairs(name: str = "sentiment") -> list[ContrastPair]:
    """A built-in set of contrastive sentence pairs, parallel except for the behaviour."""
    return load_pairs(_builtin_rows("pairs", name))


def builtin_open_ended(name: str = "sentiment") -> list[OpenEndedItem]:
    """A built-in open-ended set: queries with a matching and an opposing continuation."""
    return load_open_ended(_builtin_rows("open_ended", name))


def reference_passages() -> list[str]:
    """Clean reference prose: its perplexity under steering shows the fluency a vector costs."""
    rows = json.loads((dataset_dir() / _REFERENCE_FILE).read_text(encoding="utf-8"))
    return [str(row) for row in rows]


# ------------------------------------------------------------------------------------------------
# The two options of an A/B question (for the option swap and the answer-text protocol)
# ------------------------------------------------------------------------------------------------
_OPTION_RE = re.compile(r"^(?P<stem>.*?)\s*\n\s*\(A\)\s*(?P<a>.+?)\s*\n\s*\(B\)\s*(?P<b>.+?)\s*$", re.S)
_CHOICES_RE = re.compile(r"\s*(?:Choices|Options|Answers?)\s*:\s*$", re.I)


@dataclass(frozen=True)
class Options:
    """An A/B question split into its stem and the texts of options A and B."""

    stem: str
    a: str
    b: str
    header: str  # what stood between the stem and "(A)", e.g. "\n\nChoices:"

    def text(self, letter: str) -> str:
        return self.a if letter == "A" else self.b


def split_options(question: str) -> Options | None:
    """``"stem\\n\\nChoices:\\n(A) x\\n(B) y"`` → ``Options(stem, x, y)``; ``None`` when the question does not
    list its two options on lines of their own (then neither the swap nor the answer-text protocol
    applies)."""
    match = _OPTION_RE.match(question)
    if not match or "\n(A)" in match["b"] or "\n(B)" in match["a"]:
        return None
    stem = match["stem"]
    header = ""
    choices = _CHOICES_RE.search(stem)
    if choices:
        header, stem = stem[choices.start() :], stem[: choices.start()]
    stem = stem.strip()
    if not stem:
        return None
    return Options(stem=stem, a=match["a"], b=match["b"], header=header or "\n")


def swap_options(item: ABItem) -> ABItem | None:
    """The same question with the two options' texts swapped and the answer relabelled.

    A model that reads the options keeps its preference under the swap; one that picks letters flips it.
    ``None`` when the options cannot be found in the question text.
    """
    opts = split_options(item.question)
    if opts is None:
        return None
    question = f"{opts.stem}{opts.header}\n(A) {opts.b}\n(B) {opts.a}"
    return ABItem(question, item.not_matching, item.matching)
