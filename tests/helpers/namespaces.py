"""The two names Lightning ships under, and a TinyNet built on either (tests of issue 11.3)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import CLASSES, FEATURES

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def namespace(name: str) -> ModuleType:
    """``lightning.pytorch`` or ``pytorch_lightning`` itself."""
    return importlib.import_module(name)


def callback_class(name: str) -> type:
    """The LossLandscapeCallback made for namespace ``name``."""
    if name == "pytorch_lightning":
        from lightning_landscape.pytorch_lightning import LossLandscapeCallback
    else:
        from lightning_landscape import LossLandscapeCallback
    return LossLandscapeCallback


class _TinyBody:
    """TinyNet's body (Linear -> BatchNorm -> ReLU -> Linear), mixed into either LightningModule."""

    def __init__(self, hidden: int = 8, lr: float = 0.1, sam: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lr, self.sam = lr, sam
        self.net = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, CLASSES)
        )
        self.outs: list[torch.Tensor] = []  # a training_step side effect the callback must not disturb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.outs.append(loss.detach())
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("epoch_mean", torch.stack(self.outs).mean())
        self.outs.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.sam:
            from lightning_landscape.optim import SAM

            # Parameters, not the module: SAM must find the LightningModule in the closure by itself.
            return SAM(self.parameters(), torch.optim.SGD, rho=0.5, lr=self.lr, momentum=0.9)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


_CLASSES: dict[str, type] = {}


def tiny_net_class(name: str) -> type:
    """A TinyNet whose base is ``name``'s ``LightningModule`` (one class per namespace)."""
    if name not in _CLASSES:
        base = namespace(name).LightningModule
        _CLASSES[name] = type(f"TinyNet_{name.replace('.', '_')}", (_TinyBody, base), {})
    return _CLASSES[name]
