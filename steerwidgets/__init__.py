"""steerwidgets: steer a language model in a notebook, and check whether the steering really worked.

The public API lives here; ``import steerwidgets as sw``.
"""

from .data import (
    ABItem,
    ContrastPair,
    DatasetError,
    OpenEndedItem,
    builtin_ab,
    builtin_open_ended,
    builtin_pairs,
    list_builtin,
    load_ab_items,
    load_open_ended,
    load_pairs,
)
from .engine import (
    DEFAULT_STRENGTHS,
    GenerationCancelled,
    GenerationResult,
    PropensityResult,
    generate,
    propensity_sweep,
    score,
)
from .interventions import Steering, SteeringError, position_mask, steered
from .methods import actadd, caa, mean_difference
from .models import DEFAULT_MODEL, ModelLoadError, SteerableModel, load_model
from .vectors import SteeringVector, VectorError, random_like

__version__ = "0.1.0"

__all__ = [
    "ABItem",
    "ContrastPair",
    "DEFAULT_MODEL",
    "DEFAULT_STRENGTHS",
    "DatasetError",
    "GenerationCancelled",
    "GenerationResult",
    "ModelLoadError",
    "OpenEndedItem",
    "PropensityResult",
    "SteerableModel",
    "Steering",
    "SteeringError",
    "SteeringVector",
    "VectorError",
    "actadd",
    "builtin_ab",
    "builtin_open_ended",
    "builtin_pairs",
    "caa",
    "generate",
    "list_builtin",
    "load_ab_items",
    "load_model",
    "load_open_ended",
    "load_pairs",
    "mean_difference",
    "position_mask",
    "propensity_sweep",
    "random_like",
    "score",
    "steered",
]
