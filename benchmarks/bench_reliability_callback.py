"""What the reliability indicators add to the callback's landscapes, as a user gets them by default.

Two identical short fits of a small model (an MLP on random data, 2 epochs of 20 batches, a snapshot
every 2 steps so the path check has its 8 snapshots), one with ``reliability=True`` (the default) and
one with ``reliability=False``; everything else at its defaults except ``max_overhead=None`` (both
compute the same landscapes) and no curvature metrics (a landscape's own passes: surface and lines).
Forward passes are counted by wrapping ``loss_fn`` (one call = one forward pass over one probe batch).
The budget's cost model for a default callback (default metrics included) is printed beside, with
the wall time of both fits (side by side in one process, with the load average: the machine is
shared).

    python benchmarks/bench_reliability_callback.py [--reps 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl
from common import ce_loss, machine, table
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import LossLandscapeCallback


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Counting:
    """``ce_loss``, counting its calls (the fits compute no metrics: every call is a landscape's)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        return ce_loss(model, batch)


def run(reliability: bool) -> tuple[int, float, dict[str, float], int]:
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(640, 64, generator=g), torch.randint(0, 10, (640,), generator=g)
    counter = Counting()
    cb = LossLandscapeCallback(
        loss_fn=counter, max_overhead=None, snapshot_every_n_steps=2, reliability=reliability,
        log_figures=False, save_records=False, metrics=(), final_metrics=(),
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tempfile.mkdtemp(), accelerator="cpu", callbacks=[cb],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=32))
    seconds = time.perf_counter() - start
    default = LossLandscapeCallback(reliability=reliability)  # default metrics: the budget's view
    plans = {stage: default.schedule.plan(stage, 1, 4).cost for stage in ("periodic", "final")}
    landscapes = sum(1 for r in cb.records if r.kind == "surface")
    return counter.calls, seconds, plans, landscapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    rows = []
    for rep in range(args.reps):
        on_calls, on_s, on_plans, n_on = run(True)
        off_calls, off_s, off_plans, n_off = run(False)
        assert n_on == n_off
        rows.append([
            rep, n_on, off_calls, on_calls, f"{on_calls / off_calls:.3f}",
            f"{on_plans['periodic'] / off_plans['periodic']:.3f}",
            f"{on_plans['final'] / off_plans['final']:.3f}",
            f"{off_s:.1f}", f"{on_s:.1f}", f"{on_s / off_s:.2f}",
        ])  # fmt: skip
    print(
        table(
            rows,
            [
                "rep", "landscapes", "passes off", "passes on", "passes on/off", "cost model periodic on/off",
                "cost model final on/off", "fit s off", "fit s on", "time on/off",
            ],
        )
    )  # fmt: skip
    print(f"load average: {os.getloadavg()}")
    print(
        "passes: counted loss calls of the surfaces, lines and indicators (metrics off in these fits), "
        "4 probe batches; 'cost model': the budget's estimate for a default callback "
        "(default metrics included)."
    )


if __name__ == "__main__":
    main()
