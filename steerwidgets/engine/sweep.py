"""Propensity sweeps over A/B items: the [items × strengths] matrix per layer, with its random-direction
null and the option swap.

Work is never repeated: strengths share one pass, the layers below the steered one run once, and what
lies before the first steered position is cached and reused (keys/values). With the letter protocol at the
last prompt token the items' one-token suffixes share passes too (:mod:`.letter_batch`).

Long because: one item's passes (the cached prefix, the vector's and the sampled null's rows, the gradient
null's backward pass) share the prefix, masks and row layout; split apart, each signature would carry all of
them. The next split is the row layout (``sweep_item``, ``_sweep_pass``, ``_grad_pass``) into its own module.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from nnsight import save as _save

from .. import metrics, verdicts
from ..data import ABItem, swap_options
from ..interventions import (
    Steering,
    SteeringError,
    apply_operator,
    check_position_spec,
    check_steerings,
    position_mask,
    require_model,
    steering_label,
)
from ..prompts import ab_prompt, answer_text_prompt
from ..remote import remote_null_method
from ..vectors import SteeringVector
from . import letter_batch
from ._trace import _cache_from, _hidden, _scale_factor, _set_hidden
from .generation import GenerationCancelled
from .memory import max_rows_for
from .scoring import next_token_logprobs

DEFAULT_STRENGTHS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


PROTOCOLS = ("letter", "answer_text")
#: Where each protocol steers unless told otherwise: Tan et al. and CAA steer from the last prompt token on
#: (the letter is read there); the answer-text protocol steers the last prompt token and the answer's tokens.
DEFAULT_POSITIONS = {"letter": "last", "answer_text": "continuation"}
PROPENSITY_DEFINITIONS = {
    "letter": "logit(y+) - logit(y-) at the answer-letter position (Tan et al. 2024)",
    "answer_text": "per-token mean log-prob of the matching answer's text minus the other answer's text, "
    "after the question stem alone (no options, no letters)",
}



Fixed = dict[int, list[tuple[Steering, torch.Tensor, torch.Tensor]]]  # layer -> (steering, vec, mask[T])


def _fixed_for(background: Sequence[Steering], prompt_len: int, total: int) -> Fixed:
    """Background steerings of a sweep resolved for one sequence: per layer, in list order, each with its
    direction and its mask over the sequence's ``total`` positions (prompt of ``prompt_len`` tokens)."""
    fixed: Fixed = {}
    for item in background:
        mask = position_mask(item.positions, prompt_len, total)
        fixed.setdefault(item.layer, []).append((item, item.direction(), mask))
    return fixed


def _edit_fixed(hidden: torch.Tensor, edits: list, start: int) -> torch.Tensor:
    """Apply one layer's background steerings (absolute strengths) to positions ``start ..`` of
    ``hidden`` [rows, width, d]; every row gets the same edit."""
    width = hidden.shape[1]
    for item, vec, mask in edits:
        where = mask[start : start + width]
        if not bool(where.any()):
            continue
        operand = item.operand() if item.operator == "affine" else vec
        edited = apply_operator(hidden, operand, torch.tensor(float(item.strength)), item.operator)
        hidden = torch.where(where.to(hidden.device)[None, :, None], edited, hidden)
    return hidden

