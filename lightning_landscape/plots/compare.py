"""Figures that put several runs, or groups of runs, side by side on one colour scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure, SubFigure

from lightning_landscape.plots.base import axis_label, record_title, shared_levels
from lightning_landscape.records.record import LineRecord, SurfaceRecord

__all__ = ["BandPanel", "comparison_figure", "group_comparison_figure"]


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
        ax.set_xlabel(axis_label(rec.meta, 0), fontsize=8)
        ax.set_ylabel(axis_label(rec.meta, 1), fontsize=8)
        ax.set_title(title, fontsize=10)
    assert cs is not None
    fig.colorbar(cs, ax=list(axes), label="loss (shared scale)", format="%.3g")


_BAND_NOTE = "mean and one standard deviation over each group's runs"


def _layout(
    surfaces: Sequence[SurfaceRecord],
    titles: Sequence[str],
    npanels: int,
    levels: int | Sequence[float],
    log: bool,
    note: str | None = None,
) -> tuple[Figure, list[Any]]:
    """The surfaces in a row on shared levels above a grid of ``npanels`` axes (spares hidden)."""
    lv = shared_levels(surfaces, levels, log) if isinstance(levels, int) else np.asarray(levels, float)
    ncols = max(len(surfaces), 3)
    nrows = -(-npanels // ncols) if npanels else 0
    fig = Figure(figsize=(4.4 * ncols, 4.0 + 3.0 * nrows), layout="constrained")
    subs: Any = fig.subfigures(2, 1, height_ratios=[4.0, 3.0 * nrows]) if nrows else (fig, None)
    top, bottom = subs
    _surface_row(top, surfaces, titles, lv)
    if bottom is None:
        return fig, []
    if note:
        bottom.suptitle(note, fontsize=9)
    grid = bottom.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in grid[npanels:]:
        ax.set_visible(False)
    return fig, list(grid[:npanels])


def _finish_panel(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


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
    fig, grid = _layout(surfaces, titles or labels, len(panels), levels, log, _BAND_NOTE)
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
        _finish_panel(ax, panel.xlabel, panel.ylabel or panel.title, panel.title)
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
    colours = [f"C{i % 10}" for i in range(len(surfaces))]
    panels = [("line", k) for k in lines] + [("series", k) for k in series]
    titles = [record_title(rec.meta, str(label)) for rec, label in zip(surfaces, labels)]
    fig, grid = _layout(surfaces, titles, len(panels), levels, log)
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
            xlabel = "distance along direction" if along else "alpha"
        else:
            xlabel = "global step"
        _finish_panel(ax, xlabel, "loss" if what == "line" else key, key)
    return fig
