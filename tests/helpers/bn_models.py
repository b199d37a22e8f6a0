"""A small BatchNorm CNN, its data, a few training steps, and naive references (a model copy per point)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_landscape.functional import landscape_parameters


def bn_cnn(seed: int = 0, dropout: float = 0.2) -> nn.Sequential:
    """Conv -> BN2d -> ReLU -> Dropout -> Linear -> BN1d -> ReLU -> Linear on 1 x 6 x 6 inputs, 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def bn_batches(n: int = 3, size: int = 8, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    """Inputs with a learnable label (signs of two pixel means), not centred (BN has work to do)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = 0.5 + 2.0 * torch.randn(size, 1, 6, 6, generator=g)
        y = (x[:, 0, :3].mean((1, 2)) > 0.5).long() + (x[:, 0, 3:].mean((1, 2)) > 0.5).long()
        out.append((x, y))
    return out


def ce(model: nn.Module, batch: Any) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def accuracy(model: nn.Module, batch: Any) -> Tensor:
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


def train_steps(model: nn.Module, batches: Sequence[Any], epochs: int = 3, lr: float = 0.1) -> nn.Module:
    """Plain SGD in train mode (running statistics move); returns the model."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for batch in batches:
            opt.zero_grad()
            ce(model, batch).backward()
            opt.step()
    return model


def state_copy(model: nn.Module) -> dict[str, Tensor]:
    """A copy of ``model.state_dict()``, to compare against after observing."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def weights(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for _, p in landscape_parameters(model)]


def naive_point(
    model: nn.Module,
    point: Sequence[Tensor],
    batches: Sequence[Any],
    buffers: Mapping[str, Tensor] | None = None,
    recompute: bool = False,
    fn: Any = ce,
) -> float:
    """Mean of ``fn`` over ``batches`` for a fresh copy of ``model`` with weights ``point`` (and ``buffers``).

    ``recompute``: reset the BatchNorm statistics and re-estimate them as a cumulative average over the
    batches, BatchNorm layers alone in train mode (dropout off), then evaluate in eval mode.
    """
    m = copy.deepcopy(model)
    state = m.state_dict()
    for (name, _), w in zip(landscape_parameters(m), point):
        state[name] = w.clone()
    for name, b in (buffers or {}).items():
        state[name] = b.clone()
    m.load_state_dict(state)
    m.eval()
    with torch.no_grad():
        if recompute:
            norms = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            for batch in batches:
                m(batch[0])
            m.eval()
        return float(np.mean([fn(m, b).item() for b in batches]))
