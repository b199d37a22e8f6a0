"""Figures of the ViT study (``vit_adamw_vs_sam.py``), drawn from the files its runs wrote.

Used by :func:`vit_study_report.write_all`; each function returns a matplotlib ``Figure`` (no pyplot).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from vit_study_report import chosen, finals, label, mean_std

COLOURS = {"adamw": "tab:blue", "sam": "tab:orange"}
Runs = list[dict[str, Any]]


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


def _band(ax: Any, runs: Runs, key: str, colour: str, name: str, scale: float = 1.0) -> None:
    epochs = np.asarray(runs[0]["history"]["epoch"])
    values = scale * np.array([s["history"][key] for s in runs], dtype=np.float64)
    for v in values:
        ax.plot(epochs, v, color=colour, lw=0.5, alpha=0.3)
    mean = values.mean(0)
    ax.plot(epochs, mean, color=colour, lw=2, label=f"{name} (mean of {len(values)})")
    if len(values) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def figure_training(runs: dict[str, dict[str, Runs]]) -> Figure:
    """Per setting (rows): train loss on the labels trained on and on the clean labels, test accuracy and
    the memorized fraction of flipped labels over epochs, for the AdamW and SAM chosen on validation."""
    keys = (
        ("train_loss", "train loss, labels trained on", 1),
        ("clean_train_loss", "train loss, clean labels", 1),
        ("test_acc", "clean test accuracy (%)", 100),
        ("memorized", "flipped labels memorized (%)", 100),
    )
    fig = Figure(figsize=(15, 3.4 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), len(keys), squeeze=False)
    for row, (setting, groups) in zip(axes, runs.items()):
        for ax, (key, title, scale) in zip(row, keys):
            for opt in ("adamw", "sam"):
                g = chosen(groups, opt)
                _band(ax, groups[g], key, COLOURS[opt], label(groups[g]), scale)
            ax.set_title(f"{setting}: {title}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        row[0].set_yscale("log")
        row[1].set_yscale("log")
        row[2].legend(fontsize=8)
    fig.suptitle(
        "AdamW vs SAM, each chosen on validation (line: mean over seeds; band: +-1 std; thin: each seed)"
    )
    return fig


def figure_sweep(runs: dict[str, dict[str, Runs]]) -> Figure:
    """Per setting (rows): validation and test accuracy, and final train loss, of every run configuration."""
    fig = Figure(figsize=(15, 3.6 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), 3, squeeze=False)
    for row, (setting, groups) in zip(axes, runs.items()):
        names = list(groups)
        x = np.arange(len(names))
        for ax, key, title, scale in zip(
            row,
            ("val_acc", "test_acc", "train_loss"),
            (
                "validation accuracy (%) - used to choose",
                "clean test accuracy (%)",
                "final train loss (labels trained on)",
            ),
            (100, 100, 1),
        ):
            for xi, g in zip(x, names):
                opt = groups[g][0]["optimizer"]
                values = [scale * v for v in finals(groups[g], key)]
                m, s, _ = mean_std(values)
                ax.errorbar(
                    [xi], [m], yerr=[0 if math.isnan(s) else s], fmt="o", color=COLOURS[opt], capsize=4
                )
                ax.plot([xi] * len(values), values, ".", color=COLOURS[opt], alpha=0.4)
            ax.set_xticks(x, [label(groups[g]).replace(" (", "\n(") for g in names], fontsize=7, rotation=30)
            ax.set_title(f"{setting}: {title}", fontsize=10)
            ax.grid(alpha=0.3)
        row[2].set_yscale("log")
    fig.suptitle("Every configuration (blue: AdamW by weight decay; orange: SAM by rho; error bar: +-1 std)")
    return fig


def write_figures(out: Path, runs: dict[str, dict[str, Runs]]) -> list[Path]:
    """Draw every figure into ``<out>/figures/``; returns the paths."""
    import vit_study_landscape

    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (("vit_training", figure_training(runs)), ("vit_sweep", figure_sweep(runs))):
        _save(fig, folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    for name, fig in vit_study_landscape.figures(out, runs).items():
        _save(fig, folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths
