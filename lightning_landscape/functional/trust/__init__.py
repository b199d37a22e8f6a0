"""How far to trust a landscape: probe noise, direction and distance sensitivity, the path on the plane,
the random-walk baseline, and the indicators put together.

Pure torch; it may import :mod:`lightning_landscape.functional.landscape` and
:mod:`lightning_landscape.records`.
"""
