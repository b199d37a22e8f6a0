"""Two solutions on one landscape: the plane through three weight vectors, and the loss barrier between two.

Pure torch; it may import :mod:`lightning_landscape.functional.landscape` and
:mod:`lightning_landscape.records`.
:mod:`lightning_landscape.solutions` reads runs from disk and calls these.
"""
