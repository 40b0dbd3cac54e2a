"""The command line contract: JSON keys, exit status 2 with a clear message on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import steerwidgets as sw
from steerwidgets import cli


def _write_items(path, items):
    path.write_text(
        json.dumps(
            [
                {
                    "question": it.question,
                    "answer_matching_behavior": f"({it.matching})",
                    "answer_not_matching_behavior": f"({it.not_matching})",
                }
                for it in items
            ]
        )
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    items = sw.builtin_ab("sentiment")
    return _write_items(folder / "train.json", items[:12]), _write_items(folder / "test.json", items[40:46])


@pytest.mark.model
def test_evaluate_json_contract(files, tmp_path, smol):
    train, test = files
    out = tmp_path / "out.json"
    code = cli.main(
        [
            "evaluate",
            "--train",
            str(train),
            "--test",
            str(test),
            "--layer",
            "12",
            "--strengths",
            "-1,0,1",
            "--positions",
            "last",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    for key in (
        "model",
        "layer",
        "positions",
        "strengths",
        "n_train",
        "n_test",
        "vector_norm",
        "steerability",
        "anti_steerable_fraction",
        "mean_propensity",
        "per_example",
    ):
        assert key in data
    assert (data["n_train"], data["n_test"], data["layer"]) == (12, 6, 12)
    assert len(data["mean_propensity"]) == 3
    assert set(data["per_example"][0]) >= {"index", "slope", "propensity", "anti_steerable"}
    slopes = [ex["slope"] for ex in data["per_example"]]
    assert data["steerability"] == pytest.approx(sum(slopes) / len(slopes))
    assert data["anti_steerable_fraction"] == pytest.approx(
        sum(ex["anti_steerable"] for ex in data["per_example"]) / 6
    )


@pytest.mark.model
def test_sweep_json_and_progress(files, tmp_path):
    train, test = files
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "steerwidgets",
            "sweep",
            "--train",
            str(train),
            "--test",
            str(test),
            "--layers",
            "10-11,20",
            "--strengths",
            "-1,1",
            "--positions",
            "last",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [row["layer"] for row in data["per_layer"]] == [10, 11, 20]
    for row in data["per_layer"]:
        assert {"steerability", "anti_steerable_fraction", "mean_propensity"} <= set(row)
    assert "sweep" in proc.stderr  # tqdm bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "missing.json"], "no such file"),
        (["--strengths", "1"], "at least two"),
        (["--strengths", "a,b"], "comma-separated"),
        (["--positions", "middle"], "unknown position spec"),
    ],
)
def test_bad_input_exits_2(files, capsys, args, message):
    train, test = files
    base = {"--train": str(train), "--test": str(test), "--layer": "3"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["evaluate"] + [x for pair in base.items() for x in pair]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_malformed_file_exits_2(tmp_path, files, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["evaluate", "--train", str(bad), "--test", str(files[1]), "--layer", "1"]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_parse_layers():
    assert cli.parse_layers("0-3,10", 30) == [0, 1, 2, 3, 10]
    with pytest.raises(cli.CliError, match="0..29"):
        cli.parse_layers("25-30", 30)
    with pytest.raises(cli.CliError, match="backwards"):
        cli.parse_layers("5-2", 30)