@dataclass
class PropensityResult:
    """Propensity m_i(λ) for items × strengths, per layer (metrics.md), with its random-direction null.

    ``protocol`` says what m is (:data:`PROPENSITY_DEFINITIONS`). ``null[layer]`` is ``[K, n_items]``: the
    slopes K random directions of the vector's norm give each item (``null_method`` says how they were
    measured). ``swapped_propensity`` (letter protocol) is the unsteered propensity of each item with its two
    options' texts swapped and the answer relabelled (NaN where the options could not be found).
    """

    strengths: np.ndarray
    layers: list[int]
    positions: Any
    propensity: dict[int, np.ndarray]  # layer -> [n_items, n_strengths]
    norm_ratio: dict[int, np.ndarray]  # layer -> [n_strengths], ‖λv‖ / mean‖h‖
    vector_norm: dict[int, float]
    items: list[ABItem]
    relative: bool = False
    protocol: str = "letter"
    null: dict[int, np.ndarray] | None = None  # layer -> [K, n_items] slopes of random directions
    null_method: str = ""
    unsteered: np.ndarray | None = None  # [n_items] m_i(0)
    swapped_propensity: np.ndarray | None = None
    item_index: list[int] | None = None  # answer-text: indices into the caller's items that could be read
    background: list[Steering] = field(default_factory=list)  # fixed steerings on at every strength

    def slopes(self, layer: int) -> np.ndarray:
        return metrics.slopes(self.propensity[layer], self.strengths)

    def null_slopes(self, layer: int) -> np.ndarray | None:
        """``[K, n_items]`` slopes of the random directions (None without a null)."""
        return None if self.null is None else self.null[layer]

    def option_dependence(self) -> float | None:
        """Fraction of items whose unsteered preference survives swapping the options (letter protocol)."""
        if self.swapped_propensity is None or self.unsteered is None:
            return None
        keep = ~np.isnan(self.swapped_propensity)
        if not keep.any():
            return None
        return verdicts.option_dependence(self.unsteered[keep], self.swapped_propensity[keep])

    def verdict(self, layer: int) -> verdicts.Verdict:
        """The dataset verdict at ``layer`` against the random-direction null (see :mod:`verdicts`)."""
        null = self.null_slopes(layer)
        if null is None or null.shape[0] < 2:
            return verdicts.cannot_judge(
                self.protocol,
                "No random-direction null was run (null_directions < 2), so nothing says "
                f"what 'no effect' looks like; rerun with null_directions={verdicts.NULL_DIRECTIONS}.",
                self.positions,
            )
        if not self.items:
            return verdicts.cannot_judge(self.protocol, "No item could be read.", self.positions)
        is_a = [item.matching == "A" for item in self.items] if self.protocol == "letter" else None
        n_dep = None
        if self.swapped_propensity is not None:
            n_dep = int((~np.isnan(self.swapped_propensity)).sum())
        return verdicts.judge(
            self.slopes(layer),
            null,
            protocol=self.protocol,
            matching_is_a=is_a,
            option_dependence=self.option_dependence(),
            n_option_items=n_dep,
            null_method=self.null_method,
            positions=self.positions,
            mean_propensity=self.propensity[layer].mean(0),
        )

    def summary(self, layer: int) -> dict[str, Any]:
        """The literature's numbers for one layer, with the verdict against the null, ready for JSON."""
        m = self.propensity[layer]
        slopes = self.slopes(layer)
        anti = metrics.anti_steerable(slopes)
        nonmono = metrics.non_monotonic(m)
        is_a = np.array([item.matching == "A" for item in self.items])
        verdict = self.verdict(layer)
        classes = verdict.classes or ("no_detectable_effect",) * m.shape[0]
        out = {
            "layer": layer,
            "protocol": self.protocol,
            "propensity_definition": PROPENSITY_DEFINITIONS[self.protocol],
            "positions": self.positions,
            "steerability": float(slopes.mean()),
            "anti_steerable_fraction": float(anti.mean()),
            "non_monotonic_fraction": float(nonmono.mean()),
            "mean_propensity": [float(x) for x in m.mean(0)],
            "p_match": [float(x) for x in metrics.p_match(m).mean(0)],
            "ab_bias_r2": metrics.ab_bias_r2(slopes, is_a),
            "norm_ratio": [float(x) for x in self.norm_ratio[layer]],
            "vector_norm": self.vector_norm[layer],
            "warning_level": verdict.warning_level,
            "verdict": verdict.verdict,
            "verdict_reason": verdict.reason,
            "steerability_ci95": list(verdict.steerability_ci95),
            "null": verdict.summary()["null"],
            "item_classes": verdict.counts,
            "option_dependence": verdict.option_dependence,
            "per_example": [
                {
                    "index": i if self.item_index is None else self.item_index[i],
                    "slope": float(slopes[i]),
                    "propensity": [float(x) for x in m[i]],
                    "anti_steerable": bool(anti[i]),
                    "non_monotonic": bool(nonmono[i]),
                    "class": classes[i],
                    "null_band": [verdict.item_lo[i], verdict.item_hi[i]] if verdict.item_lo else None,
                }
                for i in range(m.shape[0])
            ],
        }
        return out


