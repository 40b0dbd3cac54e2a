"""Data module: every loader format, clear errors for malformed items, and the built-in sets."""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
from pathlib import Path

import pytest

from steerwidgets import data
from steerwidgets.data import (
    ABItem,
    ContrastPair,
    DatasetError,
    OpenEndedItem,
    builtin_ab,
    builtin_open_ended,
    builtin_pairs,
    fingerprint,
    list_builtin,
    load_ab_items,
    load_open_ended,
    load_pairs,
    normalise_letter,
    reference_passages,
)

Q1 = "Is the glass half full?\n\nChoices:\n(A) Yes, and it's lovely.\n(B) No, it's nearly gone."
Q2 = "Will tomorrow be good?\n\nChoices:\n(A) Probably not.\n(B) I think it will be great."


def _caa(question: str, matching: str, not_matching: str) -> dict:
    return {
        "question": question,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": not_matching,
    }


def _write_json(path: Path, rows: object) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------
# Letters and dataclasses
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, letter",
    [
        ("(A)", "A"),
        (" (A)", "A"),
        ("A", "A"),
        ("(B)", "B"),
        (" (B)", "B"),
        ("B", "B"),
        ("  (B)\n", "B"),
        ("( A )", "A"),
    ],
)
def test_normalise_letter_accepts_common_spellings(answer, letter):
    assert normalise_letter(answer) == letter


@pytest.mark.parametrize("answer", ["(C)", "C", "a", "(a)", "", "  ", "(A", "A)", "(A)(B)", "AB", None, 1])
def test_normalise_letter_rejects_everything_else(answer):
    with pytest.raises(ValueError):
        normalise_letter(answer)


def test_abitem_validates_itself():
    assert ABItem("q", "A", "B").matching == "A"
    with pytest.raises(DatasetError, match="question"):
        ABItem("  ", "A", "B")
    with pytest.raises(DatasetError, match="matching"):
        ABItem("q", "(A)", "B")  # bare letters only: loaders normalise, the dataclass does not
    with pytest.raises(DatasetError, match="not_matching"):
        ABItem("q", "A", "C")
    with pytest.raises(DatasetError, match="both 'B'"):
        ABItem("q", "B", "B")
    with pytest.raises(DatasetError, match="negative"):
        ContrastPair("happy", "")
    with pytest.raises(DatasetError, match="query"):
        OpenEndedItem("", "yes", "no")
    with pytest.raises(AttributeError):
        ABItem("q", "A", "B").matching = "B"  # frozen: safe to hash and fingerprint


# ------------------------------------------------------------------------------------------------
# Loaders: every format
# ------------------------------------------------------------------------------------------------
def test_caa_json_with_every_answer_spelling(tmp_path):
    path = _write_json(
        tmp_path / "caa.json",
        [_caa(Q1, "(A)", "(B)"), _caa(Q2, " (B)", " (A)"), _caa("Third?", "A", "B")],
    )
    items = load_ab_items(path)
    assert items == [ABItem(Q1, "A", "B"), ABItem(Q2, "B", "A"), ABItem("Third?", "A", "B")]
    assert load_ab_items(str(path)) == items  # str paths work too


def test_list_of_dicts_and_items_wrapper(tmp_path):
    rows = [_caa(Q1, "(A)", "(B)")]
    assert load_ab_items(rows) == [ABItem(Q1, "A", "B")]
    wrapped = _write_json(tmp_path / "wrapped.json", {"items": rows})
    assert load_ab_items(wrapped) == [ABItem(Q1, "A", "B")]


def test_positive_negative_strings_format(tmp_path):
    rows = [
        {"positive": Q1 + "\nAnswer: (A)", "negative": Q1 + "\nAnswer: (B)"},
        {"positive": Q2 + " (B)  \n", "negative": Q2 + " (A)"},
    ]
    items = load_ab_items(_write_json(tmp_path / "pn.json", rows))
    assert items == [ABItem(Q1 + "\nAnswer:", "A", "B"), ABItem(Q2, "B", "A")]
    # the question is the shared text before the final letter; the choices inside it are kept
    assert items[1].question.endswith("(B) I think it will be great.")


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(
        json.dumps(_caa(Q1, "(A)", "(B)")) + "\n\n   \n" + json.dumps(_caa(Q2, "B", "A")) + "\n",
        encoding="utf-8",
    )
    assert load_ab_items(path) == [ABItem(Q1, "A", "B"), ABItem(Q2, "B", "A")]


