"""Directions to look along: filter-normalized Gaussian random directions (Li et al., 2018).

Given sharded parameters (FSDP2 ``DTensor``s) every function here gives the directions of the unsharded
model, as ``DTensor``s placed like the parameters (each process holding its slices; see
:mod:`~lightning_landscape.functional.landscape.shards` for how and what it costs): the same seed, the same
directions, whatever the sharding. Every process must call it (a norm may be summed over them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.params import Direction, normalize_filters, work_dtype
from lightning_landscape.functional.landscape.shards import (
    ShardLayout,
    is_sharded,
    sharded_filter_normalize,
    sharded_filter_normalized_directions,
    sharded_random_direction,
)

__all__ = ["filter_normalize", "filter_normalized_directions", "random_direction"]


def random_direction(params: Sequence[Tensor], generator: torch.Generator) -> Direction:
    """A standard-normal direction shaped like ``params``, in float32 (float64 for float64 parameters).

    The numbers are drawn on the CPU from ``generator`` so that a seed gives the same direction on
    every device and machine (and in every precision: float64 parameters get the same float32 draws,
    widened); each tensor is then moved once to its parameter's device.
    """
    if is_sharded(params):
        layout = ShardLayout.of(params)
        return layout.wrap(sharded_random_direction(layout, generator))
    return [
        torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, work_dtype(p))
        for p in params
    ]


def filter_normalize(
    direction: Sequence[Tensor], params: Sequence[Tensor], include_1d: bool = False
) -> Direction:
    """Rescale each filter of ``direction`` to the norm of the same filter of ``params``.

    A *filter* is a slice along the first (output) dimension: an output channel of a convolution,
    a row of a linear layer's weight. One-dimensional parameters (biases, normalization weights)
    are zeroed unless ``include_1d``, in which case each is rescaled as a whole to its
    parameter's norm.

    Example::

        >>> w = [torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([1.0, 1.0])]
        >>> d = filter_normalize([torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.ones(2)], w)
        >>> d[0]
        tensor([[5., 0.],
                [0., 1.]])
        >>> d[1]
        tensor([0., 0.])
    """
    if is_sharded(params):
        layout = ShardLayout.of(params)
        return layout.wrap(sharded_filter_normalize(layout, layout.slices(direction), include_1d))
    return normalize_filters(direction, params, include_1d, lambda _, p, d: (p.norm(), d.norm()))


def filter_normalized_directions(
    params: Sequence[Tensor], count: int = 2, seed: int = 0, include_1d: bool = False
) -> list[Direction]:
    """``count`` seeded, filter-normalized Gaussian random directions for ``params``.

    The same ``seed`` always gives the same directions (drawn in sequence from one CPU generator),
    so two runs compared on the same model see the same plane.

    Example::

        >>> lin = torch.nn.Linear(4, 3)
        >>> d1, d2 = filter_normalized_directions(list(lin.parameters()), count=2, seed=0)
        >>> bool(torch.allclose(d1[0].norm(dim=1), lin.weight.detach().norm(dim=1)))
        True
        >>> d1[1].abs().sum().item()   # biases are zeroed by default
        0.0
    """
    check.positive_int("count", count)
    if is_sharded(params):
        layout = ShardLayout.of(params)
        return [layout.wrap(d) for d in sharded_filter_normalized_directions(layout, count, seed, include_1d)]
    generator = torch.Generator().manual_seed(int(seed))
    return [
        filter_normalize(random_direction(params, generator), params, include_1d=include_1d)
        for _ in range(count)
    ]
