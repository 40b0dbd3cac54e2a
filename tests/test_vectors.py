"""SteeringVector arithmetic, persistence and safety."""

from __future__ import annotations

import pickle

import pytest
import torch

import steerwidgets as sw


def _vec(**kw):
    return sw.SteeringVector({1: torch.tensor([3.0, 4.0]), 2: torch.tensor([1.0, 0.0])}, **kw)


def test_arithmetic_and_norms():
    a = _vec(method="caa")
    b = sw.SteeringVector({2: torch.tensor([0.0, 2.0])}, method="actadd")
    assert a.norms() == {1: 5.0, 2: 1.0}
    assert (a + b)[2].tolist() == [1.0, 2.0]
    assert (a - b)[2].tolist() == [1.0, -2.0]
    assert (a - b)[1].tolist() == [3.0, 4.0]
    assert (2 * a)[1].tolist() == [6.0, 8.0]
    assert (a * -0.5)[1].tolist() == [-1.5, -2.0]
    assert (-a)[2].tolist() == [-1.0, 0.0]
    assert "caa" in (a + b).method and "actadd" in (a + b).method
    with pytest.raises(sw.VectorError, match="hidden sizes differ"):
        a + sw.SteeringVector({1: torch.ones(3)})


def test_save_load_round_trip(tmp_path):
    vec = _vec(model_id="m", method="caa", read_position="answer letter", dataset_fingerprint="abc")
    path = vec.save(tmp_path / "v.safetensors")
    back = sw.SteeringVector.load(path)
    assert back.layers == [1, 2]
    assert torch.equal(back[1], vec[1])
    assert (back.model_id, back.method, back.read_position, back.dataset_fingerprint) == (
        "m",
        "caa",
        "answer letter",
        "abc",
    )
    assert back.created == vec.created


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"layer.1": torch.ones(2)}))
    with pytest.raises(sw.VectorError, match="never\\s+unpickles|not a safetensors"):
        sw.SteeringVector.load(path)


def test_wrong_hidden_size_on_load(tmp_path, tiny_llama):
    path = sw.SteeringVector({0: torch.ones(7)}).save(tmp_path / "v.safetensors")
    with pytest.raises(sw.VectorError, match="hidden size 7"):
        sw.SteeringVector.load(path, model=tiny_llama)


def test_missing_layer_names_available_layers():
    with pytest.raises(sw.VectorError, match=r"has layers \[1, 2\]"):
        _vec()[5]


@pytest.mark.parametrize(
    "directions",
    [
        {},
        {0: torch.tensor([float("nan"), 1.0])},
        {0: torch.ones(2, 2, 2)},
        {0: torch.ones(2), 1: torch.ones(3)},
    ],
)
def test_invalid_vectors(directions):
    with pytest.raises(sw.VectorError):
        sw.SteeringVector(directions)


def test_random_like_keeps_norms():
    vec = _vec()
    rnd = sw.random_like(vec, seed=3)
    assert rnd.norms() == pytest.approx(vec.norms())
    assert not torch.allclose(rnd[1], vec[1])
    assert torch.equal(sw.random_like(vec, seed=3)[1], rnd[1])
