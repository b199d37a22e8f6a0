"""Sharing evaluation points out among processes and gathering the results (no Lightning import).

Under data-parallel training every process holds the same weights, so the points of a surface or a
line can be split among them: process ``r`` of ``W`` evaluates rows ``r, r + W, r + 2W, ...`` of the
coefficient table (interleaved, so near and far points, and their costs, are spread evenly) and one
all-gather brings every value to every process. Each process sends a success flag with its values,
so a failure on one process is seen by all of them *after* the one collective that all of them call:
nobody is left waiting in a collective the others skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["PointShard", "evaluate_sharded", "shard_rows"]


@dataclass(frozen=True)
class PointShard:
    """This process's share of the evaluation points and how to collect everyone's results.

    Args:
        rank: this process's index, ``0 <= rank < world_size``.
        world_size: number of processes evaluating together.
        all_gather: ``all_gather(t)`` for a 1-D float64 CPU tensor ``t`` of the same length on every
            process returns a ``(world_size, len(t))`` tensor (process ``r``'s values in row ``r``);
            it must be a collective that every process calls. Lightning users pass
            ``trainer.strategy.all_gather`` (wrapped to move to and from the device).

    Example::

        >>> shard = PointShard(rank=0, world_size=1, all_gather=lambda t: t[None])
        >>> evaluate_sharded(lambda c: c[:, 0] ** 2, np.array([[1.0], [2.0], [3.0]]), shard)
        array([1., 4., 9.])
    """

    rank: int
    world_size: int
    all_gather: Callable[[Tensor], Tensor]

    def __post_init__(self) -> None:
        if not (isinstance(self.world_size, int) and self.world_size >= 1):
            raise ValueError(f"`world_size` must be an integer >= 1, got {self.world_size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"`rank` must be an integer in [0, {self.world_size}), got {self.rank!r}")


def shard_rows(num_points: int, rank: int, world_size: int) -> np.ndarray:
    """The row indices process ``rank`` evaluates: ``rank, rank + world_size, ...`` below ``num_points``."""
    return np.arange(rank, num_points, world_size)


def evaluate_sharded(
    evaluate: Callable[[np.ndarray], np.ndarray],
    coefficients: np.ndarray,
    shard: PointShard | None,
    columns: int | None = None,
) -> np.ndarray:
    """``evaluate(coefficients)`` with the rows shared out among processes; every process gets all values.

    ``evaluate`` maps an ``(m, k)`` coefficient table to ``m`` losses. Without a shard (or with one
    process) it is called once on the whole table. Otherwise each process evaluates its rows
    (:func:`shard_rows`), the values are all-gathered once, and the full ``(n,)`` array is returned on
    every process. If ``evaluate`` raised on any process, every process raises after the gather (the
    one that failed re-raises its own error).

    With ``columns``, ``evaluate`` maps an ``(m, k)`` table to an ``(m, columns)`` array (per-batch
    losses, say) and the result is ``(n, columns)``.
    """
    if shard is None or shard.world_size == 1:
        return np.asarray(evaluate(coefficients), dtype=np.float64)
    n, world = len(coefficients), shard.world_size
    cols = 1 if columns is None else columns
    width = -(-n // world) * cols  # the longest share; shorter ones are padded so every process sends as much
    local = torch.full((width + 1,), float("nan"), dtype=torch.float64)
    rows = shard_rows(n, shard.rank, world)
    error: BaseException | None = None
    try:
        if len(rows):
            values = np.asarray(evaluate(coefficients[rows]), dtype=np.float64).reshape(-1)
            local[: len(rows) * cols] = torch.as_tensor(values)
        local[width] = 1.0
    except Exception as err:  # reported to the others through the flag, re-raised below
        error = err
        local[width] = 0.0
    gathered = shard.all_gather(local).detach().to("cpu", torch.float64).reshape(world, width + 1)
    if error is not None:
        raise error
    failed = [r for r in range(world) if gathered[r, width].item() != 1.0]
    if failed:
        raise RuntimeError(f"the landscape evaluation failed on rank(s) {failed}")
    out = np.empty((n, cols), dtype=np.float64)
    for r in range(world):
        mine = shard_rows(n, r, world)
        out[mine] = gathered[r, : len(mine) * cols].numpy().reshape(len(mine), cols)
    return out[:, 0] if columns is None else out
