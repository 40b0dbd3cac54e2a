"""The command line contract: JSON keys, exit status 2 with a clear message on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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
    # the verdict fields (issue contract): letter protocol at the top, answer text beside it
    assert data["verdict"] in sw.verdicts.VERDICTS and data["verdict_reason"].endswith(".")
    lo, hi = data["steerability_ci95"]
    assert lo <= data["steerability"] <= hi
    assert set(data["null"]) == {"method", "n_directions", "steerability_q025", "steerability_q975"}
    assert data["null"]["n_directions"] == sw.verdicts.NULL_DIRECTIONS
    assert data["null"]["steerability_q025"] < data["null"]["steerability_q975"]
    assert set(data["item_classes"]) == {"steers", "backfires", "no_detectable_effect"}
    assert sum(data["item_classes"].values()) == data["n_test"]
    assert [ex["class"] for ex in data["per_example"]].count("backfires") == data["item_classes"]["backfires"]
    assert 0.0 <= data["option_dependence"] <= 1.0
    at = data["answer_text"]
    for key in (
        "steerability",
        "steerability_ci95",
        "null",
        "item_classes",
        "verdict",
        "verdict_reason",
        "mean_propensity",
    ):
        assert key in at
    assert at["verdict"] in sw.verdicts.VERDICTS and sum(at["item_classes"].values()) == at["n_items"] == 6
    assert len(at["mean_propensity"]) == 3 and at["positions"] == "continuation"
    if data["verdict"] == "cannot_judge":  # the message says what to do instead
        assert "answer-text" in data["verdict_reason"]


@pytest.mark.model
def test_evaluate_letter_protocol_only(files, tmp_path):
    train, test = files
    out = tmp_path / "out.json"
    args = ["evaluate", "--train", str(train), "--test", str(test), "--layer", "5", "--strengths", "-1,1"]
    assert cli.main([*args, "--protocol", "letter", "--no-swap", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "answer_text" not in data and data["positions"] == "last" and data["vector_swap_options"] is False


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
        assert {
            "steerability",
            "anti_steerable_fraction",
            "mean_propensity",
            "verdict",
            "item_classes",
        } <= set(row)
    assert "sweep" in proc.stderr  # tqdm bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "missing.json"], "no such file"),
        (["--strengths", "1"], "at least two"),
        (["--strengths", "a,b"], "comma-separated"),
        (["--positions", "middle"], "unknown position spec"),
        (["--null-directions", "1"], "at least 2"),
        (["--device", "gpu"], "cannot read device='gpu'"),
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine --device cuda is valid")
def test_asking_for_cuda_without_one_exits_2_before_loading(files, capsys, monkeypatch):
    from steerwidgets import models

    loaded = lambda *a: pytest.fail("loaded a model before the device check")  # noqa: E731
    monkeypatch.setattr(models, "_load_gguf", loaded)
    train, test = files
    argv = ["evaluate", "--train", str(train), "--test", str(test), "--layer", "3", "--device", "cuda"]
    assert cli.main(argv) == 2
    assert "use device='cpu'" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------------------------
# Several steerings: --vector FILE --layer L --strength S (repeated) and --steering stack.json
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_cli(tiny_llama, monkeypatch):
    monkeypatch.setattr(cli, "_load", lambda name: tiny_llama)
    return tiny_llama


def _saved_vector(model, path, seed):
    from helpers import random_vector

    random_vector(model, seed=seed).save(path)
    return path


def test_generate_applies_the_whole_stack(tiny_cli, tmp_path, capsys):
    mine = _saved_vector(tiny_cli, tmp_path / "mine.safetensors", 1)
    out = tmp_path / "gen.json"
    argv = ["generate", "--prompt", "Tell me about your day.", "--max-new-tokens", "5", "--json", str(out)]
    argv += ["--vector", str(mine), "--layer", "1", "--strength", "-3", "--vector", "sentiment"]
    argv += ["--strength", "6", "--layer", "3"]  # either order after its --vector
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert [(r["vector"], r["layer"], r["strength"], r["swept"]) for r in data["steerings"]] == [
        (str(mine), 1, -3.0, False),
        ("sentiment", 3, 6.0, False),
    ]
    stack = sw.stack.load_steerings(
        [
            {"vector": str(mine), "layer": 1, "strength": -3},
            {"vector": "sentiment", "layer": 3, "strength": 6},
        ],
        tiny_cli,
    )
    expected = sw.generate(tiny_cli, "Tell me about your day.", stack, max_new_tokens=5)
    assert data["steered"] == expected.steered.text and data["unsteered"] == expected.base.text
    assert data["norm_ratio"] == pytest.approx(expected.steered.norm_ratio)
    assert "steered:" in capsys.readouterr().out
    # the same stack from a JSON file (paths relative to the file)
    spec = tmp_path / "stack.json"
    spec.write_text(json.dumps([{"vector": "mine.safetensors", "layer": 1, "strength": -3},
                                {"vector": "sentiment", "layer": 3, "strength": 6}]))  # fmt: skip
    out2 = tmp_path / "gen2.json"
    argv2 = ["generate", "--prompt", "Tell me about your day.", "--max-new-tokens", "5"]
    assert cli.main([*argv2, "--steering", str(spec), "--json", str(out2)]) == 0
    assert json.loads(out2.read_text())["steered"] == data["steered"]


def test_evaluate_and_sweep_keep_a_background_stack_on(tiny_cli, files, tmp_path):
    train, test = files
    spec = tmp_path / "stack.json"
    spec.write_text(json.dumps([{"vector": "sentiment", "layer": 0, "strength": 2}]))
    mine = _saved_vector(tiny_cli, tmp_path / "mine.safetensors", 2)
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--train", str(train), "--test", str(test), "--strengths", "-1,1", "--layer", "2"]
    argv += ["--protocol", "letter", "--null-directions", "2", "--json", str(out), "--steering", str(spec)]
    argv += ["--vector", str(mine), "--layer", "2", "--strength", "1.5"]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["layer"] == 2 and {"steerability", "verdict", "per_example", "norm_ratio"} <= set(data)
    swept, *fixed = data["steerings"]
    assert swept["swept"] and swept["layer"] == 2 and swept["strength"] == [-1.0, 1.0]
    assert [(r["vector"], r["layer"], r["strength"]) for r in fixed] == [
        ("sentiment", 0, 2.0),
        (str(mine), 2, 1.5),
    ]
    background = sw.stack.load_steerings(json.loads(spec.read_text()), tiny_cli, base_dir=tmp_path)
    background += [sw.Steering(sw.SteeringVector.load(mine), 2, 1.5)]
    items = sw.load_ab_items(test)
    vector = sw.caa(tiny_cli, sw.load_ab_items(train), [2])
    direct = sw.propensity_sweep(
        tiny_cli, items, vector, [2], [-1, 1], null_directions=2, background=background
    )
    assert data["steerability"] == pytest.approx(direct.summary(2)["steerability"], abs=1e-6)

    out = tmp_path / "sweep.json"
    argv = ["sweep", "--train", str(train), "--test", str(test), "--strengths", "-1,1", "--layers", "1,3"]
    argv += ["--null-directions", "2", "--json", str(out), "--vector", "sentiment", "--layer", "0"]
    argv += ["--strength", "2"]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert [row["layer"] for row in data["per_layer"]] == [1, 3]
    assert [(r["vector"], r["swept"]) for r in data["steerings"]] == [
        (f"caa (--train {train})", True),
        ("sentiment", False),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vector", "sentiment", "--layer", "1"], "has no --strength"),
        (["--vector", "sentiment", "--strength", "1"], "has no --layer"),
        (
            ["--vector", "gone.safetensors", "--layer", "1", "--strength", "1"],
            "--vector gone.safetensors: no vector file",
        ),
        (
            ["--vector", "nope", "--layer", "1", "--strength", "1"],
            "--vector nope: vector 'nope' is not a file",
        ),
        (
            ["--vector", "sentiment", "--layer", "99", "--strength", "1"],
            "--vector sentiment: layer 99 is out of range",
        ),
        (["--steering", "missing.json"], "--steering missing.json: no such file"),
        ([], "nothing to steer with"),
    ],
)
def test_stack_flags_bad_input_exits_2(tiny_cli, capsys, argv, message):
    assert cli.main(["generate", "--prompt", "Hi", *argv]) == 2
    assert message in capsys.readouterr().err


def test_stack_flags_out_of_order_exit_2(tiny_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--prompt", "Hi", "--strength", "2", "--vector", "sentiment"])
    assert exc.value.code == 2 and "comes before any --vector" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--prompt", "Hi", "--vector", "sentiment", "--layer", "1", "--layer", "2"])
    assert exc.value.code == 2 and "already has layer 1" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"vector": "sentiment", "layer": 1, "strenght": 2}]))
    assert cli.main(["generate", "--prompt", "Hi", "--steering", str(bad)]) == 2
    assert "steering [0]: unknown key(s) ['strenght']" in capsys.readouterr().err
    assert cli.main(["evaluate", "--train", "a.json", "--test", "b.json", "--vector", "x"]) == 2
    assert "--layer is required" in capsys.readouterr().err
