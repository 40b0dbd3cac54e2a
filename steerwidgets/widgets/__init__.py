"""Jupyter widgets (anywidget) for steerwidgets; their front ends are bundled from js/src."""
