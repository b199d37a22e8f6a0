"""What one landscape is: its plane (:mod:`._plane`), surface, lines, metrics and reliability indicators.

:class:`LandscapeBuilder` turns an :class:`Observation` (the callback's trainer, module, plan, probe set
and snapshots) into records by calling the functional core. It remembers the latest periodic landscape
so that the final one, computed at the same weights, reuses what would come out the same (the surface,
the interpolation line, metrics with the same options) instead of computing it twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.callback.distributed import agree, is_sharded_strategy, point_shard, resharding_loss
from lightning_landscape.callback.indicators import Indicators
from lightning_landscape.callback.metrics import compute_metrics_of
from lightning_landscape.callback.plane import Plane, PlaneSteps
from lightning_landscape.callback.probe import ProbeSet
from lightning_landscape.callback.progress import LandscapeProgress
from lightning_landscape.callback.publish import Warnings, record_name
from lightning_landscape.callback.recorder import TrajectoryRecorder
from lightning_landscape.callback.schedule import Plan
from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.assemble import finish
from lightning_landscape.functional.landscape.bn import BNMode, landscape_buffers
from lightning_landscape.functional.landscape.engine import Evaluation, Progress
from lightning_landscape.functional.landscape.params import Direction, LossFn, unflatten
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.landscape.surface import (
    Engine,
    interpolation_line_of,
    loss_line_of,
    loss_surface_of,
    odd_grid,
)
from lightning_landscape.functional.objective import Objective, ShardedHessian
from lightning_landscape.records.record import LineRecord, MetricsRecord, ReliabilityRecord, SurfaceRecord

__all__ = ["LandscapeBuilder", "Observation", "fingerprint"]

_R = TypeVar("_R", SurfaceRecord, LineRecord)


def fingerprint(model: nn.Module, params: Sequence[Tensor]) -> Tensor:
    """Sums and sums of squares (float64) of the parameters and buffers: equal before and after means
    the loss is the same function (a cheap check, one pass, one transfer)."""
    with torch.no_grad():
        tensors = [t.detach() for t in (*params, *model.buffers())]
        parts = [torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]
        return torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)


@dataclass
class Observation:
    """What the callback hands over for one landscape: where (trainer, module, its parameters), what
    (the plan), with which data (the probe set), the snapshots, and the records' common metadata."""

    trainer: Any
    module: nn.Module
    params: Sequence[Tensor]
    plan: Plan
    probe: ProbeSet
    recorder: TrajectoryRecorder
    common: Mapping[str, Any]
    sharded_hessian: ShardedHessian = "exact"  # how a sharded model's Hessian-vector products are taken
    _objective: Objective | None = field(default=None, init=False, repr=False)

    @property
    def step(self) -> int:
        return int(self.common["global_step"])

    def inputs(self) -> tuple[list[Any], LossFn]:
        """The probe batches (a collective: every rank calls it) and the loss in the precision context."""
        batches = self.probe.batches(self.trainer, self.module)
        if self.plan.probe_batches:  # a landscape the budget reduced: the first few batches
            batches = batches[: self.plan.probe_batches]
        loss_fn = self.probe.loss_fn(self.module, self.trainer.precision_plugin.forward_context)
        if is_sharded_strategy(self.trainer.strategy):
            loss_fn = resharding_loss(loss_fn, self.module)
        return batches, loss_fn

    def shard(self) -> PointShard | None:
        """This rank's share of the evaluation points (``None`` in a single process)."""
        return point_shard(self.trainer, self.params[0].device)

    def objective(self, engine: Engine) -> Objective:
        """The landscape's objective, built once for its surface, lines, metrics and indicators: the probe
        batches and the loss (:meth:`inputs`, a collective the first time), the parameters, the sharding
        and ``engine``; the current BatchNorm statistics and no metric (each part derives what it needs)."""
        if self._objective is None:
            batches, loss_fn = self.inputs()
            self._objective = Objective(
                self.module, loss_fn, batches, self.params, engine=engine, shard=self.shard(),
                sharded_hessian=self.sharded_hessian,
            )  # fmt: skip
        return self._objective