def check_strengths(strengths: Sequence[float]) -> np.ndarray:
    values = np.asarray(list(strengths), dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise SteeringError("give at least two strengths, e.g. -1,0,1, to fit a slope")
    if not np.isfinite(values).all():
        raise SteeringError(f"strengths must be finite numbers, got {list(strengths)}")
    if np.ptp(values) == 0:
        raise SteeringError("strengths must not all be equal; a slope needs spread")
    return values


def null_directions_for(vector: SteeringVector, layers: Sequence[int], k: int, seed: int = 0) -> dict:
    """``{layer: [k, d]}`` Gaussian directions scaled to ‖v_layer‖: the null's random steerings.

    Seeded per layer, so a result is reproducible and every item sees the same K directions (the dataset's
    mean slope under direction k is then one sample of the null of the mean).
    """
    out = {}
    for layer in layers:
        vec = vector[layer]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(layer))
        rnd = torch.randn((k, vec.shape[-1]), generator=gen)
        out[layer] = rnd * (vec.norm() / rnd.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return out


def _swapped_propensity(
    model: Any, items: Sequence[ABItem], chat: bool | None, background: Sequence[Steering] = ()
) -> np.ndarray:
    """Unsteered letter propensity of each item with its options' texts swapped (NaN where not swappable)."""
    out = np.full(len(items), np.nan)
    seqs, where, letters = [], [], []
    for i, item in enumerate(items):
        swapped = swap_options(item)
        if swapped is None:
            continue
        ids, y_pos, y_neg = ab_prompt(model, swapped, chat)
        seqs.append(ids)
        where.append(i)
        letters.append((y_pos, y_neg))
    if seqs:
        logp = next_token_logprobs(model, seqs, background)
        for row, (i, (y_pos, y_neg)) in enumerate(zip(where, letters)):
            out[i] = float(logp[row, y_pos] - logp[row, y_neg])
    return out


NULL_METHODS = ("gradient", "sampled")


def propensity_sweep(
    model: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layers: int | Sequence[int],
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    positions: Any = None,
    operator: str = "add",
    relative: bool = False,
    chat: bool | None = None,
    protocol: str = "letter",
    null_directions: int | None = None,
    null_method: str = "gradient",
    null_seed: int = 0,
    option_swap: bool | None = None,
    max_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    cache: MutableMapping | None = None,
    background: Steering | Sequence[Steering] = (),
    batch_items: bool = True,
) -> PropensityResult:
    """The [items × strengths] propensity matrix at each layer, strengths batched into one pass.

    ``protocol="letter"`` is Tan et al.'s letter propensity; ``"answer_text"`` scores the two answers' texts
    after the question stem (items whose options cannot be found are left out; ``item_index`` says which
    stayed). ``positions=None`` takes the protocol's default (:data:`DEFAULT_POSITIONS`).

    ``null_directions=K`` adds the random-direction null every verdict needs: K Gaussian directions scaled
    to ‖v‖ at each layer, the same for every item (default: :data:`verdicts.NULL_DIRECTIONS` for the
    ``"add"`` operator, none for the others — pass K with ``null_method="sampled"`` for them; 0 skips it).
    ``null_method="gradient"`` (default) takes each direction's slope to first order, ∇_λ m · r from one
    backward pass per item (exact for a response linear in λ; ``tests/test_verdict_null.py`` checks it against
    ``"sampled"``, which runs every direction at the grid's two end strengths and takes the two-point slope).
    ``option_swap`` (default: on with a null, letter protocol) also reads each item with its options swapped,
    unsteered.

    ``background`` are fixed steerings (other vectors, at their own layers, strengths and positions) applied
    at every strength, in the null, the unsteered row and the option swap, so the result answers "does this
    vector still steer while those are on?". At a layer they share with the swept vector they edit first.
    Their strengths are absolute (``relative=False``) and their vectors ``[d_model]``.

    Per item, the tokens before the first steered position run once and their keys/values are reused; the
    blocks below the steered layer run once; the strengths (and sampled directions) share one batched pass;
    logits are computed only where they are scored. With the letter protocol steering only the last prompt
    token (the default), the items' one-token suffixes also share passes (``batch_items=False`` runs one item
    per pass, the reference the batched path is tested against).

    ``cache`` (a mapping the caller owns, e.g. a bounded LRU) keeps what depends only on the model and the
    items' tokens between calls: each item's unsteered prefix keys/values and residual norms (every layer)
    and the option-swap reading. A live view that re-checks the same items at a new strength or layer then
    runs only the steered suffixes. Use one cache per model.
    """
    require_model(model, "propensity_sweep")
    if not isinstance(vector, SteeringVector):
        raise TypeError(
            f"propensity_sweep needs a SteeringVector, got {type(vector).__name__}; build one with "
            "sw.caa(model, items, layers) or wrap a tensor: sw.SteeringVector({layer: tensor})"
        )
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, (Sequence, np.ndarray)):
        raise TypeError(
            f"strengths must be a list of numbers (at least two), got {strengths!r}; e.g. [-1, 0, 1]"
        )
    if isinstance(items, (str, bytes, ABItem)) or not isinstance(items, Sequence):
        raise TypeError(
            f"items must be a list of ABItem, got {type(items).__name__}; e.g. sw.builtin_ab('sentiment')"
        )
    bad = [i for i, item in enumerate(items) if not isinstance(item, ABItem)]
    if bad:
        raise TypeError(
            f"items[{bad[0]}] is a {type(items[bad[0]]).__name__}, not an ABItem; load files with "
            "sw.load_ab_items(path)"
        )
    if isinstance(layers, bool) or not isinstance(layers, (int, Sequence)):
        raise TypeError(f"layers must be an int or a list of ints, got {layers!r}")
    if protocol not in PROTOCOLS:
        raise SteeringError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    if null_method not in NULL_METHODS:
        raise SteeringError(f"unknown null_method {null_method!r}; use one of {NULL_METHODS}")
    null_method = remote_null_method(model, null_method)
    if positions is None:
        positions = DEFAULT_POSITIONS[protocol]
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    if not layer_list:
        raise SteeringError("give at least one layer")
    for layer in layer_list:
        model.check_layer(layer)
    vector.check_model(model)
    for layer in layer_list:
        Steering(vector, layer, 1.0, positions, operator, relative).validate(model)
        if vector[layer].ndim != 1:
            raise SteeringError("propensity sweeps need a [d_model] vector per layer (not ActAdd)")
    lam = check_strengths(strengths)
    check_position_spec(positions)
    background = _check_background(model, background)
    if null_directions is None:
        null_directions = verdicts.NULL_DIRECTIONS if operator == "add" else 0
    if isinstance(null_directions, bool) or not isinstance(null_directions, int) or null_directions < 0:
        raise SteeringError(
            f"null_directions must be an int ≥ 0 ({verdicts.NULL_DIRECTIONS} is the default for verdicts), "
            f"got {null_directions!r}"
        )
    if null_directions and null_method == "gradient" and operator != "add":
        raise SteeringError(
            f"the gradient null measures added directions; with operator={operator!r} use "
            "null_method='sampled'"
        )
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise SteeringError(
            f"max_rows must be a positive int (rows per forward pass), or None for the device's budget; "
            f"got {max_rows!r}"
        )
    items = list(items)
    if not items:
        raise SteeringError("no A/B items given")
    k = null_directions
    directions = null_directions_for(vector, layer_list, k, null_seed) if k else None
    null_lam = np.array([lam.min(), lam.max()])
    prompts = _protocol_prompts(model, items, protocol, chat)
    if not prompts:
        raise SteeringError(
            "no item lists its two options as '(A) …' and '(B) …' lines, so the answer-text protocol has "
            "nothing to score; use protocol='letter'"
        )
    n_s, n_items = len(lam), len(prompts)
    prop = {layer: np.zeros((n_items, n_s)) for layer in layer_list}
    null = {layer: np.zeros((k, n_items)) for layer in layer_list} if k else None
    unsteered = np.zeros(n_items)
    ratio_sum = {layer: np.zeros(n_s) for layer in layer_list}
    batched = None
    if protocol == "letter" and not background and batch_items:
        batched = _batched_letter(
            model, prompts, positions, vector, layer_list, lam, directions, null_method, null_lam, operator,
            relative, max_rows, cache, cancel, progress,
        )  # fmt: skip

    def store(row: int, out: dict) -> None:
        for layer, (vec_m, null_s, zero_m, ratios) in out.items():
            prop[layer][row] = vec_m
            if null is not None:
                null[layer][:, row] = null_s
            unsteered[row] = zero_m
            ratio_sum[layer] += ratios

    for row, out in enumerate(batched or []):
        store(row, out)
    for row, (_, ids, completions) in enumerate(prompts if batched is None else []):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("sweep cancelled")
        out = _sweep_protocol_item(
            model,
            ids,
            completions,
            positions,
            vector,
            layer_list,
            lam,
            directions,
            null_method,
            null_lam,
            operator,
            relative,
            max_rows,
            cache,
            background,
        )
        store(row, out)
        if progress is not None:
            progress(row + 1, n_items)
    if cancel is not None and cancel.is_set():  # set during the last progress call: skip the swap too
        raise GenerationCancelled("sweep cancelled")
    kept = [items[index] for index, _, _ in prompts]
    swap = option_swap if option_swap is not None else (k > 0 and protocol == "letter")
    swapped = None
    if swap and protocol == "letter":
        key = ("swap", tuple(kept), chat)
        cache_swap = cache if not background else None  # the reading depends on the background
        swapped = cache_swap.get(key) if cache_swap is not None else None
        if swapped is None:
            swapped = _swapped_propensity(model, kept, chat, background)
            if cache_swap is not None:
                cache_swap[key] = swapped
    if null_method == "gradient":
        how = f"first-order: slope of direction r = ∇_λ m · r at λ = 0 (one backward pass per item), {k} "
    else:
        how = f"sampled: two-point slopes at λ = {null_lam[0]:g} and {null_lam[1]:g}, {k} "
    return PropensityResult(
        strengths=lam,
        layers=layer_list,
        positions=positions,
        propensity=prop,
        norm_ratio={layer: ratio_sum[layer] / n_items for layer in layer_list},
        vector_norm={layer: float(vector[layer].norm()) for layer in layer_list},
        items=kept,
        relative=relative,
        protocol=protocol,
        null=null,
        null_method=how + "Gaussian directions scaled to ‖v‖ (seeded)" if k else "",
        unsteered=unsteered,
        swapped_propensity=swapped,
        item_index=None if protocol == "letter" else [index for index, _, _ in prompts],
        background=background,
    )


