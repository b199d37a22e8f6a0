"""Probe cases for the evaluation-engine tests (loop, vmap, compile): a model and its probe batches.

Each case is a model left in train mode (the engines must observe in eval mode whatever mode they are
given), a few classification probe batches, its landscape parameters and seeded filter-normalized
directions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lightning_landscape.functional import filter_normalized_directions, landscape_parameters


class TinyTransformer(nn.Module):
    """Embedding -> one or more transformer encoder layers (with dropout) -> mean pool -> Linear."""

    def __init__(self, width: int = 8, layers: int = 1) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, width)
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.2, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(1))


def probe_case(
    kind: str | Callable[[], nn.Module], sizes: Sequence[int] = (8, 8, 8)
) -> tuple[nn.Module, list[Any], list[nn.Parameter], Any]:
    """``(model, batches, params, directions)`` for ``kind`` "mlp", "cnn" (BatchNorm with non-trivial
    running statistics), "transformer", or a factory of a module taking 6 features; one batch per size."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        model: nn.Module = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3))
        xs = [torch.randn(n, 6, generator=g) for n in sizes]
    elif kind == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 3),
        )
        model.train()
        model(torch.randn(16, 1, 6, 6, generator=g))  # non-trivial running statistics
        xs = [torch.randn(n, 1, 6, 6, generator=g) for n in sizes]
    elif kind == "transformer":
        model = TinyTransformer()
        xs = [torch.randint(0, 20, (n, 5), generator=g) for n in sizes]
    elif callable(kind):
        model = kind()
        xs = [torch.randn(n, 6, generator=g) for n in sizes]
    else:
        raise ValueError(f"`kind` must be 'mlp', 'cnn', 'transformer' or a module factory, got {kind!r}")
    model.train()
    batches = [(x, torch.randint(0, 3, (len(x),), generator=g)) for x in xs]
    params = [p for _, p in landscape_parameters(model)]
    return model, batches, params, filter_normalized_directions(params, seed=0)
