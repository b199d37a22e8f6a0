"""How the callback uses Lightning's strategies: which are supported, sharing points, agreeing on success.

Every function here that communicates is a collective: the callback calls it on every rank, in the
same order, whatever happened on that rank before (failures travel as flags, not as skipped calls).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.landscape.shards import resharding

__all__ = [
    "agree",
    "broadcast_from_zero",
    "check_strategy",
    "is_sharded_strategy",
    "lightning_bases",
    "point_shard",
    "resharding_loss",
]

SUPPORTED = (
    "a single device (strategy='auto' with devices=1), the DDP variants "
    "('ddp', 'ddp_spawn', 'ddp_fork', 'ddp_notebook') and ModelParallelStrategy with tensor_parallel_size=1 "
    "(FSDP2's fully_shard on a data-parallel mesh)"
)


# Both packages Lightning ships: `lightning.pytorch` and the standalone `pytorch_lightning`. Their classes are
# distinct copies, so strategies are recognised by the names of the Lightning classes they derive from.
LIGHTNING_NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def lightning_bases(obj: Any) -> set[str]:
    """Names of the classes of either Lightning namespace that ``obj``'s class is built from (its MRO).

    Example::

        >>> from lightning.pytorch.strategies import DDPStrategy
        >>> sorted(lightning_bases(DDPStrategy()))
        ['DDPStrategy', 'ParallelStrategy', 'Strategy']
    """
    return {cls.__name__ for cls in type(obj).__mro__ if _in_lightning(cls.__module__ or "")}


def _in_lightning(module: str) -> bool:
    return any(module == ns or module.startswith(ns + ".") for ns in LIGHTNING_NAMESPACES)


def _sharded_strategy_name(strategy: Any) -> str | None:
    """The name of a strategy that shards parameters (FSDP, DeepSpeed, model parallel), else None."""
    bases = lightning_bases(strategy)
    for cls_name in ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"):
        if cls_name in bases:
            return cls_name
    return None


def check_strategy(strategy: Any) -> None:
    """Refuse strategies whose ranks do not each hold the whole model (the perturbation would be wrong).

    Strategies of ``lightning.pytorch`` and of ``pytorch_lightning`` (and their subclasses) alike.
    """
    sharded = _sharded_strategy_name(strategy)  # DeepSpeedStrategy subclasses DDPStrategy: check first
    if sharded == "ModelParallelStrategy":
        tp = getattr(strategy, "_tensor_parallel_size", 1)
        if tp not in (1, "auto"):
            raise MisconfigurationException(
                f"LossLandscapeCallback supports ModelParallelStrategy only with tensor_parallel_size=1 "
                f"(got {tp}): parameters sharded on dimension 0 by FSDP2 over a data-parallel mesh. Tensor "
                "parallelism places them otherwise (Shard(1), two-dimensional meshes). "
                f"Supported: {SUPPORTED}."
            )
        return
    if sharded is not None:
        raise MisconfigurationException(
            f"LossLandscapeCallback does not support {sharded}: it shards the parameters across ranks, "
            f"and the callback needs every rank to hold the whole model. Supported: {SUPPORTED}."
        )
    if not lightning_bases(strategy) & {"SingleDeviceStrategy", "DDPStrategy"}:
        raise MisconfigurationException(
            f"LossLandscapeCallback does not support the strategy {type(strategy).__name__}. "
            f"Supported: {SUPPORTED}."
        )


def is_sharded_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` shards the parameters (the callback then works on local slices)."""
    return _sharded_strategy_name(strategy) is not None


def resharding_loss(loss_fn: LossFn, module: torch.nn.Module) -> LossFn:
    """``loss_fn`` that puts every FSDP2 module back to its sharded state after each forward without grad
    (see :func:`~lightning_landscape.functional.landscape.shards.resharding`, the one definition).

    FSDP2 keeps a root module's gathered parameters after a forward that no backward follows (it expects
    one); the callback moves the local slices in place, so the next forward must gather them again.
    """
    return resharding(loss_fn, module)


def point_shard(trainer: pl.Trainer, device: torch.device) -> PointShard | None:
    """This rank's share of the evaluation points; ``None`` in a single process."""
    if trainer.world_size <= 1 or is_sharded_strategy(trainer.strategy):
        return None  # sharded parameters: every forward is collective, so every rank evaluates every point

    def all_gather(values: Tensor) -> Tensor:
        gathered = trainer.strategy.all_gather(values.to(device))
        return gathered.reshape(trainer.world_size, -1).cpu()

    return PointShard(rank=trainer.global_rank, world_size=trainer.world_size, all_gather=all_gather)


def agree(trainer: pl.Trainer, ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (one all-reduce; in a single process, ``ok`` itself)."""
    if trainer.world_size <= 1:
        return ok
    return bool(trainer.strategy.reduce_boolean_decision(ok, all=True))


def broadcast_from_zero(trainer: pl.Trainer, obj: Any) -> Any:
    """Rank zero's ``obj`` on every rank (in a single process, ``obj`` itself)."""
    if trainer.world_size <= 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)
