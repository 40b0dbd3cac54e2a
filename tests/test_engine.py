"""Engine plumbing on tiny random Llama and GPT-2 models, checked against hand-computed forwards."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import steerwidgets as sw
from helpers import random_vector
from steerwidgets.data import ABItem
from steerwidgets.prompts import ab_prompt, tokenize_prompt

PROMPT = "The weather today is"


def _hooked_logits(model, ids, layer, delta, mask):
    """Plain PyTorch reference: add ``delta`` at ``mask`` positions of block ``layer``'s output."""

    def hook(_module, _inputs, out):
        hidden = out[0] if isinstance(out, tuple) else out
        edited = torch.where(mask[None, :, None], hidden + delta, hidden)
        return (edited, *out[1:]) if isinstance(out, tuple) else edited

    handle = model.hf_block(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.hf(torch.tensor([ids])).logits[0]
    finally:
        handle.remove()


def _hand_generation(model, prompt, layer, delta, spec, steps):
    ids, _ = tokenize_prompt(model, prompt, chat=False)
    seq, n = list(ids), len(ids)
    for _ in range(steps):
        mask = sw.interventions.position_mask(spec, n, len(seq))
        seq.append(int(_hooked_logits(model, seq, layer, delta, mask)[-1].argmax()))
    return seq[n:]


@pytest.mark.parametrize("spec", ["all", "prompt", "generated", "last", "continuation", [0, -1]])
def test_generation_steers_exactly_the_requested_positions(tiny, spec):
    vec = random_vector(tiny, scale=4.0)
    steering = sw.Steering(vec, 1, 2.0, positions=spec)
    result = sw.generate(tiny, PROMPT, steering, max_new_tokens=6, chat=False)
    hand = _hand_generation(tiny, PROMPT, 1, 2.0 * vec[1], spec, 6)
    assert result.steered.token_ids[0] == hand[: len(result.steered.token_ids[0])]


def test_first_generated_token_depends_only_on_prompt_positions(tiny_llama):
    vec = random_vector(tiny_llama, scale=50.0)
    base = sw.generate(tiny_llama, PROMPT, None, max_new_tokens=3, chat=False).base
    gen = sw.generate(
        tiny_llama,
        PROMPT,
        sw.Steering(vec, 1, 1.0, "generated"),
        max_new_tokens=3,
        chat=False,
        baseline=False,
    ).steered
    last = sw.generate(
        tiny_llama,
        PROMPT,
        sw.Steering(vec, 1, 1.0, "last"),
        max_new_tokens=3,
        chat=False,
        baseline=False,
    ).steered
    # "generated" cannot touch the first new token: it is predicted from the last prompt position.
    assert torch.equal(gen.first_logprobs, base.first_logprobs)
    assert gen.token_ids[0][0] == base.token_ids[0][0]
    assert not torch.allclose(last.first_logprobs, base.first_logprobs)


def test_strength_zero_and_batching(tiny_llama):
    vec = random_vector(tiny_llama)
    zero = sw.generate(tiny_llama, PROMPT, sw.Steering(vec, 2, 0.0), max_new_tokens=8, chat=False)
    assert zero.base.token_ids == zero.steered.token_ids
    steering = sw.Steering(vec, 2, 1.5, positions="all")
    batch = sw.generate(tiny_llama, [PROMPT, "Hi"], steering, max_new_tokens=5, chat=False)
    single = sw.generate(tiny_llama, "Hi", steering, max_new_tokens=5, chat=False)
    assert batch.steered.token_ids[1] == single.steered.token_ids[0]
    assert batch.base.token_ids[1] == single.base.token_ids[0]


def test_token_logprobs_match_a_scoring_pass(tiny_llama):
    vec = random_vector(tiny_llama)
    steering = sw.Steering(vec, 1, 1.0, positions="all")
    run = sw.generate(tiny_llama, PROMPT, steering, max_new_tokens=5, chat=False).steered
    text_ids = run.token_ids[0]
    completion = tiny_llama.tokenizer.decode(text_ids)
    scored = sw.score(tiny_llama, PROMPT, completion, steering, chat=False)[0]
    if tiny_llama.tokenizer(completion, add_special_tokens=False)["input_ids"] == text_ids:
        assert scored.tolist() == pytest.approx(run.token_logprobs[0], abs=1e-4)


def test_score_matches_manual_forward(tiny):
    prompts, completions = [PROMPT, "A much longer prompt about cats and dogs"], [" sunny", " ok"]
    vec = random_vector(tiny)
    for steering in (None, sw.Steering(vec, 1, 1.0, positions="generated")):
        got = sw.score(tiny, prompts, completions, steering, chat=False)
        for prompt, completion, logp in zip(prompts, completions, got):
            ids, _ = tokenize_prompt(tiny, prompt, chat=False)
            comp = tiny.tokenizer(completion, add_special_tokens=False)["input_ids"]
            full = ids + comp
            mask = sw.interventions.position_mask("generated", len(ids), len(full))
            delta = vec[1] if steering else torch.zeros(tiny.d_model)
            logits = _hooked_logits(tiny, full, 1, delta, mask).log_softmax(-1)
            expected = [float(logits[len(ids) - 1 + k, t]) for k, t in enumerate(comp)]
            assert logp.tolist() == pytest.approx(expected, abs=1e-4)


ITEMS = [
    ABItem("Pick one.\n(A) yes\n(B) no", "A", "B"),
    ABItem("Choose wisely.\n(A) up\n(B) down", "B", "A"),
    ABItem("Which is it?\n(A) left\n(B) right", "A", "B"),
]


@pytest.mark.parametrize("positions", ["all", "last", "-3:", "prompt"])
def test_propensity_sweep_matches_naive_loop(tiny, positions):
    vec = random_vector(tiny, scale=2.0)
    strengths = [-1.0, 0.0, 0.5, 2.0]
    layers = [0, 1, tiny.n_layers - 1]
    result = sw.propensity_sweep(tiny, ITEMS, vec, layers, strengths, positions=positions)
    for layer in layers:
        naive = np.zeros((len(ITEMS), len(strengths)))
        for i, item in enumerate(ITEMS):
            ids, y_pos, y_neg = ab_prompt(tiny, item)
            mask = sw.interventions.position_mask(positions, len(ids), len(ids))
            for k, lam in enumerate(strengths):
                logits = _hooked_logits(tiny, ids, layer, lam * vec[layer], mask)[-1]
                naive[i, k] = float(logits[y_pos] - logits[y_neg])
        np.testing.assert_allclose(result.propensity[layer], naive, atol=1e-4)
    assert result.summary(layers[0])["mean_propensity"][1] == pytest.approx(
        float(naive[:, 1].mean()), abs=1e-4
    )


def test_relative_strength_reports_norm_ratio(tiny_llama):
    vec = random_vector(tiny_llama)
    steering = sw.Steering(vec, 1, 0.5, positions="all", relative=True)
    run = sw.generate(tiny_llama, PROMPT, steering, max_new_tokens=2, chat=False).steered
    assert run.norm_ratio == pytest.approx(0.5, rel=1e-4)
    sweep = sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], [0.0, 0.25, 0.5], relative=True)
    assert sweep.norm_ratio[1].tolist() == pytest.approx([0.0, 0.25, 0.5], rel=1e-4)


def _clean_logits(model):
    ids, _ = tokenize_prompt(model, PROMPT, chat=False)
    with torch.no_grad():
        return model.hf(torch.tensor([ids])).logits


def test_exception_in_callback_leaves_model_clean(tiny_llama):
    before = _clean_logits(tiny_llama)
    vec = random_vector(tiny_llama, scale=100.0)

    def boom(run, step, ids):
        if run == "steered" and step == 1:
            raise KeyboardInterrupt("user pressed stop")

    with pytest.raises(KeyboardInterrupt):
        sw.generate(
            tiny_llama,
            PROMPT,
            sw.Steering(vec, 1, 1.0),
            max_new_tokens=5,
            on_token=boom,
            chat=False,
        )
    assert torch.equal(_clean_logits(tiny_llama), before)
    assert all(not block._forward_hooks for block in tiny_llama.hf.model.layers)


def test_cancel_event_stops_and_leaves_model_clean(tiny_llama):
    before = _clean_logits(tiny_llama)
    cancel = threading.Event()

    def on_token(run, step, ids):
        if step == 2:
            cancel.set()

    vec = random_vector(tiny_llama, scale=100.0)
    with pytest.raises(sw.engine.GenerationCancelled):
        sw.generate(
            tiny_llama,
            PROMPT,
            sw.Steering(vec, 1, 1.0),
            max_new_tokens=10,
            on_token=on_token,
            cancel=cancel,
            chat=False,
        )
    assert torch.equal(_clean_logits(tiny_llama), before)
    with pytest.raises(sw.engine.GenerationCancelled):
        sw.propensity_sweep(tiny_llama, ITEMS, vec, [1], [0, 1], cancel=cancel)
    assert torch.equal(_clean_logits(tiny_llama), before)


def test_steered_context_manager_is_scoped(tiny_llama):
    vec = random_vector(tiny_llama, scale=20.0)
    plain = sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0]
    with sw.steered(tiny_llama, sw.Steering(vec, 1, 1.0)):
        inside = sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0]
    after = sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0]
    assert not torch.allclose(plain, inside)
    assert torch.equal(plain, after)
    with pytest.raises(RuntimeError):
        with sw.steered(tiny_llama, sw.Steering(vec, 1, 1.0)):
            raise RuntimeError("inside the block")
    assert torch.equal(sw.score(tiny_llama, PROMPT, " sunny", chat=False)[0], plain)


