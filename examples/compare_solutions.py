"""Compare two runs of ``examples/sgd_vs_sam.py`` as solutions: one plane through both, the barrier between.

The runs must have been trained with ``LossLandscapeCallback(save_weights=True)`` (their weights are
under ``<log_dir>/landscape/weights/``) and, for the shared plane, from the same seed. Writes the
records ``shared_plane``, ``barrier`` and ``barrier_naive`` and their figures into
``<common parent>/shared_<A>_vs_<B>[_<tail>]/`` and prints the numbers; ``lightning-landscape compare RUN_A
RUN_B`` then shows them beside the per-run comparison.

    python examples/compare_solutions.py lightning_logs/sgd/seed0 lightning_logs/sam/seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sgd_vs_sam import DigitsCNN, digits_loaders

from lightning_landscape import compare_solutions
from lightning_landscape.plots import figure_to_png
from lightning_landscape.plots.solutions import barrier_figure, shared_plane_figure
from lightning_landscape.solutions import SolutionComparison


def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def accuracy(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return (model(x).argmax(-1) == y).float().mean()


def probe_batches(num_batches: int = 4, batch_size: int = 256, seed: int = 0) -> list[Any]:
    """The first ``num_batches`` batches of the demo's training set, in a fixed order."""
    train_loader, _ = digits_loaders(seed=seed)
    loader = DataLoader(train_loader.dataset, batch_size=batch_size, shuffle=False)
    return [b for _, b in zip(range(num_batches), loader)]


def compare(
    run_a: str | Path,
    run_b: str | Path,
    resolution: int = 21,
    barrier_resolution: int = 21,
    num_batches: int = 4,
    seed: int = 0,
    shared_plane: bool = True,
) -> SolutionComparison:
    """:func:`compare_solutions` of two demo runs on the demo's model and data; figures written beside."""
    result = compare_solutions(
        DigitsCNN(), loss_fn, probe_batches(num_batches, seed=seed), run_a, run_b,
        resolution=resolution, barrier_resolution=barrier_resolution, metric_fn=accuracy,
        metric_name="accuracy", shared_plane=shared_plane,
    )  # fmt: skip
    assert result.directory is not None
    if result.surface is not None:
        (result.directory / "shared_plane.png").write_bytes(
            figure_to_png(shared_plane_figure(result.surface))
        )
    lines = [r for r in (result.barrier, result.naive_barrier) if r is not None]
    (result.directory / "barrier.png").write_bytes(figure_to_png(barrier_figure(lines)))
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs=2, metavar="RUN_DIR", help="two log directories of sgd_vs_sam.py")
    parser.add_argument("--resolution", type=int, default=21, help="points per axis of the shared plane")
    parser.add_argument("--barrier-resolution", type=int, default=21, help="points on the barrier line")
    parser.add_argument("--num-batches", type=int, default=4, help="probe batches of 256 samples")
    parser.add_argument("--seed", type=int, default=0, help="the demo's data split seed")
    parser.add_argument(
        "--no-plane", action="store_true", help="the barrier only (runs from different initializations)"
    )
    args = parser.parse_args(argv)
    result = compare(
        args.runs[0], args.runs[1], args.resolution, args.barrier_resolution, args.num_batches,
        args.seed, shared_plane=not args.no_plane,
    )  # fmt: skip
    labels = result.barrier.meta.get("run_labels", ["A", "B"])
    summary = result.summary()
    print(f"compared solutions: A = {labels[0]}, B = {labels[1]}")
    for key, value in summary.items():
        print(f"  {key:<20} {value:.5g}")
    print(f"wrote {result.directory} (records, shared_plane.png, barrier.png)")
    return summary


if __name__ == "__main__":
    main()
