"""Matplotlib figure builders for records. No pyplot state: each returns a new ``Figure``.

Non-finite losses (NaN, inf) are masked, so they are drawn as gaps rather than breaking the colour
scale. Contour levels are log-spaced by default because a landscape's loss spans decades.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure, SubFigure

from lightning_landscape.records import LineRecord, SurfaceRecord

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


def _axis_label(meta: dict, axis: int) -> str:
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


def _title(meta: dict, default: str) -> str:
    parts = [default]
    if meta.get("epoch") is not None:
        parts.append(f"epoch {meta['epoch']}")
    if meta.get("global_step") is not None:
        parts.append(f"step {meta['global_step']}")
    return ", ".join(parts)


def contour_figure(
    record: SurfaceRecord,
    levels: int | Sequence[float] = 20,
    log: bool = True,
    title: str | None = None,
    filled: bool = True,
) -> Figure:
    """Contour plot of a surface with the optimizer's projected path (start and end marked).

    Pass explicit ``levels`` to draw several runs on one shared scale.

    Example::

        >>> xs = np.linspace(-1, 1, 5)
        >>> rec = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1)
        >>> fig = contour_figure(rec)
        >>> len(fig.axes)  # the plot and its colour bar
        2
    """
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.add_subplot()
    z = np.ma.masked_invalid(np.asarray(record.losses, dtype=np.float64))
    lv = contour_levels(z.compressed(), levels, log) if isinstance(levels, int) else np.asarray(levels)
    if filled:
        norm = BoundaryNorm(lv, ncolors=256, extend="both")
        cs = ax.contourf(record.xs, record.ys, z, levels=lv, cmap="viridis", norm=norm, extend="both")
        ax.contour(record.xs, record.ys, z, levels=lv, colors="white", linewidths=0.4, alpha=0.6)
        cbar = fig.colorbar(cs, ax=ax, label="loss")
        cbar.ax.set_yscale("linear")
    else:
        cs = ax.contour(record.xs, record.ys, z, levels=lv, cmap="viridis")
        ax.clabel(cs, fontsize=7, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="loss")
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
    if record.path is not None and len(record.path):
        path = np.asarray(record.path)
        ax.plot(path[:, 0], path[:, 1], "-", color="white", lw=1.6)
        ax.plot(path[:, 0], path[:, 1], ".", color="black", ms=3)
        ax.plot(*path[0], "o", color="tab:red", ms=7, mec="white", label="start")
        ax.plot(*path[-1], "*", color="tab:orange", ms=13, mec="white", label="end (current)")
    if record.path is not None or z.mask.any():
        ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_xlabel(_axis_label(record.meta, 0))
    ax.set_ylabel(_axis_label(record.meta, 1))
    ax.set_title(title or _title(record.meta, "loss surface"), fontsize=10)
    return fig


def line_figure(
    records: Sequence[LineRecord],
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = None,
    xlabel: str = "alpha",
) -> Figure:
    """Loss along one or more 1-D lines, overlaid.

    Example::

        >>> a = np.linspace(-1, 1, 5)
        >>> fig = line_figure([LineRecord(a, a**2), LineRecord(a, 2 * a**2)], labels=["sgd", "sam"])
        >>> len(fig.axes[0].lines)
        2
    """
    fig = Figure(figsize=(5.6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    labels = labels or [
        r.meta.get("label", r.meta.get("directions", f"line {i}")) for i, r in enumerate(records)
    ]
    for rec, label in zip(records, labels):
        ax.plot(rec.alphas, np.ma.masked_invalid(rec.losses), "-", lw=1.6, label=str(label))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if len(records) > 1 or labels:
        ax.legend(fontsize=8)
    measured = [(r, lb) for r, lb in zip(records, labels) if getattr(r, "metrics", None) is not None]
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
    meta = records[0].meta if records else {}
    ax.set_title(title or _title(meta, "loss along lines"), fontsize=10)
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
    ax.set_xlabel(_axis_label(record.meta, 0), fontsize=8)
    ax.set_ylabel(_axis_label(record.meta, 1), fontsize=8)
    ax.set_zlabel("log10 loss" if log else "loss", fontsize=8)
    ax.set_title(title or _title(record.meta, "loss surface"), fontsize=10)
    return fig


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


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


def _surface_row(
    fig: Figure | SubFigure, surfaces: Sequence[SurfaceRecord], titles: Sequence[str], lv: np.ndarray
) -> None:
    """The surfaces side by side on one level set and colour bar."""
    axes = fig.subplots(1, len(surfaces), squeeze=False)[0]
    norm = BoundaryNorm(lv, ncolors=256, extend="both")
    cs = None
    for ax, rec, title in zip(axes, surfaces, titles):
        z = np.ma.masked_invalid(np.asarray(rec.losses, dtype=np.float64))
        cs = ax.contourf(rec.xs, rec.ys, z, levels=lv, cmap="viridis", norm=norm, extend="both")
        ax.contour(rec.xs, rec.ys, z, levels=lv, colors="white", linewidths=0.4, alpha=0.6)
        if rec.path is not None and len(rec.path):
            path = np.asarray(rec.path)
            ax.plot(path[:, 0], path[:, 1], "-", color="white", lw=1.4)
            ax.plot(*path[0], "o", color="tab:red", ms=6, mec="white")
            ax.plot(*path[-1], "*", color="tab:orange", ms=11, mec="white")
        ax.set_xlabel(_axis_label(rec.meta, 0), fontsize=8)
        ax.set_ylabel(_axis_label(rec.meta, 1), fontsize=8)
        ax.set_title(title, fontsize=10)
    assert cs is not None
    fig.colorbar(cs, ax=list(axes), label="loss (shared scale)", format="%.3g")


class BandPanel(NamedTuple):
    """One panel of :func:`group_comparison_figure`: per group ``(x, mean, std)`` or None."""

    title: str
    xlabel: str
    entries: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray] | None]
    ylabel: str = ""
    log: bool = False


def group_comparison_figure(
    surfaces: Sequence[SurfaceRecord],
    labels: Sequence[str],
    panels: Sequence[BandPanel] = (),
    levels: int | Sequence[float] = 20,
    log: bool = True,
    titles: Sequence[str] | None = None,
) -> Figure:
    """Groups of runs side by side: one representative surface per group on a shared colour scale (top
    row, titled by ``titles`` or the ``labels``) and below, one panel per :class:`BandPanel`: each
    group's mean as a line with a band of plus or minus one standard deviation (error bars where a
    panel has a single point).

    Example::

        >>> xs = np.linspace(-1, 1, 5)
        >>> s = [SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + c) for c in (0.1, 1.0)]
        >>> panel = BandPanel("loss/centre", "step", [(np.arange(3), np.ones(3), np.full(3, 0.1)), None])
        >>> fig = group_comparison_figure(s, ["adamw", "sam"], [panel])
        >>> sum(ax.get_visible() for ax in fig.axes)  # two surfaces, a shared colour bar, one panel
        4
    """
    if len(surfaces) != len(labels) or not surfaces:
        raise ValueError(f"`labels` must name each of the {len(surfaces)} surfaces, got {len(labels)}")
    lv = shared_levels(surfaces, levels, log) if isinstance(levels, int) else np.asarray(levels, float)
    ncols = max(len(surfaces), 3)
    nrows = -(-len(panels) // ncols) if panels else 0
    fig = Figure(figsize=(4.4 * ncols, 4.0 + 3.0 * nrows), layout="constrained")
    subs: Any = fig.subfigures(2, 1, height_ratios=[4.0, 3.0 * nrows]) if nrows else (fig, None)
    top, bottom = subs
    _surface_row(top, surfaces, titles or labels, lv)
    if bottom is None:
        return fig
    bottom.suptitle("mean and one standard deviation over each group's runs", fontsize=9)
    grid = bottom.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(grid, panels):
        for i, (entry, label) in enumerate(zip(panel.entries, labels)):
            if entry is None:
                continue
            x, mean, std = (np.asarray(a, dtype=np.float64) for a in entry)
            colour = f"C{i % 10}"
            if x.size == 1:
                ax.errorbar(
                    x, mean, yerr=np.nan_to_num(std), fmt="o", color=colour, capsize=4, label=str(label)
                )
                continue
            ax.plot(x, np.ma.masked_invalid(mean), ".-", color=colour, lw=1.5, label=str(label))
            spread = np.isfinite(std) & np.isfinite(mean)
            if spread.any():
                ax.fill_between(x, mean - std, mean + std, where=spread, color=colour, alpha=0.2, lw=0)
        if panel.log and all(np.all(e[1][np.isfinite(e[1])] > 0) for e in panel.entries if e is not None):
            ax.set_yscale("log")
        ax.set_xlabel(panel.xlabel, fontsize=8)
        ax.set_ylabel(panel.ylabel or panel.title, fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in grid[len(panels) :]:
        ax.set_visible(False)
    return fig


def comparison_figure(
    surfaces: Sequence[SurfaceRecord],
    labels: Sequence[str],
    lines: Mapping[str, Sequence[LineRecord | None]] | None = None,
    series: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray] | None]] | None = None,
    levels: int | Sequence[float] = 20,
    log: bool = True,
) -> Figure:
    """Several runs side by side: their surfaces on one colour scale and level set (top row); below,
    each group of 1-D ``lines`` overlaid (one panel per group, one curve per run) and each scalar
    ``series`` over training on shared axes (one panel per metric, ``(steps, values)`` per run).

    ``lines`` and ``series`` map a panel title to one entry per run (``None`` where a run lacks it).

    Example::

        >>> xs = np.linspace(-1, 1, 5)
        >>> s = [SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + c) for c in (0.1, 1.0)]
        >>> fig = comparison_figure(s, ["sgd", "sam"],
        ...                         series={"loss/centre": [(np.arange(3), np.ones(3)), None]})
        >>> sum(ax.get_visible() for ax in fig.axes)  # two contours, a shared colour bar, one metric
        4
    """
    if len(surfaces) != len(labels) or not surfaces:
        raise ValueError(f"`labels` must name each of the {len(surfaces)} surfaces, got {len(labels)}")
    lines, series = dict(lines or {}), dict(series or {})
    n = len(surfaces)
    lv = shared_levels(surfaces, levels, log) if isinstance(levels, int) else np.asarray(levels, float)
    colours = [f"C{i % 10}" for i in range(n)]
    panels = [("line", k) for k in lines] + [("series", k) for k in series]
    ncols = max(n, 3)
    nrows = -(-len(panels) // ncols) if panels else 0
    fig = Figure(figsize=(4.4 * ncols, 4.0 + 3.0 * nrows), layout="constrained")
    subs: Any = fig.subfigures(2, 1, height_ratios=[4.0, 3.0 * nrows]) if nrows else (fig, None)
    top, bottom = subs
    _surface_row(top, surfaces, [_title(rec.meta, str(label)) for rec, label in zip(surfaces, labels)], lv)

    if bottom is not None:
        grid = bottom.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (what, key) in zip(grid, panels):
            entries: Sequence[Any] = lines[key] if what == "line" else series[key]
            for entry, label, colour in zip(entries, labels, colours):
                if entry is None:
                    continue
                if what == "line":
                    x, y = entry.alphas, np.ma.masked_invalid(entry.losses)
                    style = "-"
                else:
                    x, y = np.asarray(entry[0]), np.ma.masked_invalid(np.asarray(entry[1], float))
                    style = ".-"
                ax.plot(x, y, style, color=colour, lw=1.5, label=str(label))
            if what == "line" and log:
                ax.set_yscale("log")
            if what == "line":
                first = next((e for e in entries if e is not None), None)
                along = first is not None and first.meta.get("directions") != "interpolation"
                ax.set_xlabel("distance along direction" if along else "alpha", fontsize=8)
            else:
                ax.set_xlabel("global step", fontsize=8)
            ax.set_ylabel("loss" if what == "line" else key, fontsize=8)
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        for ax in grid[len(panels) :]:
            ax.set_visible(False)
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
    base = title or _title(record.meta, "loss surface")
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
    fig = Figure(figsize=(5.6, 3.8), layout="constrained")
    ax = fig.add_subplot()
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
    first = records[0].meta if records else {}
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
    base = title or _title(first, "loss vs distance")
    ax.set_title(f"{base} — {'; '.join(flags)}" if flags else base, fontsize=10)
    return fig
