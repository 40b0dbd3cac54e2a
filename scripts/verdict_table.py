"""The "Verdicts on the built-in sets" rows of docs/benchmarks.md for one model (one load).

Protocol (as for SmolLM2's rows): CAA from items 0-29 of a built-in A/B set at one layer, read as given
and/or in both letter orders; the pre-check on the same training items; verdicts on items 30-49 over Tan et
al.'s grid with K = 200 random directions (gradient null), letter and answer-text protocols.

Usage: python scripts/verdict_table.py [--model gemma-3-270m] [--layer 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import steerwidgets as sw
from steerwidgets.reliability import prechecks

ROWS = (("sentiment", False), ("sentiment", True), ("formality", False))  # (set, both letter orders)


def row(model: sw.SteerableModel, name: str, both: bool, layer: int, k: int) -> dict:
    items = sw.builtin_ab(name)
    train, test = items[:30], items[30:50]
    vector = sw.caa(model, train, [layer], swap_options=both)
    check = prechecks(model, train, [layer], swap_options=both)[layer]
    out = {"set": name, "caa_read": "both orders" if both else "as given", "layer": layer}
    out["precheck"] = {
        "level": check.level,
        "mean_cosine": check.mean_cosine,
        "letter_norm": check.letter_norm,
        "behaviour_norm": check.behaviour_norm,
    }
    for protocol in ("letter", "answer_text"):
        result = sw.propensity_sweep(model, test, vector, [layer], protocol=protocol, null_directions=k)
        s = result.summary(layer)
        out[protocol] = {
            key: s[key]
            for key in (
                "verdict",
                "verdict_reason",
                "steerability",
                "steerability_ci95",
                "null",
                "item_classes",
                "anti_steerable_fraction",
                "option_dependence",
                "positions",
            )
        }
        out[protocol]["n_items"] = len(result.items)
    return out


def markdown(r: dict) -> str:
    p, let, at = r["precheck"], r["letter"], r["answer_text"]
    pre = (
        f"{p['level']} ({p['mean_cosine']:+.2f}); letter part {p['letter_norm']:.3g}, "
        f"behaviour {p['behaviour_norm']:.2g}"
    )
    words = let["verdict"].replace("_", " ")
    backfire = let["item_classes"].get("backfires", 0)
    if let["verdict"] == "cannot_judge":
        letter = (
            f"{words} (option dependence {let['option_dependence']:.0%}; raw anti-steerable "
            f"{let['anti_steerable_fraction']:.0%}, backfiring {backfire})"
        )
    else:
        letter = (
            f"{words}: {let['steerability']:+.3f}; raw anti-steerable {let['anti_steerable_fraction']:.0%}, "
            f"backfiring {backfire}"
        )
    lo, hi = at["steerability_ci95"]
    null = at["null"]
    steer = at["item_classes"].get("steers", 0)
    answer = (
        f"{at['verdict'].replace('_', ' ')}: {at['steerability']:+.3f} ({lo:+.3f}..{hi:+.3f}; "
        f"{null['steerability_q025']:+.3f}..{null['steerability_q975']:+.3f}), {steer} of {at['n_items']} "
        f"items steer"
    )
    return f"| {r['set']} | {r['caa_read']} | {pre} | {letter} | {answer} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = sw.load_model(None if args.model == "default" else args.model)
    print(f"loaded {model.name} ({model.n_layers} layers) in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for name, both in ROWS:
        t = time.perf_counter()
        rows.append(row(model, name, both, args.layer, args.k))
        print(markdown(rows[-1]), f"  [{time.perf_counter() - t:.0f} s]", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"model": model.name, "layer": args.layer, "k": args.k, "rows": rows}, fh, indent=1)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