@dataclass
class _Latest:
    """The latest periodic landscape: where it was computed and what came out."""

    step: int
    mark: Tensor
    plane_key: tuple[Any, ...]
    batches: int = 0  # probe batches it was evaluated on (reused only on as many)
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


def _copy(record: SurfaceRecord | LineRecord | ReliabilityRecord) -> Any:
    """A copy of a record computed at the same weights, to reuse (its arrays copied, its name noted)."""
    arrays = {k: v.copy() for k, v in record.arrays().items()}
    return type(record)(**arrays, meta={**record.meta, "reused_from": record.meta["name"]})


class LandscapeBuilder(PlaneSteps):
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
        self.shards = None  # the layout of a sharded model's parameters (set with them by the callback)
        self.part = "the landscape"
        self.warnings = warn if warn is not None else Warnings()
        self.bn = bn
        self.metric_fn = metric_fn
        self.metric_name = metric_name
        self.indicators = indicators if indicators is not None else Indicators(False)
        self.pca_centred = pca_centred
        self.start_buffers: dict[str, Tensor] | None = None  # the initial model's floating-point buffers
        self.metric_missing: str | None = None  # why metric_fn failed in this fit (then no longer called)
        self._latest: _Latest | None = None
        self.warm: dict[str, list[Tensor]] = {}  # Lanczos' warm start, from one landscape to the next
        self.progress: LandscapeProgress | None = None  # of the landscape being evaluated (compute)
        # The time source of the points' seconds (the budget's measurement); the callback sets its own.
        self.clock: Callable[[], float] = time.monotonic
        self._drawn: _Drawn | None = None

    def reset(self) -> None:
        self._latest = None
        self._drawn = None
        self.warm = {}
        self.start_buffers = None
        self.metric_missing = None

    # ------------------------------------------------------------------ surface and lines

    def _reusable(self, step: int, mark: Tensor, batches: int = 0) -> _Latest | None:
        """The latest periodic landscape if it was computed at these weights (same step, same tensors) on
        as many probe batches (``batches``; 0: any)."""
        latest = self._latest
        same = latest is not None and latest.step == step and torch.equal(latest.mark, mark)
        same = same and (batches == 0 or latest is None or latest.batches == batches)
        return latest if same else None

    def _earlier(self, trainer: Any, stage: str, step: int, mark: Tensor, batches: int = 0) -> _Latest | None:
        """For the final landscape: the latest periodic one if every rank can reuse it (a collective)."""
        if stage != "final":
            return None
        latest = self._reusable(step, mark, batches)
        return latest if agree(trainer, latest is not None) else None

    def compute(self, job: Observation) -> list[SurfaceRecord | LineRecord]:
        """One landscape under ``job.trainer``: probe batches, plane, surface and lines; on every rank.

        Each collective (the probe broadcast, the agreement, one all-gather per surface or line) is reached
        by all ranks in the same order, and a failure on one rank is turned into the same exception on
        every rank *after* a collective.
        """
        trainer, module, params, plan, recorder = job.trainer, job.module, job.params, job.plan, job.recorder
        self.part = "the probe batches"
        objective = job.objective(self.engine)
        plane, start, error = None, None, None
        with job.probe.observing(module):
            try:
                self.part = "the plane"
                plane = self.plane(module, objective.loss_fn, list(objective.batches), params, recorder, plan)
                if len(recorder) >= 1:
                    start = unflatten(recorder.snapshots[0], params, dtype=self.work_dtype)
            except Exception as err:
                error = err
            if not agree(trainer, error is None):
                raise error if error is not None else RuntimeError("the plane failed on another rank")
            assert plane is not None
            mark = fingerprint(module, params)
            step = job.step
            earlier = self._earlier(trainer, plan.stage, step, mark, len(objective.batches))
            common = {
                **job.common,
                "precision": str(trainer.precision),
                "snapshot_dtype": str(recorder.dtype).removeprefix("torch."),
                "world_size": trainer.world_size,
            }
            total = plan.points - (start is None) * plan.line_resolution
            self.progress = LandscapeProgress.for_trainer(
                trainer, total, f"{plan.stage} landscape at step {step}", clock=self.clock
            )
            metric = self._metric(trainer.precision_plugin.forward_context)
            try:
                records = self.evaluate(objective, plane, start, plan, common, mark, earlier, metric)
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

    def metrics_record(self, job: Observation) -> list[MetricsRecord]:
        """The plan's metrics under ``job.trainer`` as a record (none if every one failed, or none asked).

        Every rank runs the same spec, so the collectives of the shared metrics match.
        """
        if not job.plan.metrics:
            return []
        self.part = "the probe batches"
        objective = job.objective(self.engine)
        trainer, module, params, plan = job.trainer, job.module, job.params, job.plan
        step, stage = job.step, plan.stage
        with job.probe.observing(module):
            mark = fingerprint(module, params)
            earlier = self._earlier(trainer, stage, step, mark, len(objective.batches))
            optimizer = trainer.optimizers[0] if getattr(trainer, "optimizers", None) else None  # for "eos"
            scalars, meta, errors = self.metrics(
                objective, plan.metrics, stage, step, mark, earlier, optimizer
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
        record = MetricsRecord.from_dict(scalars, {**job.common, "name": name, **meta})
        if errors:
            record.meta["errors"] = errors
        return [record]

    def evaluate(
        self,
        objective: Objective,
        plane: Plane,
        start: Direction | None,
        plan: Plan,
        common: Mapping[str, Any],
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
        model = objective.model
        mark = fingerprint(model, objective.params) if mark is None else mark
        common = {**common, **plane.meta, "direction_dtype": str(d1[0].dtype).removeprefix("torch.")}
        if plan.reduced:
            common["reduced_by_max_overhead"] = True

        self.part = "the surface"
        plane_bn: BNMode = "recompute" if self.bn == "recompute" else "keep"
        wants_metric = metric is not None
        metric = metric if self.metric_missing is None else None  # it failed earlier in this fit
        surface_metric = metric if stage == "final" else None
        old_surface = earlier.surface if earlier is not None and earlier.plane_key == key else None
        same = old_surface is not None and old_surface.losses.shape[0] == plan.resolution  # and same grid
        if old_surface is not None and same and (surface_metric is None or old_surface.metrics is not None):
            surface = _copy(old_surface)
            surface.path = plane.path
        else:
            grid = odd_grid(plane.span, plan.resolution)
            progress = self._part(plan.resolution**2)
            surface = self._measured(
                lambda m: loss_surface_of(
                    objective.replace(
                        bn=plane_bn, metric_fn=m, metric_name=self.metric_name if m is not None else None
                    ),
                    (d1, d2), grid, grid.copy(), progress=progress,
                ),
                surface_metric, step,
            )  # fmt: skip
            surface.path = plane.path
        if wants_metric and stage == "final" and surface.metrics is None:
            surface.meta["metric_missing"] = self._missing()
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
                lo, hi = check.value_range("interpolation_range", self.interpolation_range)
                progress = self._part(plan.line_resolution)
                interp = self._measured(
                    lambda m: interpolation_line_of(
                        objective.replace(
                            bn=line_bn, metric_fn=m, metric_name=self.metric_name if m is not None else None
                        ),
                        start, np.linspace(lo, hi, plan.line_resolution), start_buffers=buffers,
                        progress=progress,
                    ),
                    metric, step,
                )  # fmt: skip
            if wants_metric and interp.metrics is None:
                interp.meta["metric_missing"] = self._missing()
            if self.shards is not None:  # the distance travelled, over the full weights
                with torch.no_grad():
                    travelled = [p.detach() - s.to(p) for p, s in zip(objective.params, start)]
                interp.meta["distance"] = self.shards.norm(travelled)
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
                line = axis_line(
                    objective.replace(bn=plane_bn), d, axis, odd_grid(plane.span, plan.line_resolution),
                    surface, progress=self._part(plan.line_resolution),
                )  # fmt: skip
                label = f"{plane.meta['directions']} direction {axis + 1}"
                line.meta.update(
                    common, label=label, axis=axis, name=record_name(stage, f"line{axis + 1}", step)
                )
                records.append(line)
        else:
            self._latest = _Latest(step, mark, key, len(objective.batches), surface, interp)
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

    def _measured(self, evaluate: Callable[[LossFn | None], _R], metric: LossFn | None, step: int) -> _R:
        """``evaluate(metric)``; if that fails and ``evaluate(None)`` works, ``metric_fn`` was the cause: the
        loss values are kept, the metric is missing (one warning, and not called again in this fit).

        Under DDP a failure on one rank raises on every rank (after the gather), so all ranks retry alike.
        """
        if metric is None:
            return evaluate(None)
        try:
            return evaluate(metric)
        except Exception as err:
            record = evaluate(None)  # the loss's own failure raises here, as without a metric
            self.metric_missing = f"{type(err).__name__}: {err}"
            self.warnings.warn(
                "metric_fn failed",
                f"LossLandscapeCallback: metric_fn ({self.metric_name!r}) failed at step {step} "
                f"({self.metric_missing}); the loss surface and lines are kept without it, and metric_fn is "
                "not called again in this run (records say `metric_missing`). Training continues.",
            )
            return record

    def _missing(self) -> str:
        return f"{self.metric_name}: {self.metric_missing or 'not evaluated'}"

    def _metric(self, forward_context: Any) -> LossFn | None:
        """``metric_fn`` run inside the trainer's precision context, as the loss is."""
        user = self.metric_fn
        if user is None:
            return None

        def metric(model: nn.Module, batch: Any) -> Tensor:
            with forward_context():
                return user(model, batch)

        return metric

    # ------------------------------------------------------------------ metrics

    def metrics(
        self,
        objective: Objective,
        spec: Mapping[str, dict[str, Any]],
        stage: str,
        step: int,
        mark: Tensor | None = None,
        earlier: _Latest | None = None,
        optimizer: Any = None,
    ) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
        """:func:`~lightning_landscape.callback.metrics.compute_metrics_of`; the final ones reuse the metrics
        of ``earlier`` (the latest periodic landscape, at these weights) computed with the same options."""
        mark = fingerprint(objective.model, objective.params) if mark is None else mark
        latest = earlier
        if stage == "periodic":
            # this step's landscape, if it succeeded
            latest = self._reusable(step, mark, len(objective.batches))
            if latest is None:
                latest = self._latest = _Latest(step, mark, ("metrics only",), batches=len(objective.batches))
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
                values, info, problems = compute_metrics_of(
                    objective, {name: options}, optimizer=optimizer, shards=self.shards, warm=self.warm
                )
            scalars.update(values)
            meta.update(info)
            errors.update(problems)
            if stage == "periodic" and latest is not None and not problems and name in info:
                latest.metrics[name] = (dict(options), dict(values), info[name])
        self.part = "the landscape"
        return scalars, meta, errors

    # ------------------------------------------------------------------ the reliability indicators

    def reliability_record(self, job: Observation) -> list[ReliabilityRecord | LineRecord]:
        """The reliability indicators of the surface :meth:`compute` just drew (after the metrics, so
        that a final ``trace`` feeds the ``trace / P`` cross-check): the record and the distance lines.

        Evaluated with the current BatchNorm statistics (``bn="keep"``) whatever ``bn`` is.
        """
        step, stage, plan, drawn = job.step, job.plan.stage, job.plan, self._drawn
        if not plan.reliability or drawn is None or (drawn.step, drawn.stage) != (step, stage):
            return []  # off, or the surface failed
        self._drawn = None
        self.part = "the reliability indicators"
        objective = job.objective(self.engine)
        settings = self.indicators.settings_for(stage, plan.metrics)
        latest = self._latest if stage == "final" and "reused_from" in drawn.surface.meta else None
        old = latest.reliability if latest is not None and latest.step == step else None
        if old is not None and old[0] == settings:  # the same surface, the same checks: reuse them
            record, lines = _copy(old[1][0]), [_copy(r) for r in old[1][1:]]
        else:
            record, lines = self._indicate(job, drawn, objective)
        if stage == "periodic" and self._latest is not None and self._latest.step == step:
            self._latest.reliability = (settings, [record, *lines])
        keep = ("stage", "epoch", "global_step", "callback_name", "precision", "world_size", "directions")
        base = {k: drawn.common[k] for k in keep if k in drawn.common}
        record.meta.update(
            base, name=record_name(stage, "reliability", step), surface=drawn.surface.meta["name"]
        )
        record.meta["bn"] = "keep"
        for i, line in enumerate(lines):
            line.meta.update(base, directions="distance", name=record_name(stage, f"distance{i + 1}", step))
        self.part = "the landscape"
        return [record, *lines]

    def _indicate(
        self, job: Observation, drawn: _Drawn, objective: Objective
    ) -> tuple[ReliabilityRecord, list[LineRecord]]:
        plane, plan = drawn.plane, job.plan
        with job.probe.observing(job.module):
            return self.indicators.compute(
                objective, plane.directions, drawn.surface, stage=plan.stage, metrics=plan.metrics,
                pca=plane.pca, snapshots=job.recorder.stacked() if plane.pca is not None else None,
                steps=plane.meta.get("snapshot_steps", []), step=drawn.step, seed=self.seed,
                include_1d=self.include_1d, unit=plane.unit, trace=drawn.trace, layout=self.shards,
            )  # fmt: skip


def axis_line(
    objective: Objective,
    direction: Direction,
    axis: int,
    alphas: np.ndarray,
    surface: SurfaceRecord,
    progress: Progress | None = None,
) -> LineRecord:
    """The loss along the plane's ``axis`` (0: along the first direction) at ``alphas``: the points on
    the ``surface``'s grid, in its centre row or column (where the other coefficient is exactly 0), are
    taken from it, being the same weights on the same probe batches; the others are evaluated
    (:func:`loss_line_of`). The record is what :func:`loss_line_of` makes of all ``alphas``, with
    ``forward_passes`` the passes it took and ``from_surface`` the points it took from the surface.
    """
    along, other = (surface.xs, surface.ys) if axis == 0 else (surface.ys, surface.xs)
    centre = np.flatnonzero(np.asarray(other) == 0.0)
    table = surface.batch_losses
    alphas = np.asarray(alphas, dtype=np.float64)
    if centre.size != 1 or table is None or len(along) < 2:
        return loss_line_of(objective, direction, alphas, progress=progress)
    row = table[centre[0]] if axis == 0 else table[:, centre[0]]  # (len(along), batches)
    grid = np.asarray(along, dtype=np.float64)
    nearest = np.abs(grid[None, :] - alphas[:, None]).argmin(axis=1)
    taken = np.abs(grid[nearest] - alphas) <= 1e-9 * float(np.abs(grid).max())
    if not taken.any():
        return loss_line_of(objective, direction, alphas, progress=progress)
    per_batch = np.empty((len(alphas), row.shape[1]))
    per_batch[taken] = row[nearest[taken]]
    passes = 0
    if (~taken).any():
        rest = loss_line_of(objective, direction, alphas[~taken], progress=progress)
        assert rest.batch_losses is not None
        per_batch[~taken] = rest.batch_losses
        passes = int(rest.meta["forward_passes"])
    ev = Evaluation(per_batch, None, surface.meta.get("engine", "loop"))
    losses, batch_losses, _, meta = finish(ev, objective, (len(alphas),), objective.buffer_plan())
    meta.update(forward_passes=passes, from_surface=int(taken.sum()))
    for key in ("engine_note", "engine_reason"):
        if key in surface.meta:
            meta[key] = surface.meta[key]
    return LineRecord(alphas=alphas, losses=losses, meta=meta, batch_losses=batch_losses)
