"""Brief figures drawn straight to pixels, against matplotlib drawing the same records.

matplotlib is the independent reference: ``contour_figure(brief=True)`` and ``line_figure(brief=True)``
place their plot where ``frame_layout`` says, as the pixel builders do, so the same pixel shows the
same point of the landscape in both images.
"""

import io

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm
from PIL import Image

from lightning_landscape.plots.base import contour_levels, figure_to_rgb, frame_layout
from lightning_landscape.plots.brief import COLOURS, band_colours, brief_lines, brief_surface
from lightning_landscape.plots.landscape import contour_figure, line_figure
from lightning_landscape.plots.render import render_figure
from lightning_landscape.records.record import LineRecord, SurfaceRecord

XS = np.linspace(-1.0, 1.0, 5)
META = {"directions": "pca", "explained_variance": [0.5, 0.2], "epoch": 4, "global_step": 115}


def _plot_box(figsize, colorbar, title, height_px):
    (left, bottom, width, height), _ = frame_layout(figsize, colorbar=colorbar, title=title)
    x0, x1 = round(left * 100), round((left + width) * 100)
    y1 = height_px - round(bottom * 100)
    return x0, x1, y1 - round(height * 100), y1


def _inner(rgb, box, inset=4):
    x0, x1, y0, y1 = box
    return rgb[y0 + inset : y1 - inset, x0 + inset : x1 - inset].astype(int)


def test_the_filling_has_matplotlibs_colours_where_matplotlib_has_them():
    # A plane: linear along every cell edge and bilinear inside, so both interpolations place each band
    # boundary at the same points; only pixels on a boundary may differ.
    plane = SurfaceRecord(XS, XS, 1.0 + np.add.outer(0.8 * XS, 0.3 * XS), meta=META)
    ours = brief_surface(plane, title="t")
    theirs = figure_to_rgb(contour_figure(plane, title="t", brief=True))
    assert ours.shape == theirs.shape == (460, 560, 3)
    box = _plot_box((5.6, 4.6), True, "t", 460)
    same = np.all(np.abs(_inner(ours, box) - _inner(theirs, box)) <= 2, axis=-1)
    assert same.mean() > 0.97, same.mean()
    # and a band's colour is viridis at its midpoint under BoundaryNorm, computed here directly
    levels = contour_levels(plane.losses.ravel(), 20, log=True)
    norm = BoundaryNorm(levels, ncolors=256, extend="both")
    expected = np.round(np.asarray(colormaps["viridis"](norm((levels[:-1] + levels[1:]) / 2)))[:, :3] * 255)
    assert np.array_equal(band_colours(levels), expected.astype(np.uint8))


def test_a_bowl_is_filled_within_one_band_of_matplotlib():
    # Curved losses: bilinear and matplotlib's edge interpolation differ inside cells, never by more
    # than the neighbouring band.
    bowl = SurfaceRecord(XS, XS, np.add.outer(XS**2, XS**2) + 0.1, meta=META)
    ours, theirs = brief_surface(bowl, title="t"), figure_to_rgb(contour_figure(bowl, title="t", brief=True))
    box = _plot_box((5.6, 4.6), True, "t", 460)
    colours = band_colours(contour_levels(bowl.losses.ravel(), 20)).astype(int)

    def band(rgb):
        distance = np.abs(_inner(rgb, box)[..., None, :] - colours[None, None]).sum(-1)
        return distance.argmin(-1)

    gap = np.abs(band(ours) - band(theirs))
    assert gap.max() <= 1 and (gap == 0).mean() > 0.85, ((gap == 0).mean(), gap.max())


def test_the_path_and_its_markers_are_drawn_where_the_record_puts_them():
    path = np.array([[-0.5, -0.5], [0.0, 0.0], [0.5, 0.25]])
    flat = SurfaceRecord(XS, XS, np.ones((5, 5)), path=path, meta=META)
    rgb = brief_surface(flat, title="t")
    x0, x1, y0, y1 = _plot_box((5.6, 4.6), True, "t\n\u25cf start, \u2605 end", 460)

    def at(x, y):
        return rgb[round(y1 - (y + 1) / 2 * (y1 - y0)), round(x0 + (x + 1) / 2 * (x1 - x0))].astype(int)

    assert np.abs(at(-0.5, -0.5) - [0xD6, 0x27, 0x28]).max() <= 3  # start: tab:red
    assert np.abs(at(0.5, 0.25) - [0xFF, 0x7F, 0x0E]).max() <= 3  # end: tab:orange star
    assert at(0.0, 0.0).max() <= 40  # a black dot at every snapshot
    assert at(-0.25, -0.25).min() >= 200  # the white path between them
    assert at(0.5, -0.75).max() < 200  # the filling elsewhere


