"""What the reliability indicators add to a default landscape: forward passes counted, time measured.

A default periodic landscape is an 11 x 11 surface and one 41-point interpolation line over the probe
batches (plus the default metrics, counted from their cost model). The indicators
(:func:`lightning_landscape.functional.landscape_reliability` with default settings: 3 extra directions
x 4 new points, 2 axes x 2 signs x 5 distances, 8 of 64 snapshots) are counted by wrapping ``loss_fn``
and compared with :func:`reliability_cost`. Times are measured side by side in one process (interleaved
repetitions), with the load average printed.

    python benchmarks/bench_reliability.py [--reps 3] [--batches 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MODELS, ce_loss, interleaved, machine, median_ratio, probe, table

from lightning_landscape.callback.metrics import DEFAULT_METRICS, estimated_cost, resolve_metrics
from lightning_landscape.functional import (
    flatten,
    interpolation_line,
    landscape_parameters,
    landscape_reliability,
    loss_surface,
    reliability_cost,
    trajectory_pca,
    unflatten,
)
from lightning_landscape.functional.trust.path import random_walk_baseline


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        self.calls += 1
        return ce_loss(model, batch)


def measure(
    name: str, model: torch.nn.Module, reps: int, batches: int, snapshots: int, metrics: float
) -> list:
    data = probe(name, batches)
    params = [p for _, p in landscape_parameters(model)]
    centre = flatten(params, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    walk = (0.01 * torch.randn(snapshots, centre.numel(), generator=g)).cumsum(0)
    snaps = centre + walk - walk[-1]  # a random walk ending near the current weights
    pca = trajectory_pca(snaps, centre)
    plane = [unflatten(c, params, dtype=torch.float32) for c in pca.components]
    start = unflatten(snaps[0], params)
    span = float(pca.coords.abs().max()) * 1.25
    surface = loss_surface(model, ce_loss, data, plane, resolution=11, span=span, params=params)
    counter = Counting()

    def landscape() -> None:
        loss_surface(model, counter, data, plane, resolution=11, span=span, params=params)
        interpolation_line(model, counter, data, start, resolution=41, params=params)

    def indicators() -> None:
        unit = float(centre.norm())  # PCA axes are unit vectors: measure distances in weight norms
        landscape_reliability(
            model, counter, data, plane, surface, params=params, pca=pca, snapshots=snaps, unit=unit
        )

    counter.calls = 0
    landscape()
    landscape_calls = counter.calls
    counter.calls = 0
    indicators()
    extra_calls = counter.calls
    assert extra_calls == batches * reliability_cost(snapshots=snapshots), (extra_calls, batches)
    times = interleaved({"landscape": landscape, "indicators": indicators}, reps)
    return [
        name,
        landscape_calls,
        extra_calls,
        extra_calls / landscape_calls,
        extra_calls / (landscape_calls + batches * metrics),
        median_ratio(times["indicators"], times["landscape"]),
    ]


def run(reps: int = 3, batches: int = 4, snapshots: int = 64) -> list[list]:
    metrics = estimated_cost(resolve_metrics(DEFAULT_METRICS, final=False, seed=0))
    rows = []
    for name, make in MODELS.items():
        torch.manual_seed(0)
        rows.append(measure(name, make(), reps, batches, snapshots, metrics))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    print(f"reliability_cost(default, 64 snapshots) = {reliability_cost(snapshots=64):.0f} loss evaluations")
    rows = run(args.reps, args.batches)
    print(
        table(
            rows,
            [
                "model",
                "landscape passes",
                "indicator passes",
                "ratio (surface+line)",
                "ratio (+ default metrics)",
                "time ratio",
            ],
        )
    )
    for count in (16, 64):
        t0 = time.perf_counter()
        random_walk_baseline(count, 10**6, samples=1000, seed=12345)  # a fresh cache entry
        seconds = time.perf_counter() - t0
        print(f"random-walk baseline, {count} snapshots, 1000 walks: {seconds:.2f} s (then cached)")
    print(machine())


if __name__ == "__main__":
    main()
