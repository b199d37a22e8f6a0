"""Runs on disk for the command-line tests: a run's ``landscape/`` folder of records, and ``main`` with its
captured output (tests/cli/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightning_landscape import LineRecord, SurfaceRecord
from lightning_landscape.cli.main import main
from lightning_landscape.records.record import save_record


def make_run(
    root: Path, scale: float, resolution: int = 5, steps: tuple[int, ...] = (4, 8), final: bool = True
) -> Path:
    """A run's landscape/ folder: periodic surfaces + interpolation lines, and (``final``) a final set."""
    folder = root / "landscape"
    xs = np.linspace(-1, 1, resolution)
    stages = [("periodic", s) for s in steps] + ([("final", steps[-1])] if final else [])
    for stage, step in stages:
        losses = scale * (np.add.outer(xs**2, 2 * xs**2) + 0.1 * step)
        meta = {
            "stage": stage,
            "global_step": step,
            "epoch": step // 4 - 1,
            "directions": "pca",
            "resolution": resolution,
            "probe_batches": 2,
            "probe_samples": 16,
            "explained_variance": [0.6 + 0.01 * step, 0.2],
        }
        path = np.array([[0.8, 0.5], [0.0, 0.0]])
        save_record(SurfaceRecord(xs, xs, losses, path, dict(meta)), folder, f"{stage}_surface_{step}")
        alphas = np.linspace(-0.5, 1.5, 5)
        line_meta = {**meta, "directions": "interpolation", "distance": scale * step}
        save_record(
            LineRecord(alphas, scale * (alphas - 1) ** 2, line_meta), folder, f"{stage}_interp_{step}"
        )
        if stage == "final":
            for axis in (0, 1):
                axis_meta = {**meta, "axis": axis}
                save_record(LineRecord(xs, scale * xs**2, axis_meta), folder, f"final_line{axis}_{step}")
    return root


def run_main(capsys: Any, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err