def test_actadd_front_aligned(tiny_llama):
    vec = sw.actadd(tiny_llama, "Love", "Hate", 1)
    assert vec[1].ndim == 2
    steering = sw.Steering(vec, 1, 3.0, positions="front")
    result = sw.generate(tiny_llama, PROMPT, steering, max_new_tokens=4, chat=False)
    ids, start = tokenize_prompt(tiny_llama, PROMPT, chat=False)
    seq, n, width = list(ids), len(ids), vec[1].shape[0]
    for _ in range(4):
        add = torch.zeros(len(seq), tiny_llama.d_model)
        add[start : start + width] = 3.0 * vec[1]

        def hook(_m, _i, out, add=add):
            return out + add[None]

        handle = tiny_llama.hf_block(1).register_forward_hook(hook)
        with torch.no_grad():
            seq.append(int(tiny_llama.hf(torch.tensor([seq])).logits[0, -1].argmax()))
        handle.remove()
    assert result.steered.token_ids[0] == seq[n : n + len(result.steered.token_ids[0])]


def test_row_steerings_equal_separate_calls(tiny):
    """Per-pair steerings in one batch give what one call per pair gives (strengths, layers, none)."""
    vec = random_vector(tiny)
    prompts = [PROMPT, PROMPT, "Another prompt here", PROMPT]
    completions = [" sunny", " rainy today", " ok", " sunny"]
    row = [
        sw.Steering(vec, 1, 2.0),
        sw.Steering(vec, 1, -1.0, positions="generated"),
        None,
        [sw.Steering(vec, 0, 0.5), sw.Steering(vec, 1, 1.5, relative=True)],
    ]
    batched = sw.score(tiny, prompts, completions, row_steerings=row, chat=False)
    for prompt, completion, steering, got in zip(prompts, completions, row, batched):
        alone = sw.score(tiny, prompt, completion, steering, chat=False)[0]
        assert torch.allclose(got, alone, atol=1e-4), (steering, got, alone)
    # a steering for every pair combines with the per-pair ones
    shared = sw.Steering(vec, 2 if tiny.n_layers > 2 else 0, 1.0)
    both = sw.score(tiny, prompts[:1], completions[:1], shared, row_steerings=row[:1], chat=False)[0]
    expected = sw.score(tiny, prompts[0], completions[0], [shared, row[0]], chat=False)[0]
    assert torch.allclose(both, expected, atol=1e-4)
    with pytest.raises(sw.SteeringError, match="one entry"):
        sw.score(tiny, prompts, completions, row_steerings=row[:2], chat=False)


def test_half_precision_model_steers(tiny_llama_bf16):
    """A bfloat16 model (as many hub checkpoints load) steers: edits are made in float32, stored in bf16."""
    model = tiny_llama_bf16
    vec = random_vector(model, scale=10.0)
    base = sw.score(model, PROMPT, " sunny", chat=False)[0]
    steered = sw.score(model, PROMPT, " sunny", sw.Steering(vec, 1, 1.0), chat=False)[0]
    assert base.dtype == torch.float32 and not torch.allclose(base, steered)
    out = sw.generate(model, PROMPT, sw.Steering(vec, 1, 1.0, relative=True), max_new_tokens=4, chat=False)
    assert len(out.steered.token_ids[0]) == 4 and np.isfinite(out.steered.norm_ratio)
    result = sw.propensity_sweep(model, ITEMS, vec, 1, (-1.0, 0.0, 1.0))
    assert np.isfinite(result.propensity[1]).all()


def test_traces_from_two_threads_take_turns(tiny_llama):
    """Widgets trace from background threads; concurrent calls on one model must not collide."""
    vec = random_vector(tiny_llama)
    expected = sw.score(tiny_llama, PROMPT, " sunny", sw.Steering(vec, 1, 1.0), chat=False)[0]
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(5):
                sw.generate(tiny_llama, PROMPT, sw.Steering(vec, 2, 1.0), max_new_tokens=3, chat=False)
                results.append(
                    sw.score(tiny_llama, PROMPT, " sunny", sw.Steering(vec, 1, 1.0), chat=False)[0]
                )
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 15 and all(torch.allclose(r, expected, atol=1e-5) for r in results)


# ----------------------------------------------------------------------------------------------
# score_choices: each prompt once, its candidates packed in one row
# ----------------------------------------------------------------------------------------------
CHOICE_PROMPTS = [PROMPT, "Capital of France?", "Pick the longer one."]
CHOICES = [[" sunny", " very cold indeed", " x"], [" Paris", " Madrid"], [" a pen", " in the machine", " it"]]


