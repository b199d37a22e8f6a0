"""Figures of the metrics over training: the edge-of-stability ratio, critical sharpness, curvature per block.

The callback's :class:`~lightning_landscape.records.record.MetricsRecord` holds one point of training; these
figures draw the points of a fit so far, given as a history of ``(global_step, stage, scalars)``
entries in the order they were computed (the publisher keeps it). Matplotlib ``Figure`` builders (no
pyplot state, safe on the background renderer's thread); like :mod:`lightning_landscape.plots.landscape`, no
torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from lightning_landscape.plots.base import framed

__all__ = [
    "BLOCK_QUANTITIES",
    "MetricHistory",
    "block_matrix",
    "blocks_figure",
    "critical_figure",
    "has_blocks",
    "has_stability",
    "stability_figure",
    "stability_series",
]

MetricHistory = Sequence[tuple[int, str, Mapping[str, float]]]
BLOCK_QUANTITIES = ("lambda_max", "trace")
_RATIO = "eos/ratio"


def has_stability(scalars: Mapping[str, float]) -> bool:
    """Whether ``scalars`` hold an edge-of-stability ratio."""
    return _RATIO in scalars


def has_blocks(scalars: Mapping[str, float]) -> bool:
    """Whether ``scalars`` hold per-block curvature (``blocks/<block>/<quantity>``)."""
    return any(_block_key(k) is not None for k in scalars)


def _block_key(key: str) -> tuple[str, str] | None:
    if not key.startswith("blocks/"):
        return None
    block, _, quantity = key[len("blocks/") :].rpartition("/")
    return (block, quantity) if block and quantity in BLOCK_QUANTITIES else None


def _label(step: int, stage: str) -> str:
    return str(step) if stage == "periodic" else f"{step} ({stage})"


def stability_series(history: MetricHistory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps, ratios and whether each is the final landscape's, for the entries that hold a ratio.

    Example::

        >>> steps, ratios, final = stability_series([(4, "periodic", {"eos/ratio": 0.5}),
        ...                                           (8, "final", {"eos/ratio": 0.9})])
        >>> steps.tolist(), ratios.tolist(), final.tolist()
        ([4, 8], [0.5, 0.9], [False, True])
    """
    chosen = [(step, stage, s[_RATIO]) for step, stage, s in history if _RATIO in s]
    steps = np.array([c[0] for c in chosen], dtype=np.int64)
    ratios = np.array([c[2] for c in chosen], dtype=np.float64)
    final = np.array([c[1] != "periodic" for c in chosen], dtype=bool)
    return steps, ratios, final


def block_matrix(history: MetricHistory, quantity: str) -> tuple[list[str], list[str], np.ndarray]:
    """Blocks x training points: ``(blocks, column labels, values)`` with ``values[i, j]`` the block
    ``blocks[i]``'s ``quantity`` ("lambda_max" or "trace") at the ``j``-th entry holding block scalars
    (NaN where absent). Blocks in the order they first appear; columns labelled by step (and stage).

    Example::

        >>> blocks, labels, values = block_matrix(
        ...     [(4, "periodic", {"blocks/0/lambda_max": 2.0, "blocks/1/lambda_max": 0.5}),
        ...      (8, "final", {"blocks/0/lambda_max": 3.0})], "lambda_max")
        >>> blocks, labels, values.tolist()
        (['0', '1'], ['4', '8 (final)'], [[2.0, 3.0], [0.5, nan]])
    """
    if quantity not in BLOCK_QUANTITIES:
        raise ValueError(f"`quantity` must be one of {BLOCK_QUANTITIES}, got {quantity!r}")
    entries = [(step, stage, s) for step, stage, s in history if has_blocks(s)]
    blocks: list[str] = []
    for _, _, scalars in entries:
        for key in scalars:
            parsed = _block_key(key)
            if parsed is not None and parsed[0] not in blocks:
                blocks.append(parsed[0])
    values = np.full((len(blocks), len(entries)), np.nan)
    for j, (_, _, scalars) in enumerate(entries):
        for i, block in enumerate(blocks):
            value = scalars.get(f"blocks/{block}/{quantity}")
            if value is not None:
                values[i, j] = float(value)
    return blocks, [_label(step, stage) for step, stage, _ in entries], values


