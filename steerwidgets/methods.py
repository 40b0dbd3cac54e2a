"""Ways to build a steering vector from data. Each returns a :class:`SteeringVector` with provenance.

Long because: one registry of eleven estimators, each a short function over the same activation readers; the
covariance algebra (affine maps) and the function-vector head patching are the parts to move out next.

- :func:`caa` — mean difference at the answer-letter token over A/B items (Panickssery et al. 2023).
- :func:`mean_difference` — the same estimator on contrastive sentence pairs, read at the last token.
- :func:`actadd` — per-position difference of one prompt pair, read where it is added (Turner et al. 2023).
- :func:`pca` — first principal component of the paired differences, centred or not (RepE / repeng).
- :func:`mean_centring` — mean of target texts minus mean of all texts (Jorgensen et al. 2023).
- :func:`icv` — in-context vector: one PCA across all layers, added after every layer with norm
  preservation (Liu et al. 2023).
- :func:`function_vector` — summed outputs of the top attention heads by indirect effect (Todd et al. 2023).
- :func:`affine` — mean + covariance matching, an :class:`AffineMap` (Singh et al. 2024).
- :func:`ablation_steerings`, :func:`clamp_steering` — directional ablation and clamping.

Estimators are registered by name in :data:`ESTIMATORS` (``@register_estimator("name", reads=...)``), so a new
method is one function: ``fn(model, data, layers, **options) -> SteeringVector`` becomes usable by name, e.g.
in :func:`steerwidgets.evaluation.compare`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data import ABItem, ContrastPair, fingerprint, swap_options
from .engine.activations import attention_out_proj, head_means, patched_answer_probs, read_activations
from .interventions import AffineMap, Steering, SteeringError, require_model
from .prompts import ab_prompt, adds_bos, prompt_text, tokenize_prompt, use_chat
from .vectors import SteeringVector

#: What an estimator's ``data`` is, so a caller holding a behaviour's data knows what to pass: A/B items,
#: contrast pairs, either, or something of its own (texts, (x, y) demonstrations, two phrases, ICL prompts).
READS = ("ab_items", "pairs", "ab_items_or_pairs", "texts", "demonstrations", "phrases", "icl_prompts")


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: ``fn(model, data, layers, **options)`` returns a :class:`SteeringVector`
    (``affine``: an :class:`AffineMap`); ``reads`` says what ``data`` is (one of :data:`READS`)."""

    name: str
    fn: Callable[..., Any]
    reads: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


#: The estimators by name, filled by :func:`register_estimator`.
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str | None = None, *, reads: str = "ab_items_or_pairs") -> Callable:
    """Register ``fn(model, data, layers, **options) -> SteeringVector`` under ``name`` (default: its
    ``__name__``); a decorator that returns ``fn`` unchanged. ``del ESTIMATORS[name]`` removes it again."""
    if reads not in READS:
        raise SteeringError(f"reads must be one of {READS}, got {reads!r}")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or getattr(fn, "__name__", None)
        if not isinstance(key, str) or not key:
            raise SteeringError("give the estimator a name: register_estimator('name')")
        ESTIMATORS[key] = Estimator(key, fn, reads)
        return fn

    return register


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``; an unknown name raises naming the registered ones."""
    if name not in ESTIMATORS:
        raise SteeringError(f"unknown method {name!r}; choose from {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]


def _layer_list(model: Any, layers: int | Sequence[int] | None) -> list[int]:
    require_model(model, "building a vector")
    if layers is None:
        return list(range(model.n_layers))
    out = [layers] if isinstance(layers, int) else list(layers)
    for layer in out:
        model.check_layer(layer)
    if not out:
        raise SteeringError("give at least one layer")
    return out


def ab_activations(
    model: Any,
    items: Sequence[ABItem],
    layers: int | Sequence[int] | None = None,
    *,
    chat: bool | None = None,
    batch_size: int = 16,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, activations ``(positive [n, d], negative [n, d])`` at the answer-letter token.

    The prompt is the chat template with the question as the user turn, generation prompt added, then
    ``"("``; the completion is the letter token alone (metrics.md).
    """
    items = list(items)
    if not items:
        raise SteeringError("need at least one A/B item")
    layer_list = _layer_list(model, layers)
    sequences = []
    for item in items:
        ids, y_pos, y_neg = ab_prompt(model, item, chat)
        sequences += [ids + [y_pos], ids + [y_neg]]
    acts = read_activations(model, sequences, layer_list, position=-1, batch_size=batch_size)
    return {layer: (a[0::2], a[1::2]) for layer, a in acts.items()}


