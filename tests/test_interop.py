"""Interop round trips: llama.cpp / repeng GGUF control vectors and steering-vectors' per-layer tensors."""

from __future__ import annotations

import types

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import steerwidgets as sw
from steerwidgets import interop


def _vector(layers=(1, 5, 12), d=8, seed=0) -> sw.SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return sw.SteeringVector(
        {layer: torch.randn(d, generator=gen) for layer in layers},
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        method="caa",
        read_position="answer letter",
        meta={"n_items": 3},
    )


def _raw_gguf(path, tensors, arch="controlvector", hint="llama"):
    writer = gguf.GGUFWriter(str(path), arch)
    if hint is not None:
        writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, value in tensors:
        writer.add_tensor(name, np.asarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_round_trip_keeps_directions_and_provenance(tmp_path):
    vec = _vector()
    path = interop.export_gguf(vec, tmp_path / "v.gguf")
    back = interop.import_gguf(path)
    assert back.layers == vec.layers
    for layer in vec.layers:
        assert torch.equal(back[layer], vec[layer])
    assert back.method == "caa" and back.model_id == vec.model_id and back.meta["n_items"] == 3
    assert back.created == vec.created


def test_gguf_file_is_what_llama_cpp_reads(tmp_path):
    path = interop.export_gguf(_vector(), tmp_path / "v.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 3
    names = {t.name: t for t in reader.tensors}
    assert set(names) == {"direction.1", "direction.5", "direction.12"}  # steerwidgets layer N → direction.N
    for tensor in names.values():
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and list(tensor.shape) == [8]


def test_gguf_export_refuses_what_llama_cpp_cannot_use(tmp_path):
    with pytest.raises(sw.VectorError, match="direction.0"):
        interop.export_gguf(_vector(layers=(0, 3)), tmp_path / "v.gguf")
    actadd = sw.SteeringVector({3: torch.ones(2, 8)})
    with pytest.raises(sw.VectorError, match="per-position"):
        interop.export_gguf(actadd, tmp_path / "a.gguf")


def test_import_repeng_style_file(tmp_path):
    a, b = np.arange(4.0), np.ones(4)
    path = _raw_gguf(tmp_path / "r.gguf", [("direction.3", a), ("direction.7", b)])
    vec = interop.import_gguf(path)
    assert vec.layers == [3, 7]  # direction.N → steerwidgets layer N (the output of 0-based block N)
    assert vec[3].tolist() == a.tolist() and vec[7].tolist() == b.tolist()
    assert vec.meta["model_hint"] == "llama" and vec.model_id == "llama"
    assert vec.method == "gguf control vector"


def test_import_rejects_other_gguf_files(tmp_path):
    model_like = _raw_gguf(tmp_path / "m.gguf", [("token_embd.weight", np.ones(4))], arch="llama")
    with pytest.raises(sw.VectorError, match="not a control vector"):
        interop.import_gguf(model_like)
    odd = _raw_gguf(tmp_path / "o.gguf", [("direction.x", np.ones(4))])
    with pytest.raises(sw.VectorError, match="direction.<N>"):
        interop.import_gguf(odd)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(sw.VectorError, match="GGUF"):
        interop.import_gguf(tmp_path / "junk.gguf")
    with pytest.raises(sw.VectorError, match="no GGUF"):
        interop.import_gguf(tmp_path / "missing.gguf")


def test_import_checks_the_model(tmp_path, tiny_llama):
    good = interop.export_gguf(_vector(layers=(1, 2), d=tiny_llama.d_model), tmp_path / "g.gguf")
    assert interop.import_gguf(good, tiny_llama).layers == [1, 2]
    bad = interop.export_gguf(_vector(layers=(1,), d=7), tmp_path / "b.gguf")
    with pytest.raises(sw.VectorError, match="d_model"):
        interop.import_gguf(bad, tiny_llama)


def test_steering_vectors_dict_and_object():
    layers = {4: torch.ones(8), "6": np.full(8, 2.0, dtype=np.float32)}
    vec = interop.from_steering_vectors(layers, model_id="m")
    assert vec.layers == [4, 6] and vec[6].tolist() == [2.0] * 8 and vec.model_id == "m"
    obj = types.SimpleNamespace(layer_activations={2: torch.zeros(8)}, layer_type="decoder_block")
    assert interop.from_steering_vectors(obj).meta["source"] == "steering_vectors.SteeringVector"
    with pytest.raises(sw.VectorError, match="decoder"):
        interop.from_steering_vectors(
            types.SimpleNamespace(layer_activations={2: torch.zeros(8)}, layer_type="mlp")
        )
    with pytest.raises(sw.VectorError, match="layer index"):
        interop.from_steering_vectors({"final": torch.zeros(8)})
    with pytest.raises(sw.VectorError, match="twice"):
        interop.from_steering_vectors({3: torch.zeros(8), "layer.3": torch.zeros(8)})
    round_trip = interop.from_steering_vectors(interop.to_steering_vectors(vec))
    assert all(torch.equal(round_trip[k], vec[k]) for k in vec.layers)


def test_steering_vectors_safetensors_file(tmp_path):
    path = tmp_path / "sv.safetensors"
    save_file({"layer.3": torch.ones(8), "10": torch.arange(8.0)}, str(path))
    vec = interop.from_steering_vectors(path)
    assert vec.layers == [3, 10] and vec[10].tolist() == list(range(8))
    own = _vector()
    own.save(tmp_path / "own.safetensors")
    again = interop.from_steering_vectors(tmp_path / "own.safetensors")
    assert again.method == "caa" and torch.equal(again[5], own[5])


def test_pickle_files_are_never_opened(tmp_path):
    path = tmp_path / "vector.pt"
    path.write_bytes(b"\x80\x04this would be unpickled by torch.load")
    for suffix in (".pt", ".pth", ".pkl"):
        target = path.with_suffix(suffix)
        target.write_bytes(path.read_bytes())
        with pytest.raises(sw.VectorError, match="never unpickles") as info:
            interop.from_steering_vectors(target)
        assert "safetensors" in str(info.value)
    (tmp_path / "vector.npz").write_bytes(b"zip")
    with pytest.raises(sw.VectorError, match="safetensors"):
        interop.from_steering_vectors(tmp_path / "vector.npz")


def test_imported_vector_steers_like_the_original(tmp_path, tiny_llama):
    vec = _vector(layers=(2,), d=tiny_llama.d_model)
    back = interop.import_gguf(interop.export_gguf(vec, tmp_path / "v.gguf"), tiny_llama)
    one = sw.score(tiny_llama, "Hello", " world", sw.Steering(vec, 2, 1.0))[0]
    two = sw.score(tiny_llama, "Hello", " world", sw.Steering(back, 2, 1.0))[0]
    assert torch.equal(one, two)
