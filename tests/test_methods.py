"""New vector estimators: pure math against hand-computed values, then model plumbing on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import steerwidgets as sw
from steerwidgets import methods as M
from steerwidgets.engine import activations as A
from steerwidgets.interventions import AffineMap, apply_operator

PAIRS = [
    sw.ContrastPair("I love this, it is wonderful.", "I hate this, it is awful."),
    sw.ContrastPair("What a great day.", "What a terrible day."),
    sw.ContrastPair("The food was delicious.", "The food was disgusting."),
    sw.ContrastPair("Brilliant work, thank you!", "Terrible work, what a waste."),
]
AB = [
    sw.ABItem("Pick the kind reply.\n\n(A) Thanks a lot\n(B) Go away", "A", "B"),
    sw.ABItem("Pick the kind reply.\n\n(A) Get lost\n(B) You are welcome", "B", "A"),
    sw.ABItem("Pick the kind reply.\n\n(A) Lovely to see you\n(B) Leave me alone", "A", "B"),
]


# --- PCA -----------------------------------------------------------------------------------------
def test_pca_centred_by_hand():
    # diffs (1,0), (3,2): mean (2,1); centred rows ±(1,1) → PC (1,1)/√2; mean·PC = 3/√2 → v = (1.5, 1.5)
    v = M.pca_direction(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), centred=True)
    assert torch.allclose(v, torch.tensor([1.5, 1.5]), atol=1e-6)


def test_pca_uncentred_by_hand():
    # XᵀX = [[10, 6], [6, 4]]: top eigenvector ∝ (1, (√5 − 1)/2); v = (mean·u) u with mean (2, 1)
    v = M.pca_direction(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), centred=False)
    u = torch.tensor([1.0, (math.sqrt(5) - 1) / 2])
    u = u / u.norm()
    expected = (torch.tensor([2.0, 1.0]) @ u) * u
    assert torch.allclose(v, expected, atol=1e-6)


def test_pca_sign_follows_the_mean_difference():
    diffs = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    for centred in (True, False):
        assert torch.allclose(M.pca_direction(-diffs, centred), -M.pca_direction(diffs, centred), atol=1e-6)
        assert float(M.pca_direction(diffs, centred) @ diffs.mean(0)) > 0


def test_pca_needs_two_pairs_when_centred():
    with pytest.raises(sw.SteeringError, match="two"):
        M.pca_direction(torch.ones(1, 3), centred=True)


# --- mean-centring -------------------------------------------------------------------------------
def test_token_means_and_mean_centring_by_hand():
    acts = torch.zeros(2, 3, 2)
    acts[0, :2] = torch.tensor([[100.0, 100.0], [1.0, 2.0]])
    acts[1] = torch.tensor([[100.0, 100.0], [3.0, 0.0], [5.0, 2.0]])
    means = M.token_means(acts, [2, 3], skip=1)
    assert means.tolist() == [[1.0, 2.0], [4.0, 1.0]]
    # target = text 0, all = both: (1, 2) − (2.5, 1.5)
    assert M.mean_centring_direction(means[:1], means).tolist() == [-1.5, 0.5]


# --- covariance, square roots, optimal transport -----------------------------------------------
def test_psd_sqrt_and_inverse():
    a = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    root = M.psd_sqrt(a)
    assert torch.allclose(root @ root, a, atol=1e-12)
    assert torch.allclose(M.psd_sqrt(a, inverse=True) @ root, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        M.psd_sqrt(torch.diag(torch.tensor([4.0, 9.0]))), torch.diag(torch.tensor([2.0, 3.0])).double()
    )


def test_ot_map_one_dimension_and_diagonal():
    assert M.gaussian_ot_map(torch.tensor([[4.0]]), torch.tensor([[9.0]])).item() == pytest.approx(1.5)
    w = M.gaussian_ot_map(torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 1.0])))
    assert torch.allclose(w, torch.diag(torch.tensor([3.0, 0.5])).double(), atol=1e-10)


def test_ot_map_pushes_source_covariance_onto_target():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    cov_s, cov_t = a @ a.T + 0.5 * torch.eye(4), b @ b.T + 0.5 * torch.eye(4)
    w = M.gaussian_ot_map(cov_s, cov_t)
    assert torch.allclose(w, w.T, atol=1e-10)
    assert torch.linalg.eigvalsh(w).min() > 0
    assert torch.allclose(w @ cov_s @ w, cov_t, atol=1e-8)


def test_shrunk_covariance_by_hand():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    # S = diag(0.5, 2); tr S / d = 1.25
    cov, alpha = M.shrunk_covariance(x, 0.5, "identity")
    assert alpha == 0.5
    assert torch.allclose(cov, torch.diag(torch.tensor([0.875, 1.625])).double())
    cov, _ = M.shrunk_covariance(x, 0.5, "diagonal")
    assert torch.allclose(cov, torch.diag(torch.tensor([0.5, 2.0])).double())
    with pytest.raises(sw.SteeringError, match="shrinkage"):
        M.shrunk_covariance(x, 1.5)


def test_ledoit_wolf_matches_its_definition():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = torch.trace(s) / d
    dist2 = ((s - mu * torch.eye(d)) ** 2).sum() / d
    spread = sum(((torch.outer(r, r) - s) ** 2).sum() for r in xc) / n**2 / d
    expected = float(min(spread, dist2) / dist2)
    assert M.ledoit_wolf_shrinkage(x) == pytest.approx(expected, rel=1e-10)
    assert 0.0 <= M.ledoit_wolf_shrinkage(x) <= 1.0


def test_affine_map_moves_means_and_interpolates():
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(50, 3, generator=gen) + torch.tensor([1.0, 0.0, 0.0])
    tgt = torch.randn(50, 3, generator=gen) * 2 + torch.tensor([0.0, 5.0, 0.0])
    amap, info = M.affine_from_activations(src, tgt, shrinkage=0.0)
    assert info["shrinkage_source"] == 0.0
    assert torch.allclose(amap(src.mean(0)), tgt.mean(0), atol=1e-5)
    cov_mapped = torch.cov((amap(src)).T.double(), correction=0)
    assert torch.allclose(cov_mapped, torch.cov(tgt.T.double(), correction=0), atol=1e-3)
    h = src[:4][None]
    assert torch.allclose(apply_operator(h, amap, torch.tensor(0.0), "affine"), h)
    assert torch.allclose(apply_operator(h, amap, torch.tensor(1.0), "affine"), amap(h), atol=1e-6)
    half = apply_operator(h, amap, torch.tensor(0.5), "affine")
    assert torch.allclose(half, (h + amap(h)) / 2, atol=1e-6)


def test_norm_preserving_operator_by_hand():
    h = torch.tensor([[[3.0, 4.0]]])
    out = apply_operator(h, torch.tensor([0.0, 2.0]), torch.tensor(1.5), "add_norm_preserving")
    # h + 1.5·v = (3, 7), rescaled to ‖h‖ = 5
    assert torch.allclose(out, torch.tensor([[[3.0, 7.0]]]) * 5 / math.sqrt(58))


def test_head_contribution_by_hand():
    w = torch.arange(12.0).reshape(2, 6)  # d_model 2, 3 heads of size 2
    out = M.head_contribution(w, head=1, head_dim=2, activation=torch.tensor([1.0, -1.0]))
    assert out.tolist() == [2.0 - 3.0, 8.0 - 9.0]


def test_shuffled_labels_permute_and_icl_text():
    demos = [("a", "1"), ("b", "2"), ("c", "3")]
    for seed in range(5):
        bad = M.shuffled_labels(demos, seed)
        assert [x for x, _ in bad] == ["a", "b", "c"]
        assert sorted(y for _, y in bad) == ["1", "2", "3"] and bad != demos
    assert M.icl_text(demos[:1], "z") == "Q: a\nA: 1\n\nQ: z\nA:"


# --- plumbing on tiny models ---------------------------------------------------------------------
def test_pca_on_the_model_uses_the_pair_differences(tiny_llama):
    vec = M.pca(tiny_llama, PAIRS, [1, 2], centred=False)
    acts = M.pair_activations(tiny_llama, PAIRS, [1, 2])
    for layer, (pos, neg) in acts.items():
        assert torch.allclose(vec[layer], M.pca_direction(pos - neg, centred=False), atol=1e-5)
    assert vec.method == "pca (uncentred)"
    assert M.pca(tiny_llama, AB, 1).method == "pca (centred)"


def test_mean_centring_on_the_model_by_hand(tiny_gpt2):
    targets, others = ["good and kind", "lovely"], ["bad news today", "awful"]
    vec = M.mean_centring(tiny_gpt2, targets, targets + others, [1], batch_size=3)
    tok = tiny_gpt2.tokenizer
    means = []
    for text in targets + others:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        h = sw.engine.read_activations(tiny_gpt2, [ids], [1], position="all")[1][0]
        means.append(h[1 : len(ids)].mean(0) if len(ids) > 1 else h[0])
    means = torch.stack(means)
    assert torch.allclose(vec[1], means[:2].mean(0) - means.mean(0), atol=1e-5)


def test_icv_one_pca_across_layers_by_hand():
    # layer 0 varies +,−,+,− with mean (0.5, 0); layer 1 varies +,+,−,− ten times more with mean (0, 1).
    # One PCA over the concatenation: the PC is layer 1's axis (variance 100 ≫ 1), so layer 0's part
    # is 0 (a per-layer PCA would give it (0.5, 0)); length = mean·PC = 1.
    diffs = {
        0: torch.tensor([[1.5, 0.0], [-0.5, 0.0], [1.5, 0.0], [-0.5, 0.0]]),
        1: torch.tensor([[0.0, 11.0], [0.0, 11.0], [0.0, -9.0], [0.0, -9.0]]),
    }
    v = M.icv_directions(diffs)
    assert torch.allclose(v[0], torch.zeros(2), atol=1e-6)
    assert torch.allclose(v[1], torch.tensor([0.0, 1.0]), atol=1e-6)
    assert torch.allclose(M.pca_direction(diffs[0]), torch.tensor([0.5, 0.0]), atol=1e-6)


def test_icv_every_layer_with_norm_preservation(tiny_llama):
    demos = [(p.negative, p.positive) for p in PAIRS]
    vec = M.icv(tiny_llama, demos)
    assert vec.layers == list(range(tiny_llama.n_layers))
    seqs = M._text_ids(tiny_llama, [t for x, y in demos for t in (y, x)])
    acts = sw.engine.read_activations(tiny_llama, seqs, vec.layers, position=-1)
    joint = M.icv_directions({layer: a[0::2] - a[1::2] for layer, a in acts.items()})
    for layer in vec.layers:
        assert torch.allclose(vec[layer], joint[layer], atol=1e-5)
    steerings = M.icv_steerings(vec, 0.5)
    assert [s.layer for s in steerings] == vec.layers
    assert {s.operator for s in steerings} == {"add_norm_preserving"}
    base = sw.score(tiny_llama, "Tell me a story.", " Once upon a time")[0]
    steered = sw.score(tiny_llama, "Tell me a story.", " Once upon a time", steerings)[0]
    assert torch.isfinite(steered).all() and not torch.allclose(base, steered)


@pytest.mark.parametrize("chat", [True, False])
def test_actadd_reads_the_phrases_where_it_adds_them(tiny_llama, chat):
    """Row k of h_A is the difference at user-text position k, after the same context the prompt has
    (chat template opening, or BOS), i.e. exactly the positions positions="front" adds to."""
    vec = M.actadd(tiny_llama, "I love it", "I hate it", [1, 2], chat=chat)  # 3 tokens each
    for phrase in ("Love", "Hate"):
        ids, start = sw.engine.tokenize_prompt(tiny_llama, phrase, chat=chat)
        assert M.actadd_context(tiny_llama, phrase, chat) == ids[:start]
    (pos_ids, start), (neg_ids, _) = (
        sw.engine.tokenize_prompt(tiny_llama, p, chat=chat) for p in ("I love it", "I hate it")
    )
    width = vec[1].shape[0]
    assert width == 3
    acts = sw.engine.read_activations(tiny_llama, [pos_ids, neg_ids], [1, 2], position="all")
    for layer in (1, 2):
        expected = acts[layer][0, start : start + width] - acts[layer][1, start : start + width]
        assert torch.allclose(vec[layer], expected, atol=1e-5)
    assert vec.meta["chat"] is chat
    if chat:
        assert start > 1  # the template opening comes first: reading the phrase alone would be off
        alone = sw.engine.read_activations(
            tiny_llama, [pos_ids[start:], neg_ids[start:]], [1], position="all"
        )
        assert not torch.allclose(vec[1], alone[1][0, :width] - alone[1][1, :width], atol=1e-3)


def test_mean_centring_in_compare_centres_on_a_generic_corpus(tiny_gpt2, monkeypatch):
    from steerwidgets import compare_methods
    from steerwidgets import evaluation as E

    corpus = ["The river runs past the old mill.", "Tables are made of wood or metal."]
    monkeypatch.setattr(compare_methods, "generic_corpus", lambda: corpus)
    data = E.BehaviourData("sentiment", AB[1:], AB[:1], PAIRS, [])
    built = compare_methods._build_mean_centring(tiny_gpt2, data, 1)
    expected = M.mean_centring(tiny_gpt2, [p.positive for p in PAIRS], corpus, [1])
    assert torch.allclose(built.vector[1], expected[1], atol=1e-6)
    assert "2 generic" in built.note
    assert E.generic_corpus is not None and len(sw.data.reference_passages()) >= 50


def test_affine_steering_through_the_engine_matches_a_hook(tiny_llama):
    amap = M.affine(tiny_llama, PAIRS, 2, shrinkage=0.3)
    assert amap.meta["layer"] == 2 and amap.meta["shrinkage_source"] == 0.3
    steering = M.affine_steering(amap, 2, 0.7)
    got = sw.score(tiny_llama, "Hello there", " friend of mine", steering)[0]
    ids, _ = sw.engine.tokenize_prompt(tiny_llama, "Hello there")
    comp = tiny_llama.tokenizer(" friend of mine", add_special_tokens=False)["input_ids"]

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edited = hidden + 0.7 * (amap(hidden) - hidden)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = tiny_llama.hf_block(2).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = tiny_llama.hf(torch.tensor([ids + comp])).logits[0].float().log_softmax(-1)
    finally:
        handle.remove()
    want = logits[torch.arange(len(ids) - 1, len(ids) + len(comp) - 1), torch.tensor(comp)]
    assert torch.allclose(got, want, atol=1e-4)
    with pytest.raises(sw.SteeringError, match="AffineMap"):
        sw.Steering(amap, 2, operator="add").validate(tiny_llama)
    with pytest.raises(sw.SteeringError, match="AffineMap"):
        sw.Steering(torch.ones(tiny_llama.d_model), 2, operator="affine").validate(tiny_llama)


def test_affine_on_every_token_of_the_pairs(tiny_gpt2):
    pos, neg = M.pair_token_activations(tiny_gpt2, PAIRS[:2], 1)
    tok = tiny_gpt2.tokenizer
    lengths = [len(tok(p.positive)["input_ids"]) - 1 for p in PAIRS[:2]]
    assert pos.shape == (sum(lengths), tiny_gpt2.d_model)
    first = tok(PAIRS[0].positive)["input_ids"]
    h = sw.engine.read_activations(tiny_gpt2, [first], [1], position="all")[1][0]
    assert torch.allclose(pos[: len(first) - 1], h[1 : len(first)], atol=1e-5)
    amap = M.affine(tiny_gpt2, PAIRS, 1, tokens="all")
    assert torch.allclose(amap.mu_tgt, M.pair_token_activations(tiny_gpt2, PAIRS, 1)[0].mean(0), atol=1e-5)
    assert amap.meta["n_samples"][0] == neg.shape[0] + sum(
        len(tok(p.negative)["input_ids"]) - 1 for p in PAIRS[2:]
    )
    with pytest.raises(sw.SteeringError, match="ContrastPair"):
        M.affine(tiny_gpt2, AB, 1, tokens="all")


def test_ablation_and_clamp_helpers(tiny_llama):
    vec = sw.SteeringVector({1: torch.ones(tiny_llama.d_model), 2: torch.ones(tiny_llama.d_model)})
    ablate = M.ablation_steerings(vec)
    assert [(s.layer, s.operator, s.strength) for s in ablate] == [(1, "ablate", 1.0), (2, "ablate", 1.0)]
    clamp = M.clamp_steering(vec, 1, 3.0)
    h = torch.randn(1, 2, tiny_llama.d_model)
    out = apply_operator(h, clamp.direction(), torch.tensor(clamp.strength), "clamp")
    unit = vec[1] / vec[1].norm()
    assert torch.allclose(out @ unit, torch.full((1, 2), 3.0), atol=1e-5)


def _manual_answer_prob(model, ids, answer, patch, means, head_dim):
    handles = []
    if patch is not None:
        layer, head = patch
        module = model.hf.model.layers[layer].self_attn.o_proj

        def pre(_module, args):
            x = args[0].clone()
            x[:, -1, head * head_dim : (head + 1) * head_dim] = means[layer][
                head * head_dim : (head + 1) * head_dim
            ]
            return (x, *args[1:])

        handles.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return float(model.hf(torch.tensor([ids])).logits[0, -1].float().softmax(-1)[answer])
    finally:
        for handle in handles:
            handle.remove()


def test_head_patching_matches_plain_torch_hooks(tiny_llama):
    tok = tiny_llama.tokenizer
    clean = tok("Q: cat\nA: dog\n\nQ: sun\nA:")["input_ids"]
    corrupt = tok("Q: tree\nA: car\n\nQ: moon\nA:")["input_ids"]
    means = A.head_means(tiny_llama, [clean], [1, 3])
    head_dim = tiny_llama.d_model // 4
    patches = [None, (1, 0), (1, 3), (3, 2)]
    got = A.patched_answer_probs(tiny_llama, corrupt, 7, patches, means, head_dim)
    want = [_manual_answer_prob(tiny_llama, corrupt, 7, p, means, head_dim) for p in patches]
    assert np.allclose(got.numpy(), want, rtol=1e-4, atol=1e-9)
    assert len(set(np.round(want, 12))) > 1  # the patches really change the output


def test_function_vector_returns_top_heads(tiny_llama):
    demos = [("cat", "dog"), ("sun", "moon"), ("hot", "cold"), ("up", "down")]
    prompts = [(demos, "big", "small"), (demos[::-1], "left", "right")]
    fv = M.function_vector(tiny_llama, prompts, layers=[0, 1, 2, 3], top_k=3, apply_layer=1, max_rows=5)
    top = fv.meta["top_heads"]
    assert len(top) == 3 and fv.layers == [1]
    aie = fv.meta["aie"]
    assert len(aie) == 4 * 4
    assert [t[2] for t in top] == sorted(aie.values(), reverse=True)[:3]
    _, weight, heads = A.attention_out_proj(tiny_llama, 0)
    assert heads == 4
    # the vector is the sum of the top heads' mean outputs through W_O
    tok = tiny_llama.tokenizer
    clean = [tok(M.icl_text(d, q))["input_ids"] for d, q, _ in prompts]
    means = A.head_means(tiny_llama, clean, [0, 1, 2, 3])
    hd = weight.shape[1] // heads
    expected = sum(
        M.head_contribution(
            A.attention_out_proj(tiny_llama, layer)[1], h, hd, means[layer][h * hd : (h + 1) * hd]
        )
        for layer, h, _ in top
    )
    assert torch.allclose(fv[1], expected, atol=1e-5)
    again = M.function_vector(tiny_llama, prompts, layers=[0, 1, 2, 3], top_k=3, apply_layer=1)
    assert torch.equal(again[1], fv[1])  # chunking (max_rows) changes nothing


def test_function_vector_on_gpt2_layout(tiny_gpt2):
    demos = [("cat", "dog"), ("sun", "moon")]
    fv = M.function_vector(tiny_gpt2, [(demos, "big", "small")], layers=[0], top_k=2)
    assert len(fv.meta["top_heads"]) == 2 and torch.isfinite(fv[fv.layers[0]]).all()


def test_affine_map_validation():
    with pytest.raises(sw.VectorError, match="weight"):
        AffineMap(torch.eye(3), torch.zeros(2), torch.zeros(2))


# --- the real model ------------------------------------------------------------------------------
@pytest.mark.model
def test_new_methods_on_the_default_model_are_finite_and_reproducible(smol):
    layer = 12
    first = [
        M.pca(smol, PAIRS, layer),
        M.pca(smol, AB, layer, centred=False),
        M.mean_centring(
            smol, [p.positive for p in PAIRS], [t for p in PAIRS for t in (p.positive, p.negative)], layer
        ),
        M.icv(smol, [(p.negative, p.positive) for p in PAIRS], [layer, layer + 1]),
    ]
    second = M.pca(smol, PAIRS, layer)
    for vec in first:
        for value in vec.directions.values():
            assert torch.isfinite(value).all() and float(value.norm()) > 0
    assert torch.equal(first[0][layer], second[layer])
    amap = M.affine(smol, PAIRS, layer)
    assert 0 < amap.meta["shrinkage_source"] <= 1  # d_model 576 ≫ 8 samples: shrinkage is needed
    lp = sw.score(smol, "How was your day?", " It was great.", M.affine_steering(amap, layer, 0.5))[0]
    assert torch.isfinite(lp).all()


# --- the estimator registry ----------------------------------------------------------------------
def test_registering_an_estimator_makes_it_usable_by_name(tiny_gpt2, monkeypatch):
    from steerwidgets import comparison
    from steerwidgets import evaluation as E

    seen = []

    @M.register_estimator("fixed_direction", reads="ab_items")
    def fixed_direction(model, items, layers, **options):
        seen.append((list(items), list(layers)))
        gen = torch.Generator().manual_seed(0)
        return sw.SteeringVector({layer: torch.randn(model.d_model, generator=gen) for layer in layers})

    try:
        assert M.get_estimator("fixed_direction").reads == "ab_items"
        assert M.get_estimator("fixed_direction")(tiny_gpt2, AB, [1]).layers == [1]
        assert "fixed_direction" in E.method_names()
        moon = ["The Moon is the Earth's only natural satellite."]
        monkeypatch.setattr(comparison, "_passages", lambda n: moon)
        opens = [sw.OpenEndedItem("How was your weekend?", "It was wonderful.", "It was awful.")]
        items = [*AB, sw.ABItem("Pick the kind reply.\n\n(A) Whatever\n(B) Have a nice day", "B", "A")]
        data = E.BehaviourData("kindness", items[2:], items[:2], PAIRS, opens, instruction="Be kind.")
        kw = dict(model=tiny_gpt2, layer=1, strengths=[-1, 0, 1], seeds=(0,), match=None, fluency=False)
        (row,) = E.compare(["fixed_direction"], [data], **kw).rows
        assert row["method"] == "fixed_direction" and np.isfinite(row["steerability"])
        assert seen[-1] == (items[2:], [1])  # compare fed it the training A/B items at [layer]
    finally:
        del M.ESTIMATORS["fixed_direction"]
    with pytest.raises(sw.SteeringError, match="unknown method"):
        M.get_estimator("fixed_direction")
    assert "fixed_direction" not in E.method_names()
    builtin = ["affine", "caa", "icv", "mean_centring", "mean_difference", "pca", "pca_uncentred"]
    assert E.method_names() == builtin