def test_csv_keeps_newlines_inside_quoted_questions(tmp_path):
    fields = ["question", "answer_matching_behavior", "answer_not_matching_behavior"]
    path = _write_csv(tmp_path / "items.csv", [_caa(Q1, "(A)", "(B)"), _caa(Q2, " (B)", "A")], fields)
    items = load_ab_items(path)
    assert items == [ABItem(Q1, "A", "B"), ABItem(Q2, "B", "A")]
    assert "\n\nChoices:\n(A)" in items[0].question


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffpositive,negative\nI love it,I hate it\n".encode())
    assert load_pairs(path) == [ContrastPair("I love it", "I hate it")]


def test_uppercase_suffix_is_accepted(tmp_path):
    path = _write_json(tmp_path / "ITEMS.JSON", [_caa(Q1, "A", "B")])
    assert load_ab_items(path) == [ABItem(Q1, "A", "B")]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_pairs_and_open_ended_in_every_format(tmp_path, suffix):
    pairs = [{"positive": "What a lovely day.", "negative": "What an awful day."}] * 2
    opens = [{"query": "How was it?", "positive": "Wonderful!", "negative": "Dreadful."}]
    for name, rows, fields in (
        ("pairs", pairs, ["positive", "negative"]),
        ("open", opens, ["query", "positive", "negative"]),
    ):
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".json":
            _write_json(path, rows)
        elif suffix == ".jsonl":
            path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        else:
            _write_csv(path, rows, fields)
    assert (
        load_pairs(tmp_path / f"pairs{suffix}")
        == [ContrastPair("What a lovely day.", "What an awful day.")] * 2
    )
    assert load_open_ended(tmp_path / f"open{suffix}") == [
        OpenEndedItem("How was it?", "Wonderful!", "Dreadful.")
    ]


def test_same_items_from_json_and_csv_have_the_same_fingerprint(tmp_path):
    rows = [_caa(Q1, "(A)", "(B)"), _caa(Q2, "B", "A")]
    fields = ["question", "answer_matching_behavior", "answer_not_matching_behavior"]
    from_json = load_ab_items(_write_json(tmp_path / "a.json", rows))
    from_csv = load_ab_items(_write_csv(tmp_path / "a.csv", rows, fields))
    assert fingerprint(from_json) == fingerprint(from_csv)


