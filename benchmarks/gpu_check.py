"""A prepared device check of steerwidgets: correctness, cleanliness and speed on one GPU, in one command.

    python benchmarks/gpu_check.py                               # cuda, bfloat16, smollm2-135m, llama-3.2-1b
    python benchmarks/gpu_check.py --device cpu --config tiny    # the CI-sized run (< 1 min on 2 cores)
    python benchmarks/gpu_check.py --json out.json --inject-error   # a broken check must fail loudly

No weights and no internet are needed: every model is randomly initialised (seeded) from a config written
below (SmolLM2-135M's and Llama-3.2-1B's shapes, and a tiny one), and the tokenizer is a byte-level BPE
trained here on the package's built-in data. Only torch, transformers, accelerate, tokenizers, nnsight and
steerwidgets have to be installed. Per config it checks

(a) correctness: steered next-token log-probs, ``sw.generate`` (greedy tokens and their log-probs),
    ``sw.score`` and ``sw.propensity_sweep`` equal a plain ``register_forward_hook`` reference that adds
    strength * v at the block output at the same positions, within ``tolerance()`` (``ABS_TOL``, ``ULP_TOL``);
(b) the model is exactly the unsteered model after every call (plain forward logits bitwise equal, no hook
    left, no gradient left, still in eval mode), also after an error raised mid-call;
(c) results come back on the CPU as float32 (vectors, log-probs, scores) or as numpy arrays (sweeps);
(d) parameters and buffers stay on the device and in the dtype they were put in;

and measures, round-robin interleaved with medians as ``benchmarks/run.py`` does, P1 (propensity sweep:
engine vs naive hooked forwards and vs a same-work hook), P2 (steered greedy generation: engine vs hook +
``hf.generate``) and P3 (a Playground update vs plain ``hf.generate``), plus the peak CUDA memory.
Correctness checks decide PASS/FAIL (exit code 1 on any failure); speed goals are reported, not gated.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import inspect
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import run as bench  # noqa: E402  (benchmarks/run.py: its timing, hook baselines and goals)

# ----------------------------------------------------------------------------------------------
# Models: shapes only, weights are random (seeded)
# ----------------------------------------------------------------------------------------------
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        vocab_size=2048,
        max_position_embeddings=2048,
        rope_theta=10000.0,
    ),
    "smollm2-135m": dict(  # HuggingFaceTB/SmolLM2-135M(-Instruct)
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
    ),
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B (without its llama3 RoPE scaling)
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        head_dim=64,
    ),
}
ALL_CONFIGS = ("smollm2-135m", "llama-3.2-1b")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, turn start, eos: ids 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BPE_VOCAB = 1024  # trained merges; the rest of the model's vocabulary is filled with unused tokens

# How far the engine may be from the hook reference (max abs difference of logits, log-probs and
# propensities), per dtype: max(ABS_TOL, ULP_TOL ulps at the model's logit scale S = max |logit| of a plain
# forward). Both paths do the same arithmetic in different batch shapes (a cached prefix, strengths as batch
# rows, left padding), so matmuls run other kernels and sum in other orders. float32: that moves results by
# ~1e-5; 1e-3 is benchmarks/run.py's bound. bfloat16 keeps 8 significant bits: each matmul output and each
# residual write rounds to a spacing of 2^-7 relative, and the rounding differences of ~L layers reach the
# logits as a few ulps at their own scale; the "floor" column (plain transformers alone, the same
# sequences alone vs left-padded in one batch) shows that noise: 0.5 ulp on `tiny` and 1.7 ulps on
# `smollm2-135m` in bfloat16 on a CPU. 8 ulps leaves ~5x headroom over the deeper model for other kernels.
# A tolerance that a no-op steering could pass proves nothing, so every (a) check also requires the
# steering to move the reference by >= EFFECT_FACTOR x the tolerance (an engine that dropped the steering
# would then miss by 2x or more); the vector is scaled to
# STEER_RATIO x the mean residual norm at the steered layer, so its effect is large on a random model too.
ABS_TOL = {torch.float32: 1e-3, torch.bfloat16: 0.0, torch.float16: 0.0}
ULP_TOL = {torch.float32: 0, torch.bfloat16: 8, torch.float16: 8}
EFFECT_FACTOR = 2.0
STEER_RATIO = 4.0
PROMPTS = bench.P2_PROMPTS
COMPLETIONS = [
    " I love it.",
    " That sounds risky and exhausting.",
    " Bread needs flour, water and time.",
    " It was fine.",
]


def tolerance(dtype: torch.dtype, scale: float) -> float:
    """ABS_TOL, or ULP_TOL ulps of ``dtype`` at ``scale`` (the spacing of numbers of that size)."""
    ulp = torch.finfo(dtype).eps * 2.0 ** np.floor(np.log2(max(scale, 1e-30)))
    return max(ABS_TOL[dtype], ULP_TOL[dtype] * float(ulp))


def layer_for(n_layers: int) -> int:
    """The steered layer: benchmarks/run.py's 13 of SmolLM2's 30 blocks, at the same relative depth."""
    return max(1, n_layers * 13 // 30)


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE trained on the package's built-in texts, padded to ``vocab_size`` entries with
    unused two/three-byte tokens (so every id a random model emits decodes), plus a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import steerwidgets as sw

    corpus = [item.question for name in sw.list_builtin()["ab"] for item in sw.builtin_ab(name)]
    corpus += [
        s for n in sw.list_builtin()["pairs"] for p in sw.builtin_pairs(n) for s in (p.positive, p.negative)
    ]
    corpus += PROMPTS + COMPLETIONS
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(BPE_VOCAB, vocab_size),
        special_tokens=list(SPECIALS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tk.train_from_iterator(corpus, trainer)
    spec = json.loads(tk.to_str())
    vocab = spec["model"]["vocab"]
    fillers = itertools.chain(itertools.product(alphabet, repeat=2), itertools.product(alphabet, repeat=3))
    for chars in fillers:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault("".join(chars), len(vocab))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token=SPECIALS[0], eos_token=SPECIALS[2]
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """Random-init the config on the CPU, move it with ``hf.to(device, dtype)``, wrap it with
    ``sw.load_model`` (passing ``device=`` where load_model takes it). ``info["placed"]`` is where every
    parameter and buffer was put, before load_model saw the model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    import steerwidgets as sw

    t0 = time.perf_counter()
    tok = build_tokenizer(CONFIGS[name]["vocab_size"])
    config = LlamaConfig(
        **CONFIGS[name],
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf.to(device=device, dtype=dtype)
    placed = {n: (t.device, t.dtype) for n, t in itertools.chain(hf.named_parameters(), hf.named_buffers())}
    kwargs: dict[str, Any] = {"tokenizer": tok, "dtype": dtype}
    if "device" in inspect.signature(sw.load_model).parameters:
        kwargs["device"] = device
    model = sw.load_model(hf, **kwargs)
    info = {
        "params": sum(p.numel() for p in hf.parameters()),
        "load_kwargs": sorted(kwargs),
        "build_s": time.perf_counter() - t0,
        "tokenizer_vocab": len(tok),
        "placed": placed,
    }
    return model, info


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
@dataclass
class Report:
    """Every check and measurement of the run; ``failed`` decides the exit code."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, config: str, name: str, ok: bool, value: str, tol: str = "", note: str = "") -> bool:
        self.checks.append(
            {"config": config, "check": name, "ok": bool(ok), "value": value, "tol": tol, "note": note}
        )
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {value}" + (f" ({note})" if note else ""), flush=True)
        return bool(ok)

    @contextlib.contextmanager
    def guard(self, config: str, name: str) -> Iterator[None]:
        """A check whose code raised fails with the error (e.g. tensors on two devices) instead of
        stopping the run, so one run reports everything that is broken."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every error is a finding here
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.check(
                config,
                name,
                False,
                f"raised {type(exc).__name__}: {_short(exc)}",
                note=f"at {Path(where.filename).name}:{where.lineno}",
            )

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


class Phases:
    """Seconds per part of a config's run, kept in its row (to see where a slow run spends its time)."""

    def __init__(self, row: dict[str, Any]):
        self.row, self.t = row, time.perf_counter()
        row["phases_s"] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.row["phases_s"][name] = round(now - self.t, 2)
        self.t = now


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# (b) the unsteered model
# ----------------------------------------------------------------------------------------------
class Baseline:
    """Plain transformers logits of a fixed probe batch and the model's state, taken before any call, to
    compare after each call: bitwise equal logits, the same hooks, no gradients, eval mode."""

    def __init__(self, model: Any, report: Report, config: str):
        self.model, self.report, self.config = model, report, config
        gen = torch.Generator().manual_seed(1)
        vocab = min(len(model.tokenizer), model.hf.config.vocab_size)
        self.probe = torch.randint(3, vocab, (2, 24), generator=gen).to(bench.device_of(model))
        self.logits = self.forward()
        again = self.forward()
        self.floor = float((again - self.logits).abs().max())
        self.hooks = self.hook_counts()
        self.requires_grad = [p.requires_grad for p in model.hf.parameters()]
        report.check(
            config,
            "b: plain forward is reproducible (bitwise)",
            self.floor == 0.0,
            f"max diff of two runs {self.floor:.1e}",
            note="" if self.floor == 0.0 else "later (b) checks allow this floor",
        )
        self.leak: torch.utils.hooks.RemovableHandle | None = None

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.hf(self.probe).logits.float()

    def hook_counts(self) -> int:
        kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        return sum(len(getattr(m, k, {})) for m in self.model.hf.modules() for k in kinds)

    def verify(self, after: str) -> None:
        """One (b) check: the model after ``after`` is the model before it."""
        name = f"b: unsteered after {after}"
        with self.report.guard(self.config, name):
            hf = self.model.hf
            diff = float((self.forward() - self.logits).abs().max())
            hooks = self.hook_counts() - self.hooks
            grads = sum(p.grad is not None for p in hf.parameters())
            flags = [p.requires_grad for p in hf.parameters()] != self.requires_grad
            ok = diff <= self.floor and hooks == 0 and grads == 0 and not flags and not hf.training
            value = f"logits max diff {diff:.1e}, {hooks} new hooks, {grads} grads"
            if flags or hf.training:
                value += ", requires_grad changed" if flags else ", left in train mode"
            self.report.check(
                self.config,
                name,
                ok,
                value,
                tol=f"{self.floor:.0e} (bitwise)",
                note="injected: a leaked steering hook" if self.leak is not None else "",
            )
        if self.leak is not None:
            self.leak.remove()
            self.leak = None

    def inject_leak(self, layer: int) -> None:
        """--inject-error: leave a small steering hook on one block, as an engine bug that forgot to
        remove its edit would, so the next (b) check must fail."""

        def leak(module: torch.nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + 1e-2 * hidden.norm(dim=-1, keepdim=True) / hidden.shape[-1] ** 0.5
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        self.leak = self.model.hf_block(layer).register_forward_hook(leak)


# ----------------------------------------------------------------------------------------------
# (a) references: plain forward hooks, batch 1, no padding
# ----------------------------------------------------------------------------------------------
def hooked_logprobs(model: Any, ids: list[int], layer: int, add: torch.Tensor | None) -> torch.Tensor:
    """log-softmax of the logits at every position of one sequence, ``add`` [seq, d] added at the output
    of block ``layer`` (None: unsteered)."""
    hook = bench.AddHook(model.hf_block(layer))
    try:
        hook.add = None if add is None else add[None]
        with torch.no_grad():
            logits = model.hf(torch.tensor([ids], device=bench.device_of(model))).logits[0]
    finally:
        hook.remove()
    return logits.float().log_softmax(-1).cpu()


def mask_add(vec: torch.Tensor, positions: str, prompt_len: int, total: int) -> torch.Tensor:
    """strength * v at the steered positions of one sequence, written out by hand (not position_mask)."""
    mask = torch.zeros(total, 1)
    if positions == "all":
        mask[:] = 1.0
    elif positions == "last":
        mask[prompt_len - 1] = 1.0
    else:
        raise ValueError(positions)
    return mask * vec


def padded_floor(model: Any, seqs: list[list[int]]) -> float:
    """The dtype's own noise: max |log p| difference of plain transformers, unsteered, between each
    sequence alone and the same sequences left-padded into one batch with position ids (the engine's
    layout)."""
    device = bench.device_of(model)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.tokenizer.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        att[i, width - len(s) :] = 1
    pos = (att.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        out = model.hf(ids.to(device), attention_mask=att.to(device), position_ids=pos.to(device))
    batch = out.logits[:, -1].float().log_softmax(-1).cpu()
    alone = torch.stack([hooked_logprobs(model, s, 0, None)[-1] for s in seqs])
    return float((batch - alone).abs().max())


def cpu_f32(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dtype == torch.float32


def where(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.device.type} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, np.ndarray):
        return f"numpy {value.dtype}"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------
# One config: every check, then the measurements
# ----------------------------------------------------------------------------------------------
class ConfigRun:
    """The checks of one config on one device, in order; each (a)-(c) call is followed by a (b) check."""

    def __init__(self, name: str, args: argparse.Namespace, report: Report):
        import steerwidgets as sw

        self.name, self.args, self.report = name, args, report
        self.device, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        self.tiny = name == "tiny"
        print(f"\n## {name} on {self.device}, {args.dtype}", flush=True)
        self.row: dict[str, Any] = {"config": name, "device": str(self.device), "dtype": args.dtype}
        report.configs.append(self.row)
        self.model, info = build_model(name, self.device, self.dtype)
        self.placed = info.pop("placed")
        self.row.update(info)
        self.layer = self.row["layer"] = layer_for(self.model.n_layers)
        self.placement("load_model")
        self.base = Baseline(self.model, report, name)
        scale = float(self.base.logits.abs().max())
        self.tol = tolerance(self.dtype, scale)
        self.row.update(logit_scale=scale, tolerance=self.tol)
        print(f"  logit scale {scale:.3f}: tolerance {self.tol:.2e}", flush=True)
        self.phase = Phases(self.row)
        self.items = list(sw.builtin_ab("sentiment"))[: 4 if self.tiny else 8]
        self.vector: Any = None
        self.seqs: list[list[int]] = []
        self.pipe: Any = None

    def check(self, name: str, ok: bool, value: str, tol: str = "", note: str = "") -> bool:
        return self.report.check(self.name, name, ok, value, tol, note)

    def guard(self, name: str) -> contextlib.AbstractContextManager:
        return self.report.guard(self.name, name)

    def compare(self, label: str, diff: float, effect: float, detail: str = "") -> None:
        """An (a) check: within the tolerance of the reference, and the steering visibly did something."""
        ok = diff <= self.tol and effect >= EFFECT_FACTOR * self.tol
        value = f"max diff {diff:.2e}{detail}, steering effect {effect:.2f}"
        if effect < EFFECT_FACTOR * self.tol:
            value += f" (< {EFFECT_FACTOR:g}x tolerance: the check would prove nothing)"
        self.check(label, ok, value, f"{self.tol:.2e}")

    def placement(self, after: str) -> None:
        """(d): every parameter and buffer where ``build_model`` put it, and on the asked device."""
        hf, kind = self.model.hf, self.device.type
        tensors = itertools.chain(hf.named_parameters(), hf.named_buffers())
        moved = [n for n, t in tensors if (t.device, t.dtype) != self.placed[n]]
        wrong = [n for n, (dev, _) in self.placed.items() if dev.type != kind]
        example = f" (e.g. {(moved or wrong)[0]})" if moved or wrong else ""
        self.check(
            f"d: parameters and buffers on {kind} after {after}",
            not moved and not wrong,
            f"{len(self.placed)} tensors, {len(moved)} moved, {len(wrong)} not on {kind}{example}",
        )

    def run(self) -> None:
        t0 = time.perf_counter()
        self.vectors()
        self.phase("vectors (caa, mean_difference)")
        if self.vector is None:
            self.check("a: correctness checks", False, "skipped: no vector (sw.caa failed)")
            return
        self.next_token()
        self.phase("a: next-token log-probs")
        self.generation()
        self.phase("a: generate")
        self.scoring()
        self.phase("a: score")
        self.sweep()
        self.phase("a: propensity sweep")
        self.errors()
        self.placement("every call")
        self.phase("b: errors mid-call, Playground")
        if not self.args.skip_perf:
            with self.guard("perf: P1/P2/P3 ran"):
                measure(self)
            self.base.verify("the measurements")
        if self.device.type == "cuda":
            self.row["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.row["total_s"] = time.perf_counter() - t0

    # --- (c) vectors, and the vector every other check steers with ---------------------------------
    def vectors(self) -> None:
        """CAA at the layer, rescaled to ||v|| = STEER_RATIO x mean ||h|| there (a random model's CAA is
        tiny); mean_difference for its type only."""
        import steerwidgets as sw
        from steerwidgets.engine import tokenize_prompt

        model, layer = self.model, self.layer
        label = "c: sw.caa returns a CPU float32 SteeringVector"
        with self.guard(label):
            raw = sw.caa(model, list(sw.builtin_ab("sentiment"))[40:48], [layer])
            self.check(label, cpu_f32(raw[layer]), where(raw[layer]))
            norms: list[float] = []

            def read_norm(module: torch.nn.Module, inputs: Any, out: Any) -> None:
                hidden = out[0] if isinstance(out, tuple) else out
                norms.append(float(hidden.float().norm(dim=-1)[:, 1:].mean()))  # skip the first token

            hook = model.hf_block(layer).register_forward_hook(read_norm)
            try:
                self.base.forward()
            finally:
                hook.remove()
            self.vector = raw * (STEER_RATIO * norms[0] / float(raw[layer].norm()))
            self.row["vector_norm"] = float(self.vector[layer].norm())
        self.base.verify("sw.caa")
        label = "c: sw.mean_difference returns a CPU float32 SteeringVector"
        with self.guard(label):
            md = sw.mean_difference(model, sw.builtin_pairs("sentiment")[:8], [layer])
            self.check(label, cpu_f32(md[layer]), where(md[layer]))
        self.base.verify("sw.mean_difference")
        self.seqs = [tokenize_prompt(model, p)[0] for p in PROMPTS[:4]]

    # --- (a) against plain hooks -----------------------------------------------------------------
    def next_token(self) -> None:
        """Steered next-token log-probs (``next_token_logprobs``: left-padded rows, position ids)."""
        import steerwidgets as sw
        from steerwidgets.engine import next_token_logprobs

        model, layer, vec, seqs = self.model, self.layer, self.vector[self.layer], self.seqs
        floor = float("nan")
        with self.guard("a: floor"):
            floor = padded_floor(model, seqs)
        self.row["floor"] = floor
        for positions in ("all", "last"):
            label = f"a: steered next-token log-probs (positions={positions!r}) == hook"
            with self.guard(label):
                got = next_token_logprobs(model, seqs, [sw.Steering(self.vector, layer, 1.0, positions)])
                self.check(f"c: next_token_logprobs on CPU float32 ({positions})", cpu_f32(got), where(got))
                ref = torch.stack(
                    [
                        hooked_logprobs(model, s, layer, mask_add(vec, positions, len(s), len(s)))[-1]
                        for s in seqs
                    ]
                )
                plain = torch.stack([hooked_logprobs(model, s, layer, None)[-1] for s in seqs])
                diff = float((got.float().cpu() - ref).abs().max())
                self.compare(label, diff, float((ref - plain).abs().max()), f", floor {floor:.1e}")
            self.base.verify(f"next_token_logprobs ({positions})")

    def generation(self) -> None:
        """Greedy tokens vs hook + hf.generate (a divergence must start at a near-tie of the reference),
        and the log-probs sw.generate reports for its own tokens vs a hooked forward of those tokens."""
        model, layer, vec, seqs, tol = self.model, self.layer, self.vector[self.layer], self.seqs, self.tol
        new = 8 if self.tiny else 16
        label = "a: sw.generate greedy tokens == hook + hf.generate"
        with self.guard(label):
            steered, _ = bench.p2_engine(model, self.vector, layer, 1.0, PROMPTS[:4], new)
            scores: list[torch.Tensor] = []
            ref_ids = bench.p2_hook(model, vec, layer, 1.0, PROMPTS[:4], new, scores=scores).cpu()
            stop = {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
            exact = ties = 0
            worst = 0.0
            for r, toks in enumerate(steered.token_ids):
                toks = [t for t in toks if t not in stop]
                ref_row = ref_ids[r, : len(toks)].tolist()
                if ref_row == toks:
                    exact += 1
                    continue
                t = next(i for i, (a, b) in enumerate(zip(ref_row, toks)) if a != b)
                margin = float(scores[t][r, ref_row[t]].float() - scores[t][r, toks[t]].float())
                worst = max(worst, margin)
                ties += margin <= tol
            n = len(steered.token_ids)
            value = f"{exact}/{n} rows identical, {ties} part at a near-tie (reference margin {worst:.2e})"
            self.check(label, exact + ties == n, value, f"margin {tol:.2e}")
            first = steered.first_logprobs
            self.check("c: sw.generate first_logprobs on CPU float32", cpu_f32(first), where(first))
            diffs, gaps = [], []
            for r, toks in enumerate(steered.token_ids):
                ids = seqs[r] + toks
                logp = hooked_logprobs(model, ids, layer, mask_add(vec, "all", len(seqs[r]), len(ids)))
                at = torch.arange(len(seqs[r]) - 1, len(ids) - 1)
                ref_lp = logp[at, torch.tensor(toks)]
                diffs.append(float((torch.tensor(steered.token_logprobs[r]) - ref_lp).abs().max()))
                gaps.append(float((logp[at].max(-1).values - ref_lp).max()))
            self.check(
                "a: sw.generate token log-probs == hook forward of the same tokens",
                max(diffs) <= tol and max(gaps) <= tol,
                f"max diff {max(diffs):.2e}; every token the reference's argmax within {max(gaps):.2e}",
                f"{tol:.2e}",
            )
        self.base.verify("sw.generate")

    def scoring(self) -> None:
        """``sw.score`` per-token log-probs of given completions (right-padded batch)."""
        import steerwidgets as sw

        model, layer, vec = self.model, self.layer, self.vector[self.layer]
        for positions in ("all", "last"):
            label = f"a: sw.score log-probs (positions={positions!r}) == hook"
            with self.guard(label):
                got = sw.score(
                    model, PROMPTS[:4], COMPLETIONS, sw.Steering(self.vector, layer, 1.0, positions)
                )
                self.check(f"c: sw.score on CPU float32 ({positions})", all(map(cpu_f32, got)), where(got[0]))
                diff = effect = 0.0
                for s, completion, lp in zip(self.seqs, COMPLETIONS, got):
                    comp = model.tokenizer(completion, add_special_tokens=False)["input_ids"]
                    ids = s + comp
                    at = torch.arange(len(s) - 1, len(ids) - 1)
                    ref = hooked_logprobs(model, ids, layer, mask_add(vec, positions, len(s), len(ids)))[
                        at, comp
                    ]
                    plain = hooked_logprobs(model, ids, layer, None)[at, comp]
                    diff = max(diff, float((lp.float().cpu() - ref).abs().max()))
                    effect = max(effect, float((ref - plain).abs().max()))
                self.compare(label, diff, effect)
            self.base.verify(f"sw.score ({positions})")
            if self.args.inject_error and positions == "all":
                self.base.inject_leak(layer)
                self.base.verify("sw.score, with a leaked hook injected (--inject-error)")

    def sweep(self) -> None:
        """Propensities vs one hooked forward per (item, strength); then the result's types."""
        import steerwidgets as sw

        model, layer, vec, items = self.model, self.layer, self.vector[self.layer], self.items
        for positions in ("last", "all"):
            label = f"a: sw.propensity_sweep propensities (positions={positions!r}) == hook"
            with self.guard(label):
                got = bench.p1_engine(model, items, self.vector, positions, layer)
                ref = bench.p1_naive(model, items, vec, positions, layer)
                zero = bench.STRENGTHS.index(0.0)
                effect = float(np.abs(ref - ref[:, [zero]]).max())
                self.compare(label, float(np.abs(got - ref).max()), effect, f" over {ref.size} cells")
            self.base.verify(f"sw.propensity_sweep ({positions}, gradient null and option swap)")
        label = "c: sweep results are numpy on the CPU"
        with self.guard(label):
            res = sw.propensity_sweep(
                model, items, self.vector, layer, null_directions=8, null_method="sampled"
            )
            parts = {
                "propensity": res.propensity[layer],
                "slopes": res.slopes(layer),
                "null": res.null[layer],
                "unsteered": res.unsteered,
                "norm_ratio": res.norm_ratio[layer],
            }
            bad = {
                k: where(v)
                for k, v in parts.items()
                if not (isinstance(v, np.ndarray) and v.dtype.kind == "f")
            }
            value = ", ".join(f"{k}: {v}" for k, v in bad.items()) or ", ".join(parts) + ": numpy float"
            self.check(label, not bad, value)
        self.base.verify("sw.propensity_sweep (sampled null)")

    # --- (b) errors raised in the middle of a call -----------------------------------------------
    def errors(self) -> None:
        """Each call is stopped from inside (a callback raises, a cancel event is set) while its steering
        is on; the error must come back and the model must be unsteered after it."""
        import steerwidgets as sw
        from steerwidgets.playground import Pipeline

        model, layer, vector = self.model, self.layer, self.vector
        steering = sw.Steering(vector, layer, 1.0, "all")

        def stop_at_2(run: str, step: int, ids: list[int]) -> None:
            if step >= 2:
                raise Stop(f"stop at step {step}")

        cancel = threading.Event()

        def cancel_at_1(run: str, step: int, ids: list[int]) -> None:
            if run == "steered" and step >= 1:
                cancel.set()

        def progress(done: int, total: int) -> None:
            raise Stop(f"stop after item {done}")

        self.pipe = pipe = Pipeline(model, vectors={"caa": vector})  # P3 reuses its caches
        request = p3_request(layer, P3_STRENGTH)

        def emit_stop(update: Any) -> None:
            if type(update).__name__ == "FirstToken":
                raise Stop("stop at the first steered token")

        cases: list[tuple[str, Callable[[], Any], type[BaseException]]] = [
            (
                "sw.generate whose on_token raises at step 2",
                lambda: sw.generate(model, PROMPTS[:2], steering, max_new_tokens=6, on_token=stop_at_2),
                Stop,
            ),
            (
                "sw.generate cancelled at step 1",
                lambda: sw.generate(
                    model, PROMPTS[:2], steering, max_new_tokens=6, on_token=cancel_at_1, cancel=cancel
                ),
                sw.GenerationCancelled,
            ),
            (
                "sw.propensity_sweep whose progress callback raises after item 1",
                lambda: sw.propensity_sweep(model, self.items[:3], vector, layer, progress=progress),
                Stop,
            ),
            ("a Playground update stopped at its first token", lambda: pipe.run(request, emit_stop), Stop),
        ]
        for label, fn, kind in cases:
            with self.guard(f"b: {label} raises"):
                try:
                    fn()
                except kind as exc:
                    self.check(f"b: {label} raises", True, f"{type(exc).__name__} came back")
                else:
                    self.check(f"b: {label} raises", False, "no error came back")
            self.base.verify(f"an error in {label}")
        label = f"b: a complete Playground update (steered text, colouring, top-k, {CHART})"
        with self.guard(label):
            timings = pipe.run(request, lambda update: None)
            self.check(label, "charts_ms" in timings, f"{timings.get('charts_ms', float('nan')):.0f} ms")
        self.base.verify("a Playground update")


class Stop(RuntimeError):
    """Raised from a callback to stop a call in its middle."""


# The Playground draws its target chart with altair; without it (a minimal GPU env) P3 and the (b) check
# run the update without targets: steered text, colouring and top-k only.
HAS_ALTAIR = importlib.util.find_spec("altair") is not None
CHART = "target chart" if HAS_ALTAIR else "no target chart: altair is not installed"
P3_STRENGTH = 1.0  # times the vector (STEER_RATIO x mean ||h||); the chart's grid is 0, ±1, ±2 times it


def p3_request(layer: int, strength: float) -> Any:
    """The Playground request of P3 and of the (b) checks: the check's vector, run.py's prompt and targets."""
    from steerwidgets.playground import Request

    return Request(
        prompt=bench.P3_PROMPT,
        vector_name="caa",
        layer=layer,
        strength=strength,
        targets=bench.P3_TARGETS if HAS_ALTAIR else None,
    )


# ----------------------------------------------------------------------------------------------
# Performance, in the spirit of benchmarks/run.py (round-robin, medians)
# ----------------------------------------------------------------------------------------------
def _ratio(
    run: ConfigRun,
    key: str,
    num: bench.Timings,
    den: bench.Timings,
    per_item: float | None = None,
    note: str = "",
) -> None:
    """Ratio of medians (wall, and CPU for context) against benchmarks/run.py's goal of the same name."""
    goal = bench.GOALS.get(key)
    value = num.median / den.median
    met = None if goal is None else (value >= goal[1] if goal[0] == ">=" else value <= goal[1])
    run.report.ratios.append(
        {
            "config": run.name,
            "ratio": key,
            "value": value,
            "cpu": num.cpu_median / den.cpu_median,
            "per_item": per_item,
            "num_s": num.median,
            "den_s": den.median,
            "goal": None if goal is None else f"{goal[0]} {goal[1]}",
            "met": met,
            "note": note,
        }
    )
    print(f"  {key}: {value:.2f} ({num.median:.3f} s / {den.median:.3f} s)", flush=True)


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` that returns only once the device has finished its work (CUDA runs asynchronously)."""

    def call() -> Any:
        out = fn()
        sync(device)
        return out

    return call


def measure(run: ConfigRun) -> None:
    """P1, P2 and P3 on this config; every variant of one benchmark interleaved, medians reported."""
    measure_p1(run)
    run.phase("P1")
    measure_p2(run)
    run.phase("P2")
    measure_p3(run)
    run.phase("P3")


def measure_p1(run: ConfigRun) -> None:
    """Propensity sweep: naive hooked forwards (a), the engine's algorithm as plain hooks (c) and the
    engine (d); per repeat, per item, every variant once (order rotated); a repeat sums its items."""
    import steerwidgets as sw

    model, vector, layer = run.model, run.vector, run.layer
    vec = vector[layer]
    items = list(sw.builtin_ab("sentiment"))[: 4 if run.tiny else 8]
    repeats = 2 if run.tiny else 3
    fns: dict[str, Callable[[list, str], Any]] = {  # each returns numpy: synchronised
        "a_naive": lambda sub, pos: bench.p1_naive(model, sub, vec, pos, layer),
        "c_hook_same_work": lambda sub, pos: bench.p1_same_work(model, sub, vec, pos, layer),
        "d_engine": lambda sub, pos: bench.p1_engine(model, sub, vector, pos, layer),
    }
    variants = [(pos, v) for pos in ("last", "all") for v in fns]
    for pos, v in variants:  # warm-up
        fns[v](items[:1], pos)
    wall = {v: np.zeros((repeats, len(items))) for v in variants}
    cpu = {v: np.zeros((repeats, len(items))) for v in variants}
    for r in range(repeats):
        for i, item in enumerate(items):
            k = (i + r) % len(variants)
            for v in variants[k:] + variants[:k]:
                w0, c0 = time.perf_counter(), time.process_time()
                fns[v[1]]([item], v[0])
                wall[v][r, i] = time.perf_counter() - w0
                cpu[v][r, i] = time.process_time() - c0
    times = {v: bench.Timings() for v in variants}
    for v, t in times.items():
        t.wall, t.cpu = [float(x) for x in wall[v].sum(1)], [float(x) for x in cpu[v].sum(1)]
    note = f"{len(items)} items x {len(bench.STRENGTHS)} strengths, {repeats} repeats"
    for pos in ("last", "all"):
        for label, num, den in (
            ("(a)/(d)", "a_naive", "d_engine"),
            ("(d)/(c)", "d_engine", "c_hook_same_work"),
        ):
            per_item = float(np.median(wall[(pos, num)] / wall[(pos, den)]))
            _ratio(run, f"P1 {pos} {label}", times[(pos, num)], times[(pos, den)], per_item, note)


def measure_p2(run: ConfigRun) -> None:
    """Steered greedy generation, 8 prompts x 32 tokens: hook + hf.generate vs sw.generate."""
    model, vector, layer = run.model, run.vector, run.layer
    fns = {
        "hook_generate": synced(lambda: bench.p2_hook(model, vector[layer], layer, 1.0), run.device),
        "engine_generate": synced(lambda: bench.p2_engine(model, vector, layer, 1.0), run.device),
    }
    for fn in fns.values():  # warm-up
        fn()
    times = {k: bench.Timings() for k in fns}
    out: dict[str, Any] = {}
    for _ in range(3 if run.tiny else 5):
        for k, fn in fns.items():
            out[k] = times[k].run(fn)
    hook_steps, engine_steps = int(out["hook_generate"].shape[1]), out["engine_generate"][1]
    note = f"{len(bench.P2_PROMPTS)} prompts x {bench.P2_NEW} tokens"
    if engine_steps != hook_steps:  # the engine stopped early (every row hit EOS): compare per step
        engine = times["engine_generate"]
        engine.wall = [w * hook_steps / engine_steps for w in engine.wall]
        engine.cpu = [c * hook_steps / engine_steps for c in engine.cpu]
        note += f"; the engine ran {engine_steps} steps: per step"
    _ratio(run, "P2 engine/hook", times["engine_generate"], times["hook_generate"], note=note)


def measure_p3(run: ConfigRun) -> None:
    """A Playground update (the widget's pipeline without the widget: steered text, unsteered text
    cached, colouring, top-k, target chart) after a strength change, on and off the chart's grid, vs the
    floor: plain hf.generate of the same 32 tokens."""
    from steerwidgets.engine import tokenize_prompt
    from steerwidgets.playground import Pipeline

    model, layer, unit = run.model, run.layer, P3_STRENGTH
    pipe = run.pipe or Pipeline(model, vectors={"caa": run.vector})
    pipe.run(p3_request(layer, unit), lambda u: None)  # warm (done by the (b) checks): text and chart grid
    plain = synced(
        bench.plain_generate(model.hf, torch.tensor([tokenize_prompt(model, bench.P3_PROMPT)[0]])), run.device
    )
    plain()
    times = {"plain_generate": bench.Timings(), "on_grid": bench.Timings(), "off_grid": bench.Timings()}
    first = bench.Timings()
    for r in range(3 if run.tiny else 5):
        times["plain_generate"].run(plain)
        # on the grid (-1, 2 x unit were drawn first): only the steered text is new; off it, 2 points too
        on, off = (-unit if r % 2 == 0 else 2 * unit), unit * (1 + 0.125 * (r + 1))
        for kind, strength in (("on_grid", on), ("off_grid", off)):
            c0 = time.process_time()
            timings = pipe.run(p3_request(layer, strength), lambda u: None)
            times[kind].wall.append(timings["charts_ms"] / 1000)
            times[kind].cpu.append(time.process_time() - c0)
            first.wall.append(timings["first_token_ms"] / 1000)
    dname = str(run.dtype).replace("torch.", "")
    for kind, label in (("off_grid", "off grid"), ("on_grid", "on grid")):
        note = f"Pipeline.run to charts done (32 tokens, colouring, top-k, {CHART})"
        _ratio(
            run,
            f"P3 {dname} complete ({label})/plain generate",
            times[kind],
            times["plain_generate"],
            note=note,
        )
    value = statistics.median(first.wall)
    run.report.ratios.append(
        {
            "config": run.name,
            "ratio": f"P3 {dname} first token s",
            "value": value,
            "cpu": None,
            "per_item": None,
            "num_s": value,
            "den_s": None,
            "goal": "<= 0.15",
            "met": value <= 0.15,
            "note": "Pipeline clock, from the request to the first steered token",
        }
    )


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def markdown(report: Report) -> str:
    lines = [
        "| config | params | device | dtype | layer | peak CUDA memory | build s | total s |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for c in report.configs:
        mem = f"{c['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in c else "—"
        lines.append(
            f"| {c['config']} | {c.get('params', 0) / 1e6:.1f} M | {c['device']} | {c['dtype']} | "
            f"{c.get('layer', '')} | {mem} | {c.get('build_s', float('nan')):.1f} | "
            f"{c.get('total_s', float('nan')):.1f} |"
        )
    lines += ["", "| config | check | value | tolerance | ok |", "|---|---|---|---|---|"]
    for c in report.checks:
        note = f" ({c['note']})" if c["note"] else ""
        lines.append(
            f"| {c['config']} | {c['check']} | {c['value']}{note} | {c['tol']} | "
            f"{'yes' if c['ok'] else '**NO**'} |"
        )
    if report.ratios:
        lines += [
            "",
            "| config | ratio | wall (medians) | CPU | median per-item | goal | met | notes |",
            "|---|---|---:|---:|---:|---|---|---|",
        ]
        for r in report.ratios:
            den = f" ({r['num_s']:.3f} s / {r['den_s']:.3f} s)" if r["den_s"] else " s"
            cpu = "" if r["cpu"] is None or np.isnan(r["cpu"]) else f"{r['cpu']:.2f}"
            item = "" if r["per_item"] is None else f"{r['per_item']:.2f}"
            met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
            lines.append(
                f"| {r['config']} | {r['ratio']} | {r['value']:.2f}{den} | {cpu} | {item} | "
                f"{r['goal'] or ''} | {met} | {r['note']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--config",
        default="all",
        help=f"all ({', '.join(ALL_CONFIGS)}) or a comma list of {', '.join(CONFIGS)}",
    )
    parser.add_argument("--json", type=Path, help="also write every check and number here")
    parser.add_argument(
        "--inject-error",
        action="store_true",
        help="leave a steering hook on the model once, so a (b) check must fail",
    )
    parser.add_argument("--skip-perf", action="store_true", help="checks only, no P1/P2/P3 timing")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1 with --device cpu: these models are small and a "
        "shared machine's cores are busy; torch's default otherwise)",
    )
    args = parser.parse_args(argv)
    names = list(ALL_CONFIGS) if args.config == "all" else [c.strip() for c in args.config.split(",")]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; use all or some of {list(CONFIGS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "FAIL: --device cuda but torch sees no CUDA device (torch "
            f"{torch.__version__}); use --device cpu --config tiny on a machine without one"
        )
        return 2
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    import nnsight
    import transformers

    import steerwidgets as sw

    report = Report()
    report.meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": nnsight.__version__,
        "steerwidgets": sw.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_start": bench.loadavg(),
    }
    print(
        f"gpu_check: {', '.join(names)} on {device} ({report.meta['cuda'] or platform.machine()}), "
        f"{args.dtype}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"nnsight {nnsight.__version__}",
        flush=True,
    )
    t0 = time.perf_counter()
    for name in names:
        if args.device.startswith("cuda"):
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with report.guard(name, "the config ran to the end"):
            ConfigRun(name, args, report).run()
    report.meta["total_s"] = time.perf_counter() - t0
    report.meta["loadavg_end"] = bench.loadavg()
    table = markdown(report)
    print("\n" + table + "\n")
    failed = report.failed
    if failed:
        verdict = f"FAIL: {len(failed)} of {len(report.checks)} checks failed: " + "; ".join(
            f"[{c['config']}] {c['check']}" for c in failed
        )
    else:
        verdict = f"PASS: all {len(report.checks)} checks passed (speed goals are reported, not gated)"
    verdict += f" in {report.meta['total_s']:.0f} s"
    if args.json:
        payload = {
            "checks": report.checks,
            "ratios": report.ratios,
            "configs": report.configs,
            "meta": report.meta,
            "markdown": table,
            "verdict": verdict,
            "passed": not failed,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}")
    print(verdict, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
