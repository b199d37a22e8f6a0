"""Figures at fixed margins: every label, tick label and title drawn lies inside the figure."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection

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
    "contour, brief": lambda: contour_figure(_surface(12345.0), brief=True),
    "contour small losses, brief": lambda: contour_figure(_surface(1e-4), brief=True),
    "contour with an offset, brief": lambda: contour_figure(
        SurfaceRecord(XS, XS, 2.301 + 1e-6 * np.add.outer(XS, XS), meta=META), brief=True
    ),
    "lines, brief": lambda: line_figure([LineRecord(XS, 250.0 * XS**2, META)], xlabel="distance", brief=True),
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
    extents = [(ax.get_label() or ax.get_title(), ax.get_tightbbox(renderer)) for ax in fig.axes]
    extents += [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts]  # a brief colour scale's
    for name, extent in extents:  # each plot with its drawn tick labels, axis labels, title and legend
        inside = extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y0 >= box.y0 - 1
        assert inside and extent.y1 <= box.y1 + 1, f"{name!r}: {extent} outside {box}"


def test_a_long_title_wraps_and_the_plot_makes_room():
    _, ax_short, _, short = framed((5.6, 3.8), title="loss")
    _, ax_long, _, long = framed((5.6, 3.8), title="; ".join(LONG_FLAGS * 2))
    assert short == "loss" and long.count("\n") >= 2
    assert ax_long.get_position().y1 < ax_short.get_position().y1  # a lower top edge for the extra lines


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_axis_labels_sit_at_fixed_offsets_whatever_the_tick_labels():
    # Placed in the margins, not measured from the tick labels at each draw: a y axis with wide tick
    # labels (12345.678) puts its label where one with narrow ones (0, 1) does, and both lie left of
    # the tick labels, and the x label below them.
    narrow = line_figure([LineRecord(XS, XS**2, META)], xlabel="distance")
    wide = line_figure([LineRecord(XS, 12345.678 + 1e-3 * XS**2, META)], xlabel="distance")
    boxes = []
    for fig in (narrow, wide):
        renderer = _drawn(fig)
        ax = fig.axes[0]
        ylabel, xlabel = (
            ax.yaxis.label.get_window_extent(renderer),
            ax.xaxis.label.get_window_extent(renderer),
        )
        ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
        xticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert ylabel.x1 <= min(t.x0 for t in ticks) and xlabel.y1 <= min(t.y0 for t in xticks)
        boxes.append((ylabel.x0, xlabel.y0))
    assert boxes[0] == pytest.approx(boxes[1])


def test_a_brief_figure_draws_fewer_ticks_no_legend_and_no_contour_lines():
    xs = np.linspace(-8.3, 8.3, 5)  # a span as a PCA plane has it
    wide = SurfaceRecord(
        xs, xs, 3.0 * (np.add.outer(xs**2, xs**2) + 0.1), path=np.array([[6.0, -1.0], [0, 0]])
    )
    full, brief = contour_figure(wide), contour_figure(wide, brief=True)
    for fig in (full, brief):
        _drawn(fig)

    def shown(axis):  # the tick labels drawn (within the view)
        lo, hi = sorted(axis.get_view_interval())
        return [v for v in axis.get_majorticklocs() if lo - 1e-9 <= v <= hi + 1e-9]

    (ax, cax), (bx,) = full.axes, brief.axes  # brief: the colour scale drawn without an axes
    assert ax.get_legend() is not None and bx.get_legend() is None
    assert len(ax.collections) == 2 and len(bx.collections) == 1  # the filling, and white lines over it
    pairs = ((ax.xaxis, bx.xaxis), (ax.yaxis, bx.yaxis))
    assert all(len(shown(b)) <= min(len(shown(a)), 5) for a, b in pairs)
    assert sum(len(shown(b)) for _, b in pairs) < sum(len(shown(a)) for a, _ in pairs)
    # Its colour scale: a band per pair of levels, the colours contourf filled them with, bottom to top
    # over the colour bar's place, linear in the value; its ticks within the levels, then its label.
    fill = bx.collections[0]
    bands = next(c for c in brief.artists if isinstance(c, PolyCollection))
    levels = fill.levels
    assert len(bands.get_paths()) == len(levels) - 1
    assert np.allclose(bands.get_facecolor(), fill.cmap(fill.norm((levels[:-1] + levels[1:]) / 2)))
    assert np.allclose(bands.get_facecolor(), fill.get_facecolor()[1:-1])  # contourf's own (less extends)
    tops = [p.vertices[:, 1].max() for p in bands.get_paths()]
    assert tops == sorted(tops) and tops[-1] == pytest.approx(bx.get_position().y1)
    heights = np.diff([bx.get_position().y0, *tops])
    assert np.allclose(heights / heights.sum(), np.diff(levels) / (levels[-1] - levels[0]))
    assert bands.get_paths()[0].vertices[:, 0].min() == pytest.approx(cax.get_position().x0)
    labels = [t.get_text() for t in brief.texts]
    assert labels[-1] == "loss" and 2 <= len(labels) - 1 <= 5
    values = [float(t.replace("\u2212", "-")) for t in labels[:-1]]  # matplotlib's minus sign
    assert values == sorted(values) and levels[0] <= values[0] and values[-1] <= levels[-1]
    assert bx.get_title().split("\n")[-1] == "\u25cf start, \u2605 end"  # the legend's words, a title line
    # The same path and markers: only the text around them is shorter.
    assert [tuple(line.get_xydata().ravel()) for line in ax.lines] == [
        tuple(line.get_xydata().ravel()) for line in bx.lines
    ]


@pytest.mark.parametrize("scale", [1e-4, 3.0, 12345.0])
def test_a_brief_colour_scale_label_clears_its_tick_labels(scale):
    fig = contour_figure(_surface(scale), brief=True)
    renderer = _drawn(fig)
    *ticks, label = [t.get_window_extent(renderer) for t in fig.texts]
    assert ticks and label.x0 >= max(t.x1 for t in ticks) and label.x1 <= fig.bbox.x1


def test_a_brief_line_figure_names_its_lines_by_colour_in_the_title():
    from matplotlib.colors import to_rgba

    records = [
        LineRecord(XS, XS**2, {"label": "pca direction 1"}),
        LineRecord(XS, 2 * XS**2, {"label": "pca 2"}),
    ]
    full, brief = line_figure(records, xlabel="distance"), line_figure(records, xlabel="distance", brief=True)
    assert full.axes[0].get_legend() is not None and brief.axes[0].get_legend() is None
    ax = brief.axes[0]
    assert ax.get_title().split("\n")[-1] == "blue: pca direction 1, orange: pca 2"
    assert [to_rgba(line.get_color()) for line in ax.lines] == [to_rgba("tab:blue"), to_rgba("tab:orange")]
    many = [LineRecord(XS, k * XS**2) for k in range(1, 8)]  # more lines than named colours: a legend
    assert line_figure(many, brief=True).axes[0].get_legend() is not None
