"""Cost growth: surface time as the resolution and the probe size double (should be linear in points x data).

For the small CNN, an R x R surface over B probe batches of 64 samples, for R in (9, 17) and B in
(2, 4, 8); the cost per (grid point x probe sample) is reported relative to the smallest case
(1.0 = exactly linear).

    python benchmarks/bench_growth.py [--reps 3] [--engine loop]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MODELS, ce_loss, interleaved, machine, probe, table

from lightning_landscape.functional import filter_normalized_directions, landscape_parameters, loss_surface


def run(reps: int = 3, engine: str = "loop", model_name: str = "cnn") -> list[list]:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    params = [p for _, p in landscape_parameters(model)]
    dirs = filter_normalized_directions(params, seed=0)
    cases = [(r, b) for r in (9, 17) for b in (2, 4, 8)]
    data = {b: probe(model_name, b, 64) for _, b in cases}
    fns = {
        (r, b): (lambda r=r, b=b: loss_surface(model, ce_loss, data[b], dirs, resolution=r, engine=engine))
        for r, b in cases
    }
    times = interleaved(fns, reps)
    unit = {k: statistics.median(t) / (k[0] ** 2 * k[1] * 64) for k, t in times.items()}
    base = unit[cases[0]]
    return [
        [f"{r}x{r}", b * 64, statistics.median(times[(r, b)]), unit[(r, b)] * 1e6, unit[(r, b)] / base]
        for r, b in cases
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--engine", default="loop", choices=["auto", "loop", "vmap"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"## (d) cost growth, small CNN, engine={args.engine}  [{machine()}]")
    rows = run(args.reps, args.engine)
    print(table(rows, ["grid", "probe samples", "surface s", "us per point x sample", "relative"]))
    print("linear in points x data: relative stays ~1.0")


if __name__ == "__main__":
    main()
