"""The Playground widget on the real default model: traits, caching, stale results, errors,
snapshot, warnings and copy-as-code. Generations are kept short (max_new_tokens ≤ 8)."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import numpy as np
import pytest

import steerwidgets as sw
from steerwidgets import charts, playground_ab
from steerwidgets import playground as pipeline
from steerwidgets.widgets import playground as pg
from steerwidgets.widgets.playground import Playground

pytestmark = pytest.mark.model

LAYER = 10
PROMPT = "Tell me about your day."
TARGETS = (" I love it", " I hate it")


@pytest.fixture(scope="module")
def sentiment(smol) -> sw.SteeringVector:
    return pg.builtin_vector(smol, "sentiment")


@pytest.fixture
def make(smol):
    """Build playgrounds (short generations) and close them (their threads) after the test."""
    made: list[Playground] = []

    def _make(**kwargs) -> Playground:
        kwargs.setdefault("max_new_tokens", 6)
        kwargs.setdefault("layer", LAYER)
        w = Playground(smol, **kwargs)
        made.append(w)
        return w

    yield _make
    for w in made:
        w.close()


def _done(w: Playground, timeout: float = 600.0) -> Playground:
    assert w.wait(timeout), "the playground did not finish in time"
    return w


def _direct(smol, vector, strength, *, prompt=PROMPT, positions="all", n=6, seed=0, layer=LAYER):
    steering = sw.Steering(vector, layer, strength, positions)
    return sw.generate(smol, prompt, steering, max_new_tokens=n, seed=seed, baseline=False).steered.text


class CountingGenerate:
    """Wraps sw.generate and counts unsteered (baseline) and steered calls."""

    def __init__(self, real):
        self.real = real
        self.base = 0
        self.steered = 0

    def __call__(self, *args, **kwargs):
        if kwargs.get("baseline", True):
            self.base += 1
        if (args[2] if len(args) > 2 else kwargs.get("steering")) is not None:
            self.steered += 1
        return self.real(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
def test_first_result_and_traits_round_trip(make, smol, sentiment):
    w = _done(make(prompt=PROMPT, strength=4.0))
    assert w.status == "done" and w.error == ""
    assert w.base_text and w.steered_text
    assert w.steered_text == _direct(smol, sentiment, 4.0)
    assert w.n_layers == smol.n_layers == len(w.vector_norms)
    assert w.vector_norms == pytest.approx([sentiment.norms()[i] for i in range(smol.n_layers)])
    assert w.norm_ratio is not None and w.norm_ratio > 0
    assert {"sentiment", "formality", "actadd"} <= set(w.vector_names)
    # one chip per prompt token; the user's own text is flagged
    ids, user_start = sw.engine.tokenize_prompt(smol, PROMPT)
    assert [c["i"] for c in w.prompt_tokens] == list(range(len(ids)))
    assert "".join(c["text"] for c in w.prompt_tokens if c["user"]) == PROMPT
    assert len(w.steer_mask) == len(ids) and all(w.steer_mask) and w.steer_generated
    assert {"first_token_ms", "total_ms", "charts_ms", "request"} <= set(w.timings)
    assert 0 < w.timings["first_token_ms"] <= w.timings["total_ms"]

    # The state is JSON (what the front end and the saved notebook get) ...
    state = json.loads(json.dumps(w.get_state()))
    for name in ("prompt", "layer", "strength", "positions", "steered_text", "warnings", "timings"):
        assert name in state
    # ... and a change from the front end round-trips into a new result.
    w.set_state({"strength": -3.0, "positions": "last", "max_new_tokens": 5})
    _done(w)
    assert (w.strength, w.positions, w.max_new_tokens) == (-3.0, "last", 5)
    assert w.get_state()["strength"] == -3.0
    assert w.steer_mask == [False] * (len(ids) - 1) + [True] and not w.steer_generated
    assert w.steered_text == _direct(smol, sentiment, -3.0, positions="last", n=5)


def test_token_shifts_and_topk(make, smol):
    w = _done(make(strength=6.0, max_new_tokens=8))
    tokens = w.steered_tokens
    assert tokens and "".join(t["text"] for t in tokens) == w.steered_text
    for t in tokens:
        assert t["shift"] == pytest.approx(t["lp_steered"] - t["lp_base"], abs=2e-3)
    base_lp = sw.score(smol, PROMPT, w.steered_text)[0]
    assert [t["lp_base"] for t in tokens] == pytest.approx(base_lp.tolist(), abs=2e-3)
    assert len(w.topk) == pipeline.TOP_K
    deltas = [r["delta"] for r in w.topk]
    assert deltas == sorted(deltas, reverse=True)
    for r in w.topk:
        assert 0 <= r["p_base"] <= 1 and 0 <= r["p_steered"] <= 1
        assert r["delta"] == pytest.approx(r["p_steered"] - r["p_base"], abs=2e-4)


def test_strength_change_does_not_recompute_the_unsteered_text(make, monkeypatch):
    counter = CountingGenerate(sw.generate)
    monkeypatch.setattr(pipeline, "generate", counter)
    w = _done(make(strength=4.0))
    assert (counter.base, counter.steered) == (1, 1)
    base = w.base_text
    for strength in (1.0, -2.0):
        w.strength = strength
        _done(w)
        assert w.base_text == base and w.timings["base_cached"] is True
    w.set(relative=True, strength=0.3, positions="prompt", layer=12)
    _done(w)
    assert (counter.base, counter.steered) == (1, 4)
    # the unsteered text depends on prompt, max_new_tokens and seed only
    w.max_new_tokens = 4
    _done(w)
    assert counter.base == 2
    w.seed = 3
    _done(w)
    assert counter.base == 3 and w.error == ""


def test_stale_results_are_dropped(make, smol, sentiment, monkeypatch):
    w = _done(make(strength=4.0))
    real = sw.generate
    in_flight = threading.Event()

    def slow_generate(model, prompt, steering=None, **kwargs):
        # The strength-1 run ignores cancellation and is slow at its first token, so its
        # results would land after the newer request if they were not dropped.
        main = steering[0] if isinstance(steering, list) and steering else steering  # the stack's first row
        if main is not None and main.strength == 1.0:
            forward = kwargs.pop("on_token")
            kwargs.pop("cancel")

            def on_token(run, step, ids):
                in_flight.set()
                time.sleep(0.4)
                forward(run, step, ids)

            return real(model, prompt, steering, on_token=on_token, **kwargs)
        return real(model, prompt, steering, **kwargs)

    monkeypatch.setattr(pipeline, "generate", slow_generate)
    seen: list[str] = []
    w.observe(lambda change: seen.append(change["new"]), names="steered_text")
    w.strength = 1.0
    assert in_flight.wait(300)
    w.strength = -6.0
    _done(w)
    final = _direct(smol, sentiment, -6.0)
    assert w.steered_text == final
    assert w.timings["request"] == w._request and w._landed[-1] == w._request
    assert w._request - 1 not in w._landed  # the strength-1 request never completed
    assert seen and all(final.startswith(text) for text in seen), seen


def test_quick_changes_only_last_lands(make, smol, sentiment):
    w = _done(make(strength=4.0))
    before = list(w._landed)
    w.strength = 2.0
    w.strength = -5.0
    _done(w)
    assert w._landed[len(before) :] == [w._request]
    assert w.strength == -5.0 and w.steered_text == _direct(smol, sentiment, -5.0)


def test_errors_show_in_the_widget_and_clear_on_the_next_valid_change(make):
    w = _done(make())
    good = w.steered_text
    w.positions = "the middle bit"
    _done(w)
    assert w.status == "error" and "unknown position spec" in w.error and "'-3:'" in w.error
    w.positions = "all"
    _done(w)
    assert w.status == "done" and w.error == "" and w.steered_text == good

    w.layer = 99
    _done(w)
    assert "0..29" in w.error
    w.layer = LAYER
    _done(w)
    assert w.error == ""

    w.positions = "500"
    _done(w)
    assert "outside the sequence" in w.error
    w.set(positions="all", vector_name="no-such-vector")
    _done(w)
    assert "unknown vector" in w.error and "vectors=" in w.error
    w.vector_name = "sentiment"
    w.prompt = "   "
    _done(w)
    assert "prompt is empty" in w.error
    w.prompt = PROMPT
    _done(w)
    assert w.error == "" and w.status == "done"


def test_errors_from_the_constructor_are_shown_not_raised(make):
    w = _done(make(positions=["x"], layer=3))
    assert w.status == "error" and w.error
    w.positions = "last"
    _done(w)
    assert w.error == ""


def test_position_chips_select_explicit_indices(make, smol):
    ids, user_start = sw.engine.tokenize_prompt(smol, PROMPT)
    w = _done(make(positions=[user_start, user_start + 1]))
    assert w.positions == f"{user_start},{user_start + 1}"
    expected = [i in (user_start, user_start + 1) for i in range(len(ids))]
    assert w.steer_mask == expected and not w.steer_generated


def test_snapshot_html_escapes_model_and_user_text(make):
    evil = "<script>alert(1)</script> <img src=x onerror=alert(2)>"
    w = _done(make(prompt=f"Repeat exactly: {evil}", targets=(" <script>x()</script>", " no")))
    w.base_text = evil  # as if the model had written it
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    page = data["text/html"]
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page
    assert "<svg" in page  # the chart, rendered in Python


def test_targets_chart_and_negative_strength_warning(make, sentiment):
    # A vector built with the sides swapped: a negative strength then *raises* the target.
    w = _done(make(vector=-sentiment, strength=-4.0, targets=TARGETS, max_new_tokens=4))
    spec = w.chart_spec
    assert spec and "layer" in json.dumps(spec)
    values = [row for data in _datasets(spec) for row in data]
    series = {row["series"] for row in values if "series" in row}
    assert series == {charts.VECTOR_SERIES, charts.RANDOM_SERIES}
    assert sorted({row["strength"] for row in values if "series" in row}) == [-8, -4, 0, 4, 8]
    against = [x for x in w.warnings if "against the sign" in x["message"]]
    assert against and against[0]["level"] == "warning"
    (check,) = [x for x in w.warnings if x.get("protocol") == "target"]
    assert check["verdict"] == "backfires" and check["level"] == "warning", check["message"]
    assert "positions 'all'" in check["message"] and "random directions" in check["message"]
    # The same vector the right way round: no such warning, and it steers beyond the random directions.
    w.vector_name = "sentiment"
    _done(w)
    assert not [x for x in w.warnings if "against the sign" in x["message"]]
    (check,) = [x for x in w.warnings if x.get("protocol") == "target"]
    assert check["verdict"] == "steers", check["message"]
    assert all(set(x) >= {"level", "message"} for x in w.warnings)


def test_chart_points_take_one_pass_and_are_reused_when_the_strength_moves(
    make, smol, sentiment, monkeypatch
):
    calls = []
    real, real_choices = sw.score, sw.engine.score_choices

    def counting(model, prompts, completions, steering=None, **kwargs):
        calls.append(("text", len(prompts)))
        return real(model, prompts, completions, steering, **kwargs)

    def counting_choices(model, prompts, choice_lists, steering=None, **kwargs):
        assert all(list(c) == list(TARGETS) for c in choice_lists)  # both targets under one prompt
        calls.append(("points", len(prompts)))
        return real_choices(model, prompts, choice_lists, steering, **kwargs)

    monkeypatch.setattr(pipeline, "score", counting)
    monkeypatch.setattr(pipeline, "score_choices", counting_choices)
    w = _done(make(strength=4.0, targets=TARGETS, max_new_tokens=4))
    # the steered text under the base model; then one pass for 9 chart points (4 per series + the shared
    # 0) and the target check's other random directions at the current strength, each point's prompt once
    nulls = pipeline.TARGET_NULL_DIRECTIONS - 1
    assert calls == [("text", 1), ("points", 9 + nulls)]
    values = [
        row for data in _datasets(w.chart_spec) for row in data if row.get("series") == charts.VECTOR_SERIES
    ]
    at = {row["strength"]: row["value"] for row in values}
    for strength in (-8.0, 4.0):
        lp = real(smol, [PROMPT] * 2, list(TARGETS), sw.Steering(sentiment, LAYER, strength))
        assert at[strength] == pytest.approx(float(lp[0].sum() - lp[1].sum()), abs=1e-3)
    calls.clear()
    w.strength = -4.0  # on the grid: only the steered text and the check's random directions are scored
    _done(w)
    assert calls == [("text", 1), ("points", nulls)]
    w.strength = 2.0  # inside the grid's range: two new points (vector, random)
    _done(w)
    assert calls[2:] == [("text", 1), ("points", 2 + nulls)]
    grid = sorted({row["strength"] for data in _datasets(w.chart_spec) for row in data if "series" in row})
    assert grid == [-8, -4, 0, 2, 4, 8]
    w.strength = 40.0  # far outside: the grid is redrawn around the new strength
    _done(w)
    grid = sorted({row["strength"] for data in _datasets(w.chart_spec) for row in data if "series" in row})
    assert grid == [-80, -40, 0, 40, 80]


def _datasets(spec):
    out = [d["values"] for d in spec.get("datasets", {}).values()] if "datasets" in spec else []
    for layer in spec.get("layer", []):
        if "values" in layer.get("data", {}):
            out.append(layer["data"]["values"])
    return out


def test_ab_items_add_verdicts_against_the_null(make, monkeypatch):
    items = sw.builtin_ab("sentiment")[:3]
    calls = []
    real = sw.propensity_sweep

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(playground_ab, "propensity_sweep", spy)
    w = _done(make(strength=2.0, ab_items=items, max_new_tokens=2))
    assert [kwargs["protocol"] for _, kwargs in calls] == ["letter", "answer_text"]
    for args, kwargs in calls:
        assert args[3] == LAYER and list(args[4]) == [-2.0, 0.0, 2.0]
        assert "positions" not in kwargs  # each protocol steers at its own default positions
        assert kwargs["null_directions"] == pipeline.AB_NULL_DIRECTIONS and kwargs["cancel"] is not None
    assert "ab_ms" in w.timings
    lines = [x for x in w.warnings if x.get("verdict")]
    assert {x["protocol"] for x in lines} == {"letter", "answer_text"}
    for line in lines:
        assert line["verdict"] in sw.verdicts.VERDICTS and line["level"] in ("ok", "notice", "warning")
        assert "positions" in line["message"]
    # ActAdd vectors are per position: the check says so instead of failing
    w.vector_name = "actadd"
    _done(w)
    assert w.error == ""
    assert any("A/B check skipped" in x["message"] for x in w.warnings)


def test_a_stack_from_the_constructor_and_add_row_remove_row(make, smol, sentiment):
    formality = pg.builtin_vector(smol, "formality")
    w = _done(make(strength=4.0, stack=[{"vector_name": "formality", "layer": 14, "strength": 6.0}]))
    row = {"vector_name": "formality", "layer": 14, "strength": 6.0, "positions": "all", "relative": False}
    assert w.error == "" and w.stack == [row]
    steerings = [sw.Steering(sentiment, LAYER, 4.0), sw.Steering(formality, 14, 6.0)]
    direct = sw.generate(smol, PROMPT, steerings, max_new_tokens=6, baseline=False).steered
    assert w.steered_text == direct.text and w.steered_text != _direct(smol, sentiment, 4.0)
    assert w.norm_ratios == pytest.approx(direct.norm_ratios) and w.norm_ratio == w.norm_ratios[0]
    assert "steerings = [" in w.code and "layer=14, strength=6.0" in w.code

    w.add_row("sentiment", 20, -3.0, positions=[1, 2])
    _done(w)
    added = {"vector_name": "sentiment", "layer": 20, "strength": -3.0, "positions": "1,2"}
    assert w.stack[1] == {**row, **added}
    assert len(w.norm_ratios) == 3 and w.request().stack[1] == pipeline.StackRow("sentiment", 20, -3.0, "1,2")
    with pytest.raises(ValueError, match=r"stack row 3 \(stack\[2\], formality@99\)"):
        w.add_row("formality", 99)
    with pytest.raises(IndexError, match="the stack has 2 rows"):
        w.remove_row(5)
    # a bad row from the front end shows as the error (naming the row), and clears when fixed
    w.set_state({"stack": [{**row, "layer": "x"}]})
    _done(w)
    assert w.status == "error" and "stack row 1" in w.error and "layer must be an int" in w.error
    w.set_state({"stack": [row]})
    _done(w)
    assert w.error == "" and w.steered_text == direct.text
    w.remove_row(0)
    _done(w)
    assert w.stack == [] and w.steered_text == _direct(smol, sentiment, 4.0) and len(w.norm_ratios) == 1


def test_copy_as_code_reproduces_the_steered_text(make):
    w = _done(make(strength=6.0, positions="prompt", max_new_tokens=8, seed=1))
    code = w.copy_code()
    assert code == w.code
    assert "sw.Steering(vector, layer=10, strength=6.0, positions='prompt')" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<copied>", "exec"), {})  # a fresh namespace, a freshly loaded model
    assert out.getvalue() == w.steered_text + "\n"


def test_a_vector_built_from_a_builtin_set_is_recognised(make, smol, sentiment, monkeypatch):
    w = _done(make(vector=sentiment, strength=3.0, max_new_tokens=2))
    assert w.vector_name == "vector"
    assert "vector = sw.mean_difference(model, sw.builtin_pairs('sentiment'))" in w.copy_code()
    # ... and picking the built-in by name reuses it instead of building it again
    monkeypatch.setattr(pipeline.methods, "mean_difference", lambda *a, **k: pytest.fail("built again"))
    assert pg.builtin_vector(smol, "sentiment") is sentiment
    w.vector_name = "sentiment"
    _done(w)
    assert w.error == ""


def test_copy_as_code_for_actadd_and_custom_vectors(make, smol, monkeypatch, tmp_path):
    w = _done(make(vector="actadd", strength=3.0, max_new_tokens=6))
    code = w.copy_code()
    assert "sw.actadd(model, 'Love', 'Hate', 10)" in code
    monkeypatch.setattr(sw, "load_model", lambda *a, **k: smol)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<copied>", "exec"), {})
    assert out.getvalue() == w.steered_text + "\n"

    vec = sw.random_like(pg.builtin_vector(smol, "sentiment"), seed=3)
    w2 = _done(make(vectors={"my vec": vec}, strength=2.0, max_new_tokens=4))
    assert w2.vector_name == "my vec"
    code2 = w2.copy_code()
    assert "my_vec.safetensors" in code2
    monkeypatch.chdir(tmp_path)
    vec.save("my_vec.safetensors")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code2, "<copied>", "exec"), {})
    assert out.getvalue() == w2.steered_text + "\n"


def test_streaming_is_throttled(make):
    w = make(strength=4.0, max_new_tokens=8)
    _done(w)
    stamps: list[float] = []
    w.observe(lambda change: stamps.append(time.perf_counter()), names="steered_text")
    w.strength = 5.0
    _done(w)
    assert stamps
    gaps = np.diff(stamps[:-1])  # the last update is the finished text, sent at once
    assert (gaps >= pipeline.STREAM_INTERVAL_S * 0.9).all(), gaps


def test_close_stops_the_worker(make):
    w = make()
    w.close()
    assert w.wait(300)
    w.strength = 1.0  # after close: ignored, no error
    assert w.wait(5)


def test_degraded_text_is_flagged(make):
    """At λ = −13 (layer 10, the quickstart's sentiment vector) the steered text collapses into "you are you
    you are you…"; at λ = 4 it is fluent. Only the first gets the fluency warning."""
    broken = _done(make(strength=-13.0, max_new_tokens=32))
    flagged = [w for w in broken.warnings if w.get("fluency")]
    assert len(flagged) == 1 and flagged[0]["level"] == "warning", broken.steered_text
    assert flagged[0]["message"].startswith("Degraded text: ")
    fine = _done(make(strength=4.0, max_new_tokens=32))
    assert not [w for w in fine.warnings if w.get("fluency")], fine.steered_text


def test_a_cast_condition_gates_the_steering_and_says_why(make, smol, sentiment):
    legal = sw.conditional.builtin_condition("legal")
    cond = sw.conditional.condition_vector(smol, legal.positive[:6], legal.negative[:6], [5])
    prompts = [*legal.positive[:6], *legal.negative[:6]]
    best = sw.conditional.grid_search(smol, cond, prompts, [1] * 6 + [0] * 6)
    gated = best.steering(cond, sw.Steering(sentiment, LAYER, 4.0))
    advice, chat = legal.positive[10], legal.negative[10]
    w = _done(make(strength=4.0, prompt=advice, condition=gated))
    decision = gated.decide(smol, [advice, chat])
    assert decision.tolist() == [True, False]  # an easy set (README: held-out F1 1.0): both branches run
    line = w.warnings[0]
    assert line["condition_met"] is bool(decision[0]) and line["message"].startswith(
        "Conditional steering (CAST)"
    )
    want = _direct(smol, sentiment, 4.0, prompt=advice) if decision[0] else w.base_text
    assert w.steered_text == want
    w.prompt = chat
    _done(w)
    assert w.warnings[0]["condition_met"] is bool(decision[1])
    assert (w.steered_text == w.base_text) is not bool(decision[1])
    w.set_condition(None)  # every prompt steered again, no condition line
    _done(w)
    assert w.steered_text == _direct(smol, sentiment, 4.0, prompt=chat)
    assert not any("CAST" in x["message"] for x in w.warnings)
    with pytest.raises(TypeError, match="ConditionalSteering"):
        make(condition=0.3)
