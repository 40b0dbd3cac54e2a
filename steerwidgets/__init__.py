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
from .magics import load_ipython_extension
from .methods import actadd, caa, mean_difference
from .models import DEFAULT_MODEL, ModelLoadError, SteerableModel, load_model
from .reliability import LayerSweepResult, PreCheck, generalisation, layer_sweep, precheck, prechecks
from .vectors import SteeringVector, VectorError, random_like

__version__ = "0.1.0"


def __getattr__(name: str):
    """Widgets load lazily, so the engine and the CLI never import the front end."""
    if name == "Playground":
        from .widgets.playground import Playground

        return Playground
    raise AttributeError(f"module 'steerwidgets' has no attribute {name!r}")

__all__ = [
    "ABItem",
    "ContrastPair",
    "DEFAULT_MODEL",
    "DEFAULT_STRENGTHS",
    "DatasetError",
    "GenerationCancelled",
    "GenerationResult",
    "LayerSweepResult",
    "ModelLoadError",
    "OpenEndedItem",
    "Playground",
    "PreCheck",
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
    "generalisation",
    "generate",
    "layer_sweep",
    "list_builtin",
    "load_ab_items",
    "load_ipython_extension",
    "load_model",
    "load_open_ended",
    "load_pairs",
    "mean_difference",
    "position_mask",
    "precheck",
    "prechecks",
    "propensity_sweep",
    "random_like",
    "score",
    "steered",
]
