"""LossLandscapeCallback: the Lightning shell around the functional core.

Hooks -> schedule (:mod:`._schedule`) -> probe (:mod:`._probe`) -> landscape (:mod:`._landscape`, which
calls the core) -> publisher (:mod:`._publish`). No math and no logger code live here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape.callback.critical import CriticalSharpnessMonitor
from lightning_landscape.callback.distributed import check_strategy, is_sharded_strategy
from lightning_landscape.callback.landscape import LandscapeBuilder, Observation
from lightning_landscape.callback.metrics import DEFAULT_FINAL_METRICS, DEFAULT_METRICS
from lightning_landscape.callback.module_state import ModuleStateKeeper
from lightning_landscape.callback.options import CallbackOptions, MetricSpec, UserFn
from lightning_landscape.callback.probe import ProbeSet
from lightning_landscape.callback.publish import Publisher, Warnings, describe_settings, record_name
from lightning_landscape.callback.recorder import TrajectoryRecorder, recorder_for
from lightning_landscape.callback.schedule import LandscapeSchedule, expected_batches
from lightning_landscape.functional.landscape.bn import buffer_snapshot
from lightning_landscape.functional.landscape.params import landscape_parameters, unflatten
from lightning_landscape.functional.landscape.shards import ShardLayout, is_sharded
from lightning_landscape.records.identity import new_run_id
from lightning_landscape.records.record import LineRecord, MetricsRecord, ReliabilityRecord, SurfaceRecord
from lightning_landscape.solutions.stream import StreamedWeights
from lightning_landscape.solutions.weights import DEFAULT_MAX_BYTES

__all__ = ["LossLandscapeCallback"]

clock = time.perf_counter  # the time source of the budget's measurements (a test may replace it)


def _now() -> float:
    """:data:`clock`, looked up at each call (so that replacing it reaches every part; and picklable)."""
    return clock()


def _check_distinct_names(callbacks: Iterable[Any]) -> None:
    """Several LossLandscapeCallbacks in one trainer need distinct names."""
    mine = [c for c in callbacks if isinstance(c, LossLandscapeCallback)]
    if len({c.name for c in mine}) < len(mine):
        raise MisconfigurationException(
            "This Trainer has several LossLandscapeCallbacks without distinct names: their records and "
            "logged figures would overwrite each other. Give each one its own `name=` "
            "(for example `LossLandscapeCallback(name='pca')`, `LossLandscapeCallback(name='random')`)."
        )


class LossLandscapeCallback(CallbackOptions, Callback):
    r"""Watch the geometry of the loss while training: trajectory PCA, loss surfaces and 1-D lines.

    During training the callback snapshots the trainable weights into a bounded CPU buffer. Every
    ``every_n_epochs`` epochs it evaluates a low-resolution loss surface around the current weights on
    the trajectory-PCA plane (seeded filter-normalized random directions until two snapshots exist) with
    the optimizer's projected path, plus the interpolation line from the initial weights. At the end of
    training it computes a higher-resolution surface and 1-D lines. Results go to the trainer's loggers
    (figures, ``landscape/`` scalars) and to ``<log_dir>/landscape/`` as ``.npz`` + ``.json`` records
    (:func:`lightning_landscape.load_records`); ``records`` holds those of the latest ``fit``. Each run
    has its own folder: where an earlier run's records are, a new run writes to ``landscape-2/`` (then
    ``-3``, ...) and says so once; a resumed fit keeps its run id and folder; ``fast_dev_run`` writes none.

    Evaluation runs on the trainer's device, in its precision context, on the first ``num_batches``
    training batches (moved to the device once), in eval mode, through the module's ``training_step``
    (``self.log`` silenced) unless ``loss_fn`` is given. Weights, buffers, train/eval flags and random
    state are restored afterwards: training is bit-identical with and without the callback. A callback
    reused for another ``fit`` starts fresh unless that ``fit`` resumes from a checkpoint.

    Every option is a keyword, in seven groups; each has one line below with its default, and
    docs/configuration.md ("Every option") explains each in full, with one example per group.

    Args:
        **What to draw** (the plane, the grid, the lines):
        directions (default ``"pca"``): trajectory ``"pca"``, ``"random"`` or ``"hessian"`` eigenvectors.
        span (default ``None``): half-width of the grid or a ``(low, high)`` pair; ``None``: the path, or 1.0.
        margin (default ``0.25``): room around the path, as a fraction of its extent.
        resolution (default ``None``): points per axis of periodic surfaces (odd); ``None``: 11, budget-sized.
        final_resolution (default ``None``): points per axis of the final surface (odd); ``None``: 31, so too.
        line_resolution (default ``41``): points of each 1-D line (odd).
        interpolation_range (default ``(-0.5, 1.5)``): alphas of the line initial (0) -> current (1) weights.
        include_1d (default ``False``): give random directions non-zero 1-D parts (biases, norm weights).
        pca_centred (default ``False``): mean-centre the snapshots in the trajectory PCA (Li et al.).
        bn (default ``"interpolate"``): BatchNorm statistics at each point; or ``"keep"``, ``"recompute"``.
        seed (default ``0``): seed of the random directions and of the metrics' random probes.
        **When** (the periodic and the final landscape):
        every_n_epochs (default ``1``): period of the low-resolution surface; ``None``: the final one only.
        final (default ``True``): a high-resolution surface, lines and metrics when training ends.
        **On what data** (the probe batches, and what is evaluated on them):
        num_batches (default ``4``): how many of the first training batches make the probe set.
        probe_dataloader (default ``None``): batches to use instead of the training loader's.
        loss_fn (default ``None``): ``loss_fn(model, batch) -> scalar``; required under manual optimization.
        metric_fn (default ``None``): ``metric_fn(model, batch) -> scalar`` (accuracy, say) beside the loss.
        metric_name (default ``"metric"``): the metric's name in records and figures.
        engine (default ``"auto"``): ``"auto"``, ``"loop"``, ``"vmap"`` or ``"compile"`` (needs ``loss_fn``).
        **Which metrics** (curvature, sharpness and reliability scalars):
        metrics (default ``("eigenvalues", "sam")``): with every periodic surface; names, or name -> options.
        final_metrics (default ``("eigenvalues", "trace", "sam", "average")``): the same, at the end.
        reliability (default ``True``): the reliability indicators with every landscape; or their settings.
        critical_sharpness (default ``None``): critical sharpness along the optimizer's update every n steps.
        critical_probe (default ``None``): ``(dataloader, loss_fn)``: a second loss along the same update.
        sharded_hessian (default ``"exact"``): FSDP2 curvature by gathered parameters, or ``"difference"``.
        **The budget** (how much the landscapes may add to training):
        max_overhead (default ``0.1``): most time the landscapes add, a fraction of the training time.
        budget_final (default ``"auto"``): first and final landscape sized to the budget; ``False``: full.
        **Snapshots and storage** (the trajectory buffer, and where results go):
        snapshot_every_n_steps (default ``None``): snapshot every n optimizer steps (10 unless by epochs).
        snapshot_every_n_epochs (default ``None``): snapshot every n epochs instead.
        max_snapshots (default ``64``): buffer size; when full, every other snapshot is dropped.
        snapshot_dtype (default ``None``): storage dtype of the snapshots, or its name; ``None``: float32.
        snapshot_budget_bytes (default ``None``): most bytes of snapshots kept in memory.
        snapshot_storage (default ``"auto"``): ``"memory"``, ``"memmap"`` (a file beside the records).
        name (default ``None``): records in ``landscape/NAME/``; distinct names for several callbacks.
        save_records (default ``True``): write ``.npz`` + ``.json`` records under ``<log_dir>/landscape/``.
        log_figures (default ``True``): send figures to the loggers (scalars are always sent).
        **Saving weights** (for :func:`~lightning_landscape.compare_solutions`):
        save_weights (default ``False``): write the initial and final weights and the snapshots at the end.
        save_weights_dtype (default ``None``): their storage dtype (``torch.bfloat16`` halves the size).
        save_weights_max_bytes (default 2 GiB): refuse (with a warning) to write more; ``None``: no limit.

    Under DDP every rank evaluates its share of the points, the values are gathered; the probe batches
    are rank zero's; only rank zero writes and logs. Under ``ModelParallelStrategy`` (FSDP2, tensor
    parallel size 1) each rank keeps and moves only its slices of the parameters and every rank evaluates
    every point (see docs/scaling.md for what works sharded); the other sharded strategies are refused.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> import tempfile
        >>> cb = LossLandscapeCallback(resolution=5, final_resolution=7, num_batches=2)
        >>> trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[cb],
        ...                   logger=False, default_root_dir=tempfile.mkdtemp(), enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> sorted({r.meta["stage"] for r in cb.records})  # a short run: the first and the final one
        ['final', 'periodic']
    """

    def __init__(
        self,
        *,
        # what to draw
        directions: Literal["pca", "random", "hessian"] = "pca",
        span: float | tuple[float, float] | None = None,
        margin: float = 0.25,
        resolution: int | None = None,
        final_resolution: int | None = None,
        line_resolution: int = 41,
        interpolation_range: tuple[float, float] = (-0.5, 1.5),
        include_1d: bool = False,
        pca_centred: bool = False,
        bn: Literal["interpolate", "keep", "recompute"] = "interpolate",
        seed: int = 0,
        # when
        every_n_epochs: int | None = 1,
        final: bool = True,
        # on what data
        num_batches: int = 4,
        probe_dataloader: Iterable[Any] | None = None,
        loss_fn: UserFn | None = None,
        metric_fn: UserFn | None = None,
        metric_name: str = "metric",
        engine: Literal["auto", "loop", "vmap", "compile"] = "auto",
        # which metrics
        metrics: MetricSpec = DEFAULT_METRICS,
        final_metrics: MetricSpec = DEFAULT_FINAL_METRICS,
        reliability: bool | Mapping[str, Any] = True,
        critical_sharpness: int | None = None,
        critical_probe: tuple[Iterable[Any], UserFn] | None = None,
        sharded_hessian: Literal["exact", "difference"] = "exact",
        # the budget
        max_overhead: float | None = 0.1,
        budget_final: bool | Literal["auto"] = "auto",
        # snapshots and storage
        snapshot_every_n_steps: int | None = None,
        snapshot_every_n_epochs: int | None = None,
        max_snapshots: int = 64,
        snapshot_dtype: torch.dtype | Literal["float32", "float64", "bfloat16", "float16"] | None = None,
        snapshot_budget_bytes: int | None = None,
        snapshot_storage: Literal["auto", "memory", "memmap"] = "auto",
        name: str | None = None,
        save_records: bool = True,
        log_figures: bool = True,
        # saving weights
        save_weights: bool = False,
        save_weights_dtype: torch.dtype | Literal["float32", "float64", "bfloat16", "float16"] | None = None,
        save_weights_max_bytes: int | None = DEFAULT_MAX_BYTES,
    ) -> None:
        indicators = self._set_options(locals())  # every argument, checked (see CallbackOptions)
        self.schedule = LandscapeSchedule(
            self.every_n_epochs, self.snapshot_every_n_steps, self.snapshot_every_n_epochs, self.resolution,
            self.final_resolution, self.line_resolution, self.metrics, self.final_metrics, self.max_overhead,
            self.budget_final, hessian_plane=self.directions == "hessian", bn=self.bn,
            metric=self.metric_fn is not None, final=self.final, explicit=self._explicit_sizes,
            reliability=indicators.plan_cost(self.max_snapshots) if indicators.enabled else None,
        )  # fmt: skip
        self.probe = ProbeSet(self.num_batches, self.probe_dataloader, self.loss_fn)
        self.warnings = Warnings()
        self.builder = LandscapeBuilder(
            self.directions, self.span, self.margin, self.seed, self.include_1d, self.engine,
            self.interpolation_range, self.warnings, self.bn, self.metric_fn, self.metric_name, indicators,
            self.pca_centred,
        )  # fmt: skip
        self.builder.clock = _now  # the points' seconds on the budget's clock
        self.publisher = Publisher(self.name, self.save_records, self.log_figures, self.warnings)
        self.recorder = TrajectoryRecorder(self.max_snapshots)
        self.records: list[SurfaceRecord | LineRecord | MetricsRecord | ReliabilityRecord] = []
        self._module_state = ModuleStateKeeper()  # restores the module's Python state around each computation
        self._param_names: list[str] = []
        self._state_key: str | None = None
        self._idle: str | None = None  # why this fit has nothing to observe (no trainable parameters)
        self._batch_start: float | None = None  # when the current training batch started (its timing)
        self.critical = CriticalSharpnessMonitor(critical_sharpness, critical_probe, self.num_batches)

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads this on every hook call (profiler names): build it once.
        if self._state_key is None:
            self._state_key = self._generate_state_key(**self._setting_values(keyed=True))
        # Lightning refuses equal state keys in Trainer(...), before any hook, with a generic message;
        # two unnamed callbacks have equal keys: when it is Lightning's check asking, say what to do first.
        caller = sys._getframe(1)
        if caller.f_code.co_name == "_validate_callbacks_list":
            _check_distinct_names(caller.f_locals.get("callbacks") or ())
        return self._state_key

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer.strategy)
        _check_distinct_names(trainer.callbacks)  # type: ignore[attr-defined]
        if not pl_module.automatic_optimization and self.loss_fn is None:
            raise MisconfigurationException(
                "LossLandscapeCallback: this module uses manual optimization, so its training_step steps "
                "the optimizer and cannot be used to evaluate the loss. Pass "
                "`LossLandscapeCallback(loss_fn=lambda model, batch: ...)` returning a scalar loss."
            )
        # A new fit starts fresh; resuming from a checkpoint restores the state after this (load_state_dict).
        self.schedule.reset()
        self.probe.reset()
        self.builder.reset()
        self.warnings.reset(enabled=trainer.is_global_zero)
        self._module_state.reset()
        self.critical.reset()
        self.records = []
        self._idle = None
        try:
            self._param_names = [n for n, _ in landscape_parameters(pl_module)]
        except ValueError as err:  # nothing to draw a landscape of; Lightning still trains: stay idle
            self._idle = str(err)
            self.warnings.warn(
                "idle",
                f"LossLandscapeCallback: {err}; the callback stays idle in this fit (training goes on).",
            )
            return
        log_dir = trainer.log_dir or trainer.default_root_dir  # called on every rank: it broadcasts
        shown = describe_settings(
            self._setting_values(), self.publisher.record_dir if self.publisher.log_dir else None
        )
        # One run id for this fit's callbacks (the first makes it, rank zero's for every rank); a resumed
        # fit gets its run's id back in load_state_dict().
        mine = [c for c in trainer.callbacks if isinstance(c, LossLandscapeCallback)]  # type: ignore[attr-defined]
        run_id = trainer.strategy.broadcast(new_run_id()) if mine[0] is self else mine[0].publisher.run_id
        write = not getattr(trainer, "fast_dev_run", False)  # Lightning suppresses logging there: so do we
        self.publisher.setup(log_dir, trainer.loggers, shown, trainer.global_rank, run_id, write)
        params = self._params(pl_module)
        wide = str(trainer.precision).startswith("64") or any(p.dtype == torch.float64 for p in params)
        self.builder.work_dtype = torch.float64 if wide else torch.float32
        dtype, rank = self.snapshot_dtype or self.builder.work_dtype, trainer.global_rank
        self.recorder, note = recorder_for(
            sum(p.numel() for p in params), self.max_snapshots, dtype, self.snapshot_budget_bytes,
            self.snapshot_storage, self.publisher.record_dir, rank, write,
        )  # fmt: skip
        if note:  # a budget too small for two snapshots in memory: they go to a file
            self.warnings.warn("snapshot storage", f"LossLandscapeCallback: {note}")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._idle:
            return
        self.publisher.announce(has_logger=bool(trainer.loggers))  # where the records go, once
        if len(self.recorder) == 0:
            self._snapshot(0, trainer, pl_module)
            # the initial floating-point buffers (BatchNorm statistics): the interpolation line's alpha = 0
            # and the saved weights' initial model (small, on the CPU)
            buffers = self._guarded(0, buffer_snapshot, pl_module, "cpu")
            self.builder.start_buffers = None if buffers is False else buffers
        self.builder.part = "the overhead budget"  # how long the run will be, for the budget
        self._guarded(trainer.global_step, lambda: self.schedule.expect(expected_batches(
            float(trainer.num_training_batches), trainer.max_epochs, trainer.max_steps,
            trainer.accumulate_grad_batches,
        )))  # fmt: skip

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._idle:
            return
        self.schedule.start_epoch(trainer.current_epoch)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_start = clock()  # the budget converts measured training time
        if self._idle:
            return
        if self.critical.wants(trainer.global_step):  # the weights before the step, for critical sharpness
            self.builder.part = "critical sharpness"
            self._guarded(trainer.global_step, self.critical.capture, trainer.global_step,
                          self._params(pl_module), trainer.optimizers)  # fmt: skip

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._idle:
            return
        if self.critical.pending(trainer.global_step):
            self._critical_sharpness(trainer, pl_module)
        # Events count optimizer steps: a snapshot when global_step // n first reaches a new value. Under
        # gradient accumulation the step stands still between optimizer steps (no duplicate); with
        # several optimizers it may jump past a multiple of n (the next step is taken instead).
        step = trainer.global_step
        start, self._batch_start = self._batch_start, None
        self.schedule.count_batch(step, None if start is None else clock() - start)
        event = self.schedule.snapshot_event(step=step)
        if event is not None and self.recorder.wants(event):
            self._snapshot(event, trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._idle:
            return
        event = self.schedule.snapshot_event(epoch_end=trainer.current_epoch)
        if event is not None:
            self._snapshot(event, trainer, pl_module)
        if self.schedule.landscape_due(trainer.current_epoch, trainer.global_step):
            self._observe("periodic", trainer, pl_module)
        self._publish_critical(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._idle:
            return
        self._publish_critical(trainer)
        if self.final:
            self._observe("final", trainer, pl_module)
        if self.save_weights and is_sharded_strategy(trainer.strategy):  # every rank: gathers are collective
            self.builder.part = "saving the weights"
            meta = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, "seed": self.seed,
                    "name": self.name}  # fmt: skip
            self._guarded(trainer.global_step, self._save_sharded_weights, trainer, pl_module, meta)
        elif self.save_weights and trainer.is_global_zero:
            self.builder.part = "saving the weights"
            meta = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, "seed": self.seed,
                    "name": self.name}  # fmt: skip
            self._guarded(
                trainer.global_step, self.publisher.save_weights, pl_module, self.recorder,
                self.builder.start_buffers, self._param_names, self.save_weights_dtype,
                self.save_weights_max_bytes, meta,
            )  # fmt: skip
        self.publisher.begin()  # the settings text, even when every landscape was skipped
        self.publisher.drain()  # the figures still drawn in the background, in order
        self.warnings.summary()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.publisher.drain()  # what was drawn so far still reaches the loggers

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.publisher.close()  # stop the figure worker thread

    @override
    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (checkpoints load with ``weights_only=True``)."""
        return {
            "recorder": self.recorder.state_dict(),  # snapshot buffer, stride, steps, events
            "schedule": self.schedule.state_dict(),  # cadence position and the budget's accounts
            "seed": self.seed,
            "name": self.name or "",
            "initial_buffers": dict(self.builder.start_buffers or {}),  # the initial float buffers
            "run_id": self.publisher.run_id,  # a resumed fit is the same run: its records stay together
            "critical": self.critical.state_dict(),  # the critical-sharpness series so far
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("run_id"):  # absent before 0.2: the fit keeps its new run id and folder
            self.publisher.resume(str(state_dict["run_id"]))
            if self.recorder.path is not None:  # a memory-mapped snapshot buffer lives beside the records
                self.recorder.path = self.publisher.record_dir / self.recorder.path.name
        self.recorder.load_state_dict(state_dict["recorder"])
        self.schedule.load_state_dict(state_dict.get("schedule", state_dict))  # 0.1: its keys at the top
        buffers = state_dict.get("initial_buffers", state_dict.get("start_buffers"))  # absent before 0.2
        self.builder.start_buffers = dict(buffers) if buffers is not None else None
        if "critical" in state_dict:  # absent before 0.2: the series starts afresh
            self.critical.load_state_dict(state_dict["critical"])

    # ------------------------------------------------------------------ one landscape

    def _observe(
        self, stage: Literal["periodic", "final"], trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Plan, compute and publish one landscape and its metrics; nothing raises out of here."""
        step = trainer.global_step
        self.builder.part = "the overhead budget"
        plan = self._guarded(step, self._plan, stage, trainer)
        if plan is False:
            return
        note = self.schedule.explain(plan, stage)
        if note:  # a landscape skipped or reduced for the budget (each said once)
            kind = f"{stage} budget" if plan is None else f"{stage} landscape reduced"
            self.warnings.warn(kind, f"LossLandscapeCallback: {note}")
        cost = self.schedule.cost_note(plan, stage)
        if cost:  # more than the budget, as the user asked: say once what it costs
            rank_zero_info(f"LossLandscapeCallback: {cost}")
        if plan is None:
            if stage == "periodic":
                self.schedule.skip()
            self.publisher.begin()  # the settings text shows even when no landscape does
            return
        self.schedule.charge(plan)
        # The epoch that just ended, 0-based, as in Lightning's progress bar (at the end of training
        # `current_epoch` has moved past the last epoch run; the schedule remembers it).
        epoch = self.schedule.epoch if self.schedule.epoch >= 0 else max(trainer.current_epoch - 1, 0)
        common: dict[str, Any] = {"stage": stage, "epoch": epoch, "global_step": step}
        common.update({"callback_name": self.name} if self.name else {})
        common.update({"budget": plan.budget} if plan.budget else {})  # what the budget left out
        job = Observation(
            trainer, pl_module, self._params(pl_module), plan, self.probe, self.recorder, common,
            self.sharded_hessian,
        )  # fmt: skip
        kept: list[Any] = []
        started = clock()
        # each guarded on its own; the reliability after the metrics (a final trace feeds its check)
        for compute in (self.builder.compute, self.builder.metrics_record, self.builder.reliability_record):
            records = self._guarded(step, self._compute, compute, job)
            kept.extend(records or [])
            if (
                compute == self.builder.compute
                and records
                and not plan.reliability
                and trainer.is_global_zero
            ):
                # their figures need nothing computed later: drawn while the metrics are computed
                self._guarded(step, self.publisher.preview, records, step, stage)
        if kept:  # published together: the surface's figure shows the reliability's flags
            self._guarded(step, self._keep, kept, trainer, stage)
        points = next((r.meta.get("seconds") for r in kept if r.kind == "surface"), None)
        self.schedule.observed(plan, clock() - started, points, trainer.world_size, self.probe.size)

    def _plan(self, stage: Literal["periodic", "final"], trainer: pl.Trainer) -> Any:
        """The schedule's plan, from rank zero's measured costs (the same on every rank)."""
        self.schedule.figures(self.publisher.figure_seconds)
        self.schedule.share(trainer.strategy.broadcast)
        return self.schedule.plan(stage, trainer.world_size, self.probe.size)

    def _compute(self, compute: Callable[[Observation], list[Any]], job: Observation) -> list[Any]:
        """``compute(job)`` with the module's Python state (lists, counters, torchmetrics states that
        ``training_step`` touches) restored afterwards."""
        out: list[Any] = []
        uses_step = self.loss_fn is None
        self._module_state.run(job.trainer, job.module, uses_step, lambda: out.extend(compute(job)))
        return out

    def _keep(self, records: list[Any], trainer: pl.Trainer, stage: str) -> None:
        self.records.extend(records)
        if records and trainer.is_global_zero:
            self.builder.part = "logging the results"
            self.publisher.publish(records, trainer.global_step, stage)

    def _snapshot(self, event: int, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self.builder.part = "a snapshot of the weights"
        self._guarded(step, lambda: self.recorder.offer(event, self._params(pl_module), step=step))

    def _guarded(self, step: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; on failure warn, naming what failed, and let training go on (returns False)."""
        try:
            return fn(*args)
        except Exception as err:
            part = self.builder.part
            self.builder.part = "the landscape"
            self.warnings.warn(
                f"{part} failed",
                f"LossLandscapeCallback: {part} at step {step} failed and was skipped "
                f"({type(err).__name__}: {err}). Training continues.",
            )
            return False

    # ------------------------------------------------------------------ critical sharpness

    def _critical_sharpness(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Critical sharpness along the step just taken (``callback/critical.py``); nothing raises out."""
        step = trainer.global_step

        def measure() -> None:
            context = trainer.precision_plugin.forward_context
            batches = self.probe.batches(trainer, pl_module)
            second = self.critical.second
            relative = None if second is None else (
                second.loss_fn(pl_module, context), second.batches(trainer, pl_module)
            )  # fmt: skip
            with self.probe.observing(pl_module):
                scalars = self.critical.measure(
                    pl_module, self._params(pl_module), self.probe.loss_fn(pl_module, context), batches,
                    step, relative,
                )  # fmt: skip
            if trainer.is_global_zero:
                self.publisher.critical_scalars(scalars, step)

        self.builder.part = "critical sharpness"
        self._guarded(step, self._module_state.run, trainer, pl_module, self.loss_fn is None, measure)
        self.critical.drop()  # measured, failed or skipped: the next due step captures afresh

    def _publish_critical(self, trainer: pl.Trainer) -> None:
        """The loss along the last measured update and lambda_c so far (records, figures; rank zero)."""
        step = trainer.global_step
        common = {"stage": "periodic", "epoch": trainer.current_epoch, "global_step": step,
                  "name": record_name("periodic", "critical_line", step)}  # fmt: skip
        line = self.critical.line_record({**common, **({"callback_name": self.name} if self.name else {})})
        if line is not None and trainer.is_global_zero:
            self.records.append(line)
            self.builder.part = "logging the critical sharpness"
            self._guarded(step, self.publisher.critical_line, line, self.critical.history, step)

    # ------------------------------------------------------------------ helpers

    def _save_sharded_weights(self, trainer: pl.Trainer, pl_module: nn.Module, meta: dict[str, Any]) -> None:
        """``save_weights`` of a sharded model, on every rank: the initial weights, the final ones and every
        snapshot gathered one parameter at a time (one all-gather each), which rank zero writes into the
        usual ``weights`` folder as they come: it holds one full parameter at a time, never a whole
        snapshot. Every rank consumes every piece, in the same order, whatever happens on rank zero."""
        local = self._params(pl_module)
        layout = self.builder.shards
        if layout is None or len(self.recorder) == 0:
            raise ValueError("no sharded parameters or no snapshot of the initial weights to save")
        snapshots = self.recorder.stacked()  # this rank's slices of each snapshot

        def pieces() -> Iterator[Tensor]:  # initial, final, then each snapshot: the writer's order
            for flat in (snapshots[0], None, *snapshots):
                parts = local if flat is None else unflatten(flat, local, dtype=flat.dtype)
                for full in layout.gathered(parts):
                    yield full.detach().reshape(-1).cpu()

        names = set(self._param_names)
        frozen = {}  # the parameters outside the landscape, whole: one gather each, kept on rank zero only
        for name, p in pl_module.named_parameters():
            if name not in names and p.is_floating_point():
                gather = getattr(
                    p, "full_tensor", None
                )  # a DTensor's: a collective, every rank in this order
                full = gather() if callable(gather) else p
                if trainer.is_global_zero:
                    frozen[name] = full.detach().cpu()
        stream = StreamedWeights(pieces(), len(snapshots), self.recorder.dtype, frozen=frozen or None)
        try:
            if trainer.is_global_zero:
                self.publisher.save_weights(
                    pl_module, self.recorder, self.builder.start_buffers, self._param_names,
                    self.save_weights_dtype, self.save_weights_max_bytes, meta, stream=stream,
                )  # fmt: skip
        finally:
            stream.drain()  # the other ranks (and rank zero after a failure): the same all-gathers

    def _params(self, pl_module: nn.Module) -> list[Tensor]:
        """The landscape's parameters; of a sharded model, views of this rank's slices (see ``shards``)."""
        named = dict(pl_module.named_parameters())
        params: list[Tensor] = [named[n] for n in self._param_names if n in named]  # a missing one: later
        if not is_sharded(params):
            self.builder.shards = None
            return params
        layout = ShardLayout.of(params)
        self.builder.shards = layout
        return layout.local