def both_orders(items: Sequence[ABItem], swap: bool | None = None) -> tuple[list[ABItem], bool]:
    """The items followed by each one with its options swapped (answers relabelled), and whether it did.

    Read in both letter orders, every question's letter part cancels in the mean difference. ``swap=None``
    swaps when every item lists its two options on ``(A) …`` / ``(B) …`` lines; ``True`` requires it.
    """
    items = list(items)
    if swap is False:
        return items, False
    swapped = [swap_options(item) for item in items]
    missing = [i for i, item in enumerate(swapped) if item is None]
    if missing:
        if swap:
            raise SteeringError(
                f"items {missing[:5]} do not list their options as '(A) …' and '(B) …' lines, so they cannot "
                "be read in both letter orders; pass swap_options=False"
            )
        return items, False
    return items + swapped, True


def pair_activations(
    model: Any,
    pairs: Sequence[ContrastPair],
    layers: int | Sequence[int] | None = None,
    *,
    context: str | None = None,
    read: str = "last",
    batch_size: int = 16,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, ``(positive [n, d], negative [n, d])`` activations of contrast pairs.

    ``context=None`` reads the sentences as raw text; with a prompt string, each sentence is read as the
    assistant's reply to that prompt (chat template), i.e. in the context where steering is later used.
    ``read="last"`` takes the sentence's last token, ``read="mean"`` the mean over its tokens.
    """
    pairs = list(pairs)
    if not pairs:
        raise SteeringError("need at least one contrast pair")
    if read not in ("last", "mean"):
        raise SteeringError(f"read must be 'last' or 'mean', got {read!r}")
    layer_list = _layer_list(model, layers)
    tok = model.tokenizer
    prefix = tokenize_prompt(model, context)[0] if context is not None else []
    sequences, spans = [], []
    for pair in pairs:
        for text in (pair.positive, pair.negative):
            ids = (
                tok(" " + text, add_special_tokens=False)["input_ids"]
                if prefix
                else tok(text, add_special_tokens=True)["input_ids"]
            )
            if not ids:
                raise SteeringError(f"a contrast sentence tokenises to nothing: {text!r}")
            sequences.append(prefix + ids)
            spans.append((len(prefix), len(prefix) + len(ids)))
    if read == "last":
        acts = read_activations(model, sequences, layer_list, position=-1, batch_size=batch_size)
        return {layer: (a[0::2], a[1::2]) for layer, a in acts.items()}
    full = read_activations(model, sequences, layer_list, position="all", batch_size=batch_size)
    out = {}
    for layer, a in full.items():
        means = torch.stack([a[i, start:stop].mean(0) for i, (start, stop) in enumerate(spans)])
        out[layer] = (means[0::2], means[1::2])
    return out


@register_estimator("caa", reads="ab_items")
def caa(
    model: Any,
    items: Sequence[ABItem],
    layers: int | Sequence[int] | None = None,
    *,
    swap_options: bool | None = None,
    chat: bool | None = None,
    batch_size: int = 16,
) -> SteeringVector:
    """v = mean_i [a_L(prompt_i + y+_i) − a_L(prompt_i + y−_i)], read at the answer-letter token.

    By default every item is read in both letter orders (its options swapped, the answer relabelled), so
    the part of the difference that encodes *which letter* matches cancels within each question and the
    mean keeps the behaviour (``swap_options=False``: the items as given, Panickssery et al.'s reading).
    ``layers=None`` reads every layer in the same forward passes.
    """
    read, swapped = both_orders(items, swap_options)
    acts = ab_activations(model, read, layers, chat=chat, batch_size=batch_size)
    return SteeringVector(
        directions={layer: (pos - neg).mean(0) for layer, (pos, neg) in acts.items()},
        model_id=model.name,
        method="caa",
        read_position="answer letter (last token)" + (", both letter orders" if swapped else ""),
        dataset_fingerprint=fingerprint(list(items)),
        meta={"n_items": len(list(items)), "chat": use_chat(model, chat), "swap_options": swapped},
    )


@register_estimator("mean_difference", reads="pairs")
def mean_difference(
    model: Any,
    pairs: Sequence[ContrastPair],
    layers: int | Sequence[int] | None = None,
    *,
    context: str | None = None,
    read: str = "last",
    batch_size: int = 16,
) -> SteeringVector:
    """Mean over pairs of a_L(positive) − a_L(negative); see :func:`pair_activations` for where it reads.

    Reading the pairs as assistant replies (``context="..."``, ``read="mean"``) gives a vector from the
    distribution the steered continuations come from.
    """
    acts = pair_activations(model, pairs, layers, context=context, read=read, batch_size=batch_size)
    where = "last token" if read == "last" else "mean over tokens"
    return SteeringVector(
        directions={layer: (pos - neg).mean(0) for layer, (pos, neg) in acts.items()},
        model_id=model.name,
        method="mean_difference",
        read_position=f"{where} of each sentence" + (f", as the reply to {context!r}" if context else ""),
        dataset_fingerprint=fingerprint(list(pairs)),
        meta={"n_pairs": len(pairs), "context": context, "read": read},
    )


def actadd_context(model: Any, phrase: str, chat: bool | None = None) -> list[int]:
    """Token ids before the user's text where ``positions="front"`` adds: the chat template up to the
    user turn, or the BOS token (Turner et al. read and add right after it) for raw text."""
    text, char_start = prompt_text(model, phrase, chat)
    tok = model.tokenizer
    prefix = tok(text[:char_start], add_special_tokens=False)["input_ids"] if char_start else []
    if not use_chat(model, chat) and tok.bos_token_id is not None and adds_bos(tok):
        prefix = [tok.bos_token_id] + prefix
    return prefix


@register_estimator("actadd", reads="phrases")
def actadd(
    model: Any,
    positive_prompt: str,
    negative_prompt: str,
    layer: int | Sequence[int],
    *,
    chat: bool | None = None,
) -> SteeringVector:
    """h_A = a_L(p+) − a_L(p−) per position, the shorter prompt right-padded with spaces to equal length.

    The result has shape ``[n_positions, d_model]`` per layer and is added at the first positions of the
    user's text (``positions="front"``), as in Turner et al. (2023). The phrases are read where they are
    added: after the same context (the chat template's opening up to the user turn when ``chat`` is on,
    the model's default; BOS otherwise), so row k of h_A belongs to user-text position k. Reading them
    alone, at sequence position 0, would give the activations of a different position (the attention
    sink) for row 0.
    """
    require_model(model, "actadd")
    if not isinstance(positive_prompt, str) or not isinstance(negative_prompt, str):
        raise TypeError("ActAdd needs two phrases as str, e.g. actadd(model, 'Love', 'Hate', layer)")
    if not positive_prompt.strip() or not negative_prompt.strip():
        raise SteeringError("ActAdd needs two non-empty phrases, e.g. 'Love' and 'Hate'")
    layer_list = _layer_list(model, layer)
    tok = model.tokenizer
    pos = tok(positive_prompt, add_special_tokens=False)["input_ids"]
    neg = tok(negative_prompt, add_special_tokens=False)["input_ids"]
    space = tok(" ", add_special_tokens=False)["input_ids"]
    filler = space[0] if len(space) == 1 else tok.pad_token_id
    width = max(len(pos), len(neg))
    pos = pos + [filler] * (width - len(pos))
    neg = neg + [filler] * (width - len(neg))
    pos_ctx = actadd_context(model, positive_prompt, chat)
    neg_ctx = actadd_context(model, negative_prompt, chat)
    acts = read_activations(model, [pos_ctx + pos, neg_ctx + neg], layer_list, position="all")
    p0, n0 = len(pos_ctx), len(neg_ctx)
    directions = {layer: a[0, p0 : p0 + width] - a[1, n0 : n0 + width] for layer, a in acts.items()}
    chat_on = use_chat(model, chat)
    return SteeringVector(
        directions=directions,
        model_id=model.name,
        method="actadd",
        read_position=f"front-aligned, {width} positions after the "
        + ("chat template's user-turn opening" if chat_on else "start of the text"),
        dataset_fingerprint=fingerprint([ContrastPair(positive_prompt, negative_prompt)]),
        meta={"positive": positive_prompt, "negative": negative_prompt, "chat": chat_on},
    )


# ----------------------------------------------------------------------------------------------
# More estimators (issue "Beyond multiple choice"). Pure math first, then the model plumbing, so each
# formula can be checked by hand on synthetic activations.
# ----------------------------------------------------------------------------------------------
def pca_direction(diffs: torch.Tensor, centred: bool = True) -> torch.Tensor:
    """First principal component of paired differences ``[n, d]``, signed and scaled (RepE / repeng).

    The sign is fixed so that the mean difference projects positively; the length is that projection,
    ``v = (d̄·u) u``, so the vector is the mean difference's component along the component and strengths
    stay comparable with CAA. ``centred=False`` takes the PC of the raw differences (no mean removal).
    """
    x = torch.as_tensor(diffs, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise SteeringError("PCA needs a [n, d] matrix of differences with n ≥ 1")
    mean = x.mean(0)
    if centred:
        if x.shape[0] < 2:
            raise SteeringError("centred PCA needs at least two pairs")
        x = x - mean
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    unit = vh[0]
    proj = float(mean @ unit)
    if proj < 0:
        unit, proj = -unit, -proj
    return (unit * proj).to(torch.float32)


def token_means(acts: torch.Tensor, lengths: Sequence[int], skip: int | Sequence[int] = 0) -> torch.Tensor:
    """Mean over each sequence's own tokens ``skip .. length-1`` of zero-padded ``[n, T, d]`` activations."""
    skips = [skip] * len(lengths) if isinstance(skip, int) else list(skip)
    rows = []
    for i, (n, k) in enumerate(zip(lengths, skips)):
        if n - k < 1:
            raise SteeringError(f"text {i} has no token left after skipping {k} (length {n})")
        rows.append(acts[i, k:n].double().mean(0))
    return torch.stack(rows)


def mean_centring_direction(target_means: torch.Tensor, all_means: torch.Tensor) -> torch.Tensor:
    """Jorgensen et al. (2023): mean of the target texts' activations minus the mean over all texts."""
    return (target_means.double().mean(0) - all_means.double().mean(0)).to(torch.float32)


def psd_sqrt(a: torch.Tensor, inverse: bool = False, eps: float = 1e-10) -> torch.Tensor:
    """Symmetric square root (or inverse square root) of a PSD matrix via its eigendecomposition.

    Eigenvalues below ``eps`` are clamped (to 0 for the root, to ``eps`` for the inverse root).
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    a = (a + a.T) / 2
    values, vectors = torch.linalg.eigh(a)
    if inverse:
        roots = values.clamp_min(eps).rsqrt()
    else:
        roots = values.clamp_min(0.0).sqrt()
    return (vectors * roots) @ vectors.T


MIN_AUTO_SHRINKAGE = 0.1  # our floor for shrinkage="auto"; see shrunk_covariance


def ledoit_wolf_shrinkage(x: torch.Tensor) -> float:
    """Ledoit & Wolf (2004) weight α toward (tr S/d)·I for samples ``[n, d]`` (S the ML covariance)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = float(torch.trace(s)) / d
    dist2 = float(((s - mu * torch.eye(d, dtype=s.dtype)) ** 2).sum()) / d
    if dist2 == 0.0:
        return 0.0
    # mean over samples of ‖x xᵀ − S‖²_F, expanded so no [n, d, d] tensor is built
    sq = (xc**2).sum(1)
    quad = ((xc @ s) * xc).sum(1)
    spread = max(0.0, float((sq**2 - 2 * quad + (s**2).sum()).sum()) / n**2 / d)
    return float(min(spread, dist2) / dist2)


def shrunk_covariance(
    x: torch.Tensor, shrinkage: float | str = "auto", target: str = "identity"
) -> tuple[torch.Tensor, float]:
    """(1 − α)·S + α·T with S the ML covariance of ``[n, d]`` samples; T = (tr S/d)·I or diag(S).

    Shrinkage keeps Σ invertible when d_model exceeds the number of samples. ``"auto"`` picks α by
    Ledoit–Wolf, but never below :data:`MIN_AUTO_SHRINKAGE`: with few samples the estimate is unreliable
    (with n = 2 it is exactly 0) and a near-singular Σ_s makes W explode. Returns the matrix and the α used.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SteeringError("a covariance needs at least two samples of shape [n, d]")
    xc = x - x.mean(0)
    s = xc.T @ xc / x.shape[0]
    if shrinkage == "auto":
        alpha = max(MIN_AUTO_SHRINKAGE, ledoit_wolf_shrinkage(x))
    else:
        alpha = float(shrinkage)
    if not 0.0 <= alpha <= 1.0:
        raise SteeringError(f"shrinkage must be in [0, 1] or 'auto', got {shrinkage!r}")
    if target == "identity":
        t = torch.eye(s.shape[0], dtype=s.dtype) * (torch.trace(s) / s.shape[0])
    elif target == "diagonal":
        t = torch.diag(torch.diagonal(s))
    else:
        raise SteeringError(f"shrinkage target must be 'identity' or 'diagonal', got {target!r}")
    return (1 - alpha) * s + alpha * t, alpha


def gaussian_ot_map(cov_src: torch.Tensor, cov_tgt: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """W = Σs^{-1/2} (Σs^{1/2} Σt Σs^{1/2})^{1/2} Σs^{-1/2}: the optimal-transport map N(·, Σs) → N(·, Σt).

    W is symmetric positive semi-definite and satisfies W Σs W = Σt (for invertible Σs).
    """
    root = psd_sqrt(cov_src)
    inv_root = psd_sqrt(cov_src, inverse=True, eps=eps)
    middle = psd_sqrt(root @ torch.as_tensor(cov_tgt, dtype=torch.float64) @ root)
    w = inv_root @ middle @ inv_root
    return (w + w.T) / 2


def affine_from_activations(
    source: torch.Tensor,
    target: torch.Tensor,
    shrinkage: float | str = "auto",
    shrinkage_target: str = "identity",
) -> tuple[AffineMap, dict[str, float]]:
    """Mean + covariance matching (Singh et al. 2024) from samples ``[n_s, d]`` and ``[n_t, d]``."""
    src = torch.as_tensor(source, dtype=torch.float64)
    tgt = torch.as_tensor(target, dtype=torch.float64)
    if src.shape[-1] != tgt.shape[-1]:
        raise SteeringError(f"source and target sizes differ: {src.shape[-1]} vs {tgt.shape[-1]}")
    cov_s, alpha_s = shrunk_covariance(src, shrinkage, shrinkage_target)
    cov_t, alpha_t = shrunk_covariance(tgt, shrinkage, shrinkage_target)
    w = gaussian_ot_map(cov_s, cov_t)
    info = {"shrinkage_source": alpha_s, "shrinkage_target": alpha_t}
    return AffineMap(w, src.mean(0), tgt.mean(0), meta=dict(info)), info


def head_contribution(
    out_weight: torch.Tensor, head: int, head_dim: int, activation: torch.Tensor
) -> torch.Tensor:
    """What one attention head writes into the residual stream: W_O[:, head slice] @ a_head."""
    cols = slice(head * head_dim, (head + 1) * head_dim)
    return torch.as_tensor(out_weight, dtype=torch.float32)[:, cols] @ torch.as_tensor(
        activation, dtype=torch.float32
    )


# --- model plumbing ------------------------------------------------------------------------------
def contrast_activations(
    model: Any,
    data: Sequence[ABItem] | Sequence[ContrastPair],
    layers: int | Sequence[int] | None = None,
    *,
    chat: bool | None = None,
    batch_size: int = 16,
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], str]:
    """(positive, negative) activations for A/B items (answer letter) or contrast pairs (last token)."""
    data = list(data)
    if data and all(isinstance(x, ABItem) for x in data):
        return ab_activations(model, data, layers, chat=chat, batch_size=batch_size), "answer letter"
    if data and all(isinstance(x, ContrastPair) for x in data):
        return pair_activations(model, data, layers, batch_size=batch_size), "last token of each sentence"
    raise SteeringError("give a non-empty list of ABItem or of ContrastPair (not a mix)")


@register_estimator("pca", reads="ab_items_or_pairs")
def pca(
    model: Any,
    data: Sequence[ABItem] | Sequence[ContrastPair],
    layers: int | Sequence[int] | None = None,
    *,
    centred: bool = True,
    chat: bool | None = None,
    batch_size: int = 16,
) -> SteeringVector:
    """PCA / RepE: first principal component of the paired differences, see :func:`pca_direction`."""
    acts, where = contrast_activations(model, data, layers, chat=chat, batch_size=batch_size)
    kind = "centred" if centred else "uncentred"
    return SteeringVector(
        directions={layer: pca_direction(pos - neg, centred) for layer, (pos, neg) in acts.items()},
        model_id=model.name,
        method=f"pca ({kind})",
        read_position=where,
        dataset_fingerprint=fingerprint(list(data)),
        meta={"n": len(data), "centred": centred, "scale": "projection of the mean difference"},
    )


register_estimator("pca_uncentred", reads="ab_items_or_pairs")(functools.partial(pca, centred=False))


def _text_ids(model: Any, texts: Sequence[str]) -> list[list[int]]:
    out = []
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=True)["input_ids"]
        if not ids:
            raise SteeringError(f"a text tokenises to nothing: {text!r}")
        out.append(ids)
    return out


@register_estimator("mean_centring", reads="texts")
def mean_centring(
    model: Any,
    target_texts: Sequence[str],
    all_texts: Sequence[str],
    layers: int | Sequence[int] | None = None,
    *,
    batch_size: int = 16,
) -> SteeringVector:
    """Mean-centring (Jorgensen et al. 2023): mean(target activations) − mean(all activations).

    Each text is averaged over its tokens first, then over texts. The first token is left out (a BOS or
    the first word: its attention-sink activation is huge and would weight the vector by text length).
    """
    target_texts, all_texts = list(target_texts), list(all_texts)
    if not target_texts or not all_texts:
        raise SteeringError("mean-centring needs target texts and a set of all texts")
    layer_list = _layer_list(model, layers)
    seqs = _text_ids(model, target_texts + all_texts)
    skip = [1 if len(s) > 1 else 0 for s in seqs]
    n_t = len(target_texts)
    means: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        acts = read_activations(model, chunk, layer_list, position="all", batch_size=batch_size)
        for layer in layer_list:
            lengths = [len(seq) for seq in chunk]
            means[layer].append(token_means(acts[layer], lengths, skip[start : start + len(chunk)]))
    directions = {}
    for layer in layer_list:
        all_means = torch.cat(means[layer])
        directions[layer] = mean_centring_direction(all_means[:n_t], all_means[n_t:])
    return SteeringVector(
        directions=directions,
        model_id=model.name,
        method="mean_centring",
        read_position="mean over each text's tokens (first token excluded)",
        dataset_fingerprint=fingerprint(list(target_texts) + ["||"] + list(all_texts)),
        meta={"n_target": n_t, "n_all": len(all_texts)},
    )


def icv_directions(diffs: dict[int, torch.Tensor], centred: bool = True) -> dict[int, torch.Tensor]:
    """Liu et al. (2023): ONE principal component of the differences concatenated across layers
    (``[n, n_layers · d]``), cut back into per-layer vectors.

    One PCA, not one per layer: the direction is the demonstrations' shared variation over the whole
    depth, so each layer's part is weighted by how much that layer carries of it. Sign and length as
    :func:`pca_direction` (the mean difference projects positively; length = that projection).
    """
    layers = sorted(diffs)
    if not layers:
        raise SteeringError("ICV needs the differences of at least one layer")
    sizes = [int(diffs[layer].shape[-1]) for layer in layers]
    joint = pca_direction(torch.cat([torch.as_tensor(diffs[layer]).double() for layer in layers], 1), centred)
    return dict(zip(layers, joint.split(sizes)))


@register_estimator("icv", reads="demonstrations")
def icv(
    model: Any,
    demonstrations: Sequence[tuple[str, str]],
    layers: int | Sequence[int] | None = None,
    *,
    centred: bool = True,
    batch_size: int = 16,
) -> SteeringVector:
    """In-context vector (Liu et al. 2023): first PC of the last-token differences h(y) − h(x), taken
    jointly over all ``layers`` (default: every layer) by :func:`icv_directions`.

    ``demonstrations`` are (x, y) pairs, e.g. (neutral or negative text, its target-style rewrite). Apply
    it after *every* layer with norm preservation: :func:`icv_steerings`. As in the paper, the residual
    stream is steered and rescaled to its old norm; the authors' code instead edits each MLP's output,
    adds a unit direction with a similarity-dependent weight and adds the mean difference to the PC:
    those details are not reproduced.
    """
    demos = list(demonstrations)
    if len(demos) < 2:
        raise SteeringError("ICV needs at least two (x, y) demonstrations")
    layer_list = _layer_list(model, layers)
    seqs = _text_ids(model, [text for x, y in demos for text in (y, x)])
    acts = read_activations(model, seqs, layer_list, position=-1, batch_size=batch_size)
    directions = icv_directions({layer: a[0::2] - a[1::2] for layer, a in acts.items()}, centred)
    return SteeringVector(
        directions=directions,
        model_id=model.name,
        method=f"icv ({'centred' if centred else 'uncentred'} pca across {len(layer_list)} layers)",
        read_position="last token of x and of y",
        dataset_fingerprint=fingerprint([ContrastPair(y, x) for x, y in demos]),
        meta={"n_demonstrations": len(demos), "apply": "every layer, operator add_norm_preserving"},
    )


def icv_steerings(vector: SteeringVector, strength: float, positions: Any = "all") -> list[Steering]:
    """One norm-preserving addition of ``strength · v[L]`` after every layer L the vector has (ICV)."""
    return [
        Steering(vector, layer, strength, positions, operator="add_norm_preserving")
        for layer in vector.layers
    ]


def ablation_steerings(
    vector: SteeringVector, layers: int | Sequence[int] | None = None, positions: Any = "all"
) -> list[Steering]:
    """Directional ablation h ↦ h − (h·v̂)v̂ at each layer (all of the vector's layers by default)."""
    chosen = vector.layers if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    return [Steering(vector, layer, 1.0, positions, operator="ablate") for layer in chosen]


def clamp_steering(vector: SteeringVector, layer: int, value: float, positions: Any = "all") -> Steering:
    """Clamp h ↦ h − (h·v̂)v̂ + c·v̂ with c = ``value`` (the engine's strength is c / ‖v‖)."""
    norm = float(vector[layer].norm())
    if norm == 0.0:
        raise SteeringError("clamping needs a non-zero vector")
    return Steering(vector, layer, value / norm, positions, operator="clamp")


def pair_token_activations(
    model: Any, pairs: Sequence[ContrastPair], layer: int, *, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's activation (the first token left out: the attention sink) of the positive and of the
    negative sentences, ``([n_pos_tokens, d], [n_neg_tokens, d])``."""
    pairs = list(pairs)
    if not pairs:
        raise SteeringError("need at least one contrast pair")
    seqs = _text_ids(model, [text for pair in pairs for text in (pair.positive, pair.negative)])
    out: list[list[torch.Tensor]] = [[], []]
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        acts = read_activations(model, chunk, [layer], position="all", batch_size=batch_size)[layer]
        for i, seq in enumerate(chunk):
            first = 1 if len(seq) > 1 else 0
            out[(start + i) % 2].append(acts[i, first : len(seq)])
    return torch.cat(out[0]), torch.cat(out[1])


@register_estimator("affine", reads="ab_items_or_pairs")
def affine(
    model: Any,
    data: Sequence[ABItem] | Sequence[ContrastPair],
    layer: int,
    *,
    tokens: str = "read",
    shrinkage: float | str = "auto",
    shrinkage_target: str = "identity",
    chat: bool | None = None,
    batch_size: int = 16,
) -> AffineMap:
    """Affine mean + covariance matching (Singh et al. 2024) from negative (source) to positive (target).

    Apply with ``Steering(map, layer, λ, operator="affine")`` or :func:`affine_steering`; λ = 1 is the
    full map h ↦ W(h − μ_src) + μ_tgt. ``shrinkage`` ("auto" = Ledoit–Wolf, at least
    :data:`MIN_AUTO_SHRINKAGE`) keeps the covariances invertible when d_model exceeds the number of samples.
    ``tokens="read"`` fits on one activation per example (answer letter / last token); ``tokens="all"``
    (contrast pairs only) fits on every token of the sentences, the distribution the map meets when it is
    applied at every position, as in Singh et al.
    """
    model.check_layer(layer)
    data = list(data)
    if tokens == "all":
        if not data or not all(isinstance(x, ContrastPair) for x in data):
            raise SteeringError("tokens='all' fits on the tokens of contrast pairs; give ContrastPair items")
        pos, neg = pair_token_activations(model, data, layer, batch_size=batch_size)
        where = "every token of each sentence (first token excluded)"
    elif tokens == "read":
        acts, where = contrast_activations(model, data, [layer], chat=chat, batch_size=batch_size)
        pos, neg = acts[layer]
    else:
        raise SteeringError(f"tokens must be 'read' or 'all', got {tokens!r}")
    amap, info = affine_from_activations(neg, pos, shrinkage, shrinkage_target)
    amap.meta.update(
        model_id=model.name,
        method="affine (mean + covariance matching)",
        layer=layer,
        read_position=where,
        n=len(data),
        n_samples=[int(neg.shape[0]), int(pos.shape[0])],
        shrinkage_kind=shrinkage_target,
        dataset_fingerprint=fingerprint(data),
        **info,
    )
    return amap


def affine_steering(amap: AffineMap, layer: int, strength: float = 1.0, positions: Any = "all") -> Steering:
    """The :class:`Steering` for an affine map (λ interpolates between h and the mapped h)."""
    return Steering(amap, layer, strength, positions, operator="affine")


# --- function vectors (Todd et al. 2023) ---------------------------------------------------------
ICL_PAIR_FORMAT = "Q: {x}\nA: {y}\n\n"
ICL_QUERY_FORMAT = "Q: {x}\nA:"


def icl_text(
    demonstrations: Sequence[tuple[str, str]],
    query: str,
    pair_format: str = ICL_PAIR_FORMAT,
    query_format: str = ICL_QUERY_FORMAT,
) -> str:
    """An in-context-learning prompt: formatted demonstrations, then the query awaiting its answer."""
    return "".join(pair_format.format(x=x, y=y) for x, y in demonstrations) + query_format.format(x=query)


def shuffled_labels(demonstrations: Sequence[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """The same inputs with their labels permuted (never the identity when there are ≥ 2 labels)."""
    demos = list(demonstrations)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(demos), generator=gen).tolist()
    if len(demos) > 1 and order == list(range(len(demos))):
        order = order[1:] + order[:1]
    return [(x, demos[j][1]) for (x, _), j in zip(demos, order)]


def _first_token(model: Any, answer: str) -> int:
    ids = model.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise SteeringError(f"the answer {answer!r} tokenises to nothing")
    return ids[0]


@register_estimator("function_vector", reads="icl_prompts")
def function_vector(
    model: Any,
    icl_prompts: Sequence[tuple[Sequence[tuple[str, str]], str, str]],
    layers: int | Sequence[int] | None = None,
    top_k: int = 10,
    *,
    apply_layer: int | None = None,
    seed: int = 0,
    max_rows: int = 64,
    pair_format: str = ICL_PAIR_FORMAT,
    query_format: str = ICL_QUERY_FORMAT,
) -> SteeringVector:
    """Function vector (Todd et al. 2023): the summed mean outputs of the top-k heads by average indirect
    effect (AIE), to be added to the residual stream at ``apply_layer`` (default: a third of the depth).

    ``icl_prompts`` are ``(demonstrations, query, answer)`` triples. For each head of ``layers``:
    the mean clean output at the last token is patched into prompts whose demonstration labels are
    shuffled, and AIE = mean over those prompts of p_patched(answer) − p_corrupted(answer) (answer's first
    token). Costs one batched pass per prompt per ``max_rows`` heads; restrict ``layers`` on big models.
    """
    prompts = list(icl_prompts)
    if not prompts:
        raise SteeringError("function vectors need at least one (demonstrations, query, answer) prompt")
    layer_list = _layer_list(model, layers)
    apply_at = model.n_layers // 3 if apply_layer is None else model.check_layer(apply_layer)
    tok = model.tokenizer
    clean, corrupted, answers = [], [], []
    for i, (demos, query, answer) in enumerate(prompts):
        if len(demos) < 2:
            raise SteeringError("each ICL prompt needs at least two demonstrations (labels get shuffled)")
        clean.append(tok(icl_text(demos, query, pair_format, query_format))["input_ids"])
        bad = shuffled_labels(demos, seed + i)
        corrupted.append(tok(icl_text(bad, query, pair_format, query_format))["input_ids"])
        answers.append(_first_token(model, answer))
    means = head_means(model, clean, layer_list)
    _, weight0, n_heads = attention_out_proj(model, layer_list[0])
    head_dim = weight0.shape[1] // n_heads
    heads = [(layer, h) for layer in layer_list for h in range(n_heads)]
    aie = torch.zeros(len(heads), dtype=torch.float64)
    per_pass = max(1, max_rows - 1)
    for ids, answer in zip(corrupted, answers):
        for start in range(0, len(heads), per_pass):
            chunk = heads[start : start + per_pass]
            probs = patched_answer_probs(model, ids, answer, [None, *chunk], means, head_dim)
            aie[start : start + len(chunk)] += (probs[1:] - probs[0]).double()
    aie /= len(prompts)
    k = min(top_k, len(heads))
    top = torch.argsort(aie, descending=True)[:k].tolist()
    fv = torch.zeros(model.d_model)
    for index in top:
        layer, h = heads[index]
        _, weight, _ = attention_out_proj(model, layer)
        fv += head_contribution(weight, h, head_dim, means[layer][h * head_dim : (h + 1) * head_dim])
    return SteeringVector(
        directions={apply_at: fv},
        model_id=model.name,
        method=f"function_vector (top {k} heads by AIE)",
        read_position="attention head outputs at the last token",
        dataset_fingerprint=fingerprint([ContrastPair(icl_text(d, q), a) for d, q, a in prompts]),
        meta={
            "top_heads": [[heads[i][0], heads[i][1], float(aie[i])] for i in top],
            "aie": {f"{layer}.{h}": float(aie[i]) for i, (layer, h) in enumerate(heads)},
            "apply_layer": apply_at,
            "n_prompts": len(prompts),
            "seed": seed,
        },
    )
