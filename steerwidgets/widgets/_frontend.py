"""The bundled front end: ``steerwidgets/static/`` and how widgets use it.

``static/widgets.js`` (from ``js/src/widgets.js``) is one ES module with every widget's render and
vega. anywidget sends a widget's ``_esm`` with the state of each widget instance and imports it
from a fresh ``blob:`` URL each time, so a full bundle as ``_esm`` would be sent and evaluated once
per widget on the page (≈ 0.9 MB each). Instead each widget's ``_esm`` is a ≈1 KB loader
(``static/<kind>.js``, built from ``js/src/loader.js``) and its ``_bundle`` trait refers to one
shared :class:`SharedBundle` model per kernel whose ``source`` holds the text of ``widgets.js``
as a binary buffer: the page receives and imports it once, whatever the number of widgets.

The files are built from ``js/src`` by ``bash scripts/build_js.sh`` (or ``make setup``); a wheel
build runs the same build through hatch-jupyter-builder. Widgets use them as::

    class MyWidget(anywidget.AnyWidget):
        _esm = bundle("my_widget")   # the loader for js/src/my_widget.js (listed in js/build.mjs)
        _css = css()
        _bundle = shared_bundle_trait()
"""

from __future__ import annotations

import hashlib
import pathlib

import anywidget
import ipywidgets
import traitlets

STATIC_DIR = pathlib.Path(__file__).resolve().parent.parent / "static"
SHARED = "widgets.js"

_FIX = (
    "The steerwidgets front end has not been built. From the repository root run "
    "`bash scripts/build_js.sh` (needs Node.js >= 18 and npm) or `make setup`."
)


def _existing(path: pathlib.Path) -> pathlib.Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. {_FIX}")
    return path


def bundle(name: str) -> pathlib.Path:
    """Path of the ``_esm`` loader for widget kind ``name`` (``static/<name>.js``).

    Raises:
        FileNotFoundError: the front end has not been built; the message says how to build it.
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


class SharedBundle(ipywidgets.Widget):
    """A view-less widget model holding the shared front-end bundle (``static/widgets.js``).

    ``source`` is sent to the browser as a binary buffer; ``digest`` (sha256 prefix) lets the page
    import each distinct bundle once.
    """

    source = traitlets.Bytes(b"").tag(sync=True)
    digest = traitlets.Unicode("").tag(sync=True)


_shared: SharedBundle | None = None
_shared_key: tuple[int, int] | None = None


def shared_bundle() -> SharedBundle:
    """The kernel's :class:`SharedBundle` for the current ``static/widgets.js`` (made on first use,
    and again when the file changed or the model was closed).

    Raises:
        FileNotFoundError: the front end has not been built; the message says how to build it.
    """
    global _shared, _shared_key
    path = _existing(STATIC_DIR / SHARED)
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    if _shared is None or _shared.comm is None or key != _shared_key:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        if _shared is None or _shared.comm is None or _shared.digest != digest:
            _shared = SharedBundle(source=data, digest=digest)
        _shared_key = key
    return _shared


class _SharedBundleTrait(anywidget.WidgetTrait):
    """A synced reference (``"anywidget:<model_id>"``) to :func:`shared_bundle`, its default."""

    default_value = traitlets.Undefined

    def make_dynamic_default(self) -> SharedBundle:
        return shared_bundle()


def shared_bundle_trait() -> traitlets.TraitType:
    """The ``_bundle`` trait every steerwidgets widget declares next to ``_esm``."""
    return _SharedBundleTrait().tag(sync=True)
