"""What data a landscape is evaluated on: the probe batches, and the loss to evaluate on them.

:class:`ProbeSet` takes the first ``num_batches`` batches of the probe (or training) loader without
disturbing any random state, shares rank zero's batches with every rank, moves them to the device
once and keeps them for the whole ``fit``. Its loss is the user's ``loss_fn`` or the module's
``training_step`` with ``self.log`` silenced, inside the trainer's precision context.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.callback.distributed import broadcast_from_zero
from lightning_landscape.functional.landscape.params import (
    LossFn,
    parameters_restored,
    preserved_random_state,
)
from lightning_landscape.optim.silence import silenced_logging

__all__ = ["ProbeSet", "loader_generators", "training_step_loss"]


def training_step_loss(module: nn.Module, batch: Any, takes_index: bool | None = None) -> Tensor:
    """The loss ``training_step`` returns, with ``self.log``/``self.log_dict`` silenced for the call."""
    step = getattr(module, "training_step")  # noqa: B009 (an nn.Module attribute to mypy)
    if takes_index is None:  # inspect.signature is slow: callers evaluating many points pass it in
        takes_index = len(inspect.signature(step).parameters) >= 2
    with silenced_logging(module):
        out = step(batch, 0) if takes_index else step(batch)
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError("training_step returned a dict without a 'loss' key; pass `loss_fn=` instead")
        out = out["loss"]
    if not isinstance(out, Tensor):
        raise ValueError(
            f"training_step returned {type(out).__name__}, not a loss tensor; pass `loss_fn=` instead"
        )
    return out


def loader_generators(loaders: Sequence[Any]) -> list[torch.Generator]:
    """The ``torch.Generator`` objects of loaders, their samplers and batch samplers (shuffling state)."""
    return [
        g
        for m in loaders
        for g in (
            getattr(m, "generator", None),
            getattr(getattr(m, "sampler", None), "generator", None),
            getattr(getattr(getattr(m, "batch_sampler", None), "sampler", None), "generator", None),
        )
        if isinstance(g, torch.Generator)
    ]


class ProbeSet:
    """The fixed probe batches every landscape of a ``fit`` is evaluated on, and the loss used.

    Args:
        num_batches: number of batches taken from the start of the loader.
        probe_dataloader: the loader to take them from; by default the trainer's training loader
            (several training loaders are combined the way training combines them).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; by default the module's ``training_step``.

    Example::

        >>> import torch
        >>> data = [(torch.randn(4, 3), torch.zeros(4)) for _ in range(5)]
        >>> probe = ProbeSet(num_batches=2)
        >>> len(probe.fetch(data))
        2
    """

    def __init__(
        self, num_batches: int = 4, probe_dataloader: Any = None, loss_fn: LossFn | None = None
    ) -> None:
        self.num_batches = num_batches
        self.probe_dataloader = probe_dataloader
        self.user_loss_fn = loss_fn
        self._batches: list[Any] | None = None
        self._takes_index: dict[int, bool] = {}

    def reset(self) -> None:
        """Forget the cached batches (a new ``fit`` takes them again)."""
        self._batches = None
        self._takes_index = {}

    @property
    def cached(self) -> list[Any] | None:
        """The batches taken in this ``fit`` (on the device), or None before the first landscape."""
        return self._batches

    @property
    def size(self) -> int:
        """How many batches a landscape evaluates (those taken, or ``num_batches`` before taking)."""
        return len(self._batches) if self._batches is not None else self.num_batches

    # ------------------------------------------------------------------ the batches

    def fetch(self, loader: Any, combine: bool = False, devices: Sequence[torch.device] = ()) -> list[Any]:
        """The first ``num_batches`` batches of ``loader``, as the loader gives them, consuming no
        random state (global RNGs, the CUDA ``devices``' RNGs and the loaders' own generators).

        With ``combine``, a dict or list of loaders is combined as training combines them.
        """
        members = [loader]
        if combine and isinstance(loader, (Mapping, Sequence)):
            from lightning.pytorch.utilities.combined_loader import CombinedLoader

            combined = CombinedLoader(loader, mode="max_size_cycle")
            members = combined.flattened
            loader = (batch for batch, _, _ in combined)
        batches: list[Any] = []
        # Iterating a shuffled loader draws from the global RNGs (and the loader's own generator); datasets
        # often augment with Python's or NumPy's RNG. Give every one of them back afterwards.
        with preserved_random_state(devices, loader_generators(members)):
            for i, batch in enumerate(loader):
                if i >= self.num_batches:
                    break
                batches.append(batch)
        if not batches:
            raise RuntimeError("the probe dataloader gave no batches")
        return batches

    def batches(self, trainer: Any, module: nn.Module) -> list[Any]:
        """The probe batches on the module's device, taken once per ``fit`` and cached.

        Rank zero takes them and broadcasts them (a collective: call it on every rank), so under DDP,
        where each rank's training loader yields its own shard, all ranks evaluate the same probe set.
        """
        if self._batches is not None:
            return self._batches
        device = getattr(module, "device", None)
        if not isinstance(device, torch.device):
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
        devices = [device] if device.type == "cuda" else []
        fetched, error = None, None
        if trainer.is_global_zero:
            try:
                loader = self.probe_dataloader
                if loader is None:
                    loader = trainer.train_dataloader
                    if loader is None:
                        raise RuntimeError(
                            "no training dataloader to take probe batches from; pass `probe_dataloader=`"
                        )
                fetched = self.fetch(loader, combine=self.probe_dataloader is None, devices=devices)
                if len(fetched) < self.num_batches:  # once per fit: the batches are kept
                    from lightning_utilities.core.rank_zero import rank_zero_warn

                    which = "probe_dataloader" if self.probe_dataloader is not None else "training dataloader"
                    rank_zero_warn(
                        f"LossLandscapeCallback: `num_batches`={self.num_batches} but the {which} gives "
                        f"{len(fetched)} batch(es); every landscape of this fit uses those {len(fetched)}.",
                        category=RuntimeWarning,
                    )
            except Exception as err:  # sent to the other ranks, raised everywhere below
                error = f"{type(err).__name__}: {err}"
        fetched, error = broadcast_from_zero(trainer, (fetched, error))
        if error is not None:
            raise RuntimeError(f"could not take the probe batches ({error})")
        with preserved_random_state(devices):  # batch-transfer hooks may draw random numbers
            batches = [
                trainer.precision_plugin.convert_input(trainer.strategy.batch_to_device(b, device))
                for b in fetched
            ]
        self._batches = batches
        return batches

    # ------------------------------------------------------------------ the loss

    def loss_fn(self, module: nn.Module, forward_context: Any = contextlib.nullcontext) -> LossFn:
        """``loss(model, batch)``: the user's ``loss_fn``, else the silenced ``training_step``, each run
        inside ``forward_context()`` (the trainer's precision context)."""
        user = self.user_loss_fn
        if user is None and id(module) not in self._takes_index:
            step = getattr(module, "training_step")  # noqa: B009
            self._takes_index = {id(module): len(inspect.signature(step).parameters) >= 2}
        takes_index = self._takes_index.get(id(module), True)

        def loss(model: nn.Module, batch: Any) -> Tensor:
            with forward_context():
                if user is not None:
                    return user(model, batch)
                return training_step_loss(model, batch, takes_index)

        return loss

    @contextlib.contextmanager
    def observing(self, module: nn.Module) -> Iterator[None]:
        """Wraps every landscape and metric computation on ``module``: puts back, bit for bit, every
        parameter and buffer of the module (and each parameter's ``requires_grad``) afterwards.

        The functional core restores what it moves (the landscape's parameters, the buffers of its
        observation); a ``loss_fn`` or ``training_step`` may change others in place (frozen parameters,
        a layer outside the landscape, ``weight.mul_(0.5)`` under ``no_grad``). One copy of every tensor
        per computation, not per point.
        """
        with torch.no_grad():
            buffers = list(module.buffers())
            saved = [t.detach().clone() for t in buffers]
            flags = [(p, p.requires_grad) for p in module.parameters()]
        # the parameters' copy is the one the core's observations inside reuse (they copy no more)
        with parameters_restored(module):
            try:
                yield
            finally:
                with torch.no_grad():
                    for t, s in zip(buffers, saved):
                        t.copy_(s)
                for p, flag in flags:
                    p.requires_grad_(flag)
