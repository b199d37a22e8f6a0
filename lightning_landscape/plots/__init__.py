"""Every figure, as a matplotlib ``Figure`` built from records (no pyplot state), and the background renderer.

It imports :mod:`lightning_landscape.records` only (no torch, no Lightning). :mod:`.landscape` draws surfaces,
lines and paths (re-exported here, as ``lightning_landscape.plots`` was one module before), :mod:`.compare`
runs side by side, :mod:`.metrics` metrics over training, :mod:`.solutions` the shared plane and barrier,
:mod:`.base` what they share, :mod:`.render` renders off the training thread.
"""

from lightning_landscape.plots.landscape import (
    BandPanel,
    comparison_figure,
    contour_figure,
    contour_levels,
    distance_figure,
    figure_to_png,
    figure_to_rgb,
    group_comparison_figure,
    line_figure,
    path_contour_figure,
    shared_levels,
    surface3d_figure,
)

__all__ = [
    "BandPanel",
    "comparison_figure",
    "contour_figure",
    "contour_levels",
    "distance_figure",
    "figure_to_png",
    "figure_to_rgb",
    "group_comparison_figure",
    "line_figure",
    "path_contour_figure",
    "shared_levels",
    "surface3d_figure",
]