# ------------------------------------------------------------------------------------------------
# Malformed items: the message names the source, the item index and the field
# ------------------------------------------------------------------------------------------------
GOOD = _caa("Fine?", "(A)", "(B)")
BAD_ITEMS = {
    "missing question": (
        {"answer_matching_behavior": "A", "answer_not_matching_behavior": "B"},
        "question",
    ),
    "missing not-matching": (
        {"question": "q", "answer_matching_behavior": "(A)"},
        "answer_not_matching_behavior",
    ),
    "letter C": (_caa("q", "(C)", "(A)"), "answer_matching_behavior"),
    "lowercase letter": (_caa("q", "(A)", "b"), "answer_not_matching_behavior"),
    "same letter twice": (_caa("q", "(A)", " (A)"), "answer_not_matching_behavior"),
    "empty question": (_caa("   ", "A", "B"), "question"),
    "question not a string": (_caa(["q"], "A", "B"), "question"),
    "letter not a string": (_caa("q", 1, "B"), "answer_matching_behavior"),
    "answer is null": (_caa("q", None, "B"), "answer_matching_behavior"),
    "pos/neg texts differ": ({"positive": "Q one (A)", "negative": "Q two (B)"}, "negative"),
    "pos without letter": ({"positive": "Q one", "negative": "Q one (B)"}, "positive"),
    "neg without letter": ({"positive": "Q one (A)", "negative": "Q one"}, "negative"),
    "pos/neg same letter": ({"positive": "Q (A)", "negative": "Q (A)"}, "negative"),
    "pos/neg no question": ({"positive": "(A)", "negative": " (B)"}, "positive"),
    "pos/neg missing negative": ({"positive": "Q (A)"}, "negative"),
    "item not an object": (["q", "A", "B"], "question"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
@pytest.mark.parametrize("where", ["json", "list"])
def test_bad_ab_item_names_source_index_and_field(tmp_path, case, where):
    bad, field = BAD_ITEMS[case]
    rows = [GOOD, GOOD, bad]
    source = _write_json(tmp_path / "cases.json", rows) if where == "json" else rows
    with pytest.raises(DatasetError) as info:
        load_ab_items(source)
    message = str(info.value)
    assert "item 2" in message, message
    assert repr(field) in message or field in message, message
    assert ("cases.json" if where == "json" else "<list>") in message, message


def test_bad_letter_message_lists_the_accepted_spellings(tmp_path):
    path = _write_json(tmp_path / "cases.json", [GOOD, GOOD, GOOD, _caa("q", "(C)", "(A)")])
    with pytest.raises(DatasetError) as info:
        load_ab_items(path)
    assert "cases.json: item 3: field 'answer_matching_behavior' is '(C)'" in str(info.value)
    assert "'(A)', ' (A)', 'A', '(B)', ' (B)', 'B'" in str(info.value)


@pytest.mark.parametrize(
    "loader, bad, field",
    [
        (load_pairs, {"positive": "ok"}, "negative"),
        (load_pairs, {"positive": "", "negative": "x"}, "positive"),
        (load_pairs, {"positive": 3, "negative": "x"}, "positive"),
        (load_open_ended, {"positive": "a", "negative": "b"}, "query"),
        (load_open_ended, {"query": "q", "positive": "  ", "negative": "b"}, "positive"),
        (load_open_ended, {"query": "q", "positive": "a", "negative": None}, "negative"),
    ],
)
def test_bad_pair_and_open_items_name_index_and_field(loader, bad, field):
    good = {"query": "q", "positive": "a", "negative": "b"}
    with pytest.raises(DatasetError) as info:
        loader([good, bad])
    assert "<list>: item 1" in str(info.value) and f"'{field}'" in str(info.value), str(info.value)


def test_csv_row_missing_a_column_is_reported(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text(
        "question,answer_matching_behavior,answer_not_matching_behavior\nq1,A,B\nq2,A\n",
        encoding="utf-8",
    )
    with pytest.raises(DatasetError, match=r"short\.csv: item 1: field 'answer_not_matching_behavior'"):
        load_ab_items(path)


def test_missing_column_header_in_csv(tmp_path):
    path = _write_csv(tmp_path / "p.csv", [{"positive": "a", "neg": "b"}], ["positive", "neg"])
    with pytest.raises(DatasetError, match=r"item 0: field 'negative' is missing"):
        load_pairs(path)


# ------------------------------------------------------------------------------------------------
# File-level errors
# ------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.json: no such file"):
        load_ab_items(tmp_path / "nope.json")


@pytest.mark.parametrize("suffix", [".txt", ".yaml", ""])
def test_unknown_suffix_lists_the_supported_ones(tmp_path, suffix):
    path = tmp_path / f"items{suffix}"
    path.write_text("[]")
    with pytest.raises(DatasetError) as info:
        load_ab_items(path)
    assert all(s in str(info.value) for s in (".json", ".jsonl", ".csv")), str(info.value)


def test_invalid_json_gives_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"question": "q",\n  oops\n]')
    with pytest.raises(DatasetError, match=r"broken\.json: invalid JSON at line 3"):
        load_ab_items(path)


def test_invalid_jsonl_gives_line_number(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + "{not json}\n")
    with pytest.raises(DatasetError, match=r"broken\.jsonl: invalid JSON on line 3"):
        load_ab_items(path)


@pytest.mark.parametrize("content", ['{"question": "q"}', '"just a string"', "42"])
def test_json_that_is_not_a_list(tmp_path, content):
    path = tmp_path / "obj.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=r"obj\.json: expected a JSON list"):
        load_ab_items(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("e.json", ""),
        ("e.json", "[]"),
        ("e.jsonl", "\n\n"),
        ("e.csv", ""),
        ("e.csv", "positive,negative\n"),
    ],
)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match="no items"):
        load_pairs(path)


