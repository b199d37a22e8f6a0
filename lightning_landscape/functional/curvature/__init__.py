"""Curvature: operators (``v -> H v``), estimators on a matvec (Lanczos, Hutchinson), sharpness, the edge of
stability and per-block curvature.

Pure torch; it may import :mod:`lightning_landscape.functional.landscape` (to evaluate losses) and
:mod:`lightning_landscape.records`. The public functions are re-exported by
:mod:`lightning_landscape.functional`.
"""
