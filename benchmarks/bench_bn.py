"""Cost of the BatchNorm modes and of a metric beside the loss, against the plain surface.

For the BatchNorm CNN of ``common.py``, an R x R surface with ``bn="keep"`` (the plain surface),
``bn="recompute"`` (statistics re-estimated at every point: one more forward pass per point and
batch, in train mode for the normalization layers) and ``metric_fn`` (one more forward pass), on the
loop and the batched (vmap) engines. Ratios are measured side by side in one process (interleaved
repetitions, median of per-repetition ratios); the counted forward passes are printed beside them.
Expected: about 2x for recompute and for a metric, the counted passes exactly 2x.

    python benchmarks/bench_bn.py [--resolution 7] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ce_loss, cnn, interleaved, machine, median_ratio, probe, table

from lightning_landscape.functional import filter_normalized_directions, landscape_parameters, loss_surface


def accuracy(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


def run(resolution: int, reps: int) -> list[list]:
    torch.manual_seed(0)
    model = cnn()
    data = probe("cnn", 4, 64)
    dirs = filter_normalized_directions([p for _, p in landscape_parameters(model)], seed=0)
    rows = []
    for engine in ("loop", "vmap"):
        variants = {
            "keep": {},
            "recompute": {"bn": "recompute"},
            "metric": {"metric_fn": accuracy},
        }

        def call(kw: dict, engine: str = engine):
            return lambda: loss_surface(
                model, ce_loss, data, dirs, resolution=resolution, engine=engine, **kw
            )

        times = interleaved({k: call(kw) for k, kw in variants.items()}, reps)
        passes = {
            k: loss_surface(model, ce_loss, data, dirs, resolution=resolution, engine=engine, **kw).meta[
                "forward_passes"
            ]
            for k, kw in variants.items()
        }
        for k in ("recompute", "metric"):
            rows.append(
                [
                    engine,
                    k,
                    min(times["keep"]),
                    min(times[k]),
                    median_ratio(times[k], times["keep"]),
                    passes[k] / passes["keep"],
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"## surface cost of bn='recompute' and metric_fn vs the plain surface  [{machine()}]")
    header = ["engine", "variant", "keep s", "variant s", "time ratio", "forward-pass ratio"]
    print(table(run(args.resolution, args.reps), header))


if __name__ == "__main__":
    main()
