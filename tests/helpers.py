"""Small helpers shared by tests."""

from __future__ import annotations

import torch

import steerwidgets as sw


def random_vector(model: sw.SteerableModel, seed: int = 0, scale: float = 3.0) -> sw.SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return sw.SteeringVector(
        {layer: scale * torch.randn(model.d_model, generator=gen) for layer in range(model.n_layers)},
        model_id=model.name,
        method="random-test",
    )
