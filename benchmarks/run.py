"""Benchmarks of the steering engine against plain PyTorch hooks, measured in one run.

    .venv/bin/python benchmarks/run.py [--quick] [--only P1,P2,P3,P4,P5,P6] [--json out.json]

P1  propensity sweep (A/B items x strengths at one layer): naive per-(item, strength)
    forwards with a plain hook, hand-batched strengths, a plain-hook re-implementation of the
    engine's algorithm, and ``sw.propensity_sweep``; for positions "last" and "all".
P2  steered greedy generation: plain hook + ``model.hf.generate`` vs
    ``sw.generate(baseline=False)``.
P3  Playground update after a strength-slider release (the widget's own clock, Python level):
    first steered token and complete update (32 tokens, per-token colouring, top-k, chart), for a
    strength on the chart's grid and one off it, in float32 and bfloat16, beside the floor: plain
    ``model.hf.generate`` of the same 32 tokens in the same dtype; then, with the attached 20-item
    A/B check, the letter verdict shown (``ab_letter_done``) and the whole check done
    (``ab_check_done``). Goals: first token <= 0.15 s, complete <= 1.10x and A/B check <= 2.0x the floor.
P5  layer sweep: the [30 layers x 7 strengths x 40 items] propensity tensor (positions "last")
    with ``sw.propensity_sweep`` vs the naive loop (one hooked forward per layer, strength and item),
    the naive time extrapolated from a timed sample of its forwards (its whole 8,400 would take
    ~25 min); the sampled cells are checked against the engine's.
P4  load: import time, ``sw.load_model()`` cold (de-quantising the GGUF) and warm
    (safetensors cache), each in a fresh subprocess.

Variants of one benchmark are timed round-robin (for each repeat, every variant once; in P1 per
item) and the median over repeats is reported, so slow drifts of a noisy machine hit every variant
alike. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LAYER = 13
STRENGTHS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
P1_VARIANTS = ("a_naive", "b_batched_hook", "c_hook_same_work", "c2_plain_model", "d_engine")
P1_LABELS = {
    "a_naive": "(a) naive hook, 1 forward per (item, strength), full logits",
    "b_batched_hook": "(b) hook, 7 strengths as 7 rows, full logits",
    "c_hook_same_work": "(c) hook, engine's algorithm (prefix cache / expand at L, 1 logit row)",
    "c2_plain_model": "(c') = (c) on a second transformers model that nnsight never wrapped",
    "d_engine": "(d) sw.propensity_sweep",
}
GOALS = {
    "P1 last (a)/(d)": (">=", 5.0),
    "P1 all (a)/(d)": (">=", 1.5),
    "P1 last (d)/(c)": ("<=", 1.1),
    "P1 all (d)/(c)": ("<=", 1.1),
    "P2 engine/hook": ("<=", 1.05),
    "P3 float32 first token s": ("<=", 0.15),
    "P3 float32 complete (off grid)/plain generate": ("<=", 1.1),
    "P3 float32 complete (on grid)/plain generate": ("<=", 1.1),
    "P3 float32 ab check done/plain generate": ("<=", 2.0),
    "P3 bfloat16 first token s": ("<=", 0.15),
    "P3 bfloat16 complete (off grid)/plain generate": ("<=", 1.1),
    "P3 bfloat16 complete (on grid)/plain generate": ("<=", 1.1),
    "P5 naive (extrapolated)/engine": (">=", 5.0),
    "P4 warm load_model() s": ("<=", 2.0),
    "P6 CLI evaluate now/before verdicts": ("<=", 5.0),
}
P2_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Describe your ideal weekend in detail.",
    "What do you think about the city you live in?",
    "Tell me about a movie you watched recently.",
    "Explain how to bake bread at home.",
    "Write a review of a small Italian restaurant.",
    "Describe the weather today and how it makes you feel.",
    "Tell me a story about a dog who learns to swim.",
]


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
class Timings:
    """Wall and CPU seconds (this process, all threads) of repeated calls of one variant."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, fn: Callable[[], Any]) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)
        return out

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def row(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": min(self.wall),
            "max_s": max(self.wall),
            "times_s": self.wall,
            "cpu_median_s": self.cpu_median,
            "cpu_times_s": self.cpu,
        }


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def add_ratio(report: dict, name: str, num: Timings, den: Timings) -> None:
    """Ratio of medians of wall time (the reported number) and of CPU time (for context)."""
    report["ratios"][name] = num.median / den.median
    report["cpu_ratios"][name] = num.cpu_median / den.cpu_median


