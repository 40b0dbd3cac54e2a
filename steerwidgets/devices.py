"""Which device and dtype a model goes to: what is available, what the user asked for, checked before loading.

Kept apart from :mod:`.models` so the rule ("CUDA when available, bfloat16 there, float32 on the CPU") is one
place to read and to test without loading anything.
"""

from __future__ import annotations

from typing import Any

import torch


def default_device() -> torch.device:
    """CUDA (its current device) when available, else Apple's MPS when available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def gpu_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the accelerator supports it (the dtype 1–9B checkpoints are trained in), else
    float16; float32 on the CPU (bfloat16 matmuls are slow there)."""
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine; raise with the fix before any loading."""
    from .models import ModelLoadError  # (models imports this module)

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"cannot read device={device!r}; use 'cpu', 'cuda', 'cuda:1' or 'mps' "
            f"({' '.join(str(exc).split())[:100]})"
        ) from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device={device!r} asks for CUDA but torch sees no CUDA device here "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use device='cpu', or "
                "install a CUDA build of torch on a machine with an NVIDIA GPU"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ModelLoadError(
                f"device={device!r} but this machine has {count} CUDA device(s): use cuda:0..cuda:{count - 1}"
            )
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError(f"device={device!r} but MPS is not available here; use device='cpu'")
    elif parsed.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return parsed
