"""Which plane a landscape is drawn on: trajectory PCA, Hessian eigenvectors or random directions.

:class:`PlaneSteps`, a part of :class:`~lightning_landscape.callback.landscape.LandscapeBuilder` kept in its
own
module, builds the two directions (with the projected path and the grid's span) for the callback's
``directions=`` option, and says when two planes are the same (so that the final landscape can reuse the
latest periodic one computed at the same weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.callback.recorder import TrajectoryRecorder
from lightning_landscape.callback.schedule import Plan
from lightning_landscape.functional.curvature.hessian import hessian_directions, hessian_directions_of
from lightning_landscape.functional.landscape.directions import filter_normalized_directions
from lightning_landscape.functional.landscape.params import Direction, LossFn, flatten, unflatten
from lightning_landscape.functional.landscape.shards import ShardLayout, sharded_filter_normalized_directions
from lightning_landscape.functional.landscape.trajectory import TrajectoryPCA, trajectory_pca
from lightning_landscape.functional.objective import Objective

__all__ = ["Plane", "PlaneSteps"]


@dataclass
class Plane:
    """Two directions, the path projected on them (or None), the grid's span and what to record.

    ``pca``: the trajectory PCA the plane came from; ``unit``: the axes' unit for the reliability's
    distance scan (1 for filter-normalized directions, the weights' norm for unit-vector directions).
    """

    directions: tuple[Direction, Direction]
    path: np.ndarray | None
    span: float | tuple[float, float]
    meta: dict[str, Any] = field(default_factory=dict)
    pca: TrajectoryPCA | None = None
    unit: float = 1.0


def _norm(params: Sequence[Tensor], shards: ShardLayout | None = None) -> float:
    """The weights' Euclidean norm: the unit of the distance scan along unit-vector directions (a
    filter-normalized direction has about this norm, so both planes scan the same distances)."""
    if shards is not None:
        return shards.norm(params) or 1.0
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64)
        for p in params:
            total = total + p.detach().double().square().sum().cpu()
        return float(torch.sqrt(total)) or 1.0


class PlaneSteps:
    """The plane of a landscape from the ``directions=`` option (a part of ``LandscapeBuilder``)."""

    directions: str
    span: float | tuple[float, float] | None
    margin: float
    seed: int
    include_1d: bool
    pca_centred: bool
    work_dtype: torch.dtype
    shards: ShardLayout | None  # a sharded model's layout: ``params`` are then this rank's slices

    def plane(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: list[Any],
        params: Sequence[Tensor],
        recorder: TrajectoryRecorder,
        plan: Plan,
    ) -> Plane:
        """The plane to draw: PCA of the trajectory (once two snapshots exist), Hessian or random."""
        span = self.span
        shards = self.shards
        if self.directions == "hessian":  # eigenvectors of lambda_max and lambda_min (Boettcher & Wheeler)
            if shards is not None:  # by gradient differences, as this rank's slices
                (d1, d2), eig = hessian_directions_of(
                    Objective(model, loss_fn, batches, params), max_iter=plan.hessian_iterations, tol=1e-4,
                    seed=self.seed, layout=shards,
                )  # fmt: skip
            else:
                (d1, d2), eig = hessian_directions(
                    model, loss_fn, batches, max_iter=plan.hessian_iterations, tol=1e-4, seed=self.seed,
                    params=params,
                )  # fmt: skip
            meta = {
                "directions": "hessian",
                "seed": self.seed,
                "lambda_max": eig.lambda_max,
                "lambda_min": eig.lambda_min,
                "residuals": eig.residuals.tolist(),
                "lanczos_iterations": eig.iterations,
            }
            unit = _norm(params, shards)
            return Plane((d1, d2), None, span if span is not None else 1.0, meta, unit=unit)
        if self.directions == "pca" and len(recorder) >= 2:
            centre = flatten(params, dtype=self.work_dtype, device="cpu")
            pca = trajectory_pca(
                recorder.stacked(),
                centre,
                centred=self.pca_centred,
                release=recorder.release,
                all_reduce=None if shards is None else shards.all_reduce,
            )
            del centre
            d1, d2 = (unflatten(c, params, dtype=self.work_dtype) for c in pca.components)
            path = np.vstack([pca.coords.numpy(), np.zeros((1, 2))])  # the path ends at the centre
            if span is None:
                extent = float(np.abs(path).max())
                span = extent * (1.0 + self.margin) if extent > 0 else 1.0
            meta = {
                "directions": "pca",
                "explained_variance": pca.explained_variance_ratio.tolist(),
                "pca_convention": pca.convention,
                "snapshots": len(recorder),
                "snapshot_steps": list(recorder.steps),
            }
            return Plane((d1, d2), path, span, meta, pca=pca, unit=_norm(params, shards))
        if shards is not None:  # the same directions as unsharded, as this rank's slices
            d1, d2 = sharded_filter_normalized_directions(
                shards, count=2, seed=self.seed, include_1d=self.include_1d
            )
        else:
            d1, d2 = filter_normalized_directions(params, count=2, seed=self.seed, include_1d=self.include_1d)
        d1, d2 = ([t.to(self.work_dtype) for t in d] for d in (d1, d2))
        meta = {"directions": "random", "seed": self.seed, "include_1d": self.include_1d}
        return Plane((d1, d2), None, span if span is not None else 1.0, meta)

    def plane_key_of(self, plane: Plane, plan: Plan) -> tuple[Any, ...]:
        """What makes two planes the same, for reusing a landscape computed at the same weights."""
        kind = plane.meta.get("directions")
        if kind == "hessian":
            return ("hessian", plan.hessian_iterations)
        if kind == "pca":
            return ("pca", tuple(plane.meta.get("snapshot_steps", ())), self.span, self.margin)
        return ("random", self.span)
