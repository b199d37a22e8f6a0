"""Independent references for curvature tests: exact Hessians and losses through ``torch.func``.

Nothing here uses lightning_landscape: the model is called functionally (``functional_call``) with the
chosen parameters replaced by slices of one flat vector, in eval mode, and the loss is the mean over
batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["Reference", "ce", "cnn", "frozen_mlp", "make_batches", "mlp"]


def ce(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def frozen_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[2].requires_grad_(False)
    return model


def cnn(seed: int = 0) -> nn.Module:
    """Conv -> BatchNorm (non-trivial running statistics) -> Tanh -> Dropout -> Linear, left in train mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()
    with torch.no_grad():
        model[1].momentum = 0.5
        for _ in range(3):
            model(torch.randn(8, 1, 4, 4, dtype=torch.float64) * 2 + 0.5)
    model.train()
    return model


def make_batches(kind: str, n_batches: int = 2, size: int = 6, seed: int = 1) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 4, 4) if kind == "cnn" else (4,)
    x = torch.randn(n_batches * size, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n_batches * size,), generator=g)
    return [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(n_batches)]


class Reference:
    """The mean probe loss as a function of the flat trainable parameters, and its exact derivatives."""

    def __init__(self, model: nn.Module, batches: list[Any]) -> None:
        self.model, self.batches = model, batches
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.w0 = torch.cat([p.detach().reshape(-1) for _, p in self.named]).clone()

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for n, p in self.named:
            out[n] = flat[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        return out

    def loss(self, flat: torch.Tensor) -> torch.Tensor:
        was = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            params = self.split(flat)
            losses = [
                nn.functional.cross_entropy(functional_call(self.model, params, (x,)), y)
                for x, y in self.batches
            ]
            return torch.stack(losses).mean()
        finally:
            for m, t in was.items():
                m.training = t

    def hessian(self) -> torch.Tensor:
        return torch.autograd.functional.hessian(self.loss, self.w0.clone(), vectorize=True)

    def grad(self) -> torch.Tensor:
        return torch.func.grad(self.loss)(self.w0.clone())

    def loss_at(self, flat: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.loss(flat))
