"""``%steer_model`` and ``%%steer`` in a real IPython shell, on the session's default model."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import steerwidgets as sw
from steerwidgets.magics import load_ipython_extension
from steerwidgets.widgets.playground import Playground

pytestmark = pytest.mark.model


@pytest.fixture
def ip(smol, monkeypatch):
    """An IPython shell with the magics loaded; loading a model returns the session's model."""
    loaded: list[object] = []

    def fake_load(name=None, **kwargs):
        if name not in (None, "", sw.DEFAULT_MODEL, "default"):
            raise sw.ModelLoadError(f"no such model {name!r} in this test")
        loaded.append(name)
        return smol

    monkeypatch.setattr(sw, "load_model", fake_load)
    shell = InteractiveShell.instance()
    load_ipython_extension(shell)  # fresh magics (and no remembered model) for every test
    shell.loaded_names = loaded
    yield shell
    for value in list(shell.user_ns.values()):
        if isinstance(value, Playground):
            value.close()


def test_load_ipython_extension_registers_both_magics(ip):
    ip.run_line_magic("load_ext", "steerwidgets.magics")
    assert "steer_model" in ip.magics_manager.magics["line"]
    assert "steer" in ip.magics_manager.magics["cell"]


def test_steer_model_loads_and_remembers(ip, smol):
    assert ip.run_line_magic("steer_model", "") is smol
    assert ip.loaded_names == [None]
    assert ip.run_line_magic("steer_model", sw.DEFAULT_MODEL) is smol
    other = object.__new__(type(smol))  # a model variable in the notebook is reused, not loaded
    ip.user_ns["my_model"] = other
    assert ip.run_line_magic("steer_model", "my_model") is other
    assert ip.loaded_names == [None, sw.DEFAULT_MODEL]
    with pytest.raises(UsageError, match="could not load model 'nope'"):
        ip.run_line_magic("steer_model", "nope")
    with pytest.raises(UsageError, match="one model name"):
        ip.run_line_magic("steer_model", "a b")


def test_steer_cell_opens_a_playground(ip):
    w = ip.run_cell_magic(
        "steer",
        "--layer 10 --strength -3 --vector sentiment --positions prompt --max-new-tokens 4 --seed 2",
        "Tell me about your day.\n",
    )
    try:
        assert isinstance(w, Playground)
        assert w.wait(600)
        settings = (w.layer, w.strength, w.positions, w.max_new_tokens, w.seed)
        assert settings == (10, -3.0, "prompt", 4, 2)
        assert w.prompt == "Tell me about your day." and w.vector_name == "sentiment"
        assert w.error == "" and w.steered_text
        assert ip.loaded_names == [None]  # the default model, loaded on first use
    finally:
        w.close()


def test_steer_cell_takes_a_vector_variable(ip, smol):
    vec = sw.random_like(sw.mean_difference(smol, sw.builtin_pairs("sentiment"), layers=[10]), seed=1)
    ip.user_ns["my_vec"] = vec
    w = ip.run_cell_magic("steer", "--vector my_vec --max-new-tokens 2", "Hello there")
    try:
        assert w.vector_name == "my_vec" and w.layer == 10  # the vector's only layer
        assert w.wait(600) and w.error == ""
    finally:
        w.close()


@pytest.mark.parametrize(
    ("line", "body", "message"),
    [
        ("--layer ten", "Hi", "invalid int value: 'ten'"),
        ("--layer 99", "Hi", "0..29"),
        ("--strength", "Hi", "expected one argument"),
        ("--vector nothing_here", "Hi", "neither a built-in set"),
        ("--positions middle", "Hi", "unknown position spec"),
        ("--max-new-tokens 0", "Hi", "at least 1"),
        ("--colour red", "Hi", "unrecognized arguments: --colour red"),
        ("--layer 3", "   \n", "needs a prompt"),
        ('--vector "sentiment', "Hi", "cannot parse"),
    ],
)
def test_bad_arguments_give_a_clear_usage_error(ip, line, body, message):
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("steer", line, body)


def test_steerwidgets_is_an_extension_too():
    # `%load_ext steerwidgets` loads the same magics (IPython is imported only then)
    shell = InteractiveShell.instance()
    sw.load_ipython_extension(shell)
    magics = shell.magics_manager.magics
    assert "steer" in magics["cell"] and "steer_model" in magics["line"]
