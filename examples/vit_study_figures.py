"""Figures of the ViT study (``vit_adamw_vs_sam.py``), drawn from the files its runs wrote.

Used by :func:`vit_study_report.write_all`; each function returns a matplotlib ``Figure`` (no pyplot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from vit_study_report import METRICS, final_records, finals, landscape_values, mean_std, span_records

from lightning_landscape.plots import shared_levels

COLOURS = {"adamw": "tab:blue", "sam": "tab:orange"}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _band(ax: Any, runs: Sequence[dict[str, Any]], key: str, colour: str, label: str) -> None:
    epochs = np.asarray(runs[0]["history"]["epoch"])
    values = np.array([s["history"][key] for s in runs], dtype=np.float64)
    for v in values:
        ax.plot(epochs, v, color=colour, lw=0.6, alpha=0.35)
    mean = values.mean(0)
    ax.plot(epochs, mean, color=colour, lw=2, label=f"{label} (mean of {len(values)})")
    if len(values) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def figure_training(groups: dict[str, list[dict[str, Any]]]) -> Figure:
    """(a) train loss, train accuracy and test accuracy over epochs: mean, +-1 std band, each seed thin."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(
        axes, ("train_loss", "train_acc", "test_acc"), ("train loss", "train accuracy", "test accuracy")
    ):
        for name in ("adamw", "sam"):
            if name in groups:
                _band(ax, groups[name], key, COLOURS[name], name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.suptitle("ViT on digits: AdamW vs SAM (line: mean over seeds; band: +-1 std; thin: each seed)")
    return fig


def figure_weight_decay(groups: dict[str, list[dict[str, Any]]]) -> Figure:
    """(b) test accuracy, train-test gap and train loss against AdamW's weight decay; SAM as a reference."""
    adamw = sorted(
        (g for g in groups if groups[g][0]["optimizer"] == "adamw"),
        key=lambda g: groups[g][0]["weight_decay"],
    )
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    x = np.arange(len(adamw))
    for ax, key, title in zip(
        axes,
        ("test_acc", "gap", "train_loss"),
        ("test accuracy", "train - test accuracy", "final train loss"),
    ):
        stats = [mean_std(finals(groups[g], key)) for g in adamw]
        ax.errorbar(
            x,
            [m for m, _, _ in stats],
            yerr=[0 if math.isnan(s) else s for _, s, _ in stats],
            fmt="o-",
            color=COLOURS["adamw"],
            capsize=4,
            label="AdamW (mean +- std)",
        )
        for xi, g in zip(x, adamw):
            ax.plot([xi] * len(groups[g]), finals(groups[g], key), ".", color=COLOURS["adamw"], alpha=0.5)
        if "sam" in groups:
            m, s, _ = mean_std(finals(groups["sam"], key))
            wd = groups["sam"][0]["weight_decay"]
            ax.axhline(m, color=COLOURS["sam"], lw=2, label=f"SAM, weight decay {wd:g} (mean +- std)")
            if not math.isnan(s):
                ax.axhspan(m - s, m + s, color=COLOURS["sam"], alpha=0.2, lw=0)
        ax.set_xticks(x, [f"{groups[g][0]['weight_decay']:g}" for g in adamw])
        ax.set_xlabel("AdamW weight decay")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Weight-decay sweep (dots: each seed)")
    return fig


def figure_landscapes(groups: dict[str, list[dict[str, Any]]]) -> Figure:
    """(c) final surfaces of one seed per optimizer on one colour scale, and the final 1-D lines."""
    names = [g for g in ("adamw", "sam") if g in groups]
    surfaces = {g: final_records(groups[g][0]["path"])[0] for g in names}
    shown = [s for s in surfaces.values() if s is not None]
    fig = Figure(figsize=(13, 8), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    axes = top.subplots(1, max(len(names), 1), squeeze=False)[0]
    if shown:
        levels = shared_levels(shown, 20, log=True)
        norm = BoundaryNorm(levels, ncolors=256, extend="both")
        cs = None
        for ax, g in zip(axes, names):
            rec = surfaces[g]
            if rec is None:
                continue
            cs = ax.contourf(
                rec.xs, rec.ys, np.ma.masked_invalid(rec.losses), levels=levels, norm=norm, extend="both"
            )
            if rec.path is not None and len(rec.path):
                ax.plot(rec.path[:, 0], rec.path[:, 1], "w.-", lw=1, ms=3)
                ax.plot(*rec.path[0], "o", color="tab:red", ms=7, mec="w")
                ax.plot(*rec.path[-1], "*", color="tab:orange", ms=13, mec="w")
            ev = rec.meta.get("explained_variance") or []
            ev_text = ", ".join(f"{v:.0%}" for v in ev[:2] if v is not None)
            ax.set_title(
                f"{g} seed{groups[g][0]['seed']}: final surface (trajectory PCA, expl. var. {ev_text})",
                fontsize=9,
            )
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
        if cs is not None:
            top.colorbar(cs, ax=list(axes), label="train loss (one scale for both)")
    lax = bottom.subplots(1, 2)
    for g in names:
        for i, s in enumerate(groups[g]):
            _, lines = final_records(s["path"])
            label = g if i == 0 else None
            for ax, pick in zip(lax, ("interpolation", "axis0")):
                for ln in lines:
                    is_interp = ln.meta.get("directions") == "interpolation"
                    if (pick == "interpolation") == is_interp and (is_interp or ln.meta.get("axis") == 0):
                        ax.plot(ln.alphas, ln.losses, color=COLOURS[g], lw=1.2, alpha=0.8, label=label)
    lax[0].set_title("initial (0) -> final (1) weights, every seed")
    lax[0].set_xlabel("alpha")
    lax[1].set_title("along trajectory-PCA direction 1 through the final weights, every seed")
    lax[1].set_xlabel("distance along PC1")
    for ax in lax:
        ax.set_yscale("log")
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def figure_sharpness(groups: dict[str, list[dict[str, Any]]]) -> Figure:
    """(c) final curvature and sharpness per optimizer: mean +- std over seeds, each seed a dot."""
    names = [g for g in ("adamw", "sam") if g in groups]
    keys = [k for k in METRICS if k != "hessian/lambda_min"]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(keys)), keys):
        for i, g in enumerate(names):
            vals = landscape_values(groups[g], key)
            if not vals:
                continue
            m, s, _ = mean_std(vals)
            ax.bar(i, m, yerr=0 if math.isnan(s) else s, color=COLOURS[g], alpha=0.7, capsize=6)
            ax.plot([i] * len(vals), vals, "k.", ms=6)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(METRICS[key], fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        "At the final weights, on the training set (bar: mean, error bar: std over seeds, dots: seeds)"
    )
    return fig


