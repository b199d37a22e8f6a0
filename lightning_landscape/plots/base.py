"""What every loss-landscape figure shares: contour levels, axis labels, titles, rendering to pixels."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_landscape.records.record import SurfaceRecord

__all__ = [
    "axis_label",
    "contour_levels",
    "figure_to_png",
    "figure_to_rgb",
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
