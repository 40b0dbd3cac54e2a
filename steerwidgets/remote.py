"""Remote models (NDIF through nnsight): what runs remotely, what needs local weights, and an offline check.

``load_model("org/model", remote=True)`` makes every engine trace pass ``remote=True`` to nnsight, which ships
the trace to NDIF; steerwidgets has no networking code of its own. What a remote run can do is limited by
what nnsight ships: the traced block's source and the objects it references go to the server, and only values
marked ``.save()`` come back. Python-side callbacks (token streaming), mutations of local objects inside the
trace and autograd through returned values do not survive the round trip.

:data:`REMOTE_SUPPORT` says, per feature, what our offline checks (``tests/test_remote.py``) show;
:func:`require_local` refuses the features that need local weights before any work, and
:func:`remote_notice` gives a widget the one-line notice to show. :func:`simulate_remote` runs every trace of
a local model the way a remote run would: serialised into nnsight's request payload, deserialised with
steerwidgets and other non-server modules hidden, executed against the local weights, and only the saved
values pushed back. It is a dry run of the request path, not a run on NDIF.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .interventions import SteeringError

WORKS = "works"
NEEDS_LOCAL = "needs local weights"
FALLS_BACK = "falls back"

#: Feature -> what a remote run does, as far as the offline checks in ``tests/test_remote.py`` show (each
#: entry point's request serialises, deserialises without steerwidgets installed, and returns the same
#: numbers as a local run). No test talks to NDIF. Keys are the names :func:`require_local` and
#: :func:`remote_notice` take.
REMOTE_SUPPORT: dict[str, str] = {
    "generate": f"{WORKS}: all tokens arrive when generation ends; the norm ratio ‖λv‖/mean‖h‖ is not "
    "returned (nan)",
    "token streaming": f"{NEEDS_LOCAL}: on_token/cancel are Python callbacks during generation, which a "
    "remote run cannot call back",
    "playground": f"{NEEDS_LOCAL}: the Playground streams tokens as they are generated and cancels runs "
    "in flight; call sw.generate(model, prompt, steering) without on_token instead",
    "score": WORKS,
    "next_token_logprobs": WORKS,
    "read_activations": WORKS,
    "caa": WORKS,
    "propensity_sweep": f"{WORKS} (letter and answer-text protocols, with the verdict's null)",
    "gradient null": f"{FALLS_BACK} to the sampled null: the gradient needs autograd through the logits, "
    "which come back without their graph; the sampled null costs two extra rows per direction and item",
    "function_vector": WORKS,
}


def support(feature: str) -> str:
    """The :data:`REMOTE_SUPPORT` entry of ``feature`` (KeyError names the known features)."""
    try:
        return REMOTE_SUPPORT[feature]
    except KeyError:
        raise KeyError(f"unknown feature {feature!r}; known: {sorted(REMOTE_SUPPORT)}") from None


def remote_null_method(model: Any, null_method: str) -> str:
    """The null method a sweep uses: the gradient null needs autograd through the model's logits, which a
    remote run does not return (only saved values, without their graph), so remote sweeps sample the null."""
    return "sampled" if is_remote(model) and null_method == "gradient" else null_method


def is_remote(model: Any) -> bool:
    return bool(getattr(model, "remote", False))


def require_local(model: Any, feature: str) -> None:
    """Raise :class:`SteeringError` before any work when ``model`` is remote and ``feature`` needs local
    weights; the message names the feature, why, and what to do instead."""
    entry = support(feature)
    if is_remote(model) and entry.startswith(NEEDS_LOCAL):
        raise SteeringError(
            f"{feature} {entry} (the model {getattr(model, 'name', '?')!r} is remote, on NDIF). Load it "
            f"locally with sw.load_model(name) to use {feature}; see 'Remote models (NDIF)' in docs/index.md."
        )


def remote_notice(model: Any, feature: str = "playground") -> str | None:
    """One line for a widget to show when ``model`` is remote (``None`` when it is local), e.g.
    ``remote_notice(model)`` -> ``"needs local weights: the Playground streams tokens ..."``; a feature that
    works remotely gets ``"works remotely (NDIF): ..."``."""
    if not is_remote(model):
        return None
    entry = support(feature)
    return entry if entry.startswith(NEEDS_LOCAL) else f"{feature} works remotely (NDIF): {entry}"


# ----------------------------------------------------------------------------------------------
# The offline dry run of nnsight's remote path
# ----------------------------------------------------------------------------------------------
@dataclass
class Request:
    """One trace as a remote run would have shipped it."""

    payload_bytes: int
    returned: list[str]  # names of the saved values that came back


@dataclass
class RemoteLog:
    requests: list[Request] = field(default_factory=list)


# Module roots an NDIF server has installed (nnsight's own LocalSimulationBackend list).
_SERVER_MODULES = {"torch", "numpy", "transformers", "accelerate", "diffusers", "einops", "peft", "nnsight"}


def _hide_local_modules() -> dict:
    hidden: dict = {"modules": {}, "paths": []}
    for path in list(sys.path):
        if "site-packages" in path or "lib/python" in path:
            continue
        hidden["paths"].append(path)
        sys.path.remove(path)
    for name in list(sys.modules):
        root = name.split(".")[0]
        if root in _SERVER_MODULES or root in sys.stdlib_module_names:
            continue
        hidden["modules"][name] = sys.modules.pop(name)
    return hidden


def _restore(hidden: dict) -> None:
    sys.modules.update(hidden["modules"])
    sys.path.extend(hidden["paths"])


def ship_steerwidgets_by_value() -> None:
    """Make nnsight send steerwidgets' own code (the steering functions and classes a trace calls) with each
    remote request, by source: an NDIF server does not have steerwidgets installed."""
    from nnsight import ndif

    ndif.register(sys.modules[__package__])


class _OfflineRemoteBackend:
    """What ``remote=True`` does, with the network replaced by a local round trip."""

    def __init__(self, nn: Any, log: RemoteLog):
        self.nn, self.log = nn, log

    def __call__(self, tracer: Any) -> None:
        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, mark
        from nnsight.tracing.util import push

        pull_env()  # as RemoteBackend: local modules are registered to travel by value
        ship_steerwidgets_by_value()  # as load_model(..., remote=True)
        blob = RequestModel.serialize(tracer, compress=False)
        filename = tracer.info.frame.f_code.co_filename
        saved_line = linecache.cache.get(filename)
        hidden = _hide_local_modules()
        try:  # the server has none of the user's modules
            restored = RequestModel.deserialize(blob, self.nn._remoteable_persistent_objects())
        finally:
            _restore(hidden)
            if saved_line is not None:
                linecache.cache[filename] = saved_line
            else:
                linecache.cache.pop(filename, None)
        frame = restored.info.frame
        restored.execute(restored.info.code)  # as the server runs it
        saves = _saves()
        result = {k: v for k, v in frame.f_locals.items() if id(v) in saves}  # only saved values return
        buf = io.BytesIO()  # the result travels as torch.save bytes
        torch.save(result, buf, pickle_protocol=4)
        buf.seek(0)
        result = torch.load(buf, map_location="cpu", weights_only=False)
        self.log.requests.append(Request(len(blob), sorted(result)))
        for value in result.values():
            mark(value)
        push(tracer.info.frame, result)


@contextlib.contextmanager
def simulate_remote(model: Any) -> Iterator[RemoteLog]:
    """Run ``model``'s traces (a locally loaded model) through nnsight's remote request path offline.

    Inside the block ``model.remote`` is true, so :func:`require_local` refuses what needs local weights,
    and every trace is serialised, deserialised without steerwidgets importable, run on the local weights
    and only its saved values returned. Yields a :class:`RemoteLog` of the requests. No network is used.
    """
    log = RemoteLog()
    nn = model.nn
    old_remote = model.remote
    backend = _OfflineRemoteBackend(nn, log)
    object.__setattr__(nn, "_remote_backend", lambda *args, **kwargs: backend)
    model.remote = True
    try:
        yield log
    finally:
        model.remote = old_remote
        object.__delattr__(nn, "_remote_backend")