def figure_spans(out: Path, groups: dict[str, list[dict[str, Any]]]) -> Figure | None:
    """(d) one final solution on one pair of random filter-normalized directions, at three spans."""
    rows = {g: span_records(out, g) for g in ("adamw", "sam") if g in groups}
    rows = {g: r for g, r in rows.items() if r}
    if not rows:
        return None
    ncols = max(len(r) for r in rows.values())
    fig = Figure(figsize=(4.3 * ncols, 3.7 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for col in range(ncols):
        # The rise above the centre, L(w + x d1 + y d2) - L(w), on one scale per span: the two solutions
        # start from different losses, and their rise is what the span changes. Quantile levels, so each
        # span's colours cover its own range (from flat at 0.1 to a spike at 10).
        rises = {g: np.asarray(r[col].losses, dtype=np.float64) - r[col].centre_loss for g, r in rows.items()}
        pooled = np.concatenate([v[np.isfinite(v)] for v in rises.values()])
        levels = np.unique(np.quantile(pooled, np.linspace(0, 1, 16))) if pooled.size else np.arange(2.0)
        if len(levels) < 2:
            levels = np.array([levels[0], levels[0] + 1e-12])
        norm = BoundaryNorm(levels, ncolors=256)
        for row, (g, recs) in enumerate(rows.items()):
            rec, ax = recs[col], axes[row, col]
            cs = ax.contourf(rec.xs, rec.ys, np.ma.masked_invalid(rises[g]), levels=levels, norm=norm)
            ax.plot(0, 0, "*", color="tab:orange", ms=12, mec="w")
            ax.set_title(
                f"{g} seed{rec.meta['seed']}, span {rec.meta['span']:g} (L(w) = {rec.centre_loss:.3g})",
                fontsize=9,
            )
            ax.set_xlabel("random direction 1", fontsize=8)
            ax.set_ylabel("random direction 2", fontsize=8)
        fig.colorbar(cs, ax=list(axes[:, col]), label="train loss - L(w)", shrink=0.8, format="%.3g")
    fig.suptitle(
        "One final solution on one pair of random filter-normalized directions, at three distances "
        "(colour: rise above the centre, one scale per span)"
    )
    return fig


def write_figures(out: Path, groups: dict[str, list[dict[str, Any]]]) -> list[Path]:
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    built = {
        "vit_training": figure_training(groups),
        "vit_weight_decay": figure_weight_decay(groups),
        "vit_landscapes": figure_landscapes(groups),
        "vit_sharpness": figure_sharpness(groups),
        "vit_spans": figure_spans(out, groups),
    }
    paths = []
    for name, fig in built.items():
        if fig is not None:
            _save(fig, folder / f"{name}.png")
            paths.append(folder / f"{name}.png")
    return paths
