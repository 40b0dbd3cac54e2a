"""A demo widget that proves the front-end plumbing (bundle, CSS, synced traits, offline charts).

>>> from steerwidgets.widgets.hello import HelloWidget
>>> HelloWidget(text="hi", spec=altair_chart.to_dict())  # doctest: +SKIP
"""

from __future__ import annotations

import anywidget
import traitlets

from ._frontend import bundle, css


class HelloWidget(anywidget.AnyWidget):
    """A button that increments ``count``, a text line showing ``text`` and a vega-lite chart."""

    _esm = bundle("hello")
    _css = css()

    count = traitlets.Int(0).tag(sync=True)
    text = traitlets.Unicode("").tag(sync=True)
    spec = traitlets.Dict().tag(sync=True)
