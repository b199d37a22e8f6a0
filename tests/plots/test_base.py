"""Figures at fixed margins: every label, tick label and title drawn lies inside the figure."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lightning_landscape.plots.base import framed
from lightning_landscape.plots.landscape import (
    contour_figure,
    distance_figure,
    line_figure,
    path_contour_figure,
)
from lightning_landscape.plots.metrics import critical_figure, stability_figure
from lightning_landscape.records.record import LineRecord, SurfaceRecord

XS = np.linspace(-1.0, 1.0, 5)
META = {"directions": "pca", "explained_variance": [0.512, 0.203], "epoch": 120, "global_step": 123456}
LONG_FLAGS = ["path 40 % off-plane", "grid too coarse for the basin (radius 0.1 < 2 cells)", "noisy probe"]


def _surface(scale: float) -> SurfaceRecord:
    path = np.array([[0.9, 0.8], [0.5, 0.4], [0.0, 0.0]])
    return SurfaceRecord(XS, XS, scale * (np.add.outer(XS**2, XS**2) + 0.1), path=path, meta=META)


def _distance() -> LineRecord:
    t = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    alphas = np.concatenate([-t[::-1], [0.0], t])
    return LineRecord(alphas, 1.0 + alphas**2, {"centre_loss": 1.0, "threshold": 0.1, "radius": 0.316})


FIGURES = {
    "contour small losses": lambda: contour_figure(_surface(1e-4)),
    "contour large losses": lambda: contour_figure(_surface(12345.0)),
    "path contour, long title": lambda: path_contour_figure(
        _surface(3.0), np.array([[0.5, 0.5], [0.1, 0.2]]), np.array([2.0, 0.3]), flags=LONG_FLAGS
    ),
    "lines": lambda: line_figure(
        [LineRecord(XS, 1e-3 * XS**2 + 2.5, META), LineRecord(XS, 250.0 * XS**2, META)], xlabel="distance"
    ),
    "lines with a metric": lambda: line_figure(
        [LineRecord(XS, XS**2, META, metrics=np.linspace(0.1, 0.9, 5))], xlabel="alpha"
    ),
    "distance, flagged": lambda: distance_figure([_distance()], flags=LONG_FLAGS),
    "stability": lambda: stability_figure(
        [(4, "periodic", {"eos/ratio": 0.5}), (80000, "final", {"eos/ratio": 1.1})]
    ),
    "critical": lambda: critical_figure(
        [(0, "periodic", {"critical/lambda_c": 2.0, "critical/threshold": 40.0})]
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_text_drawn_lies_inside_the_figure(name):
    fig = FIGURES[name]()
    assert fig.get_layout_engine() is None  # placed by margins, not measured by a layout engine
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:  # each plot with its drawn tick labels, axis labels, title and legend
        extent = ax.get_tightbbox(renderer)
        inside = extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y0 >= box.y0 - 1
        assert inside and extent.y1 <= box.y1 + 1, (
            f"{ax.get_label() or ax.get_title()!r}: {extent} outside {box}"
        )


def test_a_long_title_wraps_and_the_plot_makes_room():
    _, ax_short, _, short = framed((5.6, 3.8), title="loss")
    _, ax_long, _, long = framed((5.6, 3.8), title="; ".join(LONG_FLAGS * 2))
    assert short == "loss" and long.count("\n") >= 2
    assert ax_long.get_position().y1 < ax_short.get_position().y1  # a lower top edge for the extra lines
