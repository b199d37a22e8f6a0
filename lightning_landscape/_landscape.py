"""What one landscape is: its plane (trajectory PCA, random or Hessian directions), surface and lines.

:class:`LandscapeBuilder` turns a :class:`~lightning_landscape._schedule.Plan` into records by calling
the functional core. It remembers the latest periodic landscape so that the final one, computed at the
same weights, reuses what would come out the same (the surface, the interpolation line, metrics with
the same options) instead of computing it twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape._indicators import Indicators
from lightning_landscape._probe import ProbeSet
from lightning_landscape._progress import LandscapeProgress
from lightning_landscape._publish import Warnings, record_name
from lightning_landscape._reliability_step import ReliabilitySteps, _copy
from lightning_landscape._schedule import Plan
from lightning_landscape.distributed import agree, point_shard
from lightning_landscape.functional.bn import BNMode, landscape_buffers
from lightning_landscape.functional.curvature import hessian_directions
from lightning_landscape.functional.directions import filter_normalized_directions
from lightning_landscape.functional.params import Direction, LossFn, flatten, unflatten
from lightning_landscape.functional.sharding import PointShard
from lightning_landscape.functional.surface import Engine, interpolation_line, loss_line, loss_surface
from lightning_landscape.functional.trajectory import TrajectoryPCA, trajectory_pca
from lightning_landscape.metrics import compute_metrics
from lightning_landscape.recorder import TrajectoryRecorder
from lightning_landscape.records import LineRecord, MetricsRecord, SurfaceRecord

__all__ = ["LandscapeBuilder", "Plane", "fingerprint"]


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


def _norm(params: Sequence[Tensor]) -> float:
    """The weights' Euclidean norm: the unit of the distance scan along unit-vector directions (a
    filter-normalized direction has about this norm, so both planes scan the same distances)."""
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64)
        for p in params:
            total = total + p.detach().double().square().sum().cpu()
        return float(torch.sqrt(total)) or 1.0


def fingerprint(model: nn.Module, params: Sequence[Tensor]) -> Tensor:
    """Sums and sums of squares (float64) of the parameters and buffers: equal before and after means
    the loss is the same function (a cheap check, one pass, one transfer)."""
    with torch.no_grad():
        tensors = [t.detach() for t in (*params, *model.buffers())]
        parts = [torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]
        return torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)


@dataclass
class _Latest:
    """The latest periodic landscape: where it was computed and what came out."""

    step: int
    mark: Tensor
    plane_key: tuple[Any, ...]
    surface: SurfaceRecord | None = None
    interpolation: LineRecord | None = None
    metrics: dict[str, tuple[dict[str, Any], dict[str, float], Any]] = field(default_factory=dict)
    reliability: tuple[Any, list[Any]] | None = None  # (settings, [record, distance lines])


@dataclass
class _Drawn:
    """The surface just drawn, for the reliability indicators computed after the metrics."""

    step: int
    stage: str
    plane: Plane
    surface: SurfaceRecord
    common: dict[str, Any]
    trace: float | None = None


class LandscapeBuilder(ReliabilitySteps):
    """Builds the plane and evaluates the surface and lines of one landscape (see the callback's options).

    ``part`` names what is being computed, for the failure message.
    """

    def __init__(
        self,
        directions: str = "pca",
        span: float | tuple[float, float] | None = None,
        margin: float = 0.25,
        seed: int = 0,
        include_1d: bool = False,
        engine: Engine = "auto",
        interpolation_range: tuple[float, float] = (-0.5, 1.5),
        warn: Warnings | None = None,
        bn: str = "interpolate",
        metric_fn: LossFn | None = None,
        metric_name: str = "metric",
        indicators: Indicators | None = None,
        pca_centred: bool = False,
    ) -> None:
        self.directions = directions
        self.span = span
        self.margin = margin
        self.seed = seed
        self.include_1d = include_1d
        self.engine = engine
        self.interpolation_range = interpolation_range
        self.work_dtype = torch.float32
        self.part = "the landscape"
        self.warnings = warn if warn is not None else Warnings()
        self.bn = bn
        self.metric_fn = metric_fn
        self.metric_name = metric_name
        self.indicators = indicators if indicators is not None else Indicators(False)
        self.pca_centred = pca_centred
        self.start_buffers: dict[str, Tensor] | None = None  # the initial model's floating-point buffers
        self._latest: _Latest | None = None
        self.progress: LandscapeProgress | None = None  # of the landscape being evaluated (compute)
        self._drawn: _Drawn | None = None  # type: ignore[assignment]  # (declared None in the mixin)

    def reset(self) -> None:
        self._latest = None
        self._drawn = None
        self.start_buffers = None

    # ------------------------------------------------------------------ the plane

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
        if self.directions == "hessian":  # eigenvectors of lambda_max and lambda_min (Boettcher & Wheeler)
            (d1, d2), eig = hessian_directions(
                model,
                loss_fn,
                batches,
                max_iter=plan.hessian_iterations,
                tol=1e-4,
                seed=self.seed,
                params=params,
            )
            meta = {
                "directions": "hessian",
                "seed": self.seed,
                "lambda_max": eig.lambda_max,
                "lambda_min": eig.lambda_min,
                "residuals": eig.residuals.tolist(),
                "lanczos_iterations": eig.iterations,
            }
            return Plane((d1, d2), None, span if span is not None else 1.0, meta, unit=_norm(params))
        if self.directions == "pca" and len(recorder) >= 2:
            centre = flatten(params, dtype=self.work_dtype, device="cpu")
            pca = trajectory_pca(
                recorder.stacked(), centre, centred=self.pca_centred, release=recorder.release
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
            return Plane((d1, d2), path, span, meta, pca=pca, unit=_norm(params))
        d1, d2 = filter_normalized_directions(params, count=2, seed=self.seed, include_1d=self.include_1d)
        d1, d2 = ([t.to(self.work_dtype) for t in d] for d in (d1, d2))
        meta = {"directions": "random", "seed": self.seed, "include_1d": self.include_1d}
        return Plane((d1, d2), None, span if span is not None else 1.0, meta)

    # ------------------------------------------------------------------ surface and lines

    def _reusable(self, step: int, mark: Tensor) -> _Latest | None:
        """The latest periodic landscape if it was computed at these weights (same step, same tensors)."""
        latest = self._latest
        same = latest is not None and latest.step == step and torch.equal(latest.mark, mark)
        return latest if same else None

    def _earlier(self, trainer: Any, stage: str, step: int, mark: Tensor) -> _Latest | None:
        """For the final landscape: the latest periodic one if every rank can reuse it (a collective)."""
        if stage != "final":
            return None
        latest = self._reusable(step, mark)
        return latest if agree(trainer, latest is not None) else None

    def compute(
        self,
        trainer: Any,
        module: nn.Module,
        params: Sequence[Tensor],
        plan: Plan,
        probe: ProbeSet,
        recorder: TrajectoryRecorder,
        common: Mapping[str, Any],
    ) -> list[SurfaceRecord | LineRecord]:
        """One landscape under ``trainer``: probe batches, plane, surface and lines; on every rank.

        Each collective (the probe broadcast, the agreement, one all-gather per surface or line) is reached
        by all ranks in the same order, and a failure on one rank is turned into the same exception on
        every rank *after* a collective.
        """
        self.part = "the probe batches"
        batches = probe.batches(trainer, module)  # a collective: every rank calls it
        loss_fn = probe.loss_fn(module, trainer.precision_plugin.forward_context)
        plane, start, error = None, None, None
        with probe.observing(module):
            try:
                self.part = "the plane"
                plane = self.plane(module, loss_fn, batches, params, recorder, plan)
                if len(recorder) >= 1:
                    start = unflatten(recorder.snapshots[0], params, dtype=self.work_dtype)
            except Exception as err:
                error = err
            if not agree(trainer, error is None):
                raise error if error is not None else RuntimeError("the plane failed on another rank")
            assert plane is not None
            shard = point_shard(trainer, params[0].device)
            mark = fingerprint(module, params)
            step = int(common["global_step"])
            earlier = self._earlier(trainer, plan.stage, step, mark)
            common = {
                **common,
                "precision": str(trainer.precision),
                "snapshot_dtype": str(recorder.dtype).removeprefix("torch."),
                "world_size": trainer.world_size,
            }
            lines = (start is not None) + 2 * (plan.stage == "final")
            total = plan.resolution**2 + lines * plan.line_resolution
            self.progress = LandscapeProgress.for_trainer(
                trainer, total, f"{plan.stage} landscape at step {step}"
            )
            metric = self._metric(trainer.precision_plugin.forward_context)
            try:
                records = self.evaluate(
                    module, loss_fn, batches, params, plane, start, plan, common, shard, mark, earlier, metric
                )
            finally:
                seconds, self.progress = self.progress.close(), None
            for record in records:  # how long the surface and lines took (the plane not included)
                record.meta["seconds"] = round(seconds, 3)
        bad = sum(r.meta.get("nonfinite", 0) for r in records)
        if bad:
            self.warnings.warn(
                "non-finite points",
                f"LossLandscapeCallback: {bad} evaluation point(s) at step {step} gave a non-finite loss; "
                "they are stored as NaN/inf and drawn as gaps.",
            )
        return records

    def metrics_record(
        self,
        trainer: Any,
        module: nn.Module,
        params: Sequence[Tensor],
        plan: Plan,
        probe: ProbeSet,
        recorder: TrajectoryRecorder,
        common: Mapping[str, Any],
    ) -> list[MetricsRecord]:
        """The plan's metrics under ``trainer`` as a record (none if every one failed, or none asked).

        Every rank runs the same spec, so the collectives of the shared metrics match.
        """
        if not plan.metrics:
            return []
        self.part = "the probe batches"
        batches = probe.batches(trainer, module)
        loss_fn = probe.loss_fn(module, trainer.precision_plugin.forward_context)
        shard = point_shard(trainer, params[0].device)
        step, stage = int(common["global_step"]), plan.stage
        with probe.observing(module):
            mark = fingerprint(module, params)
            earlier = self._earlier(trainer, stage, step, mark)
            optimizer = trainer.optimizers[0] if getattr(trainer, "optimizers", None) else None  # for "eos"
            scalars, meta, errors = self.metrics(
                module, loss_fn, batches, params, plan.metrics, stage, step, shard, mark, earlier, optimizer
            )
        for metric, message in errors.items():
            self.warnings.warn(
                f"metric {metric!r} failed",
                f"LossLandscapeCallback: metric {metric!r} at step {step} failed or is not finite "
                f"({message}). Training continues.",
            )
        drawn = self._drawn
        if drawn is not None and (drawn.step, drawn.stage) == (step, stage):
            drawn.trace = scalars.get("hessian/trace")  # for the reliability's trace / P cross-check
        if not scalars:
            return []  # every metric failed: the warnings above say why
        name = record_name(stage, "metrics", step)
        record = MetricsRecord.from_dict(scalars, {**common, "name": name, **meta})
        if errors:
            record.meta["errors"] = errors
        return [record]

    def evaluate(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: list[Any],
        params: Sequence[Tensor],
        plane: Plane,
        start: Direction | None,
        plan: Plan,
        common: Mapping[str, Any],
        shard: PointShard | None = None,
        mark: Tensor | None = None,
        earlier: _Latest | None = None,
        metric: LossFn | None = None,
    ) -> list[SurfaceRecord | LineRecord]:
        """The surface, the interpolation line (with a start) and, at the end, the two axis lines.

        ``earlier``: the latest periodic landscape, computed at these weights (``mark``), to reuse from.
        ``metric``: evaluated beside the loss on the interpolation line and the final surface.
        BatchNorm statistics (``self.bn``): ``"interpolate"`` on the interpolation line (from the initial
        model's, ``start_buffers``) and the current ones on the plane; ``"keep"`` the current ones
        everywhere; ``"recompute"`` re-estimated at every point.
        """
        (d1, d2), stage, step = plane.directions, plan.stage, int(common["global_step"])
        key = self.plane_key_of(plane, plan)
        mark = fingerprint(model, params) if mark is None else mark
        common = {**common, **plane.meta, "direction_dtype": str(d1[0].dtype).removeprefix("torch.")}
        if plan.reduced:
            common["reduced_by_max_overhead"] = True

        self.part = "the surface"
        plane_bn: BNMode = "recompute" if self.bn == "recompute" else "keep"
        surface_metric = metric if stage == "final" else None
        metric_name = self.metric_name if surface_metric else None
        old_surface = earlier.surface if earlier is not None and earlier.plane_key == key else None
        same_grid = old_surface is not None and old_surface.losses.shape[0] == plan.resolution
        if (
            old_surface is not None
            and same_grid
            and (surface_metric is None or old_surface.metrics is not None)
        ):
            surface = _copy(old_surface)  # same plane, same grid
            surface.path = plane.path
        else:
            surface = loss_surface(
                model, loss_fn, batches, (d1, d2), resolution=plan.resolution, span=plane.span,
                params=params, shard=shard, engine=self.engine, bn=plane_bn, metric_fn=surface_metric,
                metric_name=metric_name,
                progress=self._part(plan.resolution**2),
            )  # fmt: skip
            surface.path = plane.path
        surface.meta.update(
            common, span=plane.span, resolution=plan.resolution, name=record_name(stage, "surface", step)
        )
        records: list[SurfaceRecord | LineRecord] = [surface]

        interp = None
        if start is not None:
            self.part = "the interpolation line"
            old = earlier.interpolation if earlier is not None else None
            if old is not None and len(old.alphas) == plan.line_resolution:
                interp = _copy(old)
            else:
                line_bn, buffers = self._line_bn(model)
                interp = interpolation_line(
                    model, loss_fn, batches, start, resolution=plan.line_resolution,
                    alpha_range=self.interpolation_range, params=params, shard=shard,
                    engine=self.engine, bn=line_bn, start_buffers=buffers, metric_fn=metric,
                    metric_name=self.metric_name if metric is not None else None,
                    progress=self._part(plan.line_resolution),
                )  # fmt: skip
            interp.meta.update(
                common,
                directions="interpolation",
                label="initial → current (alpha)",
                name=record_name(stage, "interpolation", step),
            )
            records.append(interp)
        if stage == "final":
            for axis, d in enumerate((d1, d2)):
                self.part = f"line {axis + 1}"
                line = loss_line(
                    model, loss_fn, batches, d, resolution=plan.line_resolution, span=plane.span,
                    params=params, shard=shard, engine=self.engine, bn=plane_bn,
                    progress=self._part(plan.line_resolution),
                )  # fmt: skip
                label = f"{plane.meta['directions']} direction {axis + 1}"
                line.meta.update(
                    common, label=label, axis=axis, name=record_name(stage, f"line{axis + 1}", step)
                )
                records.append(line)
        else:
            self._latest = _Latest(step, mark, key, surface, interp)
        self._drawn = _Drawn(step, stage, plane, surface, dict(common))
        self.part = "the landscape"
        return records

    def _part(self, points: int) -> Any:
        """The progress hook of one evaluation of ``points`` points (None outside :meth:`compute`)."""
        return self.progress.part(points) if self.progress is not None else None

    def _line_bn(self, model: nn.Module) -> tuple[BNMode, dict[str, Tensor] | None]:
        """The interpolation line's BatchNorm mode and the initial buffers it needs."""
        if self.bn == "keep" or self.bn == "recompute":
            return ("keep" if self.bn == "keep" else "recompute"), None
        if not landscape_buffers(model):
            return "keep", None  # nothing to interpolate
        if self.start_buffers is None:  # a checkpoint of an older version: no initial statistics
            self.warnings.warn(
                "no initial buffers",
                "LossLandscapeCallback: the initial model's BatchNorm statistics are not known (a checkpoint "
                "written before they were kept); the interpolation line uses the current ones (bn='keep').",
            )
            return "keep", None
        return "interpolate", self.start_buffers

    def _metric(self, forward_context: Any) -> LossFn | None:
        """``metric_fn`` run inside the trainer's precision context, as the loss is."""
        user = self.metric_fn
        if user is None:
            return None

        def metric(model: nn.Module, batch: Any) -> Tensor:
            with forward_context():
                return user(model, batch)

        return metric

    def plane_key_of(self, plane: Plane, plan: Plan) -> tuple[Any, ...]:
        kind = plane.meta.get("directions")
        if kind == "hessian":
            return ("hessian", plan.hessian_iterations)
        if kind == "pca":
            return ("pca", tuple(plane.meta.get("snapshot_steps", ())), self.span, self.margin)
        return ("random", self.span)

    # ------------------------------------------------------------------ metrics

    def metrics(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: list[Any],
        params: Sequence[Tensor],
        spec: Mapping[str, dict[str, Any]],
        stage: str,
        step: int,
        shard: PointShard | None = None,
        mark: Tensor | None = None,
        earlier: _Latest | None = None,
        optimizer: Any = None,
    ) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
        """:func:`~lightning_landscape.metrics.compute_metrics`; the final ones reuse the metrics of
        ``earlier`` (the latest periodic landscape, at these weights) computed with the same options."""
        mark = fingerprint(model, params) if mark is None else mark
        latest = earlier
        if stage == "periodic":
            latest = self._reusable(step, mark)  # this step's landscape, if it succeeded
            if latest is None:
                latest = self._latest = _Latest(step, mark, ("metrics only",))
            latest.metrics = {}
        scalars: dict[str, float] = {}
        meta: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, options in spec.items():  # one at a time (as compute_metrics does): each one's scalars
            self.part = f"metric {name!r}"
            cached = latest.metrics.get(name) if latest is not None and stage == "final" else None
            problems: dict[str, str] = {}
            if cached is not None and cached[0] == options:
                values, info = dict(cached[1]), {name: {**cached[2], "reused": True}}
            else:
                values, info, problems = compute_metrics(
                    model, loss_fn, batches, params, {name: options}, shard=shard, optimizer=optimizer
                )
            scalars.update(values)
            meta.update(info)
            errors.update(problems)
            if stage == "periodic" and latest is not None and not problems and name in info:
                latest.metrics[name] = (dict(options), dict(values), info[name])
        self.part = "the landscape"
        return scalars, meta, errors
