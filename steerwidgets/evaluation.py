"""Beyond multiple choice: the names of the evaluation modules in one place (``sw.evaluation.compare``).

Everything follows shared docs/metrics.md. Each concern has its own module; this one re-exports their
names, so ``from steerwidgets.evaluation import compare`` and ``sw.evaluation.residual_norms`` keep working:

- :mod:`steerwidgets.steerers` — a steerer is a function ``strength → list[Steering]`` (vectors, ICV's
  every-layer additions, affine maps, stacks), and the A/B propensities of any steerer;
- :mod:`steerwidgets.likelihood_shift` — Pres et al. (2024): :func:`open_ended_loglik`,
  :func:`likelihood_shift_table` (Δ+ and Δ− on the top-25/50/75 % subsets, per-token mean and sum);
- :mod:`steerwidgets.side_effects` — :func:`perplexity_ratio`, :func:`kl_on_neutral`, :func:`usable_range`
  (perplexity ratio below 10, von Rütte et al. 2024);
- :mod:`steerwidgets.baselines` — :func:`evaluate_steerer` and its controls: random vectors of equal norm,
  the negated steering, a zero vector and a prompting baseline (:func:`with_baselines`, :func:`summary_row`);
- :mod:`steerwidgets.compare_methods`, :mod:`steerwidgets.matching`, :mod:`steerwidgets.compare_checks`,
  :mod:`steerwidgets.comparison` — :func:`compare`: one table over methods × behaviours at a matched
  intervention size (the CompareWidget shows it).

To replace a function for a test, patch it in the module that calls it (e.g.
``steerwidgets.comparison.behaviour_data``), not here.
"""

from __future__ import annotations

from .baselines import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_SEEDS,
    EFFECT_NAME,
    EvalContext,
    ab_verdicts,
    evaluate_steerer,
    negated,
    prompting_baseline,
    random_steerer,
    summary_row,
    with_baselines,
    zero_steerer,
)
from .compare_checks import CONTEXT_MEASURE, FLUENCY_QUERIES, FLUENCY_TOKENS, FluencyCheck
from .compare_methods import (
    METHODS,
    BehaviourData,
    Built,
    MethodBuilder,
    behaviour_data,
    generic_corpus,
    method_builder,
    method_names,
    registered_builder,
)
from .comparison import CompareResult, ProgressFn, compare
from .engine.generation import GenerationCancelled
from .likelihood_shift import QUANTILES, OpenEndedScores, likelihood_shift_table, open_ended_loglik
from .matching import MATCH_MODES, kl_matched_scale, residual_norms, steering_norm_ratio
from .side_effects import (
    USABLE_PPL_RATIO,
    kl_on_neutral,
    neutral_ids,
    passage_logprobs,
    perplexity_ratio,
    usable_range,
)
from .steerers import (
    SteerFn,
    ab_propensities,
    affine_steerer,
    propensity_matrix,
    scaled,
    stack_steerer,
    sweepable,
    vector_steerer,
)

__all__ = [
    "CONTEXT_MEASURE",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_SEEDS",
    "EFFECT_NAME",
    "FLUENCY_QUERIES",
    "FLUENCY_TOKENS",
    "MATCH_MODES",
    "METHODS",
    "QUANTILES",
    "USABLE_PPL_RATIO",
    "BehaviourData",
    "Built",
    "CompareResult",
    "EvalContext",
    "FluencyCheck",
    "GenerationCancelled",
    "MethodBuilder",
    "OpenEndedScores",
    "ProgressFn",
    "SteerFn",
    "ab_propensities",
    "ab_verdicts",
    "affine_steerer",
    "behaviour_data",
    "compare",
    "evaluate_steerer",
    "generic_corpus",
    "kl_matched_scale",
    "kl_on_neutral",
    "likelihood_shift_table",
    "method_builder",
    "method_names",
    "negated",
    "neutral_ids",
    "open_ended_loglik",
    "passage_logprobs",
    "perplexity_ratio",
    "prompting_baseline",
    "propensity_matrix",
    "random_steerer",
    "registered_builder",
    "residual_norms",
    "scaled",
    "stack_steerer",
    "steering_norm_ratio",
    "summary_row",
    "sweepable",
    "usable_range",
    "vector_steerer",
    "with_baselines",
    "zero_steerer",
]
