"""The figures and numbers of docs/reading.md, from a short run (about a minute on 2 CPU cores).

A small MLP on scikit-learn's 8 x 8 digits (bundled, no download), SGD for 6 epochs, with the callback
at its defaults (reliability on). Writes ``docs/images/reading_surface.png`` (the final surface with
the path's true losses as coloured markers) and ``docs/images/reading_distance.png`` (loss against log
distance), and prints the final reliability table and scalars that the page quotes.

    python examples/reading_figure.py [--out docs/images] [--root runs/reading]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import LossLandscapeCallback, load_records
from lightning_landscape.plots import distance_figure, path_contour_figure
from lightning_landscape.records import LineRecord, ReliabilityRecord, SurfaceRecord


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def accuracy(model: nn.Module, batch: Any) -> torch.Tensor:
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--root", default="runs/reading")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    loader = DataLoader(TensorDataset(x[:1024], y[:1024]), batch_size=64, shuffle=True)
    cb = LossLandscapeCallback(
        every_n_epochs=2,
        snapshot_every_n_steps=4,
        metric_fn=accuracy,
        metric_name="accuracy",
        log_figures=False,
    )
    shutil.rmtree(args.root, ignore_errors=True)  # a re-run replaces the last (else: landscape-2/)
    trainer = pl.Trainer(
        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=args.root, accelerator="cpu", callbacks=[cb],
    )  # fmt: skip
    trainer.fit(MLP(), loader)

    records = load_records(Path(args.root) / "landscape")
    final = [r for r in records if r.meta.get("stage") == "final"]
    surface = next(r for r in final if isinstance(r, SurfaceRecord))
    trust = next(r for r in final if isinstance(r, ReliabilityRecord))
    distance = [r for r in final if isinstance(r, LineRecord) and r.meta.get("directions") == "distance"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path_contour_figure(surface, trust.path_points, trust.path_losses, flags=trust.flags).savefig(
        out / "reading_surface.png", dpi=90
    )
    distance_figure(distance, flags=trust.flags).savefig(out / "reading_distance.png", dpi=90)
    print(f"wrote {out / 'reading_surface.png'} and {out / 'reading_distance.png'}")
    print(f"\nfinal landscape at step {surface.meta['global_step']}: centre loss {surface.centre_loss:.4f}")
    print(f"PCA convention: {trust.meta['convention']}; {trust.meta.get('random_walk')}")
    print(trust.markdown())
    print("\nscalars:")
    for key, value in trust.scalars().items():
        print(f"  {key} = {value:.4g}")


if __name__ == "__main__":
    main()
