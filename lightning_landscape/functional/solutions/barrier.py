"""The loss barrier between two solutions (linear mode connectivity; Frankle et al., 2020).

Along the straight line ``w(a) = (1 - a) w1 + a w2``, ``a`` in ``[0, 1]``, the barrier height is
``max_a L(w(a)) - ((1 - a) L(w1) + a L(w2))``: how far the loss rises above the chord between the ends.
BatchNorm matters here more than anywhere: the interpolated weights have activations of different
scale than either model's, so neither model's running statistics fit them, and the naive barrier is
inflated (Jordan et al., 2023). The default re-estimates the statistics at every point from the probe
batches (``bn="recompute"``); the endpoints are each model itself: with its own statistics when its
buffers are given (then ``L(w1)`` and ``L(w2)`` are the models' own losses), recomputed otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.landscape.assemble import evaluate_shared, finish
from lightning_landscape.functional.landscape.bn import (
    BNMode,
    BufferPlan,
    aligned_buffers,
    landscape_buffers,
)
from lightning_landscape.functional.landscape.engine import Engine, Evaluation
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.objective import Objective, norm64, work_dtype
from lightning_landscape.records.record import LineRecord

__all__ = ["barrier", "barrier_of"]


def barrier(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    w1: Sequence[Tensor],
    w2: Sequence[Tensor],
    buffers1: Mapping[str, Tensor] | None = None,
    buffers2: Mapping[str, Tensor] | None = None,
    resolution: int = 11,
    bn: BNMode = "recompute",
    metric_fn: LossFn | None = None,
    metric_name: str | None = None,
    params: Sequence[Tensor] | None = None,
    *,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> LineRecord:
    """Loss (and metric) on the straight line from ``w1`` (alpha = 0) to ``w2`` (alpha = 1); its barrier.

    Args:
        model: the architecture; its own weights, buffers and modes are restored afterwards.
        w1, w2: weight lists aligned with ``params`` (two solutions, say from two seeds).
        buffers1, buffers2: each solution's :func:`buffer_snapshot` (its BatchNorm statistics).
        resolution: points on ``[0, 1]``, ends included (>= 3).
        bn: ``"recompute"`` (default) the statistics at every interior point; ``"interpolate"`` them
            linearly between ``buffers1`` and ``buffers2`` (the naive barrier of interpolated state
            dicts); ``"keep"`` the model's current ones everywhere.
        metric_fn, metric_name, params, shard, engine, chunk_size: as in :func:`loss_surface`.

    The endpoints are evaluated at exactly ``w1`` and ``w2``: with ``buffers1``/``buffers2`` when
    given (whatever ``bn``: the curve starts and ends at the models' own losses), else with the
    statistics ``bn`` says (recomputed, or the current ones for ``"keep"``). Meta: ``barrier``,
    ``barrier_alpha``, ``endpoint_losses``, ``endpoints`` (which statistics they used), ``distance``
    ``|w2 - w1|``, ``bn``, ``forward_passes``; with a metric, ``metric_above_chord`` and
    ``metric_below_chord`` (the largest rise above and fall below the metric's chord: the barrier of an
    error rate and of an accuracy).

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> loss = lambda m, b: (1 - (m(b[0]) - b[1]) ** 2).square().mean()   # minima at w = -1 and 1
        >>> rec = barrier(model, loss, [batch], [torch.full((1, 1), -1.0)], [torch.ones(1, 1)], resolution=5)
        >>> rec.losses, rec.meta["barrier"]
        (array([0.    , 0.5625, 1.    , 0.5625, 0.    ]), 1.0)
    """
    objective = Objective.build(
        model, loss_fn, batches, params, bn=bn, engine=engine, chunk_size=chunk_size, shard=shard,
        metric_fn=metric_fn, metric_name=metric_name,
    )  # fmt: skip
    objective.unsharded("barrier")
    return barrier_of(objective, w1, w2, buffers1, buffers2, resolution)


def barrier_of(
    objective: Objective,
    w1: Sequence[Tensor],
    w2: Sequence[Tensor],
    buffers1: Mapping[str, Tensor] | None = None,
    buffers2: Mapping[str, Tensor] | None = None,
    resolution: int = 11,
) -> LineRecord:
    """:func:`barrier` of ``objective`` (the core); the statistics as the objective's ``bn`` says."""
    model, params, bn = objective.model, objective.params, objective.bn
    for name, w in (("w1", w1), ("w2", w2)):
        if len(w) != len(params):
            raise ValueError(f"`{name}` has {len(w)} tensors, expected one per parameter ({len(params)})")
        for t, p in zip(w, params):
            if t.shape != p.shape:
                raise ValueError(f"`{name}`: a tensor of shape {tuple(t.shape)} for {tuple(p.shape)}")
    if not (isinstance(resolution, int) and resolution >= 3):
        raise ValueError(f"`resolution` must be an integer >= 3, got {resolution!r}")
    has_buffers = bool(landscape_buffers(model))
    if (buffers1 is None) != (buffers2 is None):
        raise ValueError("give both `buffers1` and `buffers2`, or neither")
    if bn == "interpolate" and buffers1 is None and has_buffers:
        raise ValueError("`bn`='interpolate' needs `buffers1` and `buffers2` (each model's buffer_snapshot)")
    own: list[list[Tensor]] | None = None
    if buffers1 is not None and buffers2 is not None:
        own = [aligned_buffers(model, buffers1, "buffers1"), aligned_buffers(model, buffers2, "buffers2")]

    alphas = np.linspace(0.0, 1.0, resolution)
    with torch.no_grad():
        origin = [t.detach().to(p.device, work_dtype(p)) for t, p in zip(w1, params)]
        direction = [t.detach().to(p.device, work_dtype(p)) - o for t, p, o in zip(w2, params, origin)]
    zero = [[torch.zeros_like(d) for d in direction]]

    # Interior points.
    inner = alphas[1:-1, None]
    if bn == "interpolate" and own is not None:
        with torch.no_grad():
            delta = [b - a for a, b in zip(own[0], own[1])]
        plan: BufferPlan | None = BufferPlan.interpolate(model, own[0], [delta])
        table = np.concatenate([inner, inner], axis=1)
    else:
        plan = BufferPlan.recompute(model) if bn == "recompute" else None
        table = inner
    middle = evaluate_shared(objective, [direction], table, origin, plan)
    passes = len(inner) * (plan.passes_per_batch if plan is not None else 0)

    # Endpoints: exactly w1 and w2, with their own statistics when given.
    ends: list[Evaluation] = []
    for i, w in enumerate((w1, w2)):
        if own is not None:
            still = [[torch.zeros_like(b) for b in own[i]]]
            end_plan: BufferPlan | None = BufferPlan.interpolate(model, own[i], still)
            end_table = np.zeros((1, 2))
        else:
            end_plan, end_table = plan if bn == "recompute" else None, np.zeros((1, 1))
        ends.append(evaluate_shared(objective, zero, end_table, w, end_plan))
        passes += end_plan.passes_per_batch if end_plan is not None else 0
    endpoints = "own statistics" if own is not None else {"keep": "current statistics"}.get(bn, "recomputed")

    def stack(key: str) -> np.ndarray | None:
        parts = [getattr(ends[0], key), getattr(middle, key), getattr(ends[1], key)]
        return None if parts[0] is None else np.concatenate(parts)

    ev = Evaluation(stack("losses"), stack("metrics"), middle.engine, middle.note)  # type: ignore[arg-type]
    losses, per_batch, metrics, meta = finish(ev, objective, (resolution,), None)
    meta["forward_passes"] += passes * len(objective.batches)
    chord = (1 - alphas) * losses[0] + alphas * losses[-1]
    with np.errstate(invalid="ignore"):
        rise = losses - chord
    k = int(np.nanargmax(rise)) if np.isfinite(rise).any() else 0
    meta.update(
        directions="barrier",
        label="w1 → w2 (alpha)",
        barrier=float(rise[k]),
        barrier_alpha=float(alphas[k]),
        endpoint_losses=[float(losses[0]), float(losses[-1])],
        endpoints=endpoints,
        distance=norm64(direction),
    )
    if bn == "recompute":
        meta["bn_layers"] = len(BufferPlan.recompute(model).norms)
    if metrics is not None:
        m_rise = metrics - ((1 - alphas) * metrics[0] + alphas * metrics[-1])
        meta["metric_above_chord"] = float(np.nanmax(m_rise))
        meta["metric_below_chord"] = float(np.nanmax(-m_rise))
    return LineRecord(alphas=alphas, losses=losses, meta=meta, batch_losses=per_batch, metrics=metrics)