def _check_background(model: Any, background: Any) -> list[Steering]:
    """The sweep's fixed steerings as a validated list; errors name the entry."""
    items = check_steerings(background, model)
    for index, item in enumerate(items):
        where = f"background [{index}] ({steering_label(item)})"
        if item.relative:
            raise SteeringError(
                f"{where}: a background steering's strength must be absolute in a sweep; use relative=False "
                "with strength = ratio × mean‖h‖ / ‖v‖ (sw.evaluation.residual_norms gives mean‖h‖)"
            )
        if item.direction().ndim != 1:
            raise SteeringError(f"{where}: a background steering needs a [d_model] vector (not ActAdd)")
    return items


def _protocol_prompts(
    model: Any, items: list[ABItem], protocol: str, chat: bool | None
) -> list[tuple[int, list[int], list[tuple[list[int], Any]]]]:
    """Per readable item: its index, prompt ids and what is scored — ``(completion ids, target)`` pairs.

    Letter: one empty completion whose target is the two letter ids (logit difference at the last prompt
    token). Answer text: the two answers' token ids (per-token mean log-probs, matching minus other).
    """
    out = []
    for index, item in enumerate(items):
        if protocol == "letter":
            ids, y_pos, y_neg = ab_prompt(model, item, chat)
            out.append((index, ids, [([], (y_pos, y_neg))]))
        else:
            read = answer_text_prompt(model, item, chat)
            if read is not None:
                ids, pos, neg = read
                out.append((index, ids, [(pos, None), (neg, None)]))
    return out


