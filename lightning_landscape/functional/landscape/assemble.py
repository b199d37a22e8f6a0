"""From evaluated points to records: sharded evaluation, per-batch arrays, the meta every record carries.

Shared by :mod:`~lightning_landscape.functional.landscape.surface`,
:mod:`~lightning_landscape.functional.solutions.plane`
and :mod:`~lightning_landscape.functional.solutions.barrier` (private: the public functions are there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from lightning_landscape.functional.landscape.bn import BufferPlan, check_bn
from lightning_landscape.functional.landscape.engine import Engine, Evaluation, Progress, evaluate_points
from lightning_landscape.functional.landscape.noise import probe_noise_of
from lightning_landscape.functional.landscape.params import Direction, LossFn
from lightning_landscape.functional.landscape.sharding import PointShard, evaluate_sharded
from lightning_landscape.functional.objective import probe_size, resolve_params


def _resolve_params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    """The landscape's parameters (the one resolver, without the requires-grad check)."""
    return resolve_params(model, params, require_grad=False)


@dataclass
class PointEvaluator:
    """What every point of one landscape shares: the model, loss, probe batches, parameters and options.

    :meth:`evaluate` runs :func:`evaluate_points` on this process's rows of a coefficient table and
    gathers the rows of all processes; :meth:`record` shapes the result into a record's parts.
    """

    model: nn.Module
    loss_fn: LossFn
    batches: Sequence[Any]
    params: Sequence[Tensor]
    shard: PointShard | None = None
    engine: Engine = "auto"
    chunk_size: int | None = None
    metric_fn: LossFn | None = None
    progress: Progress | None = None

    def evaluate(
        self,
        directions: Sequence[Direction],
        coefficients: np.ndarray,
        origin: Sequence[Tensor] | None = None,
        buffers: BufferPlan | None = None,
    ) -> Evaluation:
        """Per-batch losses (and metrics) at every row of ``coefficients``, gathered from all processes.

        Per-batch losses and metrics are gathered with the means, so every process holds the whole record.
        """
        local: list[Evaluation] = []
        n_batches = len(self.batches)
        width = n_batches * (2 if self.metric_fn is not None else 1)

        def evaluate(rows: np.ndarray) -> np.ndarray:
            ev = evaluate_points(
                self.model,
                self.loss_fn,
                self.batches,
                self.params,
                directions,
                rows,
                engine=self.engine,
                chunk_size=self.chunk_size,
                origin=origin,
                buffers=buffers,
                metric_fn=self.metric_fn,
                progress=self.progress,
            )
            local.append(ev)
            return ev.losses if ev.metrics is None else np.concatenate([ev.losses, ev.metrics], axis=1)

        table = evaluate_sharded(evaluate, coefficients, self.shard, columns=width)
        used = local[0] if local else Evaluation(np.zeros((0, n_batches)), None, "loop")
        metrics = table[:, n_batches:] if self.metric_fn is not None else None
        return Evaluation(table[:, :n_batches], metrics, used.engine, used.note)

    def record(
        self,
        directions: Sequence[Direction],
        coefficients: np.ndarray,
        shape: tuple[int, ...],
        bn: str,
        plan: BufferPlan | None,
        metric_name: str | None,
        origin: Sequence[Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
        """:meth:`evaluate` with the buffers of ``plan``, then :func:`_finish` shaped like ``shape``."""
        ev = self.evaluate(directions, coefficients, origin, plan)
        return _finish(ev, self.batches, shape, bn, plan, _metric_name(self.metric_fn, metric_name))


def _metric_name(metric_fn: LossFn | None, metric_name: str | None) -> str | None:
    if metric_fn is None:
        return None
    if metric_name is not None:
        return str(metric_name)
    name = getattr(metric_fn, "__name__", "metric")
    return "metric" if name == "<lambda>" else name


def _finish(
    ev: Evaluation,
    batches: Sequence[Any],
    shape: tuple[int, ...],
    bn: str,
    plan: BufferPlan | None,
    metric_name: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Means, per-batch losses and metrics shaped like the grid, and the meta every record carries.

    ``forward_passes`` counts forward passes of the model over one probe batch, all processes together:
    one per point and batch, one more with a metric, one more to recompute the BatchNorm statistics.
    """
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
    if metric_name is not None:
        meta["metric_name"] = metric_name
    noise = probe_noise_of(batch_losses, losses)
    meta["probe_stderr_median"], meta["probe_noise"] = noise.median_stderr, noise.relative
    return losses, batch_losses, metrics, meta


def _plan(model: nn.Module, bn: str, allowed: tuple[str, ...] = ("keep", "recompute")) -> BufferPlan | None:
    check_bn(bn)
    if bn not in allowed:
        raise ValueError(
            f"`bn`={bn!r} needs the buffers of the models at the other ends (interpolation_line's "
            "`start_buffers`, barrier or shared_plane_surface); use 'keep' or 'recompute' here"
        )
    return BufferPlan.recompute(model) if bn == "recompute" else None


def _evaluation_meta(batches: Sequence[Any], losses: np.ndarray) -> dict[str, int]:
    """What every surface and line record says about its evaluation: probe size, non-finite points."""
    return {
        "probe_batches": len(batches),
        "probe_samples": probe_size(batches),
        "nonfinite": int((~np.isfinite(losses)).sum()),
    }
