"""The Playground's pipeline without traitlets, threads or a browser: the order of its updates, what
they hold, its bounded caches, cancel, and the contract with the widget (update fields are traits)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading

import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import playground as P
from steerwidgets import playground_lines
from steerwidgets.capabilities import CAPABILITY_SETS
from steerwidgets.conditional import ConditionVector
from steerwidgets.widgets.playground import Playground

ITEMS = tuple(
    sw.ABItem(f"Q{i}: shall we go?\n\nChoices:\n(A) Yes, gladly!\n(B) No, never.", *("AB" if i % 2 else "BA"))
    for i in range(3)
)


@pytest.fixture
def pipe(tiny_llama):
    return P.Pipeline(tiny_llama, {"rnd": random_vector(tiny_llama, seed=1)})


def _request(**kwargs) -> P.Request:
    base = dict(prompt="Hi there.", vector_name="rnd", layer=1, strength=2.0, max_new_tokens=4)
    return P.Request(**{**base, **kwargs})


def test_updates_arrive_in_the_order_a_user_sees_them(pipe, tiny_llama):
    updates = pipe.collect(_request(targets=(" yes", " no"), ab_items=ITEMS))
    kinds = [type(u).__name__ for u in updates]
    # the steered text streams first, then the unsteered one; the A/B check comes last
    first_base = next(i for i, u in enumerate(updates) if isinstance(u, P.Text) and u.run == "base")
    last_steered = max(i for i, u in enumerate(updates) if isinstance(u, P.Text) and u.run == "steered")
    assert kinds[0] == "Prepared" and kinds[1] == "FirstToken" and last_steered < first_base
    tail = [k for k in kinds[first_base:] if k != "Text"]
    # the A/B check's letter verdict is shown while the answer-text protocol still runs
    ab_steps = ["Status", "ABVerdict", "Status", "ABVerdict", "Done"]
    assert tail == ["Status", "Scored", "Chart", "Warnings", *ab_steps]
    early = next(u for u in updates if isinstance(u, P.ABVerdict))
    assert {line["protocol"] for line in early.lines if "verdict" in line} == {"letter"}
    steering = sw.Steering(pipe.vectors["rnd"], 1, 2.0)
    direct = sw.generate(tiny_llama, "Hi there.", steering, max_new_tokens=4)
    finals = {u.run: u.text for u in updates if isinstance(u, P.Text) and u.final}
    assert finals == {"steered": direct.steered.text, "base": direct.base.text}
    scored = next(u for u in updates if isinstance(u, P.Scored))
    assert scored.norm_ratio is not None and len(scored.topk) == P.TOP_K
    assert "sw.Steering(vector, layer=1, strength=2.0" in scored.code
    ab = [u for u in updates if isinstance(u, P.ABVerdict)][-1]
    assert {line["protocol"] for line in ab.lines if "verdict" in line} == {"letter", "answer_text"}
    done = updates[-1]
    assert done.warnings == ab.warnings
    assert {"first_token_ms", "ab_letter_ms", "ab_ms", "total_ms"} <= set(done.timings)


def test_caches_are_reused_and_bounded(pipe):
    first = pipe.collect(_request(targets=(" yes", " no")))
    again = pipe.collect(_request(strength=-2.0, targets=(" yes", " no")))
    assert first[-1].timings["base_cached"] is False and again[-1].timings["base_cached"] is True
    base_text = next(u.text for u in first if isinstance(u, P.Text) and u.final and u.run == "base")
    assert again[0].base_text == base_text
    assert not [u for u in again if isinstance(u, P.Text) and u.run == "base"]  # not generated again
    for i in range(pipe.tokens.size + 3):
        pipe.collect(_request(prompt=f"Prompt number {i}.", max_new_tokens=1))
    assert len(pipe.tokens) == pipe.tokens.size and len(pipe.base) == pipe.base.size


def test_cancel_and_a_raising_emit_stop_the_run_and_leave_the_model_unsteered(pipe, tiny_llama):
    cancel = threading.Event()
    seen = []

    def emit(update):
        seen.append(update)
        if isinstance(update, P.FirstToken):
            cancel.set()

    with pytest.raises(sw.engine.GenerationCancelled):
        pipe.run(_request(), emit, cancel)
    assert not [u for u in seen if isinstance(u, P.Scored)]

    class Newer(Exception):
        pass

    def stale(update):
        if isinstance(update, P.Text):
            raise Newer

    with pytest.raises(Newer):
        pipe.run(_request(strength=3.0), stale)
    ids = torch.tensor([sw.engine.tokenize_prompt(tiny_llama, "Hi there.")[0]])
    plain = tiny_llama.hf.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :]
    assert sw.generate(tiny_llama, "Hi there.", max_new_tokens=4).base.token_ids[0] == plain.tolist()


def test_bad_requests_fail_before_any_model_work(pipe, monkeypatch):
    monkeypatch.setattr(P, "generate", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(sw.SteeringError, match="max new tokens"):
        pipe.collect(_request(max_new_tokens=0))
    with pytest.raises(sw.VectorError, match="unknown vector 'nope'"):
        pipe.collect(_request(vector_name="nope"))
    with pytest.raises(sw.SteeringError, match="unknown position spec"):
        pipe.collect(_request(positions="the middle"))
    with pytest.raises(ValueError, match="reserved"):
        pipe.add_vector("actadd", pipe.vectors["rnd"])


def test_requests_are_frozen_and_hashable():
    r = _request(ab_items=ITEMS)
    assert hash(r) == hash(_request(ab_items=ITEMS))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.strength = 1.0  # type: ignore[misc]
    assert P.Request(vector_name="actadd").vector_key == ("actadd", "Love", "Hate")


def test_every_update_field_is_a_playground_trait():
    traits = set(Playground.class_trait_names())
    for cls in (P.Status, P.Prepared, P.Scored, P.Chart, P.Warnings, P.Done):
        assert {f.name for f in dataclasses.fields(cls)} <= traits, cls
    assert set(P.Text("base", "x").fields()) == {"base_text"} and P.FirstToken(1.0).fields() == {}
    assert set(P.ABVerdict([], []).fields()) == {"warnings"}
    assert set(P.Request.__dataclass_fields__) - {"targets", "ab_items"} <= traits


def test_lru_keeps_the_newest():
    lru = P.LRU(2)
    lru["a"], lru["b"] = 1, 2
    assert lru.get("a") == 1  # touched: now newest
    lru["c"] = 3
    assert "b" not in lru and lru.get("a") == 1 and lru.get("c") == 3 and len(lru) == 2


# ------------------------------------------------------------------------------------------------
# A small stack: the main vector plus extra rows
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def stack_pipe(tiny_llama):
    vectors = {
        "rnd": random_vector(tiny_llama, seed=1),
        "other": random_vector(tiny_llama, seed=2, scale=4.0),
    }
    return P.Pipeline(tiny_llama, vectors)


def test_a_two_row_stack_steers_with_both_and_reports_each_norm_ratio(stack_pipe, tiny_llama):
    row = P.StackRow("other", 3, 3.0, "prompt")
    updates = stack_pipe.collect(_request(stack=(row,), targets=(" yes", " no"), ab_items=ITEMS))
    main = sw.Steering(stack_pipe.vectors["rnd"], 1, 2.0)
    extra = sw.Steering(stack_pipe.vectors["other"], 3, 3.0, "prompt")
    direct = sw.generate(tiny_llama, "Hi there.", [main, extra], max_new_tokens=4)
    alone = sw.generate(tiny_llama, "Hi there.", main, max_new_tokens=4)
    assert direct.steered.token_ids != alone.steered.token_ids  # the extra row matters here
    finals = {u.run: u.text for u in updates if isinstance(u, P.Text) and u.final}
    assert finals == {"steered": direct.steered.text, "base": direct.base.text}
    scored = next(u for u in updates if isinstance(u, P.Scored))
    assert scored.norm_ratios == pytest.approx(direct.steered.norm_ratios) and len(scored.norm_ratios) == 2
    assert scored.norm_ratio == pytest.approx(direct.steered.norm_ratios[0])
    assert "".join(t["text"] for t in scored.steered_tokens) == direct.steered.text.rstrip()
    # the A/B check is the main vector's with the extra row held on as background
    ab = [u for u in updates if isinstance(u, P.ABVerdict)][-1]
    assert "background (other@3)" in ab.lines[0]["message"]
    assert {line["protocol"] for line in ab.lines if "verdict" in line} == {"letter", "answer_text"}
    verdict = next(w for w in updates[-1].warnings if w.get("protocol") == "target")
    assert "with 1 row of the stack on" in verdict["message"]
    # the chart's cache keys include the row (a different row is scored afresh); the base text is reused
    n_points = len(stack_pipe.points)
    again = stack_pipe.collect(
        _request(stack=(P.StackRow("other", 3, -3.0, "prompt"),), targets=(" yes", " no"))
    )
    assert again[-1].timings["base_cached"] is True and len(stack_pipe.points) > n_points


def test_the_ab_check_says_why_it_skips_a_relative_row(stack_pipe):
    updates = stack_pipe.collect(
        _request(stack=(P.StackRow("other", 2, 0.2, relative=True),), ab_items=ITEMS)
    )
    ab = next(u for u in updates if isinstance(u, P.ABVerdict))
    assert len(ab.lines) == 1 and "A/B check skipped: stack row 1" in ab.lines[0]["message"]
    assert "relative" in ab.lines[0]["message"]
    assert len(next(u for u in updates if isinstance(u, P.Scored)).norm_ratios) == 2


def test_bad_stack_rows_fail_before_any_model_work(stack_pipe, monkeypatch):
    monkeypatch.setattr(P, "generate", lambda *a, **k: pytest.fail("the model ran"))
    monkeypatch.setattr(P, "builtin_vector", lambda *a, **k: pytest.fail("a vector was built"))
    ok = P.StackRow("other", 2, 1.0)
    with pytest.raises(ValueError, match=r"stack row 2 \(stack\[1\], other@99\): layer 99 is out of range"):
        stack_pipe.collect(_request(stack=(ok, P.StackRow("other", 99, 1.0))))
    with pytest.raises(sw.VectorError, match=r"stack row 1 \(stack\[0\], nope@1\): unknown vector 'nope'"):
        stack_pipe.collect(_request(stack=(P.StackRow("nope", 1, 1.0),)))
    with pytest.raises(sw.SteeringError, match="stack row 1.*ActAdd cannot be a stack row"):
        stack_pipe.collect(_request(stack=(P.StackRow("actadd", 1, 1.0),)))
    with pytest.raises(sw.SteeringError, match="stack row 1.*unknown position spec"):
        stack_pipe.collect(_request(stack=(P.StackRow("other", 1, 1.0, "middle"),)))
    with pytest.raises(TypeError, match=r"stack row 3 \(stack\[2\]\): strength must be a finite number"):
        P.StackRow.from_dict({"vector_name": "other", "layer": 1, "strength": float("nan")}, 2)
    with pytest.raises(TypeError, match="unknown keys"):
        P.StackRow.from_dict({"vector_name": "other", "layer": 1, "strenght": 1.0})


def test_the_code_for_a_two_row_stack_reproduces_the_text(tiny_llama, monkeypatch):
    pipe = P.Pipeline(tiny_llama)
    request = _request(
        vector_name="sentiment", strength=6.0, stack=(P.StackRow("formality", 2, -5.0, "last"),)
    )
    updates = pipe.collect(request)
    code = next(u for u in updates if isinstance(u, P.Scored)).code
    assert "sw.Steering(vector_2, layer=2, strength=-5.0, positions='last')," in code
    monkeypatch.setattr(sw, "load_model", lambda *a, **k: tiny_llama)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<copied>", "exec"), {})
    steered = next(u.text for u in updates if isinstance(u, P.Text) and u.final and u.run == "steered")
    assert out.getvalue() == steered + "\n"


# --- conditional steering (CAST) and the capability side-effect line ------------------------------
def _condition(model, threshold: float, direction: str = "larger") -> sw.conditional.ConditionalSteering:
    cond = sw.conditional.condition_vector(
        model, ["Legal advice, please.", "Can I sue?"], ["Hi there.", "Nice day."], [1]
    )
    behaviour = sw.Steering(random_vector(model, seed=1), 1, 2.0)
    return sw.conditional.ConditionalSteering(cond, 1, threshold, direction, behaviour)


@pytest.mark.parametrize("met", [True, False])
def test_a_condition_decides_whether_the_prompt_is_steered(tiny_llama, met):
    # threshold below / above every cosine: met / not met whatever the tiny model's numbers are
    pipe = P.Pipeline(
        tiny_llama, {"rnd": random_vector(tiny_llama, seed=1)}, _condition(tiny_llama, -2.0 if met else 2.0)
    )
    updates = pipe.collect(_request())
    first = next(u for u in updates if isinstance(u, P.Warnings))
    line = first.warnings[0]
    assert line["condition_met"] is met and line["message"].startswith("Conditional steering (CAST)")
    assert ("condition met (similarity" if met else "condition not met (similarity") in line["message"]
    assert updates.index(first) < min(i for i, u in enumerate(updates) if isinstance(u, P.Text))
    finals = {u.run: u.text for u in updates if isinstance(u, P.Text) and u.final}
    direct = sw.generate(tiny_llama, "Hi there.", sw.Steering(pipe.vectors["rnd"], 1, 2.0), max_new_tokens=4)
    assert finals["base"] == direct.base.text
    assert finals["steered"] == (direct.steered.text if met else direct.base.text)
    assert line in updates[-1].warnings  # the line stays with the final warnings


def test_a_bad_condition_is_refused_before_any_work(tiny_llama):
    with pytest.raises(TypeError, match="ConditionalSteering"):
        P.Pipeline(tiny_llama, condition="legal")
    other = ConditionVector({1: torch.ones(8)}, {1: torch.zeros(8)}, "mean_difference", 1, 1)
    behaviour = sw.Steering(random_vector(tiny_llama, seed=1), 1, 2.0)
    with pytest.raises(sw.SteeringError, match="d_model"):
        gated = sw.conditional.ConditionalSteering(other, 1, 0.0, "larger", behaviour)
        P.Pipeline(tiny_llama, condition=gated)


def test_the_capability_line_compares_unsteered_and_steered_accuracy(pipe, monkeypatch):
    calls = []
    real = playground_lines.capability_check
    monkeypatch.setattr(
        playground_lines, "capability_check", lambda *a, **k: calls.append(k.get("baseline")) or real(*a, **k)
    )
    first = pipe.collect(_request(capability=2))
    line = next(w for w in first[-1].warnings if "capability" in w)
    summary = line["capability"]
    assert line["message"].startswith("capability: ") and "first 2 items per set" in line["message"]
    assert [s["n"] for s in summary["sets"]] == [2] * len(CAPABILITY_SETS)
    assert all(s["accuracy_steered"] is not None for s in summary["sets"])
    assert line["level"] == ("warning" if "costs capability" in summary["verdict"] else "notice")
    # a strength change reuses the unsteered accuracy: one new (steered) check, with the cached baseline
    pipe.collect(_request(capability=2, strength=3.0))
    assert len(calls) == 3 and calls[0] is None and calls[1] is calls[2] is not None
    with pytest.raises(sw.SteeringError, match="capability=10"):
        pipe.collect(_request(capability=-1))
