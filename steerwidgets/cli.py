"""Command line: ``steerwidgets evaluate`` and ``steerwidgets sweep`` (also ``python -m steerwidgets``).

Both build a CAA vector from ``--train`` and measure propensity on ``--test`` (metrics.md). Bad input exits
with status 2 and a message that says what to fix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import DatasetError, load_ab_items
from .engine.sweep import DEFAULT_STRENGTHS
from .models import ModelLoadError
from .verdicts import NULL_DIRECTIONS

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad command-line input: printed without a traceback, exit status 2."""


def parse_strengths(text: str) -> list[float]:
    """``"-1.5,-1,0,1"`` -> floats; at least two distinct finite values."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise CliError(f"--strengths must be comma-separated numbers, got {text!r}") from exc
    if len(values) < 2 or len(set(values)) < 2:
        raise CliError("--strengths needs at least two different values, e.g. -1,0,1")
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise CliError("--strengths must be finite numbers")
    return values


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"0-29"``, ``"5,10,15"`` or ``"0-3,10"`` -> sorted unique layer indices, checked against the model."""
    layers: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                start, stop = int(lo), int(hi)
                if stop < start:
                    raise CliError(f"--layers range {part!r} runs backwards; write {stop}-{start}")
                layers.update(range(start, stop + 1))
            else:
                layers.add(int(part))
    except ValueError as exc:
        raise CliError(f"--layers must look like '0-29' or '5,10,15', got {text!r}") from exc
    if not layers:
        raise CliError("--layers selects no layer")
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise CliError(f"--layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    return sorted(layers)


def _positions(text: str | None) -> Any:
    from .interventions import SteeringError, check_position_spec

    if text is None:
        return None
    try:
        check_position_spec(text)
    except SteeringError as exc:
        raise CliError(f"--positions: {exc}") from exc
    return text


def _load_items(path: str, flag: str) -> list:
    if not Path(path).is_file():
        raise CliError(f"{flag} {path}: no such file")
    try:
        return load_ab_items(path)
    except DatasetError as exc:
        raise CliError(f"{flag}: {exc}") from exc


def check_output(path: str | None, flag: str) -> None:
    """Fail before the run, not after it, when an output file cannot be written."""
    if not path:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise CliError(f"{flag} {path} is a folder; give a file name, e.g. {flag} results.json")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"{flag} {path}: the folder {parent} does not exist; create it or pick another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CliError(f"{flag} {path}: cannot write there (permission denied); pick a writable path")


def check_item_lengths(model: Any, items: list, path: str, flag: str) -> None:
    """Name the file and item whose prompt does not fit the model, before any model work."""
    from .interventions import SteeringError
    from .prompts import ab_prompt

    for index, item in enumerate(items):
        try:
            ab_prompt(model, item)
        except SteeringError as exc:
            raise CliError(f"{flag} {path}: item {index}: {exc}") from exc


def _load(model_name: str) -> Any:
    from .models import load_model

    return load_model(None if model_name == "default" else model_name)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="A/B items to build the CAA vector from")
    parser.add_argument("--test", required=True, help="A/B items to measure propensity on")
    parser.add_argument("--model", default="default", help="model name, HF id or folder")
    parser.add_argument(
        "--strengths",
        default=",".join(f"{s:g}" for s in DEFAULT_STRENGTHS),
        help="comma-separated strengths λ (default: Tan et al.'s grid)",
    )
    parser.add_argument(
        "--positions",
        default=None,
        help="all | prompt | last | 3,4 | -3: ... (default: 'last' for the letter protocol, 'continuation' "
        "for the answer-text protocol)",
    )
    parser.add_argument("--json", dest="json_out", help="write the results as JSON here")
    parser.add_argument(
        "--null-directions",
        type=int,
        default=NULL_DIRECTIONS,
        help=f"random directions of the vector's norm for the null every verdict needs (default "
        f"{NULL_DIRECTIONS}; at least 2)",
    )
    parser.add_argument(
        "--no-swap",
        action="store_true",
        help="build CAA from the items as given (default: each item in both letter orders, so the letter "
        "part cancels)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steerwidgets", description="Steer a language model and check whether it worked."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate = sub.add_parser("evaluate", help="propensity and steerability at one layer")
    _common(evaluate)
    evaluate.add_argument("--layer", type=int, required=True)
    evaluate.add_argument("--html", help="also write the standalone reliability report (HTML, no CDN)")
    evaluate.add_argument(
        "--protocol",
        choices=("both", "letter"),
        default="both",
        help="'both' (default) adds the answer-text protocol beside Tan et al.'s letter protocol; "
        "'letter' skips it",
    )
    sweep = sub.add_parser("sweep", help="steerability per layer (strengths batched per pass)")
    _common(sweep)
    sweep.add_argument("--layers", required=True, help="e.g. 0-29 or 5,10,15")
    return parser


def _null_count(value: int) -> int:
    if value < 2:
        raise CliError(f"--null-directions must be at least 2 (a null needs a spread), got {value}")
    return value


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from . import methods
    from .engine.sweep import PROPENSITY_DEFINITIONS, propensity_sweep

    strengths = parse_strengths(args.strengths)
    positions = _positions(args.positions)
    check_output(args.json_out, "--json")
    check_output(getattr(args, "html", None), "--html")
    k = _null_count(args.null_directions)
    train, test = _load_items(args.train, "--train"), _load_items(args.test, "--test")
    model = _load(args.model)
    check_item_lengths(model, train, args.train, "--train")
    check_item_lengths(model, test, args.test, "--test")
    if not 0 <= args.layer < model.n_layers:
        raise CliError(f"--layer {args.layer} out of range: use 0..{model.n_layers - 1}")
    vector = methods.caa(model, train, [args.layer], swap_options=False if args.no_swap else None)
    result = propensity_sweep(
        model, test, vector, [args.layer], strengths, positions=positions, null_directions=k
    )
    summary = result.summary(args.layer)
    answer_text = None
    if args.protocol == "both":
        answer_text = _answer_text(model, test, vector, args.layer, strengths, positions, k)
    if args.html:
        _write_html(model, train, result, vector, args.layer, args.html, answer_text)
    out = {
        "model": model.name,
        "layer": args.layer,
        "positions": result.positions,
        "strengths": strengths,
        "n_train": len(train),
        "n_test": len(test),
        "vector_norm": summary["vector_norm"],
        "vector_swap_options": bool(vector.meta.get("swap_options")),
        "steerability": summary["steerability"],
        "anti_steerable_fraction": summary["anti_steerable_fraction"],
        "mean_propensity": summary["mean_propensity"],
        "p_match": summary["p_match"],
        "non_monotonic_fraction": summary["non_monotonic_fraction"],
        "ab_bias_r2": summary["ab_bias_r2"],
        "norm_ratio": summary["norm_ratio"],
        "warning_level": summary["warning_level"],
        "propensity_definition": PROPENSITY_DEFINITIONS["letter"],
        "verdict": summary["verdict"],
        "verdict_reason": summary["verdict_reason"],
        "steerability_ci95": summary["steerability_ci95"],
        "null": summary["null"],
        "item_classes": summary["item_classes"],
        "option_dependence": summary["option_dependence"],
        "per_example": [
            {k: ex[k] for k in ("index", "slope", "propensity", "anti_steerable", "non_monotonic", "class")}
            for ex in summary["per_example"]
        ],
    }
    if answer_text is not None:
        out["answer_text"] = answer_text
    return out


def _answer_text(
    model: Any, test: list, vector: Any, layer: int, strengths: list[float], positions: Any, k: int
) -> dict[str, Any]:
    """The answer-text protocol's fields (CLI contract); cannot-judge when no item lists its options."""
    from .engine.sweep import PROPENSITY_DEFINITIONS, propensity_sweep
    from .interventions import SteeringError
    from .verdicts import cannot_judge

    at_positions = None if positions in (None, "last") else positions
    try:
        result = propensity_sweep(
            model,
            test,
            vector,
            [layer],
            strengths,
            positions=at_positions,
            protocol="answer_text",
            null_directions=k,
        )
    except SteeringError as exc:
        verdict = cannot_judge("answer_text", str(exc), at_positions).summary()
        return {**{key: verdict[key] for key in _AT_FIELDS}, "n_items": 0}
    summary = result.summary(layer)
    return {
        **{key: summary[key] for key in _AT_FIELDS},
        "positions": result.positions,
        "n_items": len(result.items),
        "anti_steerable_fraction": summary["anti_steerable_fraction"],
        "propensity_definition": PROPENSITY_DEFINITIONS["answer_text"],
    }


_AT_FIELDS = (
    "steerability",
    "steerability_ci95",
    "null",
    "item_classes",
    "verdict",
    "verdict_reason",
    "mean_propensity",
)


def _write_html(
    model: Any, train: list, result: Any, vector: Any, layer: int, path: str, answer_text: dict | None = None
) -> None:
    from . import report
    from .reliability import prechecks

    check = prechecks(model, train, [layer])[layer] if len(train) >= 2 else None
    data = report.build_report(
        result,
        layer,
        precheck=check,
        model_name=model.name,
        vector_method=vector.method,
        answer_text=answer_text,
    )
    report.save(data, path if path.lower().endswith((".html", ".htm")) else path + ".html")


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from . import methods
    from .engine.sweep import propensity_sweep

    strengths = parse_strengths(args.strengths)
    positions = _positions(args.positions)
    check_output(args.json_out, "--json")
    check_output(getattr(args, "html", None), "--html")
    train, test = _load_items(args.train, "--train"), _load_items(args.test, "--test")
    model = _load(args.model)
    check_item_lengths(model, train, args.train, "--train")
    check_item_lengths(model, test, args.test, "--test")
    k = _null_count(args.null_directions)
    layers = parse_layers(args.layers, model.n_layers)
    vector = methods.caa(model, train, layers, swap_options=False if args.no_swap else None)
    with tqdm(total=len(test), desc="sweep", unit="item", file=sys.stderr) as bar:
        result = propensity_sweep(
            model,
            test,
            vector,
            layers,
            strengths,
            positions=positions,
            null_directions=k,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    per_layer = []
    for layer in layers:
        summary = result.summary(layer)
        per_layer.append(
            {
                key: summary[key]
                for key in (
                    "layer",
                    "steerability",
                    "anti_steerable_fraction",
                    "mean_propensity",
                    "non_monotonic_fraction",
                    "vector_norm",
                    "norm_ratio",
                    "warning_level",
                    "verdict",
                    "verdict_reason",
                    "steerability_ci95",
                    "item_classes",
                )
            }
        )
    best = max(per_layer, key=lambda row: row["steerability"])
    return {
        "model": model.name,
        "layers": layers,
        "positions": result.positions,
        "strengths": strengths,
        "n_train": len(train),
        "n_test": len(test),
        "option_dependence": result.option_dependence(),
        "best_layer": best["layer"],
        "per_layer": per_layer,
    }


def _print_summary(result: dict[str, Any]) -> None:
    if "per_layer" in result:
        print(f"{'layer':>5} {'steerability':>13} {'anti-steerable':>15}  verdict (letter protocol)")
        for row in result["per_layer"]:
            print(
                f"{row['layer']:>5} {row['steerability']:>13.3f} {row['anti_steerable_fraction']:>14.0%}  "
                f"{row['verdict']}"
            )
        print(f"highest steerability at layer {result['best_layer']}")
        return
    print(
        f"{result['model']} layer {result['layer']} positions={result['positions']!r}: "
        f"steerability {result['steerability']:.3f} (95 % CI {result['steerability_ci95'][0]:+.3f}.."
        f"{result['steerability_ci95'][1]:+.3f}), anti-steerable (s_i ≤ 0) "
        f"{result['anti_steerable_fraction']:.0%}, ‖v‖ {result['vector_norm']:.2f}"
    )
    print(f"letter protocol: {result['verdict']} — {result['verdict_reason']}")
    if "answer_text" in result:
        at = result["answer_text"]
        print(f"answer-text protocol: {at['verdict']} — {at['verdict_reason']}")


def _glue_negative_values(argv: list[str]) -> list[str]:
    """``--strengths -1,0,1`` → ``--strengths=-1,0,1``: argparse would read ``-1,0,1`` as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--strengths", "--positions") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_glue_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        result = run_evaluate(args) if args.command == "evaluate" else run_sweep(args)
    except CliError as exc:
        print(f"steerwidgets: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError, ModelLoadError) as exc:  # engine errors name their fix
        print(f"steerwidgets: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_summary(result)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
