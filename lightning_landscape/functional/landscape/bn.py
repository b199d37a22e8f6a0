"""Buffers along a landscape: which BatchNorm statistics each evaluated point uses.

Moving the weights leaves the buffers alone, so every point of a surface or line is evaluated with the
*current* model's BatchNorm running statistics. Three conventions are offered (the ``bn=`` option of
surfaces, lines and barriers):

- ``"keep"``: the current buffers at every point (Li et al.'s convention for surfaces; the default).
- ``"interpolate"``: the floating-point buffers move with the weights, linearly between given buffer
  snapshots (the start model's for the interpolation line, each model's for a barrier or a plane
  through three models), so the ends of a line are the real models.
- ``"recompute"``: at every point the running statistics are re-estimated from the probe batches:
  the statistics are reset, the normalization layers alone are put in train mode with
  ``momentum=None`` (a cumulative average, one forward pass per probe batch, without grad) and then
  back in eval mode for the evaluation. One extra forward pass per point and probe batch.

Recompute keeps every other module in eval mode: dropout stays off. The statistics then describe the
activations the evaluation itself sees (with dropout on they would carry dropout's variance shift,
which eval mode never sees) and they are a deterministic function of the weights and the probe
batches: no random numbers are drawn, so neighbouring points are not separated by mask noise and
the batched (``vmap``) engine can run it. A consequence: on a model with dropout before a
BatchNorm, recomputed statistics differ slightly from the ones training accumulated (with dropout
on), which is why a barrier's endpoints use the models' own buffers when they are given.
Everything is restored afterwards: buffers, ``momentum``, ``num_batches_tracked``, train flags (and,
by :func:`observation`, every random state). ``SyncBatchNorm`` layers compute their statistics
locally during the recompute (every process holds the same probe batches, and under sharding each
process evaluates different points, so a collective there would mix points).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BN_MODES",
    "BNMode",
    "BufferPlan",
    "batch_norms",
    "buffer_snapshot",
    "check_bn",
    "landscape_buffers",
]

BNMode = Literal["keep", "interpolate", "recompute"]
BN_MODES: tuple[str, ...] = ("keep", "interpolate", "recompute")


def check_bn(bn: object, name: str = "bn") -> None:
    """Raise a ValueError naming ``name`` unless ``bn`` is one of :data:`BN_MODES`."""
    if bn not in BN_MODES:
        raise ValueError(f"`{name}` must be one of {BN_MODES}, got {bn!r}")


def landscape_buffers(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The model's floating-point buffers (BatchNorm running means and variances, ...), in order.

    Integer buffers (``num_batches_tracked``) are not among them: they are never interpolated.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
        >>> [name for name, _ in landscape_buffers(net)]
        ['1.running_mean', '1.running_var']
    """
    return [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def buffer_snapshot(model: nn.Module, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """A copy of the model's floating-point buffers, ``{name: tensor}`` (on ``device`` if given).

    Small (BatchNorm statistics are two vectors per layer): store it with a weight snapshot so that
    lines and barriers can use that model's own statistics (``start_buffers=``, ``buffers1=``, ...).

    Example::

        >>> net = nn.BatchNorm1d(2)
        >>> snap = buffer_snapshot(net)
        >>> _ = net.train()(torch.randn(4, 2))   # training moves the running statistics
        >>> bool(torch.equal(snap["running_var"], torch.ones(2)))
        True
    """
    return {n: b.detach().to(device).clone() for n, b in landscape_buffers(model)}


def aligned_buffers(model: nn.Module, snapshot: Mapping[str, Tensor], name: str) -> list[Tensor]:
    """``snapshot``'s tensors in :func:`landscape_buffers` order, checked against the model."""
    if not isinstance(snapshot, Mapping):
        raise ValueError(
            f"`{name}` must be a {{name: tensor}} mapping of floating-point buffers "
            f"(see buffer_snapshot), got {type(snapshot).__name__}"
        )
    named = landscape_buffers(model)
    expected = [n for n, _ in named]
    missing = [n for n in expected if n not in snapshot]
    extra = [n for n in snapshot if n not in set(expected)]
    if missing or extra:
        raise ValueError(
            f"`{name}` does not match the model's floating-point buffers: "
            f"missing {missing}, unexpected {extra}"
        )
    out = []
    for n, b in named:
        t = snapshot[n]
        if not isinstance(t, Tensor) or t.shape != b.shape:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"`{name}`[{n!r}] must be a tensor of shape {tuple(b.shape)}, got {shape}")
        out.append(t.detach().to(device=b.device, dtype=b.dtype))
    return out


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (any ``_BatchNorm``, ``SyncBatchNorm`` included) that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


@dataclass
class BufferPlan:
    """How the buffers are set at each point ``origin + sum_k c_k d_k`` of an evaluation.

    ``mode="interpolate"``: ``tensors`` (the model's floating-point buffers) are set to
    ``base + sum_k b_k directions[k]``, the buffer coefficients ``b`` given per point after the weight
    coefficients (see :func:`~lightning_landscape.functional.landscape.engine.evaluate_points`).
    ``mode="recompute"``: the running statistics of ``norms`` are re-estimated at each point.
    """

    mode: BNMode
    tensors: list[Tensor] = field(default_factory=list)
    base: list[Tensor] = field(default_factory=list)
    directions: list[list[Tensor]] = field(default_factory=list)
    norms: list[_BatchNorm] = field(default_factory=list)

    @classmethod
    def interpolate(
        cls, model: nn.Module, base: Sequence[Tensor] | None, directions: Sequence[Sequence[Tensor]]
    ) -> BufferPlan:
        """Buffers at ``base + sum_k c_k directions[k]`` (``base``: the current buffers by default)."""
        tensors = [b for _, b in landscape_buffers(model)]
        base = [t.detach().clone() for t in (tensors if base is None else base)]
        dirs = [
            [t.detach().to(device=b.device, dtype=b.dtype) for t, b in zip(d, tensors)] for d in directions
        ]
        return cls("interpolate", tensors=tensors, base=base, directions=dirs)

    @classmethod
    def recompute(cls, model: nn.Module) -> BufferPlan:
        """Running statistics re-estimated from the probe batches at each point."""
        return cls("recompute", norms=batch_norms(model))

    @property
    def passes_per_batch(self) -> int:
        """Extra forward passes per point and probe batch this plan costs."""
        return 1 if self.mode == "recompute" and self.norms else 0

    @torch.no_grad()
    def set_buffers(self, coefficients: Sequence[float]) -> None:
        """Interpolate mode: write ``base + sum_k b_k d_k`` into the model's buffers."""
        if not self.tensors:
            return
        torch._foreach_copy_(self.tensors, self.base)
        for c, d in zip(coefficients, self.directions):
            if c != 0.0:
                torch._foreach_add_(self.tensors, d, alpha=float(c))


@contextlib.contextmanager
def recompute_session(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """Cumulative averaging (``momentum=None``) and local statistics for ``norms``, restored after.

    Train flags and buffers are restored by the caller's :func:`observation`.
    """
    momenta = [m.momentum for m in norms]
    patched = []
    try:
        for m in norms:
            m.momentum = None
            if isinstance(m, nn.SyncBatchNorm) and "forward" not in m.__dict__:
                m.forward = types.MethodType(_BatchNorm.forward, m)  # type: ignore[method-assign]
                patched.append(m)
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m in patched:
            del m.forward


@contextlib.contextmanager
def statistics_pass(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """The normalization layers in train mode (everything else as it is) for the duration of a block.

    The statistics are reset first: after the block they are the cumulative average over the forward
    passes made inside it (under :func:`recompute_session`).
    """
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.train()
        try:
            yield
        finally:
            for m in norms:
                m.eval()
