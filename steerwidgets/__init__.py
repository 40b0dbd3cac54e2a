"""steerwidgets: steer a language model in a notebook, and check whether the steering really worked.

The public API lives here; ``import steerwidgets as sw``.
"""

from . import verdicts  # the module: sw.verdicts.judge, sw.verdicts.VERDICTS
from .charts import compare_chart
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
    score_choices,
)
from .evaluation import (
    BehaviourData,
    CompareResult,
    compare,
    likelihood_shift_table,
    open_ended_loglik,
    prompting_baseline,
)
from .fluency import FluencyVerdict, distinct_n, fluency_verdict, generation_fluency
from .interop import export_gguf, from_steering_vectors, import_gguf, to_steering_vectors
from .interventions import (
    AffineMap,
    Steering,
    SteeringError,
    check_steerings,
    position_mask,
    stack_label,
    steered,
)
from .magics import load_ipython_extension
from .methods import (
    ablation_steerings,
    actadd,
    affine,
    affine_steering,
    caa,
    clamp_steering,
    function_vector,
    icv,
    icv_steerings,
    mean_centring,
    mean_difference,
    pca,
)
from .models import DEFAULT_MODEL, ModelLoadError, SteerableModel, load_model
from .reliability import LayerSweepResult, PreCheck, generalisation, layer_sweep, precheck, prechecks
from .stack import describe_steerings, load_steerings
from .vectors import SteeringVector, VectorError, random_like

# isort: split
from .capabilities import CapabilityResult, builtin_capability, capability_check
from .conditional import (
    ConditionalSteering,
    ConditionVector,
    GridSearchResult,
    builtin_condition,
    condition_similarity,
    condition_vector,
    conditional_generate,
    evaluate_condition,
    grid_search,
)
from .contexts import (
    Context,
    ContextEffect,
    builtin_contexts,
    context_effect_ab,
    context_effect_open_ended,
    context_prompt,
    embed_ab,
    embed_all,
    embed_open_ended,
)

__version__ = "0.1.0"


_WIDGETS = {
    "Playground": "playground",
    "ReliabilityReport": "reliability",
    "LayerSweep": "reliability",
    "CompareWidget": "compare",
}


def __getattr__(name: str):
    """Widgets load lazily, so the engine and the CLI never import the front end."""
    if name in _WIDGETS:
        import importlib

        module = importlib.import_module(f".widgets.{_WIDGETS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'steerwidgets' has no attribute {name!r}")


__all__ = [
    "ABItem",
    "BehaviourData",
    "AffineMap",
    "CompareResult",
    "CompareWidget",
    "ContrastPair",
    "DEFAULT_MODEL",
    "DEFAULT_STRENGTHS",
    "DatasetError",
    "FluencyVerdict",
    "GenerationCancelled",
    "GenerationResult",
    "LayerSweep",
    "LayerSweepResult",
    "ModelLoadError",
    "OpenEndedItem",
    "Playground",
    "PreCheck",
    "PropensityResult",
    "ReliabilityReport",
    "SteerableModel",
    "Steering",
    "SteeringError",
    "SteeringVector",
    "VectorError",
    "ablation_steerings",
    "actadd",
    "affine",
    "affine_steering",
    "builtin_ab",
    "builtin_open_ended",
    "builtin_pairs",
    "caa",
    "check_steerings",
    "clamp_steering",
    "compare",
    "compare_chart",
    "describe_steerings",
    "distinct_n",
    "export_gguf",
    "fluency_verdict",
    "from_steering_vectors",
    "function_vector",
    "generalisation",
    "generate",
    "generation_fluency",
    "icv",
    "icv_steerings",
    "import_gguf",
    "layer_sweep",
    "likelihood_shift_table",
    "list_builtin",
    "load_ab_items",
    "load_ipython_extension",
    "load_model",
    "load_open_ended",
    "load_pairs",
    "load_steerings",
    "mean_centring",
    "mean_difference",
    "open_ended_loglik",
    "pca",
    "position_mask",
    "precheck",
    "prechecks",
    "prompting_baseline",
    "propensity_sweep",
    "verdicts",
    "random_like",
    "score",
    "score_choices",
    "stack_label",
    "steered",
    "to_steering_vectors",
    "CapabilityResult",
    "builtin_capability",
    "capability_check",
    "Context",
    "ContextEffect",
    "builtin_contexts",
    "context_effect_ab",
    "context_effect_open_ended",
    "context_prompt",
    "embed_ab",
    "embed_all",
    "embed_open_ended",
    "ConditionalSteering",
    "ConditionVector",
    "GridSearchResult",
    "builtin_condition",
    "condition_similarity",
    "condition_vector",
    "conditional_generate",
    "evaluate_condition",
    "grid_search",
]
