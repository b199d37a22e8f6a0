"""Evaluating landscapes: parameters and directions, trajectory PCA, surfaces and lines, and their engines.

Pure torch (no Lightning, plots, cli or sinks); it may import :mod:`lightning_landscape.records` and
:mod:`lightning_landscape.functional.objective`. The public functions are re-exported by
:mod:`lightning_landscape.functional`.
"""
