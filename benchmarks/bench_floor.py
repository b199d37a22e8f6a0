"""Surface time against the floor: an R x R surface vs R*R plain no_grad forward passes.

The floor is what any landscape must spend: ``loss_fn(model, batch)`` for every probe batch at every
grid point, under ``no_grad``, in eval mode, with nothing else. The ratio surface / floor is measured
in the same run, on the same probe batches, for the loop engine and the batched (vmap) engine.
Targets: <= 1.05 on the loop path, < 1.0 on the batched path for small models. Interleaved, order
alternated, one warm-up excluded, median [min-max] of the per-repetition ratios; accuracy of both
engines against a float64 loop that deep-copies the model at every point (``common.naive_surface``).
Written to ``benchmarks/results/floor.txt``.

    OMP_NUM_THREADS=1 python benchmarks/bench_floor.py [--resolution 11] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from common import (
    MODELS,
    Report,
    SurfaceCase,
    alternating,
    machine,
    naive_surface,
    ratio_spread,
    spread,
    table,
)


def run(resolution: int = 11, reps: int = 5, batches: int = 4, batch_size: int = 64) -> list[list]:
    rows = []
    for name in MODELS:
        case = SurfaceCase.make(name, resolution, batches, batch_size)
        fns = {"floor": case.floor, "loop": case.surface("loop"), "vmap": case.surface("vmap")}
        times = alternating(fns, reps)
        loop_, vmap_ = case.surface("loop")().losses, case.surface("vmap")().losses
        grid = np.linspace(-1.0, 1.0, resolution)
        grid[resolution // 2] = 0.0
        reference = naive_surface(case.model, case.data, case.dirs[0], case.dirs[1], grid, grid)
        rows.append(
            [
                case.name,
                sum(p.numel() for p in case.params),
                f"{case.points} x {case.batches}x{case.batch_size}",
                spread(times["floor"]),
                ratio_spread(times["loop"], times["floor"]),
                ratio_spread(times["vmap"], times["floor"]),
                f"{np.abs(loop_ - reference).max():.1e}",
                f"{np.abs(vmap_ - reference).max():.1e}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=11)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = Report("floor")
    report(f"## (a) surface time / floor, {args.resolution}x{args.resolution} grid  [{machine()}]")
    report(f"{args.reps} interleaved repetitions (order alternated, one warm-up excluded), median [min-max]")
    rows = run(args.resolution, args.reps)
    header = [
        "model",
        "params",
        "points x probe",
        "floor s",
        "loop/floor",
        "vmap/floor",
        "loop err",
        "vmap err",
    ]
    report(table(rows, header))
    report("err: largest difference from a float64 loop that deep-copies the model at every point")
    report(f"[after: {machine()}]")
    report(f"written to {report.write()}")


if __name__ == "__main__":
    main()
