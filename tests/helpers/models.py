"""Tiny models and data for end-to-end Trainer tests on the CPU (shared by every test folder)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

FEATURES, CLASSES = 6, 3

# The test models are tiny: one intra-op thread is as fast, and immune to the oversubscription slow-downs
# (10x seen) that two threads suffer when other processes share the two cores.
torch.set_num_threads(1)


class NoisyDataset(Dataset):
    """A fixed classification set; each item gets fresh noise from the global torch AND numpy RNGs.

    The noise makes training depend on the random state, so anything that consumes random numbers
    while observing (iterating the loader for probe batches, say) shows up as a change in training.
    """

    def __init__(self, n: int = 64, seed: int = 0, noise: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.noise:
            x = x + self.noise * torch.randn(FEATURES)
            x = x + self.noise * torch.from_numpy(np.random.normal(size=FEATURES).astype(np.float32))
        return x, self.y[i]


def loader(n: int = 64, batch_size: int = 8, seed: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader over :class:`NoisyDataset`; extra kwargs go to the DataLoader except ``noise``."""
    noise = kwargs.pop("noise", 0.0)
    return DataLoader(NoisyDataset(n, seed, noise), batch_size=batch_size, **kwargs)


class TinyNet(pl.LightningModule):
    """Linear -> norm -> ReLU -> Dropout -> Linear, logging its training loss on step and epoch."""

    def __init__(self, norm: str = "batch", dropout: float = 0.2, hidden: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        norm_layer = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": lambda n: nn.Identity()}[norm]
        self.net = nn.Sequential(
            nn.Linear(FEATURES, hidden),
            norm_layer(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def ce_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The loss ``TinyNet.training_step`` computes, written independently."""
    x, y = batch
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def first_batches(dl: DataLoader, n: int) -> list[Any]:
    """The first ``n`` batches ``dl`` yields."""
    return [b for _, b in zip(range(n), dl)]


def naive_mean_loss(model: nn.Module, batches: list[Any]) -> float:
    """Reference: mean loss over ``batches`` with the model in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        return float(sum(float(ce_loss(model, b)) for b in batches) / len(batches))
    finally:
        model.train(was_training)
