"""Steering inside an nnsight trace: resolve steerings into per-row masks (:func:`_plans`), edit block
outputs during a forward step (:func:`_steer_in_trace`), and the small helpers every engine module shares.

Private to the engine: :mod:`~steerwidgets.engine.generation`, :mod:`~steerwidgets.engine.scoring`,
:mod:`~steerwidgets.engine.activations`, :mod:`~steerwidgets.engine.sweep` and
:mod:`~steerwidgets.engine.letter_batch` build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..interventions import Steering, apply_operator, check_selects, position_mask


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _set_hidden(envoy: Any, out: Any, hidden: torch.Tensor) -> None:
    envoy.output = (hidden, *out[1:]) if isinstance(out, tuple) else hidden


@dataclass
class _Plan:
    """One steering resolved for a batch: masks over [rows, total positions] and per-row scales."""

    steering: Steering
    vec: torch.Tensor
    masks: torch.Tensor  # bool [B, total]
    front: torch.Tensor | None = None  # for per-position vectors: [B, total, d] additions
    scale: torch.Tensor | None = None  # [B, 1, 1] ([B, total, 1] with segments), filled at the first step
    mean_norm: torch.Tensor | None = None  # [B]
    # Packed rows (several sequences sharing a prompt in one row): float [B, S, total] weights of the
    # positions each sequence's mean‖h‖ is taken over, and long [B, total] the sequence of each position,
    # so a relative strength is scaled per sequence exactly as if it had its own row.
    segments: torch.Tensor | None = None
    segment_of: torch.Tensor | None = None
    # Device copies of the CPU-built tensors above, made once per (name, device) at the first forward step
    # that meets them (per layer under device_map="auto"); generation reuses them at every token.
    placed: dict = field(default_factory=dict, repr=False)

    def on(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Tensor ``name`` (masks, front, vec, segments, segment_of) on ``like``'s device, kept dtype."""
        key = (name, like.device)
        value = self.placed.get(key)
        if value is None:
            value = getattr(self, name)
            value = value.to(like.device)
            self.placed[key] = value
        return value


@dataclass
class _Row:
    """Where one sequence sits in a batch: it starts at ``offset`` (after left padding), its prompt has
    ``prompt_len`` tokens, ``length`` positions in all (prompt + completion or generated) and the user's
    text starts at ``user_start`` (relative to the sequence)."""

    offset: int
    prompt_len: int
    length: int
    user_start: int


def _plans(
    model: Any, steerings: list[tuple[Steering, set[int] | None]], rows: list[_Row], width: int
) -> list[_Plan]:
    """Resolve steerings for a batch; a steering with a row set applies to those rows only."""
    plans = []
    for item, only in sorted(steerings, key=lambda pair: pair[0].layer):
        item.validate(model)
        vec = item.direction()
        front_len = vec.shape[0] if vec.ndim == 2 else 0
        spec = "front" if vec.ndim == 2 else item.positions
        masks = torch.zeros((len(rows), width), dtype=torch.bool)
        front = torch.zeros((len(rows), width, vec.shape[-1])) if vec.ndim == 2 else None
        for r, row in enumerate(rows):
            if only is not None and r not in only:
                continue
            own = position_mask(spec, row.prompt_len, row.length, row.user_start, front_len)
            masks[r, row.offset : row.offset + row.length] = own
            if front is not None:
                at = row.offset + row.user_start
                front[r, at : at + front_len] = vec
        check_selects(spec, masks)
        plans.append(_Plan(item, vec, masks, front))
    return plans


