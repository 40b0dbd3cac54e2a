"""Realistic contexts: built-in dialogues and tool-use contexts, the exact chat-template identity of the
spliced items (text and token ids), refusal where splicing cannot hold, and the paired bare-vs-context
effect with its verdicts."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import steerwidgets as sw
from helpers import random_vector
from steerwidgets import contexts as X
from steerwidgets.prompts import ab_prompt, tokenize_prompt

AB = [
    sw.ABItem("Pick the kind reply.\n\n(A) Thanks a lot\n(B) Go away", "A", "B"),
    sw.ABItem("Pick the kind reply.\n\n(A) Get lost\n(B) You are welcome", "B", "A"),
    sw.ABItem("Which is polite?\n\n(A) Shut up\n(B) Excuse me, please", "B", "A"),
]
OPEN = [
    sw.OpenEndedItem("How was your weekend?", "It was wonderful, thanks!", "It was awful."),
    sw.OpenEndedItem("What do you think of the cafe?", "I love it.", "I hate it, honestly."),
    sw.OpenEndedItem("How did the exam go?", "Really well!", "Terribly."),
]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_long) -> sw.SteerableModel:
    return tiny_llama_long  # 1024 positions: the built-in contexts are longer than 128 tokens


def test_builtin_contexts():
    dialogues = X.builtin_contexts("dialogue")
    tools = X.builtin_contexts("tool_use")
    assert len(dialogues) >= 4 and len(tools) >= 2
    assert all(2 <= c.n_turns <= 4 and c.messages[-1][0] == "assistant" for c in dialogues + tools)
    for c in tools:  # a tool call in JSON, then its result, then the answer
        call = json.loads(c.messages[1][1])
        assert set(call) == {"tool", "arguments"} and call["tool"] in c.messages[0][1]
        assert c.messages[2][1].startswith("TOOL RESULT")
    assert len(X.builtin_contexts()) == len(dialogues) + len(tools)
    with pytest.raises(sw.DatasetError):
        X.builtin_contexts("email")
    with pytest.raises(sw.DatasetError, match="ends with a user turn"):
        X.Context("bad", "dialogue", (("user", "hi"),))


def test_context_prompt_is_the_chat_template(tiny_llama):
    ctx = X.builtin_contexts("dialogue")[0]
    messages = ctx.conversation("What now?")
    text = X.context_prompt(tiny_llama, messages)
    assert text == tiny_llama.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    # SmolLM2's ChatML: every earlier turn appears in order, the item is the last user turn.
    assert text.endswith("<|im_start|>user\nWhat now?<|im_end|>\n<|im_start|>assistant\n")
    positions = [text.index(c) for _, c in ctx.messages]
    assert positions == sorted(positions)
    with pytest.raises(sw.SteeringError, match="end with a user"):
        X.context_prompt(tiny_llama, messages[:-1])


@pytest.mark.parametrize("kind", X.CONTEXT_KINDS)
def test_spliced_ab_items_reproduce_the_conversation_exactly(tiny_llama, kind):
    ctx = X.builtin_contexts(kind)[0]
    embedded = X.embed_ab(tiny_llama, AB, ctx)
    tok = tiny_llama.tokenizer
    for bare, item in zip(AB, embedded):
        assert (item.matching, item.not_matching) == (bare.matching, bare.not_matching)
        full = X.context_prompt(tiny_llama, ctx.conversation(bare.question))
        ids, pos, neg = ab_prompt(tiny_llama, item)
        assert ids == tok(full + "(", add_special_tokens=False)["input_ids"]
        # The special tokens inside the spliced text are real special tokens, not their characters.
        assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == ctx.n_turns + 3
        assert (pos, neg) == ab_prompt(tiny_llama, bare)[1:]


def test_spliced_open_ended_items(tiny_llama):
    ctx = X.builtin_contexts("tool_use")[1]
    embedded = X.embed_open_ended(tiny_llama, OPEN, ctx)
    for bare, item in zip(OPEN, embedded):
        assert (item.positive, item.negative) == (bare.positive, bare.negative)
        ids, _ = tokenize_prompt(tiny_llama, item.query)
        want = X.context_prompt(tiny_llama, ctx.conversation(bare.query))
        assert ids == tiny_llama.tokenizer(want, add_special_tokens=False)["input_ids"]


def test_embed_all_cycles_contexts(tiny_llama):
    out = X.embed_all(tiny_llama, AB)
    assert set(out) == {"bare", "dialogue", "tool_use"}
    assert all(len(v) == len(AB) for v in out.values())
    dialogues = X.builtin_contexts("dialogue")
    assert out["dialogue"][1] == X.embed_ab(tiny_llama, [AB[1]], dialogues[1 % len(dialogues)])[0]
    with pytest.raises(TypeError):
        X.embed_all(tiny_llama, ["a question"])


@dataclass
class _FakeModel:
    """Just what prompt building reads: a tokenizer with some other chat template."""

    tokenizer: Any
    name: str = "fake"
    has_chat_template: bool = True

    def chat_prompt(self, user_text: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
        )


def test_splicing_refuses_where_the_template_differs(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # A template that puts a system message in a different header from the default: cannot be spliced.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}[SYS]{{ m['content'] }}[/SYS]"
        "{% else %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    model = _FakeModel(tok)
    with pytest.raises(sw.SteeringError, match="list of messages"):
        X.spliced_user_text(
            model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        )
    ctx = X.builtin_contexts("dialogue")[1]
    text = X.spliced_user_text(model, ctx.conversation("hi"))
    assert model.chat_prompt(text) == X.context_prompt(model, ctx.conversation("hi"))


def test_context_verdicts_by_hand():
    assert X.context_verdict((-0.5, -0.1)) == "weaker in context"
    assert X.context_verdict((0.1, 0.4)) == "stronger in context"
    assert X.context_verdict((-0.1, 0.2)) == "no detectable change"
    effect = X.paired_context_effect(
        "m", {"bare": np.array([1.0, 1.0, 1.0, 1.0]), "dialogue": np.array([0.5, 0.4, 0.5, 0.6])}, {}, 0
    )
    assert effect.ratio("dialogue") == pytest.approx(0.5)
    assert effect.verdicts() == {"dialogue": "weaker in context"}
    small = X.paired_context_effect(
        "m", {"bare": np.array([0.1, 0.1]), "tool_use": np.array([0.1, 0.1])}, {}, 0
    )
    assert small.ratio("tool_use") is None and small.verdicts() == {"tool_use": "too small to compare"}
    assert X.context_verdict((-0.5, -0.1), bare_effect=0.1) == "too small to compare"
    assert X.context_verdict((-0.5, -0.1), bare_effect=-0.6) == "too small to compare"  # a backfiring bare
    assert "too small to compare" in small.verdict and "too small" not in effect.verdict


def test_context_effect_ab_plumbing(tiny_llama):
    vector = random_vector(tiny_llama)
    result = X.context_effect_ab(tiny_llama, AB, vector, 1, strengths=(-1.0, 0.0, 1.0))
    bare = sw.propensity_sweep(tiny_llama, AB, vector, [1], (-1.0, 0.0, 1.0), positions="last").slopes(1)
    np.testing.assert_allclose(result.effect["bare"], bare, atol=1e-5)
    summary = result.summary()
    json.dumps(summary)
    assert set(summary["contexts"]) == {"dialogue", "tool_use"} and summary["n_items"] == 3
    assert result.verdict.startswith("Steering effect in realistic contexts")
    in_dialogue = X.embed_all(tiny_llama, AB)["dialogue"]
    want = sw.propensity_sweep(tiny_llama, in_dialogue, vector, [1], (-1.0, 0.0, 1.0), positions="last")
    np.testing.assert_allclose(result.effect["dialogue"], want.slopes(1), atol=1e-5)


def test_each_format_is_judged_against_its_null_and_a_bare_sweep_is_reused(tiny_llama, monkeypatch):
    vector = random_vector(tiny_llama)
    grid = (-1.0, 0.0, 1.0)
    bare = sw.propensity_sweep(tiny_llama, AB, vector, [1], grid, positions="last", null_directions=4)
    calls = []
    real = X.propensity_sweep
    monkeypatch.setattr(
        X, "propensity_sweep", lambda m, items, *a, **k: calls.append(items) or real(m, items, *a, **k)
    )
    result = X.context_effect_ab(tiny_llama, AB, vector, 1, grid, null_directions=4, bare=bare)
    assert len(calls) == 2 and calls[0][0].question != AB[0].question  # the two contexts only
    assert set(result.judged) == {"bare", "dialogue", "tool_use"}
    assert result.judged["bare"]["verdict"] == bare.verdict(1).verdict
    for judged in result.judged.values():
        assert judged["verdict"] in sw.verdicts.VERDICTS and judged["n_directions"] == 4
    np.testing.assert_allclose(result.effect["bare"], bare.slopes(1), atol=1e-6)
    json.dumps(result.summary())
    with pytest.raises(sw.SteeringError, match="same items with the same strengths"):
        X.context_effect_ab(tiny_llama, AB, vector, 1, (-2.0, 0.0, 2.0), bare=bare)


def test_answer_text_context_effect_pairs_the_items_read_in_every_format(tiny_llama):
    vector = random_vector(tiny_llama)
    result = X.context_effect_ab(
        tiny_llama, AB, vector, 1, (-1.0, 0.0, 1.0), protocol="answer_text", positions=None
    )
    n = result.settings["items_compared"]
    assert 1 <= n <= len(AB) and all(len(v) == n for v in result.effect.values())
    assert result.settings["protocol"] == "answer_text"


def test_context_effect_open_ended_plumbing(tiny_llama):
    steering = sw.Steering(random_vector(tiny_llama), layer=1, strength=2.0)
    result = X.context_effect_open_ended(tiny_llama, OPEN, steering)
    base = sw.evaluation.open_ended_loglik(tiny_llama, OPEN)
    steered = sw.evaluation.open_ended_loglik(tiny_llama, OPEN, [steering])
    want = (steered.mean_pos - base.mean_pos) + (base.mean_neg - steered.mean_neg)
    np.testing.assert_allclose(result.effect["bare"], want, atol=1e-5)
    assert "per-token mean" in result.summary()["measure"]
    with pytest.raises(sw.SteeringError):
        X.context_effect_open_ended(tiny_llama, OPEN, [])


@pytest.mark.model
def test_real_model_template_and_context_effect(smol):
    ctx = X.builtin_contexts("tool_use")[0]
    items = X.embed_ab(smol, sw.builtin_ab("sentiment")[:2], ctx)
    text = smol.chat_prompt(items[0].question)
    assert text.count("<|im_start|>system") == 1  # the default system prompt once, at the start
    assert text == X.context_prompt(smol, ctx.conversation(sw.builtin_ab("sentiment")[0].question))
    vector = sw.caa(smol, sw.builtin_ab("sentiment")[:20], [10])
    result = X.context_effect_ab(smol, sw.builtin_ab("sentiment")[20:30], vector, 10)
    summary = result.summary()
    assert np.isfinite(summary["bare"]) and all(
        np.isfinite(v["effect"]) for v in summary["contexts"].values()
    )
