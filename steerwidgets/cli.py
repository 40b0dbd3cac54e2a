"""Command line: ``steerwidgets evaluate``, ``steerwidgets sweep`` and ``steerwidgets generate`` (also
``python -m steerwidgets``).

Long because: three subcommands share the model, item, stack and JSON plumbing, and the JSON contract is
easier to keep whole in one file (tests/test_cli.py).

``evaluate`` and ``sweep`` build a CAA vector from ``--train`` and measure propensity on ``--test``
(metrics.md). ``generate`` prints a prompt's unsteered and steered continuations. Bad input exits with
status 2 and a message that says what to fix.

Several steerings at once: ``--vector FILE --layer L --strength S`` (repeat it; each ``--vector`` takes the
first ``--layer`` and ``--strength`` after it; FILE is a ``.safetensors`` vector or a built-in set such as
``sentiment``) and/or ``--steering stack.json`` (a JSON list, see :mod:`steerwidgets.stack`; its entries
come first). ``generate`` applies the whole stack; in ``evaluate`` and ``sweep`` it is the fixed background
that stays on while the CAA vector is swept (``evaluate``'s own ``--layer`` is the one before the first
``--vector``). Every JSON result has ``steerings``: the stack, with ``swept`` marking the swept vector.
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


class _StackFlag(argparse.Action):
    """``--vector``, ``--strength`` and (after a ``--vector``) ``--layer``, kept in command-line order so
    each vector is paired with the ``--layer`` / ``--strength`` that follow it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        stack = getattr(namespace, "stack", None)
        if stack is None:
            stack = []
            namespace.stack = stack
        if option_string == "--vector":
            stack.append({"vector": values})
            return
        key = "layer" if option_string == "--layer" else "strength"
        if stack and key not in stack[-1]:
            stack[-1][key] = values
        elif key == "layer" and getattr(namespace, "own_layer", False) and namespace.layer is None:
            namespace.layer = values  # evaluate's own layer
        elif not stack:
            raise argparse.ArgumentError(self, f"{option_string} {values} comes before any --vector; write "
                                         "--vector FILE --layer L --strength S")  # fmt: skip
        else:
            raise argparse.ArgumentError(
                self, f"--vector {stack[-1]['vector']} already has {key} {stack[-1][key]}; give each "
                "--vector its own --layer and --strength"
            )  # fmt: skip


def _stack_args(parser: argparse.ArgumentParser, own_layer: bool) -> None:
    parser.set_defaults(stack=None, own_layer=own_layer)
    if not own_layer:
        parser.add_argument(
            "--layer", type=int, action=_StackFlag, help="the layer of the --vector before it"
        )
    parser.add_argument(
        "--vector",
        action=_StackFlag,
        help="a steering vector (.safetensors file or built-in set, e.g. sentiment); repeat for a stack, "
        "each followed by its --layer L and --strength S",
    )
    parser.add_argument(
        "--strength", type=float, action=_StackFlag, help="the strength of the --vector before it"
    )
    parser.add_argument("--steering", help='a JSON stack: [{"vector": ..., "layer": L, "strength": S}, ...]')


def _stack_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The stack's ``--steering`` file and ``--vector`` entries, checked before any model work."""
    from .interventions import SteeringError
    from .stack import read_spec

    entries: list[dict[str, Any]] = []
    if args.steering:
        if not Path(args.steering).is_file():
            raise CliError(f"--steering {args.steering}: no such file")
        try:
            read_spec(args.steering)
        except SteeringError as exc:
            raise CliError(f"--steering: {exc}") from exc
        entries.append({"spec": args.steering})
    for index, entry in enumerate(args.stack or []):
        where = f"--vector {entry['vector']} (vector #{index + 1})"
        for key in ("layer", "strength"):
            if key not in entry:
                raise CliError(f"{where} has no --{key}; write --vector FILE --layer L --strength S")
        if entry["strength"] != entry["strength"] or abs(entry["strength"]) == float("inf"):
            raise CliError(f"{where}: --strength must be a finite number")
        positions = getattr(args, "vector_positions", "all")
        entries.append({**entry, "positions": positions})
    return entries


def _load_stack(model: Any, entries: list[dict[str, Any]]) -> list[Any]:
    """The stack as Steerings on ``model``; errors name the flag and the entry."""
    from .stack import load_steerings

    out = []
    for entry in entries:
        try:
            if "spec" in entry:
                out += load_steerings(entry["spec"], model)
            else:
                out += load_steerings([entry], model, base_dir=Path.cwd())
        except (ValueError, TypeError) as exc:
            flag = f"--steering {entry['spec']}" if "spec" in entry else f"--vector {entry['vector']}"
            raise CliError(f"{flag}: {str(exc).removeprefix('steering [0]: ')}") from exc
    return out