def stability_figure(history: MetricHistory, title: str | None = None) -> Figure:
    """Sharpness / the optimizer's threshold over training steps, with the line at 1.0 (Cohen et al.).

    Example::

        >>> fig = stability_figure([(4, "periodic", {"eos/ratio": 0.5}), (8, "periodic", {"eos/ratio": 1.1})])
        >>> fig.axes[0].lines[0].get_ydata().tolist()
        [0.5, 1.1]
    """
    steps, ratios, final = stability_series(history)
    fig, ax, _, wrapped = framed((5.6, 3.8), title=title or "edge of stability")
    periodic = ~final
    ax.plot(steps[periodic], ratios[periodic], "o-", color="C0", label="sharpness / threshold")
    if final.any():
        ax.plot(steps[final], ratios[final], "*", color="C3", markersize=12, label="final")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="edge of stability (1.0)")
    ax.set_xlabel("global step")
    ax.set_ylabel("sharpness / threshold")
    ax.set_ylim(bottom=0.0, top=max(1.2, float(np.nanmax(ratios, initial=0.0)) * 1.1))
    ax.set_title(wrapped)
    ax.legend(loc="best", fontsize="small")
    return fig


def blocks_figure(history: MetricHistory, title: str | None = None) -> Figure:
    """Heatmaps block x training point: ``lambda_max`` (left) and the Hessian trace (right) per block.

    Example::

        >>> fig = blocks_figure([(4, "periodic", {"blocks/0/lambda_max": 2.0, "blocks/0/trace": 5.0})])
        >>> fig.axes[0].images[0].get_array().tolist()
        [[2.0]]
    """
    fig = Figure(figsize=(10.0, 1.8 + 0.35 * max(len(block_matrix(history, "lambda_max")[0]), 4)))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(BLOCK_QUANTITIES), squeeze=False)[0]
    for ax, quantity in zip(axes, BLOCK_QUANTITIES):
        blocks, labels, values = block_matrix(history, quantity)
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_yticks(range(len(blocks)), blocks)
        step = max(1, len(labels) // 8)  # at most ~8 tick labels
        ticks = list(range(0, len(labels), step))
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=30, ha="right")
        ax.set_xlabel("global step")
        ax.set_title("lambda_max per block" if quantity == "lambda_max" else "Hessian trace per block")
        fig.colorbar(image, ax=ax)
    fig.suptitle(title or "curvature per block")
    return fig


def critical_figure(history: MetricHistory, title: str | None = None) -> Figure:
    """Critical sharpness ``lambda_c`` along the optimizer's update over training steps, with the
    optimizer's stability threshold, the steps whose update went uphill on the probe (crosses at 0) and,
    when measured, the relative critical sharpness of a second loss.

    Example::

        >>> fig = critical_figure([(0, "periodic", {"critical/lambda_c": 2.0, "critical/threshold": 40.0}),
        ...                        (10, "periodic", {"critical/lambda_c": 30.0, "critical/threshold": 40.0})])
        >>> fig.axes[0].lines[0].get_ydata().tolist()
        [2.0, 30.0]
        >>> fig = critical_figure([(0, "periodic", {"critical/uphill": 1.0}),
        ...                        (10, "periodic", {"critical/uphill": 0.0, "critical/lambda_c": 3.0})])
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['lambda_c = 2 / eta_c', 'update uphill on the probe']
    """
    fig, ax, _, wrapped = framed((5.6, 3.8), title=title or "critical sharpness along the update")
    series = (
        ("critical/lambda_c", "o-", "C0", "lambda_c = 2 / eta_c"),
        ("critical/relative_lambda_c", "s-", "C2", "relative lambda_c (second loss)"),
        ("critical/threshold", "--", "black", "stability threshold"),
    )
    for key, style, color, label in series:
        points = [(step, float(s[key])) for step, _, s in history if key in s]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, color=color, markersize=3, linewidth=1.2, label=label)
    uphill = [step for step, _, s in history if s.get("critical/uphill") == 1.0]
    if uphill:  # the update went up on the probe at every small step: no lambda_c
        ax.plot(
            uphill, [0.0] * len(uphill), "x", color="C3", clip_on=False, label="update uphill on the probe"
        )
    ax.set_xlabel("global step")
    ax.set_ylabel("sharpness")
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    ax.set_title(wrapped)
    ax.legend(loc="best", fontsize="small")
    return fig
