"""Where the bundled front end lives: ``steerwidgets/static/<name>.js`` and ``widget.css``.

The bundles are built from ``js/src`` by ``bash scripts/build_js.sh`` (or ``make setup``); a wheel
build runs the same build through hatch-jupyter-builder. Widgets use them as::

    class MyWidget(anywidget.AnyWidget):
        _esm = bundle("my_widget")   # js/src/my_widget.js -> steerwidgets/static/my_widget.js
        _css = css()
"""

from __future__ import annotations

import pathlib

STATIC_DIR = pathlib.Path(__file__).resolve().parent.parent / "static"

_FIX = (
    "The steerwidgets front end has not been built. From the repository root run "
    "`bash scripts/build_js.sh` (needs Node.js >= 18 and npm) or `make setup`."
)


def _existing(path: pathlib.Path) -> pathlib.Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. {_FIX}")
    return path


def bundle(name: str) -> pathlib.Path:
    """Path of the bundled ES module for widget ``name`` (built from ``js/src/<name>.js``).

    Raises:
        FileNotFoundError: the bundle has not been built; the message says how to build it.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid bundle name {name!r}")
    return _existing(STATIC_DIR / f"{name}.js")


def css() -> pathlib.Path:
    """Path of the shared stylesheet (built from ``js/src/widget.css``).

    Raises:
        FileNotFoundError: the front end has not been built; the message says how to build it.
    """
    return _existing(STATIC_DIR / "widget.css")
