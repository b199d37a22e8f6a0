"""Matplotlib figure builders for records. No pyplot state: each returns a new ``Figure``.

Non-finite losses (NaN, inf) are masked, so they are drawn as gaps rather than breaking the colour
scale. Contour levels are log-spaced by default because a landscape's loss spans decades.
Every figure builder is importable from here: the side-by-side comparisons live in ``_plots_compare``,
the levels, labels and rendering they share in ``_plots_base``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from lightning_landscape.plots.base import (
    axis_label,
    colour_scale,
    contour_levels,
    figure_to_png,
    figure_to_rgb,
    framed,
    record_title,
    shared_levels,
)
from lightning_landscape.plots.compare import BandPanel, comparison_figure, group_comparison_figure
from lightning_landscape.records.record import LineRecord, SurfaceRecord

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

_axis_label, _title = axis_label, record_title  # their names before the split


def contour_figure(
    record: SurfaceRecord,
    levels: int | Sequence[float] = 20,
    log: bool = True,
    title: str | None = None,
    filled: bool = True,
    brief: bool = False,
) -> Figure:
    """Contour plot of a surface with the optimizer's projected path (start and end marked).

    Pass explicit ``levels`` to draw several runs on one shared scale. ``brief`` (a reduced landscape of
    a short run): fewer ticks, no white contour lines over the filling, the markers named in the title
    instead of a legend, and the colour scale drawn without an axes (:func:`colour_scale`): text and
    artists are most of a figure's drawing time.

    Example::

        >>> xs = np.linspace(-1, 1, 5)
        >>> rec = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1)
        >>> fig = contour_figure(rec)
        >>> len(fig.axes)  # the plot and its colour bar
        2
    """
    has_path = record.path is not None and len(record.path) > 0
    text = title or record_title(record.meta, "loss surface")
    if brief and has_path:
        text += "\n\u25cf start, \u2605 end"  # the legend's words, in the title
    fig, ax, cax, wrapped = framed((5.6, 4.6), colorbar=True, title=text, brief=brief and filled)
    z = np.ma.masked_invalid(np.asarray(record.losses, dtype=np.float64))
    lv = contour_levels(z.compressed(), levels, log) if isinstance(levels, int) else np.asarray(levels)
    if filled:
        norm = BoundaryNorm(lv, ncolors=256, extend="both")
        cs = ax.contourf(record.xs, record.ys, z, levels=lv, cmap="viridis", norm=norm, extend="both")
        if not brief:
            ax.contour(record.xs, record.ys, z, levels=lv, colors="white", linewidths=0.4, alpha=0.6)
        if cax is None:  # brief: the colour scale drawn without an axes of its own
            colour_scale(fig, ax, lv, cs.cmap, norm)
        else:
            cbar = fig.colorbar(cs, cax=cax, label="loss")
            cbar.ax.set_yscale("linear")
    else:
        cs = ax.contour(record.xs, record.ys, z, levels=lv, cmap="viridis")
        ax.clabel(cs, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, cax=cax, label="loss")
    if z.mask.any():
        gaps = np.argwhere(np.ma.getmaskarray(z))
        ax.scatter(
            record.xs[gaps[:, 1]],
            record.ys[gaps[:, 0]],
            marker="x",
            color="red",
            s=12,
            label="non-finite loss",
        )
    if has_path:
        path = np.asarray(record.path)
        ax.plot(path[:, 0], path[:, 1], "-", color="white", lw=1.6)
        ax.plot(path[:, 0], path[:, 1], ".", color="black", ms=3)
        ax.plot(*path[0], "o", color="tab:red", ms=7, mec="white", label="start")
        ax.plot(*path[-1], "*", color="tab:orange", ms=13, mec="white", label="end (current)")
    if not brief and (record.path is not None or z.mask.any()):
        ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_xlabel(axis_label(record.meta, 0))
    ax.set_ylabel(axis_label(record.meta, 1))
    # At a fixed height (y=1): the axes' coordinates never show an offset text for it to avoid, and
    # placing it automatically measures the y axis's tick labels at every draw.
    ax.set_title(wrapped, fontsize=10, y=1.0)
    return fig


# Colours a brief line figure names in its title (matplotlib's "tab:" colours, the default cycle's).
_NAMED_COLOURS = ("blue", "orange", "green", "red", "purple")


def line_figure(
    records: Sequence[LineRecord],
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = None,
    xlabel: str = "alpha",
    brief: bool = False,
) -> Figure:
    """Loss along one or more 1-D lines, overlaid. ``brief`` (a reduced landscape of a short run): fewer
    ticks, and the lines named by colour in the title instead of a legend (a fifth of the drawing).

    Example::

        >>> a = np.linspace(-1, 1, 5)
        >>> fig = line_figure([LineRecord(a, a**2), LineRecord(a, 2 * a**2)], labels=["sgd", "sam"])
        >>> len(fig.axes[0].lines)
        2
    """
    labels = labels or [
        r.meta.get("label", r.meta.get("directions", f"line {i}")) for i, r in enumerate(records)
    ]
    measured = [(r, lb) for r, lb in zip(records, labels) if getattr(r, "metrics", None) is not None]
    meta = records[0].meta if records else {}
    text = title or record_title(meta, "loss along lines")
    keyed = brief and 0 < len(records) <= len(_NAMED_COLOURS)  # the key in the title, not a legend
    if keyed:
        text += "\n" + ", ".join(f"{c}: {label}" for c, label in zip(_NAMED_COLOURS, labels))
    fig, ax, _, wrapped = framed((5.6, 3.8), twin=bool(measured), title=text, brief=brief)
    for i, (rec, label) in enumerate(zip(records, labels)):
        colour = f"tab:{_NAMED_COLOURS[i]}" if keyed else None  # None: the axes' colour cycle
        ax.plot(rec.alphas, np.ma.masked_invalid(rec.losses), "-", lw=1.6, label=str(label), color=colour)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if not keyed and (len(records) > 1 or labels):
        ax.legend(fontsize=8)
    if measured:  # a metric_fn beside the loss (accuracy, say): dashed, on its own axis
        twin = ax.twinx()
        for i, (rec, _) in enumerate(measured):
            twin.plot(
                rec.alphas,
                np.ma.masked_invalid(np.asarray(rec.metrics)),
                "--",
                lw=1.2,
                color=f"C{i}",
                alpha=0.8,
            )
        twin.set_ylabel(f"{measured[0][0].meta.get('metric_name') or 'metric'} (dashed)")
    ax.set_title(wrapped, fontsize=10)
    return fig


def surface3d_figure(record: SurfaceRecord, log: bool = False, title: str | None = None) -> Figure:
    """3-D surface plot of a surface record (matplotlib's ``projection="3d"``)."""
    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    gx, gy = np.meshgrid(record.xs, record.ys)
    z = np.asarray(record.losses, dtype=np.float64)
    z = np.where(np.isfinite(z), z, np.nan)
    if log:
        z = np.log10(np.clip(z, np.nanmin(z[z > 0]) if np.any(z > 0) else 1e-12, None))
    ax.plot_surface(gx, gy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel(axis_label(record.meta, 0), fontsize=8)
    ax.set_ylabel(axis_label(record.meta, 1), fontsize=8)
    ax.set_zlabel("log10 loss" if log else "loss", fontsize=8)
    ax.set_title(title or record_title(record.meta, "loss surface"), fontsize=10)
    return fig


def path_contour_figure(
    record: SurfaceRecord,
    points: np.ndarray,
    losses: np.ndarray,
    flags: Sequence[str] = (),
    levels: int | Sequence[float] = 20,
    log: bool = True,
    title: str | None = None,
) -> Figure:
    """:func:`contour_figure` with markers at the snapshots' projected ``points`` coloured by their true
    ``losses``, on the contour's own colour scale: where a marker's colour differs from the filling under
    it, the contour under the path is misleading. ``flags`` (failed reliability checks) go in the title.

    Example::

        >>> xs = np.linspace(-1, 1, 5)
        >>> rec = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1)
        >>> fig = path_contour_figure(rec, np.array([[0.5, 0.5], [0.0, 0.0]]), np.array([2.0, 0.1]),
        ...                           flags=["path 40 % off-plane"])
        >>> fig.axes[0].get_title()
        'loss surface — path 40 % off-plane'
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(losses, dtype=np.float64).reshape(-1)
    if len(pts) != len(values):
        raise ValueError(f"`points` has {len(pts)} rows but `losses` has {len(values)} values")
    base = title or record_title(record.meta, "loss surface")
    full = f"{base} — {'; '.join(flags)}" if flags else base
    fig = contour_figure(record, levels=levels, log=log, title=full)
    ax = fig.axes[0]
    z = np.ma.masked_invalid(np.asarray(record.losses, dtype=np.float64))
    lv = contour_levels(z.compressed(), levels, log) if isinstance(levels, int) else np.asarray(levels)
    norm = BoundaryNorm(lv, ncolors=256, extend="both")
    finite = np.isfinite(values)
    ax.scatter(
        pts[finite, 0], pts[finite, 1], c=values[finite], cmap="viridis", norm=norm, s=70,
        edgecolors="white", linewidths=0.8, zorder=5, label="true loss at snapshot",
    )  # fmt: skip
    if (~finite).any():
        ax.scatter(pts[~finite, 0], pts[~finite, 1], marker="x", color="red", s=30, zorder=5)
    if record.path is not None and len(record.path):  # start and end stay visible above the markers
        path = np.asarray(record.path)
        ax.plot(*path[0], "o", color="tab:red", ms=7, mec="white", zorder=6)
        ax.plot(*path[-1], "*", color="tab:orange", ms=13, mec="white", zorder=6)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    return fig


def distance_figure(
    records: Sequence[LineRecord],
    labels: Sequence[str] | None = None,
    flags: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """Loss vs log distance from the centre along each axis (both signs), with the basin threshold and
    radius marked: the records of :func:`lightning_landscape.functional.landscape_reliability`.

    Example::

        >>> t = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
        >>> alphas = np.concatenate([-t[::-1], [0.0], t])
        >>> rec = LineRecord(alphas, 1.0 + alphas**2, {"centre_loss": 1.0, "threshold": 0.1, "radius": 0.316})
        >>> fig = distance_figure([rec])
        >>> fig.axes[0].get_xscale(), fig.axes[0].get_yscale(), len(fig.axes[0].lines)
        ('log', 'log', 4)
    """
    first = records[0].meta if records else {}
    base = title or record_title(first, "loss vs distance")
    fig, ax, _, wrapped = framed((5.6, 3.8), title=f"{base} — {'; '.join(flags)}" if flags else base)
    labels = labels or [r.meta.get("label", f"axis {i + 1}") for i, r in enumerate(records)]
    for i, (rec, label) in enumerate(zip(records, labels)):
        colour = f"C{i % 10}"
        a, z = np.asarray(rec.alphas, np.float64), np.ma.masked_invalid(np.asarray(rec.losses, np.float64))
        pos, neg = a > 0, a < 0
        ax.plot(a[pos], z[pos], "o-", color=colour, ms=3, lw=1.5, label=f"{label} (+)")
        ax.plot(-a[neg], z[neg], "s--", color=colour, ms=3, lw=1.2, label=f"{label} (-)")
        radius = rec.meta.get("radius")
        if radius is not None and np.isfinite(radius):
            ax.axvline(radius, color=colour, lw=0.8, ls=":")
    if first.get("centre_loss") is not None and first.get("threshold") is not None:
        ax.axhline(first["centre_loss"] + first["threshold"], color="grey", lw=0.8, ls="-.",
                   label="basin threshold")  # fmt: skip
    ax.set_xscale("log")
    values = np.concatenate([np.zeros(0), *(np.asarray(r.losses, np.float64).ravel() for r in records)])
    values = np.asarray(values)[np.isfinite(values)]
    if values.size and values.min() > 0:
        ax.set_yscale("log")  # the loss spans decades over four decades of distance
    elif values.size:
        ax.set_yscale("symlog", linthresh=max(float(np.abs(values).max()) * 1e-3, 1e-12))
    ax.set_xlabel("distance from the centre (axis units, log)")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(wrapped, fontsize=10)
    return fig
