"""Surface time against the floor: an R x R surface vs R*R plain no_grad forward passes.

The floor is what any landscape must spend: ``loss_fn(model, batch)`` for every probe batch at every
grid point, under ``no_grad``, in eval mode, with nothing else. The ratio surface / floor is measured
in the same run, on the same probe batches, for the loop engine and the batched (vmap) engine.
Targets: <= 1.05 on the loop path, < 1.0 on the batched path for small models.

    python benchmarks/bench_floor.py [--resolution 11] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MODELS, SurfaceCase, interleaved, machine, median_ratio, table


def run(resolution: int = 11, reps: int = 5, batches: int = 4, batch_size: int = 64) -> list[list]:
    rows = []
    for name in MODELS:
        case = SurfaceCase.make(name, resolution, batches, batch_size)
        fns = {"floor": case.floor, "loop": case.surface("loop"), "vmap": case.surface("vmap")}
        times = interleaved(fns, reps)
        loop_, vmap_ = case.surface("loop")().losses, case.surface("vmap")().losses
        rows.append(
            [*case.row(times), median_ratio(times["vmap"], times["floor"]), f"{abs(loop_ - vmap_).max():.1e}"]
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
    print(f"## (a) surface time / floor, {args.resolution}x{args.resolution} grid  [{machine()}]")
    rows = run(args.resolution, args.reps)
    header = ["model", "params", "points x probe", "floor s", "loop/floor", "vmap/floor", "max |loop-vmap|"]
    print(table(rows, header))
    print("targets: loop/floor <= 1.05, vmap/floor < 1.0")


if __name__ == "__main__":
    main()
