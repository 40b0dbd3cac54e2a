"""steerwidgets: steer a language model in a notebook, and check whether the steering really worked.

``import steerwidgets as sw`` gives the main job: load a model, build a vector, steer, generate and score,
the four widgets, the reliability checks and the method comparison, the datasets and the errors
(:data:`__all__`). Everything else lives in its module, which ``sw.<module>`` reaches without an import:
``sw.engine`` (``score_choices``, ``GenerationCancelled``, ...), ``sw.methods`` (``icv``, ``affine``, ...),
``sw.interventions``, ``sw.stack``, ``sw.reliability``, ``sw.evaluation``, ``sw.contexts``,
``sw.conditional``, ``sw.capabilities``, ``sw.fluency``, ``sw.interop``, ``sw.verdicts``, ``sw.charts``,
``sw.data``.

Names exported here before 0.2 still resolve for one release, with a ``DeprecationWarning`` that names
their module (``sw.score_choices`` → ``sw.engine.score_choices``).
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Any

from .comparison import CompareResult, compare
from .data import (
    ABItem,
    ContrastPair,
    DatasetError,
    OpenEndedItem,
    builtin_ab,
    builtin_open_ended,
    builtin_pairs,
    load_ab_items,
    load_open_ended,
    load_pairs,
)
from .engine import PropensityResult, generate, propensity_sweep, score
from .interventions import Steering, SteeringError, steered
from .methods import actadd, caa, mean_difference, pca
from .models import DEFAULT_MODEL, ModelLoadError, SteerableModel, load_model
from .reliability import layer_sweep, precheck
from .vectors import SteeringVector, VectorError, random_like

__version__ = "0.1.0"

__all__ = [
    # models
    "DEFAULT_MODEL",
    "SteerableModel",
    "load_model",
    # vectors and how to build them
    "SteeringVector",
    "actadd",
    "caa",
    "mean_difference",
    "pca",
    "random_like",
    # steering, generating, scoring
    "Steering",
    "generate",
    "score",
    "steered",
    # widgets (loaded on first use)
    "CompareWidget",
    "LayerSweep",
    "Playground",
    "ReliabilityReport",
    # does it work?
    "CompareResult",
    "PropensityResult",
    "compare",
    "layer_sweep",
    "precheck",
    "propensity_sweep",
    # data
    "ABItem",
    "ContrastPair",
    "OpenEndedItem",
    "builtin_ab",
    "builtin_open_ended",
    "builtin_pairs",
    "load_ab_items",
    "load_open_ended",
    "load_pairs",
    # errors
    "DatasetError",
    "ModelLoadError",
    "SteeringError",
    "VectorError",
]

_WIDGETS = {
    "Playground": "playground",
    "ReliabilityReport": "reliability",
    "LayerSweep": "reliability",
    "CompareWidget": "compare",
}

# Names this module exported before 0.2, by the module that has them now (``sw.<module>.<name>``).
_MOVED_TO = {
    "capabilities": "CapabilityResult builtin_capability capability_check",
    "charts": "compare_chart",
    "conditional": "ConditionalSteering ConditionVector GridSearchResult builtin_condition "
    "condition_similarity condition_vector conditional_generate evaluate_condition grid_search",
    "contexts": "Context ContextEffect builtin_contexts context_effect_ab context_effect_open_ended "
    "context_prompt embed_ab embed_all embed_open_ended",
    "data": "list_builtin",
    "engine": "DEFAULT_STRENGTHS GenerationCancelled GenerationResult score_choices",
    "evaluation": "BehaviourData likelihood_shift_table open_ended_loglik prompting_baseline",
    "fluency": "FluencyVerdict distinct_n fluency_verdict generation_fluency",
    "interop": "export_gguf from_steering_vectors import_gguf to_steering_vectors",
    "interventions": "AffineMap check_steerings position_mask stack_label",
    "methods": "ablation_steerings affine affine_steering clamp_steering function_vector icv icv_steerings "
    "mean_centring",
    "reliability": "LayerSweepResult PreCheck generalisation prechecks",
    "stack": "describe_steerings load_steerings",
}
_MOVED = {name: module for module, names in _MOVED_TO.items() for name in names.split()}
_SUBMODULES = frozenset(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def __getattr__(name: str):
    """Widgets and submodules load on first use (the engine and the CLI never import the front end); a
    name that moved resolves from its module with a DeprecationWarning."""
    if name in _WIDGETS:
        module = importlib.import_module(f".widgets.{_WIDGETS[name]}", __name__)
        return getattr(module, name)
    if name in _MOVED:
        where = _MOVED[name]
        warnings.warn(
            f"sw.{name} moved: use sw.{where}.{name} (sw.{name} goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(f".{where}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'steerwidgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext steerwidgets``: the magics. IPython is imported only here, so ``import steerwidgets`` works
    where IPython is not installed (a bare GPU machine running benchmarks/gpu_check.py)."""
    from .magics import load_ipython_extension as load

    load(ipython)
