"""Figures for comparing solutions: the shared plane of two runs and the barrier between them.

Matplotlib ``Figure`` builders (no pyplot state) for the records of
:func:`lightning_landscape.solutions.compare.compare_solutions`; like
:mod:`lightning_landscape.plots.landscape`, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import patheffects
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from lightning_landscape.plots.landscape import contour_levels
from lightning_landscape.records.record import LineRecord, SurfaceRecord

__all__ = ["barrier_figure", "shared_plane_figure"]

_RUN_COLOURS = ("#d62728", "#e377c2")  # run A red, run B pink: both visible on viridis


def _outlined(width: float = 2.5) -> list:
    return [patheffects.withStroke(linewidth=width, foreground="black")]


def _given(meta: Mapping, key: str, default: object) -> object:
    """``meta[key]`` unless absent or None (arrays in a fresh record, lists in a loaded one)."""
    value = meta.get(key)
    return default if value is None else value


def shared_plane_figure(
    record: SurfaceRecord, levels: int | Sequence[float] = 20, log: bool = True, title: str | None = None
) -> Figure:
    """The plane through the initialization and two runs' final weights, both trajectories drawn on it.

    Uses the record's ``path`` (run A) and ``path2`` (run B) and the meta ``points`` (init, A, B),
    ``point_labels``, ``point_losses`` and ``path_distances`` (how far each run's snapshots lie off the
    plane, given in the title: a path far off the plane is drawn where it projects, not where it was).
    The axes are distances in weight space (the plane is orthonormal), drawn on an equal scale.

    Example::

        >>> xs = np.linspace(-1, 3, 5)
        >>> meta = {"points": [[0, 0], [2, 0], [1, 2]], "point_labels": ["init", "sgd", "sam"]}
        >>> rec = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1, path=np.array([[0, 0], [2, 0]]),
        ...                     path2=np.array([[0, 0], [1, 2]]), meta=meta)
        >>> fig = shared_plane_figure(rec)
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:2]
        ['sgd', 'sam']
    """
    meta = record.meta
    fig = Figure(figsize=(6.2, 5.2), layout="constrained")
    ax = fig.add_subplot()
    z = np.ma.masked_invalid(np.asarray(record.losses, dtype=np.float64))
    lv = contour_levels(z.compressed(), levels, log) if isinstance(levels, int) else np.asarray(levels)
    norm = BoundaryNorm(lv, ncolors=256, extend="both")
    cs = ax.contourf(record.xs, record.ys, z, levels=lv, cmap="viridis", norm=norm, extend="both")
    ax.contour(record.xs, record.ys, z, levels=lv, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(cs, ax=ax, label="loss", format="%.3g")
    labels = [str(x) for x in _given(meta, "point_labels", [])]  # type: ignore[attr-defined]
    labels += ["init", "run A", "run B"][len(labels) :]
    for path, label, colour in zip((record.path, record.path2), labels[1:], _RUN_COLOURS):
        if path is not None and len(path):
            p = np.asarray(path, dtype=np.float64)
            ax.plot(p[:, 0], p[:, 1], "-", color=colour, lw=1.8, path_effects=_outlined(), label=label)
            ax.plot(p[:, 0], p[:, 1], ".", color="black", ms=3)
    points = np.asarray(_given(meta, "points", np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
    losses = list(_given(meta, "point_losses", []))  # type: ignore[call-overload]
    markers = (("o", "white", 8), ("*", _RUN_COLOURS[0], 16), ("*", _RUN_COLOURS[1], 16))
    for i, (xy, (marker, colour, size)) in enumerate(zip(points, markers)):
        ax.plot(*xy, marker, color=colour, ms=size, mec="black", zorder=5)
        text = labels[i] + (f"\nloss {losses[i]:.3g}" if i < len(losses) and losses[i] is not None else "")
        ax.annotate(
            text,
            (xy[0], xy[1]),
            xytext=(8, 6),
            textcoords="offset points",
            fontsize=8,
            color="white",
            path_effects=_outlined(2.0),
            zorder=6,
        )
    if z.mask.any():
        gaps = np.argwhere(np.ma.getmaskarray(z))
        ax.scatter(record.xs[gaps[:, 1]], record.ys[gaps[:, 0]], marker="x", color="red", s=12)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"distance along init → {labels[1]}", fontsize=9)
    ax.set_ylabel(f"distance towards {labels[2]} (orthogonal)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:  # trajectories drawn (a run saved without one has none)
        ax.legend(loc="best", fontsize=8, framealpha=0.7, title="trajectories", title_fontsize=7)
    heading = title or f"shared plane: init, {labels[1]}, {labels[2]}"
    dists = [np.asarray(d, dtype=np.float64) for d in _given(meta, "path_distances", []) if d is not None]  # type: ignore[attr-defined]
    dists = [d for d in dists if d.size]
    if dists and len(points) > 1:
        off = max(float(d.max()) for d in dists)
        scale = max(float(np.linalg.norm(points[1] - points[0])), 1e-12)
        heading += f"\npaths off the plane: up to {off:.3g} ({100 * off / scale:.0f}% of |w_A - w_0|)"
    ax.set_title(heading, fontsize=10)
    return fig


_BN_LABELS = {
    "recompute": "BN statistics re-estimated",
    "interpolate": "naive (statistics interpolated)",
    "keep": "current statistics",
}


def barrier_figure(records: LineRecord | Sequence[LineRecord], title: str | None = None) -> Figure:
    """Loss along the line between two solutions: one curve per record (re-estimated vs naive BatchNorm
    statistics, from meta ``bn``), the chord between the endpoints and each curve's barrier height
    (meta ``barrier`` at ``barrier_alpha``) marked. A metric (``metrics``) goes on a twin axis, dotted.

    Example::

        >>> a = np.linspace(0, 1, 5)
        >>> meta = {"bn": "recompute", "barrier": 1.0, "barrier_alpha": 0.5}
        >>> rec = LineRecord(a, 1 - (2 * a - 1) ** 2, meta)
        >>> fig = barrier_figure(rec)
        >>> fig.axes[0].get_legend().get_texts()[0].get_text()
        'BN statistics re-estimated (barrier 1)'
    """
    recs = [records] if isinstance(records, LineRecord) else list(records)
    if not recs:
        raise ValueError("`records` must hold at least one barrier LineRecord")
    fig = Figure(figsize=(6.2, 4.8), layout="constrained")
    ax = fig.add_subplot()
    twin = None
    for i, rec in enumerate(recs):
        colour = f"C{i % 10}"
        alphas, losses = np.asarray(rec.alphas, float), np.asarray(rec.losses, float)
        height = rec.meta.get("barrier")
        label = _BN_LABELS.get(rec.meta.get("bn", ""), rec.meta.get("name", f"curve {i}"))
        label += f" (barrier {height:.3g})" if height is not None else ""
        ax.plot(alphas, np.ma.masked_invalid(losses), "-o", color=colour, lw=1.8, ms=3, label=label)
        chord = (1 - alphas) * losses[0] + alphas * losses[-1]
        ax.plot(alphas, chord, "--", color=colour, lw=1.0, alpha=0.7)
        if height is not None and height > 0 and rec.meta.get("barrier_alpha") is not None:
            x = float(rec.meta["barrier_alpha"])
            base = (1 - x) * losses[0] + x * losses[-1]
            ax.annotate("", (x, base + height), (x, base), arrowprops={"arrowstyle": "<->", "color": colour})
            ax.annotate(
                f"{height:.3g}",
                (x, base + height / 2),
                xytext=(5, 0) if i % 2 == 0 else (-5, 0),
                textcoords="offset points",
                color=colour,
                fontsize=8,
                va="center",
                ha="left" if i % 2 == 0 else "right",
            )
        if rec.metrics is not None:
            twin = twin or ax.twinx()
            twin.plot(alphas, np.ma.masked_invalid(np.asarray(rec.metrics, float)), ":", color=colour, lw=1.5)
            twin.set_ylabel(f"{rec.meta.get('metric_name', 'metric')} (dotted)", fontsize=9)
    ax.plot([], [], "--", color="grey", lw=1.0, label="chord between the endpoints")
    if twin is not None:
        name = recs[0].meta.get("metric_name", "metric")
        ax.plot([], [], ":", color="grey", lw=1.5, label=f"{name} (dotted, right axis)")
    ax.set_xlabel(recs[0].meta.get("label", "alpha"), fontsize=9)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    names = recs[0].meta.get("run_labels")
    between = f"{names[0]} and {names[1]}" if names and len(names) == 2 else "two solutions"
    heading = title or f"loss barrier between {between}"
    endpoints = recs[0].meta.get("endpoints")
    if endpoints:
        heading += f"\nendpoints: {endpoints}"
    ax.set_title(heading, fontsize=10)
    return fig
