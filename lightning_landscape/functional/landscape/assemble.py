"""From evaluated points to records: sharded evaluation, per-batch arrays, the meta every record carries.

Shared by :mod:`~lightning_landscape.functional.landscape.surface`,
:mod:`~lightning_landscape.functional.solutions.plane`
and :mod:`~lightning_landscape.functional.solutions.barrier` (private: the public functions are there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from lightning_landscape.functional.landscape.bn import BufferPlan
from lightning_landscape.functional.landscape.engine import Evaluation, Progress, evaluate_points_of
from lightning_landscape.functional.landscape.noise import probe_noise_of
from lightning_landscape.functional.landscape.params import Direction
from lightning_landscape.functional.landscape.sharding import evaluate_sharded
from lightning_landscape.functional.objective import Objective, probe_size

__all__ = ["evaluate_shared", "finish", "record_parts"]


def evaluate_shared(
    objective: Objective,
    directions: Sequence[Direction],
    coefficients: np.ndarray,
    origin: Sequence[Tensor] | None = None,
    buffers: BufferPlan | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Per-batch losses (and metrics) at every row of ``coefficients``, gathered from all processes.

    Each process evaluates its rows of the table (the objective's ``shard``) with
    :func:`evaluate_points_of`; per-batch losses and metrics are gathered with the means, so every
    process holds the whole record.
    """
    local: list[Evaluation] = []
    n_batches = len(objective.batches)
    with_metric = objective.metric_fn is not None
    width = n_batches * (2 if with_metric else 1)

    def evaluate(rows: np.ndarray) -> np.ndarray:
        ev = evaluate_points_of(
            objective, directions, rows, origin=origin, buffers=buffers, progress=progress
        )
        local.append(ev)
        return ev.losses if ev.metrics is None else np.concatenate([ev.losses, ev.metrics], axis=1)

    table = evaluate_sharded(evaluate, coefficients, objective.shard, columns=width)
    used = local[0] if local else Evaluation(np.zeros((0, n_batches)), None, "loop")
    metrics = table[:, n_batches:] if with_metric else None
    return Evaluation(table[:, :n_batches], metrics, used.engine, used.note, used.reason)


def record_parts(
    objective: Objective,
    directions: Sequence[Direction],
    coefficients: np.ndarray,
    shape: tuple[int, ...],
    plan: BufferPlan | None,
    origin: Sequence[Tensor] | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """:func:`evaluate_shared` with the buffers of ``plan``, then :func:`finish` shaped like ``shape``."""
    ev = evaluate_shared(objective, directions, coefficients, origin, plan, progress)
    return finish(ev, objective, shape, plan)


def finish(
    ev: Evaluation, objective: Objective, shape: tuple[int, ...], plan: BufferPlan | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Means, per-batch losses and metrics shaped like the grid, and the meta every record carries.

    ``forward_passes`` counts forward passes of the model over one probe batch, all processes together:
    one per point and batch, one more with a metric, one more to recompute the BatchNorm statistics.
    """
    batches, bn, metric_name = objective.batches, objective.bn, objective.metric_label
    n_points, n_batches = ev.losses.shape
    batch_losses = ev.losses.reshape(*shape, n_batches)
    with np.errstate(invalid="ignore", over="ignore"):
        losses = batch_losses.mean(axis=-1)
    metrics = ev.metrics.mean(axis=1).reshape(shape) if ev.metrics is not None else None
    per_point = 1 + (metric_name is not None) + (plan.passes_per_batch if plan is not None else 0)
    meta: dict[str, Any] = {
        **_evaluation_meta(batches, losses),
        "bn": bn,
        "engine": ev.engine,
        "forward_passes": int(n_points * n_batches * per_point),
    }
    if bn == "recompute":
        meta["bn_layers"] = len(plan.norms) if plan is not None else 0
    if ev.note:
        meta["engine_note"] = ev.note
    if ev.reason:
        meta["engine_reason"] = ev.reason
    if metric_name is not None:
        meta["metric_name"] = metric_name
    noise = probe_noise_of(batch_losses, losses)
    meta["probe_stderr_median"], meta["probe_noise"] = noise.median_stderr, noise.relative
    return losses, batch_losses, metrics, meta


def _evaluation_meta(batches: Sequence[Any], losses: np.ndarray) -> dict[str, int]:
    """What every surface and line record says about its evaluation: probe size, non-finite points."""
    return {
        "probe_batches": len(batches),
        "probe_samples": probe_size(batches),
        "nonfinite": int((~np.isfinite(losses)).sum()),
    }