def _sweep_protocol_item(
    model: Any,
    ids: list[int],
    completions: list[tuple[list[int], Any]],
    positions: Any,
    vector: SteeringVector,
    layer_list: list[int],
    lam: np.ndarray,
    directions: dict | None,
    null_method: str,
    null_lam: np.ndarray,
    operator: str,
    relative: bool,
    max_rows: int | None,
    cache: MutableMapping | None = None,
    background: Sequence[Steering] = (),
) -> dict[int, tuple[np.ndarray, np.ndarray | None, float, np.ndarray]]:
    """One item's propensities per layer: vector rows, null slopes ``[K]``, unsteered, norm ratios.

    Each completion (one for the letter, two answer texts) shares the prompt's prefix keys/values; the
    item's propensity is the first completion's score (minus the second's).
    """
    n = len(ids)
    scores = []
    for comp, target in completions:
        mask = position_mask(positions, n, n + max(0, len(comp) - 1))
        if not bool(mask.any()):
            raise SteeringError(
                f"positions={positions!r} selects no prompt token before the answer, so nothing would be "
                "steered when reading it; use 'last', 'continuation' or 'all'"
            )
        scores.append((comp, target, mask))
    first = min(int(mask.float().argmax()) for _, _, mask in scores)
    fixed = [_fixed_for(background, n, len(mask)) for _, _, mask in scores]  # per completion
    prefix = _prefix(model, ids, first, layer_list, fixed[0], cache)  # positions < first: the same for all
    sampled = directions if null_method == "sampled" else None
    n_s = len(lam)
    values: dict[int, np.ndarray] = {}
    grads: dict[int, tuple[torch.Tensor, float]] = {}
    ratios: dict[int, np.ndarray] = {}
    zero_row = _zero_row(lam, operator)
    for c, (comp, target, mask) in enumerate(scores):
        sign = 1.0 if c == 0 else -1.0
        seq = ids + comp[:-1]
        keep = max(1, len(comp))

        def objective(logits: torch.Tensor, comp: list[int] = comp, target: Any = target) -> torch.Tensor:
            if target is not None:  # letter: logit(y+) − logit(y−) at the last position
                return logits[:, -1, target[0]] - logits[:, -1, target[1]]
            logp = logits.log_softmax(-1)  # answer text: per-token mean log-prob of the completion
            return logp[:, torch.arange(len(comp)), torch.tensor(comp)].mean(-1)

        per_layer = sweep_item(
            model, seq, mask, first, vector, layer_list, lam, operator, relative, max_rows,
            null=sampled, null_lam=null_lam, keep=keep, prefix=prefix, fixed=fixed[c],
            unsteered_row=zero_row < 0,
        )  # fmt: skip
        for layer, (logits, layer_ratios) in per_layer.items():
            value = objective(logits).double().cpu().numpy()  # logits stay on the device
            values[layer] = sign * value + values.get(layer, 0.0)
            ratios.setdefault(layer, layer_ratios)
        if directions is not None and null_method == "gradient":
            budget = max_rows or max_rows_for(model, first, len(seq) - first, keep, grad=True)
            for at in range(0, len(layer_list), budget):  # one row per layer
                for layer, (grad, factor) in _grad_pass(
                    model, seq, mask, first, prefix, layer_list[at : at + budget], vector, relative, keep,
                    objective, fixed[c],
                ).items():  # fmt: skip
                    prev = grads.get(layer, (0.0, factor))[0]
                    grads[layer] = (prev + sign * grad, factor)
    return _item_result(values, grads, ratios, directions, null_method, null_lam, n_s, zero_row)


def _item_result(
    values: dict[int, np.ndarray],
    grads: dict[int, tuple[torch.Tensor, float]],
    ratios: dict[int, np.ndarray],
    directions: dict | None,
    null_method: str,
    null_lam: np.ndarray,
    n_s: int,
    zero_row: int,
) -> dict[int, tuple[np.ndarray, np.ndarray | None, float, np.ndarray]]:
    """One item's rows per layer as (vector propensities, null slopes, unsteered, norm ratios)."""
    k = 0 if directions is None else next(iter(directions.values())).shape[0]
    result = {}
    for layer, value in values.items():
        null_s = None
        if k and null_method == "sampled":
            pairs = value[n_s : n_s + 2 * k].reshape(k, 2)
            null_s = (pairs[:, 1] - pairs[:, 0]) / (null_lam[1] - null_lam[0])
        elif k:
            grad, factor = grads[layer]
            null_s = (directions[layer].double() @ grad.double()).numpy() * factor
        result[layer] = (value[:n_s], null_s, float(value[zero_row]), ratios[layer])
    return result


def _zero_row(lam: np.ndarray, operator: str) -> int:
    """The row of λ = 0 in an additive grid, which already is the unsteered row (no extra batch row for
    it); -1 when there is none."""
    zeros = np.flatnonzero(lam == 0.0) if operator == "add" else []
    return int(zeros[0]) if len(zeros) else -1


