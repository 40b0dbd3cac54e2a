"""Moved to :mod:`steerwidgets.charts` (every chart, one SVG path); kept for ``widgets/playground.py``'s
imports until its rewrite imports from there."""

from ..charts import RANDOM_SERIES, VECTOR_SERIES, strength_sweep_spec, to_svg

__all__ = ["RANDOM_SERIES", "VECTOR_SERIES", "strength_sweep_spec", "to_svg"]