def _mean_norm(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Mean residual norm per row over real tokens, skipping each row's first token (attention sink)."""
    norms = hidden.float().norm(dim=-1)
    keep = attention.to(hidden.device).bool().clone()
    first = keep.float().argmax(dim=1)
    keep[torch.arange(keep.shape[0], device=keep.device), first] = False
    keep_f = keep.float()
    return (norms * keep_f).sum(1) / keep_f.sum(1).clamp_min(1.0)


def _segment_scale(plan: _Plan, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position scales ``[B, total, 1]`` of a relative plan over packed rows: each position gets its
    own sequence's mean‖h‖ (over that sequence's positions in ``plan.segments``); and the rows' means."""
    norms = hidden.float().norm(dim=-1)  # [B, total]
    weights = plan.on("segments", hidden)
    seg_mean = (weights * norms[:, None, :]).sum(-1) / weights.sum(-1).clamp_min(1.0)  # [B, S]
    per_position = seg_mean.gather(1, plan.on("segment_of", hidden))  # [B, total]
    vnorm = float(plan.vec.norm(dim=-1).mean().clamp_min(1e-12))
    scale = (plan.steering.strength * per_position / vnorm)[..., None]
    return scale, seg_mean.mean(1)


def _steer_in_trace(model: Any, plans: list[_Plan], start: int, attention: torch.Tensor) -> None:
    """Edit block outputs for one forward step covering positions ``start .. start+width``.

    Each steered block's output is read and written once; several plans at one layer (e.g. one per row)
    edit it in turn, and relative strengths are measured on the unedited output.
    """
    by_layer: dict[int, list[_Plan]] = {}
    for plan in plans:
        by_layer.setdefault(plan.steering.layer, []).append(plan)
    for layer in sorted(by_layer):
        envoy = model.block(layer)
        out = envoy.output
        original = hidden = _hidden(out)
        width = hidden.shape[1]
        changed = False
        for plan in by_layer[layer]:
            if plan.mean_norm is None and plan.segments is not None:
                plan.scale, plan.mean_norm = _segment_scale(plan, original)
            if plan.mean_norm is None:
                plan.mean_norm = _mean_norm(original, attention[:, start : start + width])
                vnorm = float(plan.vec.norm(dim=-1).mean().clamp_min(1e-12))
                factor = plan.mean_norm / vnorm if plan.steering.relative else torch.ones_like(plan.mean_norm)
                plan.scale = (plan.steering.strength * factor).reshape(-1, 1, 1)
            if not bool(plan.masks[:, start : start + width].any()):  # checked on the CPU copy: no sync
                continue
            mask = plan.on("masks", hidden)[:, start : start + width]
            if plan.front is not None:
                front = plan.on("front", hidden)[:, start : start + width]
                edited = (hidden.float() + plan.scale * front).to(hidden.dtype)
            else:
                affine = plan.steering.operator == "affine"
                operand = plan.steering.operand() if affine else plan.on("vec", hidden)
                edited = apply_operator(hidden, operand, plan.scale, plan.steering.operator)
            hidden = torch.where(mask[..., None], edited, hidden)
            changed = True
        if changed:
            _set_hidden(envoy, out, hidden)


def _norm_ratio(plan: _Plan) -> float:
    """‖λv‖ / mean‖h‖ at the steered layer, averaged over rows."""
    if plan.mean_norm is None or plan.scale is None:
        return float("nan")
    vnorm = plan.vec.norm(dim=-1).mean()
    scale, mean_norm = plan.scale.detach().float().cpu(), plan.mean_norm.detach().float().cpu()
    ratio = scale.reshape(-1).abs() * vnorm / mean_norm.clamp_min(1e-12)
    return float(ratio.mean())


def _scale_factor(
    own: torch.Tensor, prefix: tuple[float, int] | None, skip_first: int, vnorm: float, relative: bool
) -> tuple[float, float]:
    """Mean residual norm over the prefix and this unedited row, and what multiplies λ (mean‖h‖/‖v‖ when
    strengths are relative, else 1)."""
    total, count = prefix if prefix is not None else (0.0, 0)
    body = own[0, skip_first:].detach().float()
    mean_norm = (total + float(body.norm(dim=-1).sum())) / max(1, count + body.shape[0])
    return mean_norm, (mean_norm / max(vnorm, 1e-12) if relative else 1.0)


def _cache_from(prefix: list, rows: int, split: int) -> Any:
    """A fresh DynamicCache from saved (keys, values): batch 1 up to layer ``split``, ``rows`` after."""
    from transformers import DynamicCache

    data = []
    for i, (k, v) in enumerate(prefix):
        if i > split:
            k, v = k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous()
        data.append((k, v))
    return DynamicCache(ddp_cache_data=data)