def _rowsets(
    vector: SteeringVector, layer_list: list[int], lam: np.ndarray, null: dict | None,
    null_lam: np.ndarray | None, unsteered_row: bool,
) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:  # fmt: skip
    """Per layer the (direction, strengths) sets of one item's rows: the vector at ``lam``, each random
    direction at the two ``null_lam`` strengths, then (``unsteered_row``) one unsteered row."""
    rowsets = {}
    for layer in layer_list:
        sets = [(vector[layer], torch.tensor(lam, dtype=torch.float32))]
        if null is not None:
            nl = torch.tensor(null_lam, dtype=torch.float32)
            sets += [(null[layer][j], nl) for j in range(null[layer].shape[0])]
        if unsteered_row:
            sets.append((torch.zeros_like(vector[layer]), torch.zeros(1)))
        rowsets[layer] = sets
    return rowsets


def _batched_letter(
    model: Any,
    prompts: list[tuple[int, list[int], list[tuple[list[int], Any]]]],
    positions: Any,
    vector: SteeringVector,
    layer_list: list[int],
    lam: np.ndarray,
    directions: dict | None,
    null_method: str,
    null_lam: np.ndarray,
    operator: str,
    relative: bool,
    max_rows: int | None,
    cache: MutableMapping | None,
    cancel: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> list[dict] | None:
    """Every item's :func:`_item_result` from a few batched passes (:mod:`.letter_batch`), or ``None``
    when the items do not fit that path (a steered position before the last prompt token, a one-token
    prompt, a remote model or an architecture not checked)."""
    if not letter_batch.can_batch(model):
        return None
    for _, ids, _ in prompts:
        n = len(ids)
        if n < 2 or position_mask(positions, n, n).nonzero().flatten().tolist() != [n - 1]:
            return None
    zero_row = _zero_row(lam, operator)
    sampled = directions if null_method == "sampled" else None
    rowsets = _rowsets(vector, layer_list, lam, sampled, null_lam, zero_row < 0)
    size = sum(len(s[1]) for s in rowsets[layer_list[0]])
    width = max(len(ids) for _, ids, _ in prompts)
    budget = max_rows or max_rows_for(model, width, 1, 1)
    per_pass = max(1, budget // size)  # layers per pass (for one item)
    per_chunk = max(1, budget // (size * min(per_pass, len(layer_list))))  # items per pass
    results: list[dict] = []
    n_items, n_s = len(prompts), len(lam)
    at = 0
    while at < n_items:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("sweep cancelled")
        chunk = prompts[at : at + per_chunk]
        items = [
            (ids, comps[0][1], _prefix(model, ids, len(ids) - 1, layer_list, None, cache))
            for _, ids, comps in chunk
        ]
        values: list[dict] = [{} for _ in items]
        ratios: list[dict] = [{} for _ in items]
        grads: list[dict] = [{} for _ in items]
        for g in range(0, len(layer_list), per_pass):
            group = layer_list[g : g + per_pass]
            got = letter_batch.letter_values(
                model, items, vector, group, rowsets, len(lam), operator, relative
            )
            for layer, per_item in got.items():
                for i, (value, ratio) in enumerate(per_item):
                    values[i][layer], ratios[i][layer] = value, ratio
        if directions is not None and null_method == "gradient":
            grad_budget = max_rows or max_rows_for(model, width, 1, 1, grad=True)
            per_grad = max(1, grad_budget // len(items))
            for g in range(0, len(layer_list), per_grad):
                group = layer_list[g : g + per_grad]
                got = letter_batch.letter_gradients(model, items, vector, group, relative)
                for layer, per_item in got.items():
                    for i, grad in enumerate(per_item):
                        grads[i][layer] = grad
        for value, grad, ratio in zip(values, grads, ratios):
            results.append(_item_result(value, grad, ratio, directions, null_method, null_lam, n_s, zero_row))
        at += len(chunk)
        if progress is not None:
            progress(at, n_items)
    return results


def _prefix(
    model: Any,
    ids: list[int],
    first: int,
    layer_list: list[int],
    fixed: Fixed | None = None,
    cache: MutableMapping | None = None,
) -> tuple[list | None, dict[int, tuple[float, int]]]:
    """Keys/values of the unsteered tokens before ``first`` and their residual norms (skipping the sink).

    ``fixed`` (background steerings) edit these tokens too; norms are read before a layer's own edits. With a
    ``cache`` (only without background steerings) the norms are read at every layer, so the entry serves any
    layer later.
    """
    fixed = fixed or {}
    if fixed:
        cache = None  # the keys/values depend on the background, which the key does not name
    prefix_norms: dict[int, tuple[float, int]] = {}
    if first <= 0:
        return None, prefix_norms
    key = ("prefix", tuple(ids[:first]))
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
        layer_list = list(range(model.n_layers))
    input_ids = model.place(torch.tensor([ids[:first]]))
    with (
        torch.no_grad(),
        model.lock,
        model.nn.trace(input_ids, use_cache=True, logits_to_keep=1, remote=model.remote),
    ):
        for layer in sorted(set(layer_list) | set(fixed)):
            envoy = model.block(layer)
            out = envoy.output
            hidden = _hidden(out)
            if layer in layer_list:
                h = hidden[0, 1:].float()
                prefix_norms[layer] = (float(h.norm(dim=-1).sum()), int(h.shape[0]))
            if layer in fixed:
                _set_hidden(envoy, out, _edit_fixed(hidden, fixed[layer], 0))
        result = model.nn.output.save()
        prefix_norms = _save(prefix_norms)  # a remote run returns only saved values
    kv = result["cache"] if "cache" in result else result["past_key_values"]
    out = [(k, v) for k, v, *_ in kv], prefix_norms
    if cache is not None:
        cache[key] = out
    return out


def sweep_item(
    model: Any,
    ids: list[int],
    mask: torch.Tensor,
    first: int,
    vector: SteeringVector,
    layer_list: list[int],
    lam: np.ndarray,
    operator: str,
    relative: bool,
    max_rows: int | None,
    *,
    null: dict | None = None,
    null_lam: np.ndarray | None = None,
    keep: int = 1,
    prefix: tuple[list | None, dict] | None = None,
    fixed: Fixed | None = None,
    unsteered_row: bool = True,
) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """Logits ``[rows, keep, vocab]`` at the last ``keep`` positions for every layer of one sequence.

    Rows per layer: the vector at each strength in ``lam``, then (with ``null``) each random direction at
    the two ``null_lam`` strengths, then one unsteered row (left out with ``unsteered_row=False``, when the
    caller reads it from λ = 0 of an additive grid). Ratios are the vector rows' ‖λv‖ / mean‖h‖.

    A pass holds at most ``max_rows`` rows (``None``: the device's budget, :mod:`.memory`): several layers'
    rows when the suffix is one token, else one layer's rows, split over passes when they are more (e.g.
    the sampled null's 2K directions), the vector's rows always in the first.
    """
    prefix_kv, prefix_norms = prefix if prefix is not None else _prefix(model, ids, first, layer_list, fixed)
    input_ids = model.place(torch.tensor([ids]))
    rowsets = _rowsets(vector, layer_list, lam, null, null_lam, unsteered_row)
    per_layer_rows = sum(len(s[1]) for s in rowsets[layer_list[0]])
    suffix = input_ids[:, first:]
    suffix_mask = mask[first : len(ids)] if mask.shape[0] >= len(ids) else mask[first:]
    if max_rows is None:
        max_rows = max_rows_for(model, first, suffix.shape[1], keep)
    # With one steered token every layer's rows are cheap: put several layers in one pass.
    if suffix.shape[1] == 1 and per_layer_rows <= max_rows:
        per_pass = max(1, max_rows // per_layer_rows)
        groups = [
            {layer: rowsets[layer] for layer in layer_list[i : i + per_pass]}
            for i in range(0, len(layer_list), per_pass)
        ]
    else:
        groups = [{layer: part} for layer in layer_list for part in _split_rows(rowsets[layer], max_rows)]
    out: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
    with torch.no_grad():
        for group in groups:
            got = _sweep_pass(
                model, suffix, suffix_mask, first, prefix_kv, prefix_norms, vector, group, list(group),
                len(lam), operator, relative, keep, fixed,
            )  # fmt: skip
            for layer, (logits, ratios) in got.items():
                if layer in out:  # a later part of this layer's rows: the ratios came with the first
                    out[layer] = (torch.cat([out[layer][0], logits]), out[layer][1])
                else:
                    out[layer] = (logits, ratios)
    return out


def _split_rows(sets: list[tuple[torch.Tensor, torch.Tensor]], max_rows: int) -> list[list]:
    """One layer's (direction, strengths) sets in consecutive parts of at most ``max_rows`` rows each
    (a set is never split, so a part may exceed the budget by one set's strengths)."""
    parts: list[list] = [[]]
    rows = 0
    for item in sets:
        if parts[-1] and rows + len(item[1]) > max_rows:
            parts.append([])
            rows = 0
        parts[-1].append(item)
        rows += len(item[1])
    return parts


def _grad_pass(
    model: Any,
    seq: list[int],
    mask: torch.Tensor,
    first: int,
    prefix: tuple[list | None, dict[int, tuple[float, int]]],
    layer_list: list[int],
    vector: SteeringVector,
    relative: bool,
    keep: int,
    objective: Callable[[torch.Tensor], torch.Tensor],
    fixed: Fixed | None = None,
) -> dict[int, tuple[torch.Tensor, float]]:
    """∇ of the unsteered objective with respect to a vector δ added at the steered positions, per layer.

    For any direction r, the slope dm(λr)/dλ at λ = 0 is then ``factor · ∇·r``: one backward pass gives every
    random direction's first-order slope. One row per layer (δ of row g enters at layer g only).
    """
    prefix_kv, prefix_norms = prefix
    ordered = sorted(layer_list)
    rows, split = len(ordered), ordered[0]
    suffix = model.place(torch.tensor([seq])[:, first:])
    pos_mask = mask[first : len(seq)][None, :, None]
    # δ lives on the CPU (a [layers, d] leaf); each layer's slice is copied to that layer's device, and
    # autograd brings the gradient back.
    delta = torch.zeros((rows, model.d_model), requires_grad=True)
    kwargs: dict[str, Any] = dict(logits_to_keep=keep, remote=model.remote)
    if prefix_kv is not None:
        kwargs.update(past_key_values=_cache_from(prefix_kv, rows, split), use_cache=True)
    skip_first = 1 if first == 0 else 0
    factors: dict[int, float] = {}
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore", FutureWarning)
        fixed = fixed or {}
        with model.lock, model.nn.trace(suffix, **kwargs):
            for layer in sorted(set(ordered) | set(fixed)):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                if layer in fixed:
                    edited = _edit_fixed(hidden, fixed[layer], first)
                if layer not in ordered:
                    _set_hidden(envoy, out, edited)
                    continue
                g = ordered.index(layer)
                own = hidden[:1] if hidden.shape[0] == 1 else hidden[g : g + 1]
                vnorm = float(vector[layer].norm())
                factors[layer] = _scale_factor(own, prefix_norms.get(layer), skip_first, vnorm, relative)[1]
                hidden = edited if layer in fixed else hidden
                if layer == split:
                    hidden = hidden.expand(rows, -1, -1)
                row = torch.zeros((rows, 1, 1))
                row[g] = 1.0
                edit = (row * delta[g] * pos_mask).to(device=hidden.device, dtype=hidden.dtype)
                _set_hidden(envoy, out, hidden + edit)
            logits = model.nn.lm_head.output[:, -keep:].save()
        (grad,) = torch.autograd.grad(objective(logits.float()).sum(), delta)
    return {layer: (grad[g].detach().cpu(), factors[layer]) for g, layer in enumerate(ordered)}


def _sweep_pass(
    model: Any,
    suffix: torch.Tensor,
    suffix_mask: torch.Tensor,
    first: int,
    prefix_kv: list | None,
    prefix_norms: dict[int, tuple[float, int]],
    vector: SteeringVector,
    rowsets: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
    group: list[int],
    n_vector_rows: int,
    operator: str,
    relative: bool,
    keep: int,
    fixed: Fixed | None = None,
) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """One batched forward: for each layer in ``group`` its rows (direction × strength), expanded at the
    lowest layer.

    Rows of layer L are steered only at L, so below L they equal the unsteered run; the mean residual
    norm for relative strengths is read from the first row of L's block before editing, and every direction
    of L is scaled by the same factor (the null's directions have the vector's norm).
    """
    ordered = sorted(group)
    sizes = [sum(len(lam) for _, lam in rowsets[layer]) for layer in ordered]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    rows = int(offsets[-1])
    split = ordered[0]
    kwargs: dict[str, Any] = dict(logits_to_keep=keep, remote=model.remote)
    if prefix_kv is not None:
        # nnsight keeps the ``cache`` keyword for itself, so the cache travels as ``past_key_values``.
        kwargs.update(past_key_values=_cache_from(prefix_kv, rows, split), use_cache=True)
    ratios: dict[int, np.ndarray] = {}
    pos_mask = suffix_mask[None, :, None]
    skip_first = 1 if first == 0 else 0  # the attention-sink token is left out of mean‖h‖
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values is deprecated in v5
        fixed = fixed or {}
        with model.lock, model.nn.trace(suffix, **kwargs):
            for layer in sorted(set(ordered) | set(fixed)):
                envoy = model.block(layer)
                out = envoy.output
                hidden = _hidden(out)
                if layer in fixed:  # background steerings: every row, before this layer's own edits
                    edited = _edit_fixed(hidden, fixed[layer], first)
                if layer not in ordered:
                    _set_hidden(envoy, out, edited)
                    continue
                g = ordered.index(layer)
                start = int(offsets[g])
                where = pos_mask.to(hidden.device)
                own = hidden[:1] if hidden.shape[0] == 1 else hidden[start : start + 1]
                vnorm = float(vector[layer].norm())
                mean_norm, factor = _scale_factor(own, prefix_norms.get(layer), skip_first, vnorm, relative)
                ratios[layer] = (rowsets[layer][0][1].abs() * factor * vnorm / max(mean_norm, 1e-12)).numpy()
                hidden = edited if layer in fixed else hidden
                if layer == split:
                    hidden = hidden.expand(rows, -1, -1)
                pieces = [hidden[:start]]
                at = start
                for direction, lam in rowsets[layer]:
                    part = hidden[at : at + len(lam)]
                    scale = (lam * factor).reshape(-1, 1, 1)
                    if operator == "add" or float(direction.norm()) == 0.0:
                        edited = (
                            part
                            if float(direction.norm()) == 0.0
                            else apply_operator(part, direction, scale, "add")
                        )
                    else:
                        edited = apply_operator(part, direction, scale, operator)
                    pieces.append(torch.where(where, edited, part))
                    at += len(lam)
                pieces.append(hidden[at:])
                _set_hidden(envoy, out, torch.cat(pieces, 0))
            logits = model.nn.lm_head.output[:, -keep:].save()
            ratios = _save(ratios)  # a remote run returns only saved values
    logits = logits.float()
    return {
        layer: (logits[int(offsets[g]) : int(offsets[g + 1])], ratios[layer][:n_vector_rows])
        for g, layer in enumerate(ordered)
    }
