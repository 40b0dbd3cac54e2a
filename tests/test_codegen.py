"""Copy-as-code: the rendered script for one steering and for a stack, run against the engine."""

from __future__ import annotations

import contextlib
import io

import pytest

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.codegen import CodeRow, render_code

PROMPT = "Tell me about your day."


def test_one_row_gives_the_playgrounds_script():
    code = render_code(
        "some/model",
        PROMPT,
        [CodeRow("sentiment", 10, 6.0, "prompt")],
        max_new_tokens=8,
        seed=1,
    )
    assert code.startswith("import steerwidgets as sw\n\nmodel = sw.load_model(")
    assert "vector = sw.mean_difference(model, sw.builtin_pairs('sentiment'))\n" in code
    assert "steering = sw.Steering(vector, layer=10, strength=6.0, positions='prompt')\n" in code
    assert code.endswith(
        f"PROMPT = {PROMPT!r}\nresult = sw.generate(model, PROMPT, steering, max_new_tokens=8, seed=1)\n"
        "print(result.steered.text)\n"
    )
    assert "sw.load_model()" in render_code(sw.DEFAULT_MODEL, PROMPT, [CodeRow("sentiment", 1, 1.0)])
    actadd = render_code("", PROMPT, [CodeRow("actadd", 10, 3.0, source="actadd", actadd=("Love", "Hate"))])
    assert "vector = sw.actadd(model, 'Love', 'Hate', 10)" in actadd
    mine = render_code("", PROMPT, [CodeRow("my vec", 3, 2.0, relative=True, source="file")])
    assert "vector = sw.SteeringVector.load('my_vec.safetensors', model)" in mine
    assert "relative=True)" in mine
    with pytest.raises(ValueError, match="source"):
        CodeRow("x", 1, 1.0, source="somewhere")


def test_a_stack_renders_one_steering_per_row_and_builds_each_vector_once():
    rows = [
        CodeRow("sentiment", 2, 4.0),
        CodeRow("formality", 3, -2.0, "all", True),
        CodeRow("sentiment", 3, 1.0, "last"),
        CodeRow("my_vec", 1, 0.5, source="variable"),
    ]
    code = render_code("tiny", PROMPT, rows, max_new_tokens=5, seed=2, do_sample=True, temperature=0.7)
    assert (
        code.count("sw.builtin_pairs('sentiment')") == 1 and code.count("sw.builtin_pairs('formality')") == 1
    )
    assert "sw.Steering(vector_1, layer=3, strength=1.0, positions='last')," in code
    assert "sw.Steering(vector_2, layer=3, strength=-2.0, positions='all', relative=True)," in code
    assert "sw.Steering(my_vec, layer=1, strength=0.5, positions='all')," in code
    assert "my_vec =" not in code
    assert (
        "sw.generate(model, PROMPT, steerings, max_new_tokens=5, seed=2, do_sample=True, temperature=0.7"
        in code
    )
    assert "print(result.base.text)" in render_code("tiny", PROMPT, [])


def test_the_code_for_a_two_vector_stack_runs_and_gives_the_engines_text(tiny_llama, monkeypatch):
    mine = random_vector(tiny_llama, seed=7, scale=4.0)
    rows = [CodeRow("sentiment", 1, 8.0), CodeRow("mine", 3, 2.0, "prompt", source="variable")]
    code = render_code("tiny", PROMPT, rows, max_new_tokens=6, seed=0)
    monkeypatch.setattr(sw, "load_model", lambda *a, **k: tiny_llama)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<copied>", "exec"), {"mine": mine})
    builtin = sw.mean_difference(tiny_llama, sw.builtin_pairs("sentiment"))
    stack = [sw.Steering(builtin, 1, 8.0), sw.Steering(mine, 3, 2.0, "prompt")]
    expected = sw.generate(tiny_llama, PROMPT, stack, max_new_tokens=6, seed=0)
    assert out.getvalue() == expected.steered.text + "\n"
    one = sw.generate(tiny_llama, PROMPT, stack[:1], max_new_tokens=6, seed=0).steered
    assert one.token_ids != expected.steered.token_ids  # the second vector changed the text
