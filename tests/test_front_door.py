"""`import steerwidgets as sw`: a small front door; every name it exported before still resolves for one
release, with a DeprecationWarning that names its new place."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import steerwidgets as sw

# What `sw.__all__` listed before the front door was made small (steerwidgets 0.1).
OLD_ALL = """
ABItem BehaviourData AffineMap CompareResult CompareWidget ContrastPair DEFAULT_MODEL
DEFAULT_STRENGTHS DatasetError FluencyVerdict GenerationCancelled GenerationResult LayerSweep
LayerSweepResult ModelLoadError OpenEndedItem Playground PreCheck PropensityResult ReliabilityReport
SteerableModel Steering SteeringError SteeringVector VectorError ablation_steerings actadd affine
affine_steering builtin_ab builtin_open_ended builtin_pairs caa check_steerings clamp_steering
compare compare_chart describe_steerings distinct_n export_gguf fluency_verdict
from_steering_vectors function_vector generalisation generate generation_fluency icv icv_steerings
import_gguf layer_sweep likelihood_shift_table list_builtin load_ab_items load_ipython_extension
load_model load_open_ended load_pairs load_steerings mean_centring mean_difference open_ended_loglik
pca position_mask precheck prechecks prompting_baseline propensity_sweep verdicts random_like score
score_choices stack_label steered to_steering_vectors CapabilityResult builtin_capability
capability_check Context ContextEffect builtin_contexts context_effect_ab context_effect_open_ended
context_prompt embed_ab embed_all embed_open_ended ConditionalSteering ConditionVector
GridSearchResult builtin_condition condition_similarity condition_vector conditional_generate
evaluate_condition grid_search
""".split()

# Old names that stay plain attributes, without a warning: a submodule, and IPython's extension hook.
KEPT = {
    "verdicts": "the submodule sw.verdicts",
    "load_ipython_extension": "`%load_ext steerwidgets` looks it up on the package",
}

# Where each moved name lives now (the warning must say so).
NEW_PLACE = {
    name: module
    for module, names in {
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
        "methods": "ablation_steerings affine affine_steering clamp_steering function_vector icv "
        "icv_steerings mean_centring",
        "reliability": "LayerSweepResult PreCheck generalisation prechecks",
        "stack": "describe_steerings load_steerings",
    }.items()
    for name in names.split()
}


def test_the_front_door_is_small_and_every_name_in_it_resolves_without_a_warning():
    assert len(sw.__all__) <= 40, len(sw.__all__)
    assert len(set(sw.__all__)) == len(sw.__all__)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in sw.__all__:
            assert getattr(sw, name) is not None, name
        assert sw.load_ipython_extension is not None and sw.verdicts.VERDICTS
    assert set(sw.__all__) <= set(OLD_ALL)  # nothing new slipped in by the back door


def test_the_main_job_is_at_the_front_door():
    main = """load_model SteerableModel DEFAULT_MODEL SteeringVector caa mean_difference pca actadd
    random_like Steering steered generate score Playground ReliabilityReport LayerSweep CompareWidget
    propensity_sweep PropensityResult layer_sweep precheck compare CompareResult ABItem ContrastPair
    OpenEndedItem builtin_ab builtin_pairs builtin_open_ended load_ab_items load_pairs load_open_ended
    SteeringError ModelLoadError VectorError DatasetError""".split()
    assert set(main) <= set(sw.__all__)


@pytest.mark.parametrize("name", [n for n in OLD_ALL if n not in sw.__all__ and n not in KEPT])
def test_an_old_name_resolves_with_a_warning_naming_its_new_place(name):
    where = NEW_PLACE[name]
    with pytest.warns(DeprecationWarning) as caught:
        value = getattr(sw, name)
    message = str(caught[0].message)
    assert message.startswith(f"sw.{name} moved: use sw.{where}.{name}"), message
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert value is getattr(importlib.import_module(f"steerwidgets.{where}"), name)
    assert value is getattr(getattr(sw, where), name)  # the new place works as written in the warning


def test_every_old_name_is_covered():
    moved = [n for n in OLD_ALL if n not in sw.__all__ and n not in KEPT]
    assert sorted(moved) == sorted(NEW_PLACE)
    assert len(OLD_ALL) == 95


def test_submodules_stay_reachable_and_unknown_names_still_fail():
    for name in ("contexts", "conditional", "capabilities", "interop", "engine", "methods", "evaluation",
                 "comparison", "reliability_lab", "playground", "verdicts", "stack", "fluency"):  # fmt: skip
        module = getattr(sw, name)
        assert module is importlib.import_module(f"steerwidgets.{name}")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sw.nope  # noqa: B018
    assert "contexts" in dir(sw) and "Playground" in dir(sw)


def test_star_import_gives_the_front_door_without_warnings():
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from steerwidgets import *\n"
        "import steerwidgets as sw\n"
        "assert all(name in globals() for name in sw.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=sw.__path__[0] + "/..", timeout=300)