def test_non_finite_losses_are_white_with_a_red_cross_and_an_all_nan_surface_draws():
    losses = np.add.outer(XS**2, XS**2) + 0.1
    losses[4, 4] = np.nan  # the top right grid point
    rgb = brief_surface(SurfaceRecord(XS, XS, losses, meta=META), title="t")
    x0, x1, y0, y1 = _plot_box((5.6, 4.6), True, "t", 460)
    corner = rgb[y0 + 2 : y0 + 40, x1 - 40 : x1 - 2].reshape(-1, 3).astype(int)
    white = np.all(corner >= 250, axis=-1)
    red = (corner[:, 0] > 200) & (corner[:, 1] < 80) & (corner[:, 2] < 80)
    assert white.mean() > 0.5 and red.any()
    empty = brief_surface(SurfaceRecord(XS, XS, np.full((5, 5), np.nan), meta=META))
    x0, x1, y0, y1 = _plot_box((5.6, 4.6), True, "loss surface, epoch 4, step 115", 460)
    centres = [(x0 + (x1 - x0) * (k + 0.5) / 4, y0 + (y1 - y0) * (k + 0.5) / 4) for k in range(4)]
    assert all(np.all(empty[round(y), round(x)] == 255) for x, y in centres)  # no filling between crosses
    red = empty[round((y0 + y1) / 2), round((x0 + x1) / 2)].astype(int)
    assert red[0] > 200 and red[1] < 80  # a cross at each grid point (here the centre)


def test_decreasing_coordinates_draw_the_same_figure():
    losses = np.add.outer(XS**2, 0.5 * XS) + 1.0  # rows along y
    up = SurfaceRecord(XS, XS, losses, meta=META)
    down = SurfaceRecord(XS[::-1], XS[::-1], losses[::-1, ::-1], meta=META)
    assert np.array_equal(brief_surface(up, title="t"), brief_surface(down, title="t"))


@pytest.mark.parametrize("scale", [1e-4, 1.0, 12345.0, "offset"])
def test_every_label_is_inside_the_figure(scale):
    losses = np.add.outer(XS**2, XS**2) + 0.1
    losses = 2.301 + 1e-6 * losses if scale == "offset" else scale * losses
    rgb = brief_surface(SurfaceRecord(XS, XS, losses, path=np.array([[0.9, 0.9], [0.0, 0.0]]), meta=META))
    lines = brief_lines([LineRecord(XS, r, META) for r in (losses[2], losses[0])], xlabel="distance")
    for image in (rgb, lines):
        edges = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                                image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])  # fmt: skip
        assert np.all(edges == 255)  # nothing cut at the figure's edge
        dark = np.argwhere(image.min(-1) < 100)
        assert dark[:, 1].max() > image.shape[1] - 60  # the colour scale's label / the plot's right side


def test_lines_run_where_matplotlib_draws_them():
    records = [
        LineRecord(XS, 250.0 * XS**2 + 3.0, {"label": "PC1"}),
        LineRecord(XS, 100.0 * np.abs(XS) + 3.0, {"label": "PC2"}),
    ]
    ours = brief_lines(records, xlabel="distance")
    theirs = figure_to_rgb(line_figure(records, xlabel="distance", brief=True))
    assert ours.shape == theirs.shape
    for name in ("blue", "orange"):
        colour = np.array(Image.new("RGB", (1, 1), COLOURS[name]).getpixel((0, 0)))

        def rows(rgb, colour=colour):
            near = np.abs(rgb.astype(int) - colour).sum(-1) < 60
            return {c: np.flatnonzero(near[:, c]).mean() for c in range(rgb.shape[1]) if near[:, c].any()}

        a, b = rows(ours), rows(theirs)
        plotted = [c for c in a if c in b and c > 100]  # the plot, not the title's words
        assert len(plotted) > 300
        assert np.median([abs(a[c] - b[c]) for c in plotted]) <= 1.0
        assert max(abs(a[c] - b[c]) for c in plotted) <= 4.0


def test_a_non_finite_loss_breaks_the_line_and_too_many_lines_are_refused():
    losses = XS**2 + 1.0
    losses[2] = np.inf
    rgb = brief_lines([LineRecord(XS, losses)], xlabel="alpha")
    (left, _, width, _), _ = frame_layout((5.6, 3.8), title="loss along lines\nblue: line 0")
    x_mid = round((left + width / 2) * 100)
    blue = np.abs(rgb[:, x_mid - 3 : x_mid + 4].astype(int) - [0x1F, 0x77, 0xB4]).sum(-1) < 60
    assert not blue.any()  # no segment through the missing point
    with pytest.raises(ValueError, match="records"):
        brief_lines([LineRecord(XS, XS)] * 6)


def test_render_figure_encodes_pixels_once_for_every_sink():
    pixels = brief_lines([LineRecord(XS, XS**2)])
    calls = []

    def build():
        calls.append(1)
        return pixels

    out = render_figure(build, {"png", "rgb"})
    assert len(calls) == 1 and out.rgb is pixels
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out.png)).convert("RGB")), pixels)


def test_a_path_beyond_the_plot_is_clipped_to_it():
    # matplotlib clips lines and markers to the axes: the margins stay as they are without the path
    far = np.array([[-1.25, 0.1], [0.0, 0.0], [1.1, -0.5]])  # starts and ends just outside the +-1 span
    losses = np.add.outer(XS**2, XS**2) + 0.1
    title = "t\n\u25cf start, \u2605 end"
    with_path = brief_surface(SurfaceRecord(XS, XS, losses, path=far, meta=META), title="t")
    without = brief_surface(SurfaceRecord(XS, XS, losses, meta=META), title=title)  # the same layout
    x0, x1, y0, y1 = _plot_box((5.6, 4.6), True, title, 460)
    outside = np.ones(with_path.shape[:2], dtype=bool)
    outside[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = False
    assert np.array_equal(with_path[outside], without[outside])
    inside = np.abs(with_path[y0:y1, x0:x1].astype(int) - without[y0:y1, x0:x1]).sum(-1) > 0
    assert inside.any()  # the part of the path within the plot is drawn