# ----------------------------------------------------------------------------------------------
# FLOP model
# ----------------------------------------------------------------------------------------------
class FlopModel:
    """Multiply-adds (MACs) of a Llama-style decoder, counted analytically from its config.

    Per token per layer:  d*(d + 2*kv) + d*d  (q, k, v, o projections; kv = n_kv_heads * head_dim)
                        + 3*d*ff              (gate, up, down of the SwiGLU MLP)
                        + 2*(n_heads*head_dim)*ctx   (q.k scores and attn.v over ctx keys; causal,
                                                      so the i-th new token after `past` cached
                                                      tokens sees ctx = past + i + 1)
    LM head:              vocab*d per position whose logits are computed
                          (tied embedding, 49152 x 576).
    Norms, RoPE, softmax, SiLU and the residual adds are ignored (< 1 % here). FLOPs = 2 x MACs.
    """

    def __init__(self, config: Any, n_layers: int):
        d = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        kv = config.num_key_value_heads * head_dim
        self.n_layers = n_layers
        self.linear = d * (d + 2 * kv) + heads * head_dim * d + 3 * d * config.intermediate_size
        self.attn = 2 * heads * head_dim
        self.head = config.vocab_size * d

    def forward(self, new: int, past: int, rows_per_layer: list[int], logit_rows: int) -> float:
        """MACs of one forward of ``new`` tokens after ``past`` cached ones.

        ``rows_per_layer[L]`` is the batch size layer L runs at; ``logit_rows`` (positions x rows)
        go through the LM head."""
        ctx_sum = new * past + new * (new + 1) // 2
        per_row = new * self.linear + self.attn * ctx_sum
        return float(sum(rows_per_layer) * per_row + logit_rows * self.head)

    def p1(self, variant: str, positions: str, lengths: list[int], n_s: int, layer: int) -> float:
        """GFLOP of one P1 sweep (all items, all strengths)."""
        one = [1] * self.n_layers
        split = [1] * (layer + 1) + [n_s] * (self.n_layers - layer - 1)
        macs = 0.0
        for n in lengths:
            if variant == "a_naive":
                macs += n_s * self.forward(n, 0, one, n)
            elif variant == "b_batched_hook":
                macs += self.forward(n, 0, [n_s] * self.n_layers, n_s * n)
            elif positions == "last":  # (c) and (d): prefix once, then the last token as n_s rows
                macs += self.forward(n - 1, 0, one, 1) + self.forward(1, n - 1, split, n_s)
            else:  # (c), (d) "all": batch 1 up to the steered layer, n_s rows above, 1 logit row
                macs += self.forward(n, 0, split, n_s)
        return 2 * macs / 1e9


# ----------------------------------------------------------------------------------------------
# Plain-torch hook
# ----------------------------------------------------------------------------------------------
def device_of(model: Any) -> torch.device:
    """Where the model's weights are (inputs of the plain-hook baselines go there)."""
    return next(model.hf.parameters()).device


