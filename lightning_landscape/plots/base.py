"""What every loss-landscape figure shares: contour levels, axis labels, titles, frames, rendering to pixels.

The figures drawn during training are placed by fixed margins (:func:`framed`), not by a layout engine:
matplotlib's constrained layout measures every tick label and title before it draws, which is about
half the cost of a contour figure (0.19 s -> 0.11 s on one CPU core: benchmarks/bench_figures.py), and a
landscape's figures all have the same few elements (title, axis labels, tick labels, perhaps a colour bar), so
margins sized in inches for those fit every figure of a given kind. The axis labels sit at fixed offsets in
those margins too: left to itself, matplotlib measures every tick label again at each draw to place them.
A brief figure (``brief=True``: the reduced landscapes of a short run) draws fewer ticks.
"""

from __future__ import annotations

import io
import itertools
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from lightning_landscape.records.record import SurfaceRecord

__all__ = [
    "BRIEF_TICKS",
    "axis_label",
    "brief_ticks",
    "colour_scale",
    "contour_levels",
    "figure_to_png",
    "figure_to_rgb",
    "frame_layout",
    "framed",
    "png_bytes",
    "record_title",
    "shared_levels",
]


def contour_levels(values: np.ndarray, count: int = 20, log: bool = True) -> np.ndarray:
    """``count`` increasing contour levels covering the finite ``values``; log-spaced when ``log``.

    Log spacing is taken above the minimum (``min + geomspace``) when the loss is not positive.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return np.array([0.0, 1.0])
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-12 * max(abs(hi), 1.0):
        return (
            np.array([lo - 0.5, lo + 0.5])
            if lo == 0
            else np.array([lo * 0.99, lo * 1.01] if lo > 0 else [lo * 1.01, lo * 0.99])
        )
    if not log:
        return np.linspace(lo, hi, count)
    if lo > 0:
        levels = np.geomspace(lo, hi, count)
    else:
        width = hi - lo
        levels = lo + np.concatenate([[0.0], np.geomspace(width * 1e-3, width, count - 1)])
    levels[0], levels[-1] = lo, hi
    return np.unique(levels)


def axis_label(meta: dict, axis: int) -> str:
    kind = meta.get("directions", "")
    ratios = meta.get("explained_variance") or []
    if kind == "pca":
        label = f"PC{axis + 1}"
        if axis < len(ratios) and ratios[axis] is not None:
            label += f" ({100 * ratios[axis]:.1f}% of variance)"
        return label
    if kind == "hessian":
        return ["eigenvector of $\\lambda_{max}$", "eigenvector of $\\lambda_{min}$"][axis]
    return f"direction {axis + 1}" + (f" ({kind})" if kind else "")


def record_title(meta: dict, default: str) -> str:
    parts = [default]
    if meta.get("epoch") is not None:
        parts.append(f"epoch {meta['epoch']}")
    if meta.get("global_step") is not None:
        parts.append(f"step {meta['global_step']}")
    return ", ".join(parts)


# Margins in inches: room for tick labels and an axis label at the left and bottom, a title on top.
_LEFT, _BOTTOM, _TOP, _RIGHT = 0.85, 0.55, 0.4, 0.2
_BAR_GAP, _BAR_WIDTH, _BAR_LABEL = 0.15, 0.16, 0.85  # a colour bar, its ticks and its label
# A brief colour scale's label: this far right of its longest tick label, at most this near the right edge.
_CHAR_WIDTH, _BAR_LABEL_PAD, _BAR_LABEL_EDGE = 0.07, 0.1, 0.22
_TWIN_RIGHT = 0.8  # a second y axis on the right: its tick labels and label
_TICKS = 6  # at most this many intervals between major ticks on a linear axis
BRIEF_TICKS = 4  # the same in a brief figure (a reduced landscape's): tick labels are most of the drawing
# The axis labels, in inches from the plot: the x label's top below the tick labels (tick, pad, a 10 pt
# label: where matplotlib would put it), the y label's inner edge left of tick labels up to ~7 characters.
_XLABEL_DROP, _YLABEL_OFFSET = 0.31, 0.6
_TITLE_CHARS_PER_INCH = 12.5  # characters of a 10 pt title per inch of width, before it wraps


def frame_layout(
    figsize: tuple[float, float], colorbar: bool = False, twin: bool = False, title: str = ""
) -> tuple[tuple[float, float, float, float], list[str]]:
    """Where :func:`framed` puts the plot of a ``figsize`` figure: ``(left, bottom, width, height)`` in
    inches from the figure's lower left corner, and ``title`` wrapped to the plot's width (its lines).

    Example::

        >>> (left, bottom, width, height), lines = frame_layout((5.6, 3.8), title="loss")
        >>> round(left + width, 2), lines
        (5.4, ['loss'])
    """
    width, height = figsize
    right = (
        _RIGHT + (_BAR_GAP + _BAR_WIDTH + _BAR_LABEL if colorbar else 0.0) + (_TWIN_RIGHT if twin else 0.0)
    )
    plot_width = width - _LEFT - right
    chars = max(int(plot_width * _TITLE_CHARS_PER_INCH), 20)
    lines = [line for part in title.split("\n") for line in textwrap.wrap(part, chars)] or [""]
    top = _TOP + 0.18 * (len(lines) - 1)
    return (_LEFT, _BOTTOM, plot_width, height - _BOTTOM - top), lines


def framed(
    figsize: tuple[float, float],
    colorbar: bool = False,
    twin: bool = False,
    title: str = "",
    brief: bool = False,
) -> tuple[Figure, Axes, Axes | None, str]:
    """A figure with one plot at fixed margins (and a colour bar's axes at its right when ``colorbar``,
    room for a second y axis when ``twin``); ``title`` wrapped to the plot's width (each of its lines),
    with the top margin grown for each extra line. The plot's axis labels are placed at fixed offsets in
    the margins (not measured at each draw). ``brief``: at most ``BRIEF_TICKS`` intervals between ticks
    instead of ``_TICKS``. Returns the figure, the plot, the colour bar's axes (or None) and the wrapped
    title.

    Example::

        >>> fig, ax, cax, title = framed((5.6, 4.6), colorbar=True, title="loss surface, epoch 3")
        >>> len(fig.axes), cax is not None, fig.get_layout_engine() is None
        (2, True, True)
    """
    width, height = figsize
    (left, bottom, plot_width, plot_height), lines = frame_layout(figsize, colorbar, twin, title)
    fig = Figure(figsize=figsize)
    rect = (left / width, bottom / height, plot_width / width, plot_height / height)
    ax = fig.add_axes(rect)
    ticks = BRIEF_TICKS if brief else _TICKS
    for axis in (ax.xaxis, ax.yaxis):  # about 6 ticks, not 9: readable, and text is most of the drawing
        axis.set_major_locator(MaxNLocator(ticks))
    ax.xaxis.set_label_coords(0.5, -_XLABEL_DROP / plot_height)
    ax.yaxis.set_label_coords(-_YLABEL_OFFSET / plot_width, 0.5)
    cax = None
    if colorbar and not brief:  # a brief figure draws its colour scale without axes: colour_scale()
        left = (_LEFT + plot_width + _BAR_GAP) / width
        cax = fig.add_axes((left, rect[1], _BAR_WIDTH / width, rect[3]))
    return fig, ax, cax, "\n".join(lines)


def colour_scale(
    fig: Figure, ax: Axes, levels: np.ndarray, cmap: Colormap, norm: Normalize, label: str = "loss"
) -> PolyCollection:
    """A colour bar drawn straight on ``fig`` right of ``ax``, where ``framed(colorbar=True)`` keeps room
    for one: a band per pair of consecutive ``levels``, its height linear in the value, filled as
    ``contourf`` fills it (``cmap(norm(midpoint))``), an outline, ticks at most ``BRIEF_TICKS`` intervals
    apart with matplotlib's tick labels, and ``label`` right of them. No axes of its own:
    matplotlib's colour bar (an axes, its ticks, its scale, the extension triangles) is about 40 % of a
    brief surface figure's drawing. Returns the bands.

    Example::

        >>> fig, ax, cax, _ = framed((5.6, 4.6), colorbar=True, brief=True)
        >>> from matplotlib.colors import BoundaryNorm
        >>> from matplotlib import colormaps
        >>> levels = np.array([0.1, 0.2, 0.5, 1.0])
        >>> bands = colour_scale(fig, ax, levels, colormaps["viridis"], BoundaryNorm(levels, 256))
        >>> cax is None, len(fig.axes), len(bands.get_paths()), [t.get_text() for t in fig.texts][-1]
        (True, 1, 3, 'loss')
    """
    width, _ = fig.get_size_inches()
    pos = ax.get_position()
    x0, x1 = pos.x1 + _BAR_GAP / width, pos.x1 + (_BAR_GAP + _BAR_WIDTH) / width
    levels = np.asarray(levels, dtype=np.float64)
    lo, hi = float(levels[0]), float(levels[-1])
    span = hi - lo if hi > lo else 1.0

    def height(value: float) -> float:
        return float(pos.y0 + (value - lo) / span * pos.height)

    bands = [
        [(x0, height(a)), (x1, height(a)), (x1, height(b)), (x0, height(b))]
        for a, b in itertools.pairwise(levels)
    ]
    colours = cmap(norm((levels[:-1] + levels[1:]) / 2))
    scale = PolyCollection(bands, facecolors=colours, edgecolors="none", transform=fig.transFigure)
    fig.add_artist(scale)
    outline = Rectangle((x0, pos.y0), x1 - x0, pos.height, fill=False, lw=0.8, transform=fig.transFigure)
    fig.add_artist(outline)
    ticks, labels, offset = brief_ticks(lo, hi)
    length = 3.5 / 72 / width  # matplotlib's major tick: 3.5 points out, its label 3.5 points further
    marks = [[(x1, height(t)), (x1 + length, height(t))] for t in ticks]
    fig.add_artist(LineCollection(marks, colors="black", linewidths=0.8, transform=fig.transFigure))
    for t, text in zip(ticks, labels):
        fig.text(
            x1 + 2 * length, height(t), text, va="center", ha="left", fontsize=rcParams["ytick.labelsize"]
        )
    # The label right of the longest tick label (about 0.07 in a character at 10 pt), inside the figure.
    chars = max((len(text) for text in labels), default=0)
    at = min(x1 + 2 * length + (_CHAR_WIDTH * chars + _BAR_LABEL_PAD) / width, 1 - _BAR_LABEL_EDGE / width)
    fig.text(at, pos.y0 + pos.height / 2, f"{label} ({offset})" if offset else label, rotation=90,
             va="center", ha="left")  # fmt: skip
    return scale


def brief_ticks(lo: float, hi: float) -> tuple[list[float], list[str], str]:
    """Ticks within ``[lo, hi]`` at most ``BRIEF_TICKS`` intervals apart, their labels and the offset
    text (``""`` or, say, ``"1e-4"``), as matplotlib's default locator and formatter make them: a brief
    colour scale's, and every axis of :mod:`~lightning_landscape.plots.brief`.

    Example::

        >>> brief_ticks(0.0, 1.0)
        ([0.0, 0.25, 0.5, 0.75, 1.0], ['0.00', '0.25', '0.50', '0.75', '1.00'], '')
    """
    span = hi - lo if hi > lo else 1.0
    ticks = [
        float(t)
        for t in MaxNLocator(BRIEF_TICKS).tick_values(lo, hi)
        if lo - 1e-9 * span <= t <= hi + 1e-9 * span
    ]
    formatter = ScalarFormatter()
    formatter.create_dummy_axis()
    formatter.axis.set_view_interval(lo, hi)  # type: ignore[union-attr]
    return ticks, list(formatter.format_ticks(ticks)), formatter.get_offset()


# PNG at zlib level 1, not the level 6 of matplotlib's ``savefig`` and Pillow's default: the same pixels,
# about 5 % more bytes, half the encoding time (~7 ms instead of ~15 ms for a 560 x 460 figure on one CPU
# core, a tenth of a short run's figure time).
PNG_LEVEL = 1


def png_bytes(rgb: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """``(H, W, 3)`` uint8 pixels encoded as PNG at zlib ``level``.

    Example::

        >>> png_bytes(np.zeros((2, 3, 3), np.uint8))[:4]
        b'\x89PNG'
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes: the pixels of :func:`figure_to_rgb`, encoded by :func:`png_bytes`."""
    return png_bytes(figure_to_rgb(fig, dpi))


def figure_to_rgb(fig: Figure, dpi: int = 100) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 array."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def shared_levels(records: Sequence[SurfaceRecord], count: int = 20, log: bool = True) -> np.ndarray:
    """One set of contour levels covering the finite losses of all ``records`` (for side-by-side plots).

    Example::

        >>> xs = np.linspace(-1, 1, 3)
        >>> a, b = SurfaceRecord(xs, xs, np.full((3, 3), 1.0)), SurfaceRecord(xs, xs, np.full((3, 3), 4.0))
        >>> lv = shared_levels([a, b], count=3)
        >>> float(lv[0]), float(lv[-1])
        (1.0, 4.0)
    """
    values = [np.asarray(r.losses, dtype=np.float64).ravel() for r in records]
    return contour_levels(np.concatenate(values) if values else np.array([]), count, log)