def _stack_json(background: list[Any], swept: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    from .stack import describe_steerings

    fixed = [{**row, "swept": False} for row in describe_steerings(background)]
    return ([{**swept, "swept": True}] if swept else []) + fixed


_DTYPES = ("float32", "bfloat16", "float16")


def _model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype: where and how the model loads (as sw.load_model's arguments)."""
    parser.add_argument("--model", default="default", help="model name, HF id or folder")
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 or mps (default: CUDA when available, else the CPU)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=_DTYPES,
        help="weights' dtype (default: float32 on the CPU, bfloat16 on a GPU)",
    )


def _load(args: argparse.Namespace) -> Any:
    import torch

    from .models import load_model

    dtype = getattr(torch, args.dtype) if args.dtype else None
    return load_model(None if args.model == "default" else args.model, device=args.device, dtype=dtype)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="A/B items to build the CAA vector from")
    parser.add_argument("--test", required=True, help="A/B items to measure propensity on")
    _model_args(parser)
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
    evaluate.add_argument(
        "--layer", type=int, action=_StackFlag, help="the layer to evaluate (required; before any --vector)"
    )
    _stack_args(evaluate, own_layer=True)
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
    _stack_args(sweep, own_layer=False)
    gen = sub.add_parser("generate", help="unsteered and steered continuations of a prompt under a stack")
    gen.add_argument("--prompt", required=True, help="the user prompt")
    _model_args(gen)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--positions",
        dest="vector_positions",
        default="all",
        help="where each --vector steers: all | prompt | generated | last | 3,4 | -3: (default all; a "
        "--steering file sets its own)",
    )
    gen.add_argument("--json", dest="json_out", help="write the result as JSON here")
    _stack_args(gen, own_layer=False)
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
    if args.layer is None:
        raise CliError("--layer is required: the layer to evaluate (put it before any --vector)")
    entries = _stack_entries(args)
    train, test = _load_items(args.train, "--train"), _load_items(args.test, "--test")
    model = _load(args)
    check_item_lengths(model, train, args.train, "--train")
    check_item_lengths(model, test, args.test, "--test")
    if not 0 <= args.layer < model.n_layers:
        raise CliError(f"--layer {args.layer} out of range: use 0..{model.n_layers - 1}")
    background = _load_stack(model, entries)
    vector = methods.caa(model, train, [args.layer], swap_options=False if args.no_swap else None)
    result = propensity_sweep(
        model, test, vector, [args.layer], strengths, positions=positions, null_directions=k,
        background=background,
    )  # fmt: skip
    summary = result.summary(args.layer)
    answer_text = None
    if args.protocol == "both":
        answer_text = _answer_text(model, test, vector, args.layer, strengths, positions, k, background)
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
        "steerings": _stack_json(
            background, _swept_json(args.train, args.layer, strengths, result.positions)
        ),
    }
    if answer_text is not None:
        out["answer_text"] = answer_text
    return out


def _swept_json(train: str, layer: Any, strengths: list[float], positions: Any) -> dict[str, Any]:
    return {
        "vector": f"caa (--train {train})",
        "layer": layer,
        "strength": strengths,
        "positions": positions,
        "relative": False,
        "operator": "add",
    }


def _answer_text(
    model: Any,
    test: list,
    vector: Any,
    layer: int,
    strengths: list[float],
    positions: Any,
    k: int,
    background: list | None = None,
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
            background=background or [],
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
    entries = _stack_entries(args)
    train, test = _load_items(args.train, "--train"), _load_items(args.test, "--test")
    model = _load(args)
    check_item_lengths(model, train, args.train, "--train")
    check_item_lengths(model, test, args.test, "--test")
    k = _null_count(args.null_directions)
    layers = parse_layers(args.layers, model.n_layers)
    background = _load_stack(model, entries)
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
            background=background,
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
        "steerings": _stack_json(background, _swept_json(args.train, layers, strengths, result.positions)),
    }


def run_generate(args: argparse.Namespace) -> dict[str, Any]:
    """The prompt's unsteered and steered continuations under the whole stack."""
    from .engine import generate
    from .interventions import SteeringError, check_position_spec

    check_output(args.json_out, "--json")
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    try:
        check_position_spec(args.vector_positions)
    except SteeringError as exc:
        raise CliError(f"--positions: {exc}") from exc
    entries = _stack_entries(args)
    if not entries:
        raise CliError(
            "nothing to steer with: give --vector FILE --layer L --strength S (repeatable) or --steering"
        )
    model = _load(args)
    stack = _load_stack(model, entries)
    result = generate(model, args.prompt, stack, max_new_tokens=args.max_new_tokens, seed=args.seed)
    return {
        "model": model.name,
        "prompt": args.prompt,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "steerings": _stack_json(stack),
        "unsteered": result.base.text,
        "steered": result.steered.text,
        "norm_ratio": result.steered.norm_ratio,
    }


def _print_summary(result: dict[str, Any]) -> None:
    fixed = [row for row in result.get("steerings", []) if not row.get("swept")]
    if "steered" in result:
        print("stack: " + " + ".join(f"{r['vector']}@{r['layer']} x{r['strength']:g}" for r in fixed))
        print(f"unsteered: {result['unsteered']}")
        print(f"steered:   {result['steered']}")
        return
    if fixed:
        on = ", ".join(f"{r['vector']}@{r['layer']} x{r['strength']:g}" for r in fixed)
        print(f"with fixed steerings on at every strength: {on}")
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
        if (
            argv[i] in ("--strengths", "--positions", "--strength")
            and i + 1 < len(argv)
            and argv[i + 1].startswith("-")
        ):
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
        runs = {"evaluate": run_evaluate, "sweep": run_sweep, "generate": run_generate}
        result = runs[args.command](args)
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
