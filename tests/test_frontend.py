"""The front-end wiring (steerwidgets/widgets/_frontend.py): one shared bundle per kernel, sent as a
binary buffer, and a small loader as every widget's `_esm`."""

from __future__ import annotations

import hashlib
import json

import pytest
from ipywidgets.widgets.widget import _remove_buffers

from steerwidgets import evaluation
from steerwidgets.widgets import _frontend as F
from steerwidgets.widgets.compare import CompareWidget

KINDS = ("playground", "reliability", "layersweep", "compare")

pytestmark = pytest.mark.skipif(
    not (F.STATIC_DIR / F.SHARED).is_file(), reason="front end not built (bash scripts/build_js.sh)"
)


def _widget() -> CompareWidget:
    return CompareWidget.from_result(evaluation.CompareResult([], {}, {}), model=None)


def test_each_esm_is_a_small_loader_and_the_bundle_holds_the_renders():
    shared = (F.STATIC_DIR / F.SHARED).read_text()
    assert len(shared) > 100_000  # vega is in it
    for kind in KINDS:
        loader = F.bundle(kind).read_text()
        assert len(loader) < 4_000, kind
        assert json.dumps(kind) in loader
        assert "vega" not in loader.lower()
    assert not (F.STATIC_DIR / "hello.js").exists()


def test_widgets_share_one_bundle_sent_as_a_binary_buffer():
    a, b = _widget(), _widget()
    try:
        shared = F.shared_bundle()
        data = (F.STATIC_DIR / F.SHARED).read_bytes()
        assert shared.source == data
        assert shared.digest == hashlib.sha256(data).hexdigest()[:16]
        ref = f"anywidget:{shared.model_id}"
        assert a.get_state()["_bundle"] == ref == b.get_state()["_bundle"]
        assert F.shared_bundle() is shared  # made once per kernel

        # The shared model's state carries the bundle as a buffer, not as JSON text ...
        state, paths, buffers = _remove_buffers(shared.get_state())
        assert paths == [["source"]] and bytes(buffers[0]) == data
        # ... and a widget's own state (its `_esm` included) stays small.
        widget_state, _, _ = _remove_buffers(a.get_state())
        assert len(json.dumps(widget_state)) < 30_000
    finally:
        a.close()
        b.close()


def test_a_closed_shared_bundle_is_replaced():
    first = F.shared_bundle()
    first.close()
    second = F.shared_bundle()
    assert second is not first and second.comm is not None
    w = _widget()
    try:
        assert w.get_state()["_bundle"] == f"anywidget:{second.model_id}"
    finally:
        w.close()


def test_missing_front_end_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(F, "STATIC_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="build_js.sh"):
        F.bundle("playground")
    with pytest.raises(FileNotFoundError, match="build_js.sh"):
        F.shared_bundle()
