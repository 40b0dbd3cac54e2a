"""IPython magics: ``%steer_model`` loads a model once, ``%%steer`` opens a Playground on a prompt.

``%load_ext steerwidgets`` registers them. They keep the quick path quick: a prompt in a cell, a
layer and a strength, and the widget with its checks appears.

    %steer_model                       # the default model (SmolLM2-135M-Instruct, offline)
    %steer_model model                 # or reuse a model already loaded in the notebook
    %%steer --layer 10 --strength 4 --vector sentiment --positions all
    Tell me about your day.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

STEER_USAGE = (
    "%%steer [--layer L] [--strength S] [--vector NAME] [--positions SPEC] [--max-new-tokens N] "
    "[--seed N] [--relative] [--targets TARGET CONTRAST]"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (shown as one clean line) instead of exiting the kernel."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}\nusage: {STEER_USAGE}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError((message or "").strip() or f"usage: {STEER_USAGE}")


def _steer_parser() -> _Parser:
    p = _Parser(prog="%%steer", add_help=False)
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument("--vector", default=None)
    p.add_argument("--positions", default="all")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relative", action="store_true")
    p.add_argument("--targets", nargs=2, default=None, metavar=("TARGET", "CONTRAST"))
    return p


@magics_class
class SteerMagics(Magics):
    """``%steer_model`` and ``%%steer``; the loaded model is remembered on this object."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self.model: Any = None

    @line_magic
    def steer_model(self, line: str = "") -> Any:
        """Load a model for ``%%steer`` and return it.

        The argument is a model name (as for ``sw.load_model``), nothing for the default model, or
        the name of a notebook variable holding a loaded model (reused, not loaded again).
        """
        import steerwidgets as sw

        name = line.strip() or None
        if name and len(shlex.split(name)) != 1:
            raise UsageError(f"%steer_model takes one model name (or none), got {line.strip()!r}")
        value = (self.shell.user_ns if self.shell is not None else {}).get(name) if name else None
        if isinstance(value, sw.SteerableModel):
            self.model = value
            return value
        try:
            self.model = sw.load_model(name)
        except (sw.ModelLoadError, OSError, ValueError) as exc:
            raise UsageError(f"could not load model {name or sw.DEFAULT_MODEL!r}: {exc}") from exc
        return self.model

    @cell_magic
    def steer(self, line: str, cell: str) -> Any:
        """Open a Playground on the cell's text (the prompt) with the given steering settings."""
        import steerwidgets as sw
        from steerwidgets.widgets.playground import BUILTIN_VECTORS, Playground

        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse the %%steer options: {exc}\nusage: {STEER_USAGE}") from exc
        args = _steer_parser().parse_args(argv)
        prompt = cell.strip("\n")
        if not prompt.strip():
            raise UsageError("%%steer needs a prompt: write it in the cell body, below the %%steer line")
        if args.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        if self.model is None:
            self.steer_model("")
        model = self.model
        if args.layer is not None and not 0 <= args.layer < model.n_layers:
            raise UsageError(
                f"--layer {args.layer} is out of range: {model.name} has {model.n_layers} layers, "
                f"so use 0..{model.n_layers - 1}"
            )
        vector: Any = None
        vectors: dict[str, Any] = {}
        if args.vector is not None:
            if args.vector in BUILTIN_VECTORS:
                vector = args.vector
            else:
                value = (self.shell.user_ns if self.shell is not None else {}).get(args.vector)
                if not isinstance(value, sw.SteeringVector):
                    raise UsageError(
                        f"--vector {args.vector!r} is neither a built-in set "
                        f"{list(BUILTIN_VECTORS)} nor a SteeringVector variable in this notebook"
                    )
                vectors = {args.vector: value}
                vector = args.vector
        try:
            sw.interventions.check_position_spec(args.positions)
        except sw.SteeringError as exc:
            raise UsageError(f"--positions: {exc}") from exc
        return Playground(
            model,
            vector=vector,
            vectors=vectors,
            prompt=prompt,
            layer=args.layer,
            strength=args.strength,
            positions=args.positions,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            relative=args.relative,
            targets=tuple(args.targets) if args.targets else None,
        )


def load_ipython_extension(ip: Any) -> None:
    """Register the magics (``%load_ext steerwidgets``)."""
    ip.register_magics(SteerMagics(ip))