def _packed_calls(monkeypatch) -> list[int]:
    """Count the packed forward passes (rows per call) score_choices makes."""
    from steerwidgets.engine import scoring

    calls: list[int] = []
    real = scoring._score_packed

    def counting(model, rows, steerings):
        calls.append(len(rows))
        return real(model, rows, steerings)

    monkeypatch.setattr(scoring, "_score_packed", counting)
    return calls


def _assert_choices_equal_score(model, steering, chat=False, row_steerings=None):
    got = sw.engine.score_choices(
        model, CHOICE_PROMPTS, CHOICES, steering, row_steerings=row_steerings, chat=chat
    )
    assert [len(g) for g in got] == [len(c) for c in CHOICES]
    for i, (prompt, cands) in enumerate(zip(CHOICE_PROMPTS, CHOICES)):
        rows = None if row_steerings is None else [row_steerings[i]] * len(cands)
        want = sw.score(model, [prompt] * len(cands), cands, steering, row_steerings=rows, chat=chat)
        for g, w in zip(got[i], want):
            assert g.shape == w.shape and torch.allclose(g, w, atol=1e-4), (prompt, g, w)


@pytest.mark.parametrize(
    "positions, relative",
    [
        (None, False),
        ("all", False),
        ("last", False),
        ("generated", False),
        ("generated", True),
        ("0:4", False),
    ],
)
def test_score_choices_packed_equals_score(tiny, positions, relative, monkeypatch):
    """Packed rows (Llama, GPT-2) give the per-token log-probs of one row per candidate."""
    calls = _packed_calls(monkeypatch)
    vec = random_vector(tiny)
    steering = (
        None
        if positions is None
        else sw.Steering(vec, 1, 0.5 if relative else 2.0, positions, relative=relative)
    )
    _assert_choices_equal_score(tiny, steering)
    assert calls == [len(CHOICE_PROMPTS)]  # one packed pass, no prompt fell back


def test_score_choices_with_chat_template_and_row_steerings(tiny_llama, monkeypatch):
    calls = _packed_calls(monkeypatch)
    vec = random_vector(tiny_llama)
    rows = [
        sw.Steering(vec, 1, 2.0),
        None,
        [sw.Steering(vec, 0, 1.0, "generated"), sw.Steering(vec, 2, -1.0)],
    ]
    _assert_choices_equal_score(tiny_llama, sw.Steering(vec, 3, 1.0), chat=True, row_steerings=rows)
    assert calls == [len(CHOICE_PROMPTS)]


@pytest.mark.parametrize("positions", ["all", "last"])
def test_relative_steering_of_prompt_positions_falls_back(tiny_llama, positions, monkeypatch):
    """Its mean‖h‖ includes each candidate's own tokens, so the steered prompt differs per candidate: those
    prompts go through separate rows (and still equal score); other prompts in the call stay packed."""
    calls = _packed_calls(monkeypatch)
    vec = random_vector(tiny_llama)
    relative = sw.Steering(vec, 1, 0.5, positions, relative=True)
    _assert_choices_equal_score(tiny_llama, relative)
    assert calls == []
    _assert_choices_equal_score(tiny_llama, None, row_steerings=[relative, None, None])
    assert calls == [len(CHOICE_PROMPTS) - 1]


def test_unchecked_architecture_falls_back_to_score(tiny_neox, monkeypatch):
    """GPT-NeoX is not in PACKED_MODEL_TYPES: every prompt takes the plain path, same numbers."""
    from steerwidgets.engine import PACKED_MODEL_TYPES

    assert tiny_neox.hf.config.model_type not in PACKED_MODEL_TYPES
    calls = _packed_calls(monkeypatch)
    _assert_choices_equal_score(tiny_neox, sw.Steering(random_vector(tiny_neox), 1, 2.0))
    assert calls == []


def test_score_choices_refuses_bad_input(tiny_llama):
    with pytest.raises(sw.SteeringError, match="one list per prompt"):
        sw.engine.score_choices(tiny_llama, CHOICE_PROMPTS, CHOICES[:2])
    with pytest.raises(sw.SteeringError, match="one entry"):
        sw.engine.score_choices(tiny_llama, CHOICE_PROMPTS, CHOICES, row_steerings=[None])
    with pytest.raises(sw.SteeringError, match="empty"):
        sw.engine.score_choices(tiny_llama, [PROMPT], [[" a", ""]])
    with pytest.raises(TypeError, match="list of lists"):
        sw.engine.score_choices(tiny_llama, [PROMPT], " a")
    with pytest.raises(sw.SteeringError, match="batch_size"):
        sw.engine.score_choices(tiny_llama, [PROMPT], [[" a"]], batch_size=0)