def add_to(hidden: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``hidden + add`` computed in float32 and returned in ``hidden``'s dtype, as the engine edits a
    bf16/fp16 model (a float32 model's numbers are unchanged)."""
    if hidden.dtype == torch.float32:
        return hidden + add
    return (hidden.float() + add).to(hidden.dtype)


class AddHook:
    """A plain forward hook on one block: optionally expands the output to ``expand`` rows, then
    adds ``add`` (broadcast against [rows, seq, d]; moved to the block's device when set). Inactive while
    ``add`` is None."""

    def __init__(self, module: torch.nn.Module):
        self.device = next(module.parameters()).device
        self._add: torch.Tensor | None = None
        self.expand = 0
        self.handle = module.register_forward_hook(self)

    @property
    def add(self) -> torch.Tensor | None:
        return self._add

    @add.setter
    def add(self, value: torch.Tensor | None) -> None:
        self._add = None if value is None else value.to(self.device)

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if self.add is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if self.expand:
            hidden = hidden.expand(self.expand, -1, -1)
        hidden = add_to(hidden, self._add)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def remove(self) -> None:
        self.handle.remove()


def _mask(positions: str, n: int) -> torch.Tensor:
    mask = torch.zeros(n)
    if positions == "all":
        mask[:] = 1.0
    else:
        mask[n - 1] = 1.0
    return mask


def _prompts(model: Any, items: list) -> list[tuple[torch.Tensor, int, int]]:
    from steerwidgets.prompts import ab_prompt

    out = []
    device = device_of(model)
    for item in items:
        ids, y_pos, y_neg = ab_prompt(model, item)
        out.append((torch.tensor([ids], device=device), y_pos, y_neg))
    return out


def plain_copy(model: Any) -> Any:
    """The same SteerableModel but with a second, freshly loaded transformers model that nnsight
    never wrapped (nnsight installs a pass-through forward on every module of the model it wraps,
    which plain hooks on ``model.hf`` also go through). Only ``.hf``/``.hf_block`` work on it."""
    import dataclasses
    import types

    from steerwidgets.models import _load_gguf, find_packaged_gguf

    hf, _ = _load_gguf(find_packaged_gguf(), torch.float32)
    hf.eval()
    return dataclasses.replace(model, nn=types.SimpleNamespace(_module=hf))


# ----------------------------------------------------------------------------------------------
# P1 variants: each returns the propensity matrix [n_items, n_strengths]; tokenising is timed too.
# ----------------------------------------------------------------------------------------------
def p1_naive(
    model: Any,
    items: list,
    vec: torch.Tensor,
    positions: str,
    layer: int = LAYER,
    strengths: tuple = STRENGTHS,
) -> np.ndarray:
    hook = AddHook(model.hf_block(layer))
    out = np.zeros((len(items), len(strengths)))
    try:
        with torch.no_grad():
            for i, (ids, y_pos, y_neg) in enumerate(_prompts(model, items)):
                mask = _mask(positions, ids.shape[1])[None, :, None]
                for j, lam in enumerate(strengths):
                    hook.add = lam * vec * mask
                    logits = model.hf(ids).logits[0, -1]  # all positions' logits, read the last
                    out[i, j] = float(logits[y_pos] - logits[y_neg])
    finally:
        hook.remove()
    return out


def p1_batched(model: Any, items: list, vec: torch.Tensor, positions: str) -> np.ndarray:
    hook = AddHook(model.hf_block(LAYER))
    lam = torch.tensor(STRENGTHS)[:, None, None]
    out = np.zeros((len(items), len(STRENGTHS)))
    try:
        with torch.no_grad():
            for i, (ids, y_pos, y_neg) in enumerate(_prompts(model, items)):
                hook.add = lam * vec * _mask(positions, ids.shape[1])[None, :, None]
                logits = model.hf(ids.expand(len(STRENGTHS), -1)).logits[:, -1]
                out[i] = (logits[:, y_pos] - logits[:, y_neg]).numpy()
    finally:
        hook.remove()
    return out


def _expanded_cache(cache: Any, rows: int, split: int) -> Any:
    """Fresh DynamicCache: batch 1 for layers <= split, ``rows`` copies above (as the engine)."""
    from transformers import DynamicCache

    data = []
    for index, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values
        if index > split:
            k, v = k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous()
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)


def p1_same_work(
    model: Any,
    items: list,
    vec: torch.Tensor,
    positions: str,
    layer: int = LAYER,
    strengths: tuple = STRENGTHS,
) -> np.ndarray:
    hook = AddHook(model.hf_block(layer))
    n_s = len(strengths)
    add = torch.tensor(strengths)[:, None, None] * vec
    out = np.zeros((len(items), n_s))
    try:
        with torch.no_grad():
            for i, (ids, y_pos, y_neg) in enumerate(_prompts(model, items)):
                if positions == "last":
                    hook.add = None
                    prefix = model.hf(ids[:, :-1], use_cache=True, logits_to_keep=1)
                    cache = prefix["cache"] if "cache" in prefix else prefix["past_key_values"]
                    hook.add, hook.expand = add, n_s
                    kv = _expanded_cache(cache, n_s, layer)
                    step = model.hf(ids[:, -1:], cache=kv, use_cache=True, logits_to_keep=1)
                    logits = step.logits
                else:
                    hook.add, hook.expand = add, n_s
                    logits = model.hf(ids, logits_to_keep=1).logits
                logits = logits[:, -1].float()
                out[i] = (logits[:, y_pos] - logits[:, y_neg]).cpu().numpy()
    finally:
        hook.remove()
    return out


def p1_engine(
    model: Any, items: list, vec: Any, positions: str, layer: int = LAYER, strengths: tuple = STRENGTHS
) -> np.ndarray:
    import steerwidgets as sw

    result = sw.propensity_sweep(model, items, vec, layer, strengths, positions=positions)
    return result.propensity[layer]


def run_p1(
    model: Any,
    plain: Any,
    quick: bool,
    report: dict,
    repeats: int | None = None,
    n_items: int | None = None,
) -> None:
    import steerwidgets as sw
    from steerwidgets.prompts import ab_prompt

    all_items = list(sw.builtin_ab("sentiment"))
    n_items = n_items or (8 if quick else 40)
    repeats = repeats or (1 if quick else 3)
    items = all_items[:n_items]
    others = all_items[40:]
    if len(others) >= 8:
        caa_items, caa_note = others, f"CAA from built-in sentiment items 40..{len(all_items) - 1}"
    else:
        caa_items = all_items[:40]
        caa_note = f"CAA from the same first {len(caa_items)} built-in sentiment items"
    vector = sw.caa(model, caa_items, [LAYER])
    vec = vector[LAYER]
    lengths = [len(ab_prompt(model, item)[0]) for item in items]
    flops = FlopModel(model.hf.config, model.n_layers)
    fns: dict[str, Callable] = {
        "a_naive": p1_naive,
        "b_batched_hook": p1_batched,
        "c_hook_same_work": p1_same_work,
        "d_engine": p1_engine,
    }

    def call(name: str, subset: list, pos: str) -> np.ndarray:
        if name == "c2_plain_model":
            return p1_same_work(plain, subset, vec, pos)
        return fns[name](model, subset, vector if name == "d_engine" else vec, pos)

    variants = [(pos, name) for pos in ("last", "all") for name in P1_VARIANTS]
    print(
        f"P1: {n_items} items (prompt tokens {min(lengths)}..{max(lengths)}, mean "
        f"{statistics.mean(lengths):.1f}) x {len(STRENGTHS)} strengths, layer {LAYER}, "
        f"|v|={float(vec.norm()):.2f}; {caa_note}; {repeats} repeat(s)",
        flush=True,
    )
    # Warm-up (untimed): every variant on two items, so lazy init is not timed.
    for pos, name in variants:
        call(name, items[:2], pos)
    # Round-robin at the finest grain that keeps each variant's algorithm intact: per repeat, per
    # item, every variant once (the order rotated from item to item). A variant's time for a
    # repeat is the sum over items, so it is exactly "the sweep over all items", while bursts of
    # load from other processes (seconds long here) land on all variants alike.
    item_wall = {v: np.zeros((repeats, n_items)) for v in variants}
    item_cpu = {v: np.zeros((repeats, n_items)) for v in variants}
    results = {v: np.zeros((n_items, len(STRENGTHS))) for v in variants}
    for r in range(repeats):
        for i, item in enumerate(items):
            k = (i + r) % len(variants)
            for v in variants[k:] + variants[:k]:
                w0, c0 = time.perf_counter(), time.process_time()
                m = call(v[1], [item], v[0])
                item_wall[v][r, i] = time.perf_counter() - w0
                item_cpu[v][r, i] = time.process_time() - c0
                if r == 0:
                    results[v][i] = m[0]
        print(f"  repeat {r + 1}/{repeats} (wall s, sum over items; load {loadavg()})", flush=True)
        for v in variants:
            print(f"    {v[0]:4s} {v[1]:16s} {item_wall[v][r].sum():8.2f}", flush=True)
    times = {v: Timings() for v in variants}
    for v, t in times.items():
        t.wall = [float(x) for x in item_wall[v].sum(1)]
        t.cpu = [float(x) for x in item_cpu[v].sum(1)]
    for pos in ("last", "all"):
        ref = results[(pos, "a_naive")]
        for name in P1_VARIANTS:
            diff = float(np.abs(results[(pos, name)] - ref).max())
            report["rows"].append(
                {
                    "bench": "P1",
                    "positions": pos,
                    "variant": name,
                    "label": P1_LABELS[name],
                    **times[(pos, name)].row(),
                    "gflop": flops.p1(name, pos, lengths, len(STRENGTHS), LAYER),
                    "max_abs_diff_vs_a": diff,
                }
            )
            if name != "a_naive":
                report["checks"].append(
                    {
                        "check": f"P1 {pos} max|{name} - a_naive| of propensity",
                        "value": diff,
                        "ok": diff < 1e-3,
                    }
                )
        for label, num, den in (
            ("(a)/(d)", "a_naive", "d_engine"),
            ("(b)/(d)", "b_batched_hook", "d_engine"),
            ("(d)/(c)", "d_engine", "c_hook_same_work"),
            ("(d)/(c')", "d_engine", "c2_plain_model"),
        ):
            key = f"P1 {pos} {label}"
            add_ratio(report, key, times[(pos, num)], times[(pos, den)])
            per_item = item_wall[(pos, num)] / item_wall[(pos, den)]
            report["item_ratios"][key] = float(np.median(per_item))
    report["meta"]["P1"] = {
        "items": n_items,
        "repeats": repeats,
        "strengths": list(STRENGTHS),
        "layer": LAYER,
        "vector": caa_note,
        "vector_norm": float(vec.norm()),
        "prompt_tokens": lengths,
    }


# ----------------------------------------------------------------------------------------------
# P2: steered generation
# ----------------------------------------------------------------------------------------------
P2_NEW = 32
P2_STRENGTH = 4.0


def p2_hook(
    model: Any,
    vec: torch.Tensor,
    layer: int = LAYER,
    strength: float = P2_STRENGTH,
    prompts: list[str] = P2_PROMPTS,
    new: int = P2_NEW,
    scores: list | None = None,
) -> torch.Tensor:
    """Greedy ids [rows, new] of hf.generate under a plain hook; ``scores`` (a list) gets each step's
    logits [rows, vocab] too."""
    from steerwidgets.prompts import encode

    enc = encode(model, prompts)
    device = device_of(model)
    real = enc.attention_mask[..., None].to(device=device, dtype=vec.dtype)
    add = strength * vec.to(device)
    state = {"prefill": True}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if state["prefill"]:  # the prompt pass: steer real tokens only, not the left padding
            state["prefill"] = False
            hidden = add_to(hidden, add * real)
        else:
            hidden = add_to(hidden, add)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.hf_block(layer).register_forward_hook(hook)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.hf.generate(
                enc.input_ids.to(device),
                attention_mask=enc.attention_mask.to(device),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
                output_scores=scores is not None,
                return_dict_in_generate=scores is not None,
            )
    finally:
        handle.remove()
    if scores is not None:
        scores.extend(out.scores)
        out = out.sequences
    return out[:, enc.width :]


def p2_engine(
    model: Any,
    vector: Any,
    layer: int = LAYER,
    strength: float = P2_STRENGTH,
    prompts: list[str] = P2_PROMPTS,
    new: int = P2_NEW,
) -> tuple[Any, int]:
    import steerwidgets as sw

    steps = [0]

    def count(run: str, step: int, ids: list[int]) -> None:
        steps[0] = step + 1

    steering = sw.Steering(vector, layer, strength, "all")
    res = sw.generate(model, prompts, steering, max_new_tokens=new, baseline=False, on_token=count)
    return res.steered, steps[0]


P2_LABELS = {
    "hook_generate": "plain hook + model.hf.generate(min_new_tokens=32)",
    "hook_generate_plain_model": "same, on a transformers model that nnsight never wrapped",
    "engine_generate": "sw.generate(baseline=False)",
}


def run_p2(model: Any, plain: Any, quick: bool, report: dict, repeats: int | None = None) -> None:
    import steerwidgets as sw

    repeats = repeats or (2 if quick else 5)
    vector = sw.caa(model, list(sw.builtin_ab("sentiment"))[:40], [LAYER])
    vec = vector[LAYER]
    print(
        f"P2: {len(P2_PROMPTS)} prompts x {P2_NEW} new tokens, greedy, layer {LAYER}, strength "
        f"{P2_STRENGTH} x CAA(|v|={float(vec.norm()):.2f}), positions='all'; {repeats} repeat(s)",
        flush=True,
    )
    fns: dict[str, Callable[[], Any]] = {
        "hook_generate": lambda: p2_hook(model, vec),
        "hook_generate_plain_model": lambda: p2_hook(plain, vec),
        "engine_generate": lambda: p2_engine(model, vector),
    }
    for fn in fns.values():  # warm-up
        fn()
    times = {name: Timings() for name in fns}
    outputs: dict[str, Any] = {}
    for r in range(repeats):
        for name, fn in fns.items():
            outputs[name] = times[name].run(fn)
        print(
            f"  repeat {r + 1}/{repeats} "
            + ", ".join(f"{n} {t.wall[-1]:.2f} s ({t.cpu[-1]:.2f} cpu)" for n, t in times.items())
            + f"  load {loadavg()}",
            flush=True,
        )
    engine_out, engine_steps = outputs["engine_generate"]
    hook_ids = outputs["hook_generate"]
    hook_steps = int(hook_ids.shape[1])
    steps = {"engine_generate": engine_steps}
    for name in ("hook_generate", "hook_generate_plain_model"):
        ids = outputs[name]
        steps[name] = int(ids.shape[1])
        same = sum(ids[row, : len(toks)].tolist() == toks for row, toks in enumerate(engine_out.token_ids))
        report["checks"].append(
            {
                "check": f"P2 greedy tokens of engine == {name} (engine rows up to their EOS)",
                "value": f"{same}/{len(P2_PROMPTS)} rows",
                "ok": same == len(P2_PROMPTS),
            }
        )
    for name, t in times.items():
        report["rows"].append(
            {
                "bench": "P2",
                "positions": "all",
                "variant": name,
                "label": P2_LABELS[name],
                **t.row(),
                "steps": steps[name],
                "tokens_per_s": len(P2_PROMPTS) * steps[name] / t.median,
            }
        )
    for key, den in (
        ("P2 engine/hook", "hook_generate"),
        ("P2 engine/hook on never-wrapped model", "hook_generate_plain_model"),
    ):
        add_ratio(report, key, times["engine_generate"], times[den])
        if steps[den] != engine_steps:
            report["ratios"][key] *= steps[den] / engine_steps
            report["cpu_ratios"][key] *= steps[den] / engine_steps
    if hook_steps == engine_steps:
        note = f"all variants ran {hook_steps} decoding steps; ratio of wall times"
    else:
        note = (
            f"step counts differ (hook {hook_steps}, engine {engine_steps}: all rows hit EOS); "
            "ratio of seconds per step (inverse tokens/s)"
        )
    report["meta"]["P2"] = {"repeats": repeats, "strength": P2_STRENGTH, "note": note}


# ----------------------------------------------------------------------------------------------
# P3: the Playground's update latency
# ----------------------------------------------------------------------------------------------
P3_PROMPT = "Tell me about your day."
P3_TARGETS = (" I love it", " I hate it")


class _Seconds(Timings):
    """Timings filled from the widget's own clock (ms) rather than by calling a function."""

    def add(self, ms: float) -> None:
        self.wall.append(ms / 1000)
        self.cpu.append(float("nan"))

    @property
    def cpu_median(self) -> float:
        return float("nan")


def plain_generate(hf: Any, ids: torch.Tensor, new: int = 32) -> Callable[[], Any]:
    """The Playground's floor: ``new`` greedy tokens of plain ``hf.generate``, no steering, no nnsight."""
    ids = ids.to(next(hf.parameters()).device)

    def plain() -> Any:
        with torch.no_grad():
            return hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    return plain


def run_p3(quick: bool, report: dict, repeats: int | None = None) -> None:
    import steerwidgets as sw
    from steerwidgets.widgets.playground import Playground

    repeats = repeats or (2 if quick else 5)
    print(f"P3: Playground strength changes, 32 new tokens, layer 10; {repeats} repeat(s)", flush=True)
    for dtype in ("float32", "bfloat16"):
        model = sw.load_model(dtype=getattr(torch, dtype))
        vector = sw.mean_difference(model, sw.builtin_pairs("sentiment"))
        ids = torch.tensor([sw.engine.tokenize_prompt(model, P3_PROMPT)[0]])
        widget = Playground(model, vector, prompt=P3_PROMPT, layer=10, strength=4.0, targets=P3_TARGETS)
        widget.wait(600)
        # the same Playground with the attached 20-item A/B check (its first run reads the items' prefixes)
        checked = Playground(
            model, vector, prompt=P3_PROMPT, layer=10, strength=4.0, targets=P3_TARGETS,
            ab_items=sw.builtin_ab("sentiment")[:20],
        )  # fmt: skip
        checked.wait(600)

        plain = plain_generate(model.hf, ids)
        plain()  # warm-up
        times = {"plain_generate": Timings(), "first_token": _Seconds()}
        times.update({"complete_on_grid": _Seconds(), "complete_off_grid": _Seconds()})
        times["ab_letter_done"] = _Seconds()
        times["ab_check_done"] = _Seconds()
        for r in range(repeats):
            times["plain_generate"].run(plain)
            # on the grid (±4, ±8 were drawn first): only the steered text is new
            for kind, strength in (("complete_on_grid", -4.0 if r % 2 == 0 else 8.0),
                                   ("complete_off_grid", 4.0 + 0.5 * (r + 1))):  # fmt: skip
                widget.strength = strength
                widget.wait(600)
                if widget.error:
                    raise RuntimeError(f"P3: the playground failed: {widget.error}")
                times[kind].add(widget.timings["charts_ms"])
                times["first_token"].add(widget.timings["first_token_ms"])
            checked.strength = 4.0 + 0.5 * (r + 1)  # a slider release: everything, then the A/B check
            checked.wait(600)
            if checked.error:
                raise RuntimeError(f"P3: the playground failed: {checked.error}")
            times["ab_letter_done"].add(checked.timings["ab_letter_done_ms"])
            times["ab_check_done"].add(checked.timings["total_ms"])
            print(
                f"  {dtype} repeat {r + 1}/{repeats} "
                + ", ".join(f"{n} {t.wall[-1]:.3f} s" for n, t in times.items())
                + f"  load {loadavg()}",
                flush=True,
            )
        widget.close()
        checked.close()
        for name, t in times.items():
            report["rows"].append(
                {
                    "bench": "P3",
                    "positions": "all",
                    "variant": f"{dtype} {name}",
                    "label": P3_LABELS[name],
                    **t.row(),
                }
            )
        report["ratios"][f"P3 {dtype} first token s"] = times["first_token"].median
        report["ratios"][f"P3 {dtype} complete (off grid) s"] = times["complete_off_grid"].median
        report["ratios"][f"P3 {dtype} complete (on grid) s"] = times["complete_on_grid"].median
        report["ratios"][f"P3 {dtype} ab check done s"] = times["ab_check_done"].median
        floor = times["plain_generate"].median
        named = (("complete (off grid)", "complete_off_grid"), ("complete (on grid)", "complete_on_grid"),
                 ("ab letter verdict", "ab_letter_done"), ("ab check done", "ab_check_done"))  # fmt: skip
        for name, key in named:
            report["ratios"][f"P3 {dtype} {name}/plain generate"] = times[key].median / floor
        del widget, checked, model, plain
    report["meta"]["P3"] = {
        "repeats": repeats,
        "note": "widget timings from the slider change reaching Python; the browser adds the round "
        "trip (tests/browser/test_playground_browser.py measures it). bfloat16 is the speed option: it moves "
        "A/B propensities by up to ~0.35 logits on SmolLM2, so measured numbers use float32.",
    }


P3_LABELS = {
    "plain_generate": "floor: model.hf.generate, 32 greedy tokens, no steering, no nnsight",
    "first_token": "slider change -> first steered token (widget clock)",
    "complete_on_grid": "-> text, colouring, top-k and chart done; strength on the chart grid",
    "complete_off_grid": "-> same, strength off the grid (2 new chart points x 2 completions)",
    "ab_letter_done": "slider change -> the A/B check's letter verdict shown (answer text still runs)",
    "ab_check_done": "slider change -> everything above and the attached 20-item A/B check (both protocols, "
    "16 random directions) done",
}


# ----------------------------------------------------------------------------------------------
# P5: a whole layer sweep
# ----------------------------------------------------------------------------------------------
P5_SAMPLE_LAYERS = (0, 15, 29)
P5_SAMPLE_ITEMS = 4


def p5_naive_cells(model: Any, items: list, vector: Any, layers: tuple[int, ...]) -> np.ndarray:
    """[layers, items, strengths] propensities, one hooked full forward per cell."""
    out = np.zeros((len(layers), len(items), len(STRENGTHS)))
    prompts = _prompts(model, items)
    with torch.no_grad():
        for li, layer in enumerate(layers):
            hook = AddHook(model.hf_block(layer))
            try:
                for i, (ids, y_pos, y_neg) in enumerate(prompts):
                    mask = _mask("last", ids.shape[1])[None, :, None]
                    for j, lam in enumerate(STRENGTHS):
                        hook.add = lam * vector[layer] * mask
                        logits = model.hf(ids).logits[0, -1]
                        out[li, i, j] = float(logits[y_pos] - logits[y_neg])
            finally:
                hook.remove()
    return out


def run_p5(quick: bool, report: dict, n_items: int | None = None) -> None:
    import steerwidgets as sw

    model = sw.load_model()
    items = list(sw.builtin_ab("sentiment"))[: n_items or (8 if quick else 40)]
    layers = list(range(model.n_layers))
    vector = sw.caa(model, items, layers)
    print(
        f"P5: {len(layers)} layers x {len(STRENGTHS)} strengths x {len(items)} items, positions='last'",
        flush=True,
    )
    engine, naive = Timings(), Timings()
    result = engine.run(
        lambda: sw.propensity_sweep(model, items, vector, layers, STRENGTHS, positions="last")
    )
    sample = items[:P5_SAMPLE_ITEMS]
    cells = naive.run(lambda: p5_naive_cells(model, sample, vector, P5_SAMPLE_LAYERS))
    n_sample = len(P5_SAMPLE_LAYERS) * len(sample) * len(STRENGTHS)
    n_full = len(layers) * len(items) * len(STRENGTHS)
    per_forward = naive.median / n_sample
    extrapolated = per_forward * n_full
    diff = max(
        float(np.abs(result.propensity[layer][: len(sample)] - cells[li]).max())
        for li, layer in enumerate(P5_SAMPLE_LAYERS)
    )
    report["checks"].append(
        {"check": "P5 engine == naive on the sampled cells (max abs diff)", "value": diff, "ok": diff < 1e-3}
    )
    report["rows"].append(
        {
            "bench": "P5",
            "positions": "last",
            "variant": "engine",
            "label": P5_LABELS["engine"],
            **engine.row(),
        }
    )
    report["rows"].append(
        {
            "bench": "P5",
            "positions": "last",
            "variant": "naive sample",
            "label": P5_LABELS["naive"].format(n=n_sample, per=per_forward, full=n_full, ext=extrapolated),
            **naive.row(),
        }
    )
    report["ratios"]["P5 engine sweep s"] = engine.median
    report["ratios"]["P5 naive (extrapolated)/engine"] = extrapolated / engine.median
    print(
        f"  engine {engine.median:.1f} s; naive {per_forward:.3f} s/forward x {n_full} = "
        f"{extrapolated:.0f} s; max abs diff {diff:.1e}  load {loadavg()}",
        flush=True,
    )


# ----------------------------------------------------------------------------------------------
# P6: what the verdicts cost (the CLI's `evaluate` work before and after)
# ----------------------------------------------------------------------------------------------
P6_LABELS = {
    "before": "CLI work before verdicts: caa (items as given) + letter sweep, positions 'all', no null",
    "after": "CLI work now: caa (both orders) + letter sweep ('last', 200-direction null, option swap) + "
    "answer-text sweep ('continuation', 200-direction null)",
}


def run_p6(quick: bool, report: dict, repeats: int | None = None) -> None:
    """``steerwidgets evaluate``'s model work on a built-in set (30 train, 30 test items, layer 12), before
    the verdicts and now, interleaved; the goal is now/before ≤ 5."""
    import steerwidgets as sw

    model = sw.load_model()
    items = sw.builtin_ab("sentiment")
    train, test = items[:30], items[30:] if not quick else items[30:38]
    layer = 12

    def before() -> Any:
        vec = sw.caa(model, train, [layer], swap_options=False)
        return sw.propensity_sweep(model, test, vec, [layer], positions="all", null_directions=0)

    def after() -> Any:
        vec = sw.caa(model, train, [layer])
        letter = sw.propensity_sweep(model, test, vec, [layer])
        text = sw.propensity_sweep(model, test, vec, [layer], protocol="answer_text")
        return letter.summary(layer), text.summary(layer)

    timings = {"before": Timings(), "after": Timings()}
    for fn in (before, after):  # warm-up
        fn()
    n = repeats or (1 if quick else 3)
    print(f"P6: verdict cost, {len(test)} test items, {n} repeats", flush=True)
    for _ in range(n):
        for name, fn in (("before", before), ("after", after)):
            timings[name].run(fn)
    for name, t in timings.items():
        report["rows"].append(
            {"bench": "P6", "positions": "", "variant": name, "label": P6_LABELS[name], **t.row()}
        )
    ratio = timings["after"].median / timings["before"].median
    report["ratios"]["P6 CLI evaluate now/before verdicts"] = ratio
    report["cpu_ratios"]["P6 CLI evaluate now/before verdicts"] = (
        timings["after"].cpu_median / timings["before"].cpu_median
    )
    print(f"  before {timings['before'].median:.1f} s, now {timings['after'].median:.1f} s", flush=True)


P5_LABELS = {
    "engine": "sw.propensity_sweep over every layer (one run)",
    "naive": "{n} hooked forwards timed ({per:.3f} s each); x {full} cells = {ext:.0f} s extrapolated",
}


# ----------------------------------------------------------------------------------------------
# P4: import and load in fresh processes
# ----------------------------------------------------------------------------------------------
_P4_CODE = """
import json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
import torch, transformers, nnsight  # noqa
import steerwidgets as sw
w1, c1 = time.perf_counter(), time.process_time()
if sys.argv[1] == "preimport":  # what transformers imports lazily on first use of a model class
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # noqa
w2, c2 = time.perf_counter(), time.process_time()
model = sw.load_model()
w3, c3 = time.perf_counter(), time.process_time()
out = {"import": [w1 - w0, c1 - c0], "lazy": [w2 - w1, c2 - c1], "load": [w3 - w2, c3 - c2]}
print("P4JSON" + json.dumps(out))
"""
P4_PARTS = {
    "import": "import torch, transformers, nnsight, steerwidgets",
    "lazy": "then from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel",
    "load": "sw.load_model()",
    "process": "whole subprocess (interpreter start to exit)",
}


def _p4_once(cache: str, preimport: bool = False) -> dict[str, list[float]]:
    """One fresh interpreter: [wall, cpu] seconds of the imports, of load_model() and in all.

    With ``preimport`` the model classes of transformers (lazily imported modules: modeling_utils
    pulls in torch.distributed.tensor and torch._dynamo) are imported before ``load_model()``, so
    its time is what steerwidgets itself costs."""
    import resource

    env = dict(os.environ, STEERWIDGETS_CACHE=cache)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _P4_CODE, "preimport" if preimport else "plain"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"P4 subprocess failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("P4JSON"))
    return dict(json.loads(line[len("P4JSON") :]), process=[wall, cpu])


def _p4_timings(runs: list[dict[str, list[float]]], part: str) -> Timings:
    t = Timings()
    for run in runs:
        t.wall.append(run[part][0])
        t.cpu.append(run[part][1])
    return t


def run_p4(quick: bool, report: dict, repeats: int | None = None) -> None:
    repeats = repeats or (1 if quick else 3)
    print(f"P4: fresh subprocesses; cold once, then warm and warm-preimported x{repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sw-bench-cache-") as cache:
        cold = _p4_once(cache)
        print(f"  cold {cold}  load {loadavg()}", flush=True)
        warm, pre = [], []
        for r in range(repeats):
            warm.append(_p4_once(cache))
            print(f"  warm {r + 1}/{repeats} {warm[-1]}  load {loadavg()}", flush=True)
            pre.append(_p4_once(cache, preimport=True))
            print(f"  warm-preimported {r + 1}/{repeats} {pre[-1]}  load {loadavg()}", flush=True)
    timings = {}
    runs_by_kind = (
        ("cold", [cold], "empty cache: hash + de-quantise the GGUF, write safetensors"),
        ("warm", warm, "safetensors cache filled"),
        ("warm-pre", pre, "cache filled, transformers' model classes imported first"),
    )
    for part, label in P4_PARTS.items():
        for kind, runs, note in runs_by_kind:
            if part == "lazy" and kind != "warm-pre":
                continue
            timings[(kind, part)] = t = _p4_timings(runs, part)
            report["rows"].append(
                {
                    "bench": "P4",
                    "positions": "",
                    "variant": f"{kind} {part}",
                    "label": f"{label}; {note}",
                    **t.row(),
                }
            )
    report["ratios"]["P4 warm load_model() s"] = timings[("warm", "load")].median
    report["cpu_ratios"]["P4 warm load_model() s"] = timings[("warm", "load")].cpu_median
    report["ratios"]["P4 warm load_model() s, model classes pre-imported"] = timings[
        ("warm-pre", "load")
    ].median
    report["cpu_ratios"]["P4 warm load_model() s, model classes pre-imported"] = timings[
        ("warm-pre", "load")
    ].cpu_median
    add_ratio(report, "P4 cold/warm load_model()", timings[("cold", "load")], timings[("warm", "load")])


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [
        "| bench | positions | variant | median s | min s | max s | median CPU s | n | GFLOP | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        gflop = f"{row['gflop']:.1f}" if "gflop" in row else ""
        notes = row["label"]
        if "max_abs_diff_vs_a" in row and row["variant"] != "a_naive":
            notes += f"; max abs diff vs (a) {row['max_abs_diff_vs_a']:.1e}"
        if "tokens_per_s" in row:
            notes += f"; {row['steps']} steps, {row['tokens_per_s']:.1f} tok/s"
        lines.append(
            f"| {row['bench']} | {row['positions']} | {row['variant']} | {row['median_s']:.3f} | "
            f"{row['min_s']:.3f} | {row['max_s']:.3f} | {row['cpu_median_s']:.3f} | "
            f"{len(row['times_s'])} | {gflop} | {notes} |"
        )
    lines += [
        "",
        "| ratio | wall (medians) | CPU time (medians) | median of per-item wall ratios | goal "
        "| met (wall) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, value in report["ratios"].items():
        cpu = report["cpu_ratios"].get(name)
        cpu_s = f"{cpu:.2f}" if cpu is not None else ""
        item = report["item_ratios"].get(name)
        item_s = f"{item:.2f}" if item is not None else ""
        goal = GOALS.get(name)
        if goal is None:
            lines.append(f"| {name} | {value:.2f} | {cpu_s} | {item_s} | | |")
            continue
        op, target = goal
        met = value >= target if op == ">=" else value <= target
        lines.append(
            f"| {name} | {value:.2f} | {cpu_s} | {item_s} | {op} {target} | {'yes' if met else 'NO'} |"
        )
    if report["checks"]:
        lines += ["", "| check | value | ok |", "|---|---|---|"]
        for check in report["checks"]:
            value = check["value"]
            shown = f"{value:.2e}" if isinstance(value, float) else str(value)
            lines.append(f"| {check['check']} | {shown} | {'yes' if check['ok'] else 'NO'} |")
    for bench, meta in report["meta"].items():
        if isinstance(meta, dict) and "note" in meta:
            lines.append(f"\n{bench}: {meta['note']}")
    env = report["meta"].get("env", {})
    lines.append(
        f"\nload average (1, 5, 15 min) at start {env.get('loadavg_start')}, "
        f"at end {report['meta'].get('loadavg_end')}; {env.get('cpu_count')} CPUs, "
        f"torch threads {env.get('threads')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="P1 on 8 items, fewer repeats")
    parser.add_argument("--only", default="P1,P2,P3,P4,P5,P6", help="comma-separated subset of P1..P6")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--repeats", type=int, help="repeats for every benchmark (default P1 3, P2 5, P4 3)")
    parser.add_argument("--items", type=int, help="P1 items (default 40, 8 with --quick)")
    args = parser.parse_args(argv)
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    unknown = only - {"P1", "P2", "P3", "P4", "P5", "P6"}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; use P1, P2, P3, P4, P5, P6")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    torch.set_num_threads(2)
    report: dict[str, Any] = {
        "rows": [],
        "ratios": {},
        "cpu_ratios": {},
        "item_ratios": {},
        "checks": [],
        "meta": {},
    }
    report["meta"]["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "quick": args.quick,
        "loadavg_start": loadavg(),
    }
    t_start = time.perf_counter()
    if only & {"P1", "P2"}:
        import steerwidgets as sw

        model = sw.load_model()
        plain = plain_copy(model)
        if "P1" in only:
            run_p1(model, plain, args.quick, report, args.repeats, args.items)
        if "P2" in only:
            run_p2(model, plain, args.quick, report, args.repeats)
    if "P3" in only:
        run_p3(args.quick, report, args.repeats)
    if "P5" in only:
        run_p5(args.quick, report, args.items)
    if "P4" in only:
        run_p4(args.quick, report, args.repeats)
    if "P6" in only:
        run_p6(args.quick, report, args.repeats)
    report["meta"]["total_s"] = time.perf_counter() - t_start
    report["meta"]["loadavg_end"] = loadavg()
    table = markdown(report)
    print()
    print(table)
    if args.json:
        report["markdown"] = table
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