def test_empty_list_and_wrong_source_type():
    with pytest.raises(DatasetError, match="<list>"):
        load_pairs([])
    with pytest.raises(DatasetError, match="file path or a list"):
        load_pairs(42)  # type: ignore[arg-type]


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("positive,negative\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="UTF-8"):
        load_pairs(path)


# ------------------------------------------------------------------------------------------------
# Fingerprint
# ------------------------------------------------------------------------------------------------
def test_fingerprint_is_stable_and_sensitive():
    items = [ABItem(Q1, "A", "B"), ABItem(Q2, "B", "A")]
    fp = fingerprint(items)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint(list(items)) == fp
    assert fingerprint([ABItem(Q1, "A", "B"), ABItem(Q2, "B", "A")]) == fp
    assert fingerprint([ABItem(Q1, "B", "A"), items[1]]) != fp  # letter swapped
    assert fingerprint([ABItem(Q1 + " ", "A", "B"), items[1]]) != fp  # text changed
    assert fingerprint(items[:1]) != fp
    assert fingerprint([ContrastPair("a", "b")]) != fingerprint([ContrastPair("b", "a")])


def test_fingerprint_of_builtins_is_reproducible():
    assert fingerprint(builtin_pairs("sentiment")) == fingerprint(builtin_pairs("sentiment"))
    assert fingerprint(builtin_ab("sentiment")) != fingerprint(builtin_ab("formality"))


def test_fingerprint_pinned_value():
    # sha256 of the canonical JSON, first 16 hex chars: changing the scheme breaks saved provenance
    import hashlib

    blob = json.dumps([{"negative": "b", "positive": "a"}], sort_keys=True).encode()
    assert fingerprint([ContrastPair("a", "b")]) == hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Built-in datasets
# ------------------------------------------------------------------------------------------------
BEHAVIOURS = ["sentiment", "formality", "sycophancy"]
AB_MIN = {"sentiment": 60, "formality": 50, "sycophancy": 50}


def test_list_builtin():
    found = list_builtin()
    assert set(found) == {"ab", "pairs", "open_ended", "reference"}
    assert set(found["ab"]) >= set(BEHAVIOURS)
    assert set(found["open_ended"]) >= set(BEHAVIOURS)
    assert set(found["pairs"]) >= {"sentiment", "formality"}
    assert found["reference"] == ["passages"]


@pytest.mark.parametrize(
    "loader, kind",
    [(builtin_ab, "ab"), (builtin_pairs, "pairs"), (builtin_open_ended, "open_ended")],
)
def test_unknown_builtin_lists_available(loader, kind):
    with pytest.raises(DatasetError) as info:
        loader("nonexistent")
    assert "nonexistent" in str(info.value)
    assert all(name in str(info.value) for name in list_builtin()[kind]), str(info.value)
    assert isinstance(info.value, KeyError)  # KeyError-like, so `except KeyError` also works


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_builtin_ab_sets(name):
    items = builtin_ab(name)
    assert len(items) >= AB_MIN[name]
    letters = [item.matching for item in items]
    assert letters.count("A") * 2 == len(items), f"{name}: letters not balanced 50/50"
    assert len({item.question for item in items}) == len(items), "duplicate questions"
    for item in items:
        assert item.not_matching != item.matching
        assert re.search(r"\n\nChoices:\n\(A\) \S.*\n\(B\) \S", item.question), item.question
    # no long run of the same letter either: a position bias would then track the data order
    longest = max(len(run.group()) for run in re.finditer(r"A+|B+", "".join(letters)))
    assert longest <= 4


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_builtin_ab_options_differ(name):
    for item in builtin_ab(name):
        a = re.search(r"\n\(A\) (.*)\n", item.question + "\n").group(1)
        b = re.search(r"\n\(B\) (.*)\n", item.question + "\n").group(1)
        assert a.strip() and b.strip() and a != b


@pytest.mark.parametrize("name", ["sentiment", "formality"])
def test_builtin_pairs(name):
    pairs = builtin_pairs(name)
    assert len(pairs) >= 60
    assert all(p.positive != p.negative for p in pairs)
    assert len({p.positive for p in pairs}) == len(pairs)
    assert len({p.negative for p in pairs}) == len(pairs)


def test_sentiment_pairs_are_short_and_parallel():
    for p in builtin_pairs("sentiment"):
        pos, neg = p.positive.split(), p.negative.split()
        assert 6 <= len(pos) <= 20 and 6 <= len(neg) <= 20, p
        assert abs(len(pos) - len(neg)) <= 1, p
        assert pos[:2] == neg[:2], p  # same subject: only the sentiment words change


TEXT_SPEAK = {"u", "ur", "pls", "lol", "thx", "lmk", "gonna", "wanna", "btw", "omg", "asap", "k"}


def test_formal_side_is_formal():
    for p in builtin_pairs("formality"):
        assert p.positive[0].isupper() and p.positive.rstrip()[-1] in ".?!", p
        assert not set(re.findall(r"[a-z]+", p.positive.lower())) & TEXT_SPEAK, p


@pytest.mark.parametrize("name", ["formality"])
def test_formal_ab_and_open_replies_avoid_text_speak(name):
    for item in builtin_open_ended(name):
        assert not set(re.findall(r"[a-z]+", item.positive.lower())) & TEXT_SPEAK, item
    for item in builtin_ab(name):
        formal = re.search(rf"\n\({item.matching}\) (.*)", item.question).group(1)
        assert formal[0].isupper() and not set(re.findall(r"[a-z]+", formal.lower())) & TEXT_SPEAK


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_builtin_open_ended(name):
    items = builtin_open_ended(name)
    assert len(items) >= 30
    assert len({item.query for item in items}) == len(items)
    assert all(item.positive != item.negative for item in items)


def test_reference_passages():
    passages = reference_passages()
    assert len(passages) >= 60
    assert len(set(passages)) == len(passages)
    for text in passages:
        assert 40 <= len(text.split()) <= 120, text[:60]
        assert text == text.strip() and text[-1] in ".!?\"'", text[-40:]


def test_data_module_imports_only_the_standard_library():
    tree = ast.parse(Path(data.__file__).read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules
