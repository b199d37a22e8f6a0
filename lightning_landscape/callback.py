"""LossLandscapeCallback: the Lightning shell around the functional core.

Hooks -> schedule (:mod:`._schedule`) -> probe (:mod:`._probe`) -> landscape (:mod:`._landscape`, which
calls the core) -> publisher (:mod:`._publish`). No math and no logger code live here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape import _validation as check
from lightning_landscape._indicators import Indicators
from lightning_landscape._landscape import LandscapeBuilder
from lightning_landscape._module_state import ModuleStateKeeper
from lightning_landscape._probe import ProbeSet
from lightning_landscape._publish import Publisher, Warnings, describe_settings
from lightning_landscape._schedule import LandscapeSchedule
from lightning_landscape.distributed import check_strategy
from lightning_landscape.functional.bn import buffer_snapshot
from lightning_landscape.functional.params import LossFn, landscape_parameters
from lightning_landscape.metrics import DEFAULT_FINAL_METRICS, DEFAULT_METRICS, resolve_metrics
from lightning_landscape.recorder import TrajectoryRecorder, recorder_for
from lightning_landscape.records import LineRecord, MetricsRecord, ReliabilityRecord, SurfaceRecord
from lightning_landscape.run_weights import DEFAULT_MAX_BYTES, save_run_weights

__all__ = ["LossLandscapeCallback"]

_SNAPSHOT_DTYPES = (None, torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in _SNAPSHOT_DTYPES if d is not None}  # from YAML
MetricSpec = Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None

# The one list of settings: (attribute, part of state_key). The state_key takes those that shape the
# checkpointed state or the records (not the output switches); the loggers' settings text shows them all.
_SETTINGS = (
    *[(n, True) for n in ("name", "every_n_epochs", "directions", "seed", "include_1d", "resolution")],
    *[(n, True) for n in ("final_resolution", "line_resolution", "span", "margin", "num_batches")],
    *[(n, True) for n in ("interpolation_range", "snapshot_every_n_steps", "snapshot_every_n_epochs")],
    *[(n, True) for n in ("max_snapshots", "snapshot_dtype", "snapshot_budget_bytes", "snapshot_storage")],
    ("max_overhead", True), ("budget_final", False), ("final", False), ("probe_dataloader", False),
    ("loss_fn", False), ("metrics", False), ("final_metrics", False), ("engine", False),
    ("save_weights", False),
    ("bn", False), ("metric_name", False), ("reliability", False), ("pca_centred", False),
)  # fmt: skip


class LossLandscapeCallback(Callback):
    r"""Watch the geometry of the loss while training: trajectory PCA, loss surfaces and 1-D lines.

    During training the callback snapshots the trainable weights into a bounded CPU buffer. Every
    ``every_n_epochs`` epochs it evaluates a low-resolution loss surface around the current weights
    on the trajectory-PCA plane (seeded filter-normalized random directions until two snapshots
    exist) with the optimizer's projected path, plus the interpolation line from the initial
    weights. At the end of training it computes a higher-resolution surface and 1-D lines. Results
    go to the trainer's loggers (contour and line figures, ``landscape/`` scalars) and to
    ``<log_dir>/landscape/`` as ``.npz`` + ``.json`` records (read them with
    :func:`lightning_landscape.load_records`); ``records`` holds those of the latest ``fit``.

    Evaluation runs on the trainer's device and inside its precision context, on the first
    ``num_batches`` training batches (moved to the device once), with the model in eval mode. The
    weights, buffers, train/eval flags and random state are restored afterwards, so training is
    bit-identical with and without the callback. A callback object reused for another ``fit`` starts
    fresh, unless that ``fit`` resumes from a checkpoint, which restores its snapshots and schedule.

    Args:
        every_n_epochs: period of the low-resolution surface; ``None`` for the final one only.
        resolution: points per axis of periodic surfaces (odd).
        final_resolution: points per axis of the final surface (odd).
        line_resolution: points of each 1-D line (odd).
        directions: ``"pca"`` (trajectory PCA), ``"random"`` (filter-normalized Gaussian) or
            ``"hessian"`` (the unit eigenvectors of ``lambda_max`` and ``lambda_min`` by Lanczos, 20 steps
            periodically and 50 at the end; a span of ``s`` is a Euclidean distance ``s``).
        span: half-width of the grid, or a ``(low, high)`` pair, in units of the directions. By default
            the trajectory-PCA grid covers the path plus ``margin``; other directions use 1.0.
        margin: extra room around the path as a fraction of its extent.
        num_batches: number of training batches in the probe set.
        probe_dataloader: batches to use instead of the training loader's first ``num_batches``.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; by default the module's
            ``training_step`` with ``self.log`` silenced. Required under manual optimization, and
            advised when ``training_step`` has side effects beyond logging.
        snapshot_every_n_steps: snapshot cadence in optimizer steps (default 10, unless
            ``snapshot_every_n_epochs`` is given; setting both is an error).
        snapshot_every_n_epochs: snapshot cadence in epochs (instead of steps).
        max_snapshots: snapshot buffer size; when full, every other snapshot is dropped and the
            cadence halves, so the whole run stays covered.
        seed: seed of the random directions and of the metrics' random probes.
        include_1d: give random directions non-zero 1-D parts (biases, norm weights).
        interpolation_range: alpha range of the line from the initial (0) to current (1) weights.
        final: compute the final surface, lines and metrics when training ends.
        save_records: write ``.npz`` + ``.json`` records under ``<log_dir>/landscape/``.
        log_figures: send figures to the loggers (scalars are always sent).
        name: tells several callbacks in one trainer apart: records go to ``<log_dir>/landscape/NAME/``
            and logged tags start with ``landscape/NAME/``. Required (distinct) when a trainer has more
            than one ``LossLandscapeCallback``; part of ``state_key``.
        snapshot_dtype: storage dtype of the snapshots; default float32 (float64 under ``64-true``).
            ``torch.bfloat16`` or ``torch.float16`` halve the memory; the PCA is still computed in float64.
        snapshot_budget_bytes: most bytes of snapshots kept in memory; fewer than ``max_snapshots`` are
            kept if they do not fit (see ``snapshot_storage``).
        snapshot_storage: ``"memory"``, ``"memmap"`` (a memory-mapped file
            ``<log_dir>/landscape[/NAME]/snapshots*.bin``, for models whose snapshots do not fit in memory),
            or ``"auto"``: in memory unless ``snapshot_budget_bytes`` holds fewer than two snapshots.
        metrics: curvature and sharpness scalars computed with every periodic surface: a sequence of
            names from ``"eigenvalues"``, ``"trace"``, ``"sam"``, ``"average"``, or a mapping from name to
            options of the matching function (``{"sam": {"rho": 0.1}}``); ``None`` or ``()`` for none.
            Default: a 10-step Lanczos (``lambda_max``, ``lambda_min``, residuals) and SAM sharpness.
            Logged as ``landscape/hessian/...`` and ``landscape/sharpness/...`` and saved as a
            ``"metrics"`` record; see :mod:`lightning_landscape.metrics` for names and defaults.
        final_metrics: the same, computed at the end of training (``landscape/final/...``). Default:
            all four (a 50-step Lanczos, the trace with 64 probes, SAM and average sharpness).
        engine: how grid points are evaluated: ``"auto"`` (batched with ``vmap`` on accelerators, the
            loop on the CPU and for models that cannot be vmapped), ``"loop"``, ``"vmap"``, or
            ``"compile"`` (one ``torch.compile`` graph per model, reused by every landscape; worth it for
            conv and attention models over many landscapes; needs ``loss_fn=``, as ``training_step``'s
            ``self.log`` does not compile). See :func:`lightning_landscape.functional.loss_surface`.
        max_overhead: most work the periodic landscapes after the first may add, as a fraction of the
            training work so far (default 0.1). Work is counted, not timed, so the schedule is the same
            on every run and rank: a training step costs about 3 forward passes of its batch, a
            landscape one forward pass per grid point and probe batch (metrics by their measured
            equivalents). A periodic landscape that does not fit, with the final landscape's work set
            aside, is skipped (a warning says so). The first periodic landscape and the final one are
            always computed at their configured size, so even a short run shows a landscape, and a run
            long enough for those two to fit stays within ``max_overhead`` as a whole. ``None``
            computes everything as scheduled.
        budget_final: hold the final landscape to ``max_overhead`` too: it is made coarser (fewer grid
            points, then fewer metrics, down to 5 x 5) until it fits, or skipped, with a warning.
        save_weights: at the end of ``fit``, write the run's initial and final weights and BatchNorm
            statistics and the snapshot buffer (with each snapshot's global step) to
            ``<log_dir>/landscape/[NAME/]weights/`` (:func:`~lightning_landscape.save_run_weights`), so
            that two runs can be compared on one plane afterwards
            (:func:`~lightning_landscape.compare_solutions`). Size: ``(2 + n) * P`` values for ``P``
            parameters and ``n <= max_snapshots`` snapshots (the initial weights are the first snapshot,
            in ``snapshot_dtype``), plus two copies of the BatchNorm statistics: 11.7 M parameters with 64
            float32 snapshots take 3.1 GB. A failure to write warns; training is not affected.
        save_weights_dtype: storage dtype of the saved weights (``torch.bfloat16`` halves the size);
            default float32 (float64 for float64 parameters) and the snapshots' own dtype.
        save_weights_max_bytes: refuse (with a warning) to write more than this many bytes (2 GiB by
            default; ``None`` for no limit).
        bn: which BatchNorm running statistics each evaluated point uses. ``"interpolate"`` (default):
            on the interpolation line they move with the weights from the initial model's (kept with the
            initial snapshot and checkpointed) to the current ones, so alpha = 0 and 1 are the real
            initial and current models; on surfaces and axis lines (no second model to move towards) the
            current ones (Li et al.'s convention). ``"keep"``: the current statistics everywhere.
            ``"recompute"``: re-estimated from the probe batches at every point of every surface and
            line (one more forward pass per point and batch, counted in the budget). Records' meta ``bn``
            says which was used. The reliability indicators use the current statistics.
        metric_fn: ``metric_fn(model, batch) -> scalar tensor`` (accuracy, say), evaluated beside the loss
            on the interpolation line (every landscape) and on the final surface (one more forward pass
            per point and batch there, counted in the budget; periodic surfaces are left without it to
            keep them cheap). Stored as the records' ``metrics`` arrays, drawn on a second axis of the
            interpolation figure and logged as ``metric/centre`` (final surface), ``metric/initial``
            and ``metric/current`` (interpolation line, alpha = 0 and 1).
        metric_name: the metric's name in records and figures.
        reliability: compute the reliability indicators with every landscape (probe noise, direction
            and distance sensitivity with the basin radius, the path's fit to the plane, its true losses
            against the contour, the PCA against a random walk; see docs/reliability.md): ``True``
            (default: about 40 loss evaluations per landscape, counted in the budget), ``False``, or a
            mapping of :class:`~lightning_landscape.functional.ReliabilitySettings` and
            :class:`~lightning_landscape.functional.ReliabilityThresholds` fields (``{"directions": 5,
            "min_on_plane_share": 0.8}``). At the end, with a ``trace`` final metric, the
            ``trace / P`` cross-check runs on 8 random directions. Saved as ``reliability`` records,
            logged under ``landscape/[final/]reliability/...``, a table in the text panel, failed
            checks in the surface figure's title.
        pca_centred: mean-centre the snapshots' offsets in the trajectory PCA (Li et al.'s scikit-learn
            convention) instead of taking them from the current weights (default); recorded as the
            surface's ``pca_convention``. Compare explained variances only within one convention.

    Distributed training: under DDP (``ddp``, ``ddp_spawn``, ...) every rank evaluates its share of the
    grid and line points and the values are gathered, so the work per rank falls with the number of
    ranks; the probe batches are rank zero's, broadcast to all; only rank zero writes and logs. Sharded
    strategies (FSDP, DeepSpeed, model parallel) are refused at fit start.

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
        every_n_epochs: int | None = 1,
        resolution: int = 11,
        final_resolution: int = 31,
        line_resolution: int = 41,
        directions: Literal["pca", "random", "hessian"] = "pca",
        span: float | tuple[float, float] | None = None,
        margin: float = 0.25,
        num_batches: int = 4,
        probe_dataloader: Iterable[Any] | None = None,
        loss_fn: LossFn | None = None,
        snapshot_every_n_steps: int | None = None,
        snapshot_every_n_epochs: int | None = None,
        max_snapshots: int = 64,
        seed: int = 0,
        include_1d: bool = False,
        interpolation_range: tuple[float, float] = (-0.5, 1.5),
        final: bool = True,
        save_records: bool = True,
        log_figures: bool = True,
        name: str | None = None,
        snapshot_dtype: torch.dtype | Literal["float32", "float64", "bfloat16", "float16"] | None = None,
        snapshot_budget_bytes: int | None = None,
        snapshot_storage: Literal["auto", "memory", "memmap"] = "auto",
        metrics: MetricSpec = DEFAULT_METRICS,
        final_metrics: MetricSpec = DEFAULT_FINAL_METRICS,
        engine: Literal["auto", "loop", "vmap", "compile"] = "auto",
        max_overhead: float | None = 0.1,
        budget_final: bool = False,
        save_weights: bool = False,
        save_weights_dtype: torch.dtype | Literal["float32", "float64", "bfloat16", "float16"] | None = None,
        save_weights_max_bytes: int | None = DEFAULT_MAX_BYTES,
        bn: Literal["interpolate", "keep", "recompute"] = "interpolate",
        metric_fn: LossFn | None = None,
        metric_name: str = "metric",
        reliability: bool | Mapping[str, Any] = True,
        pca_centred: bool = False,
    ) -> None:
        self.every_n_epochs = check.positive_int("every_n_epochs", every_n_epochs, allow_none=True)
        self.num_batches = check.positive_int("num_batches", num_batches)
        self.resolution = check.odd_int("resolution", resolution)
        self.final_resolution = check.odd_int("final_resolution", final_resolution)
        self.line_resolution = check.odd_int("line_resolution", line_resolution)
        for arg in ("resolution", "final_resolution"):
            check.grid_fits_memory(arg, getattr(self, arg), num_batches)
        self.directions = check.choice("directions", directions, ("pca", "random", "hessian"))
        check.span_pair("span", span)
        self.span = span
        self.margin = check.number("margin", margin, 0, 10)
        self.probe_dataloader = check.iterable_arg("probe_dataloader", probe_dataloader)
        self.loss_fn = check.callable_arg("loss_fn", loss_fn, "loss_fn(model, batch)")
        self.__init_snapshots(snapshot_every_n_steps, snapshot_every_n_epochs, max_snapshots)
        self.seed = check.integer("seed", seed)
        self.interpolation_range = check.value_range("interpolation_range", interpolation_range)
        self.include_1d = check.boolean("include_1d", include_1d)
        self.final = check.boolean("final", final)
        self.save_records = check.boolean("save_records", save_records)
        self.log_figures = check.boolean("log_figures", log_figures)
        self.name = check.name_arg("name", name)
        if isinstance(snapshot_dtype, str):  # a name, as a config file gives it
            snapshot_dtype = _DTYPE_NAMES.get(snapshot_dtype.removeprefix("torch."), snapshot_dtype)
        self.snapshot_dtype = check.choice("snapshot_dtype", snapshot_dtype, _SNAPSHOT_DTYPES)
        self.snapshot_budget_bytes = check.positive_int(
            "snapshot_budget_bytes", snapshot_budget_bytes, allow_none=True
        )
        self.snapshot_storage = check.choice(
            "snapshot_storage", snapshot_storage, ("auto", "memory", "memmap")
        )
        self.metrics = resolve_metrics(metrics, final=False, seed=seed, argument="metrics")
        self.final_metrics = resolve_metrics(final_metrics, final=True, seed=seed, argument="final_metrics")
        self.engine = check.choice("engine", engine, ("auto", "loop", "vmap", "compile"))
        self.max_overhead = check.positive_number("max_overhead", max_overhead, allow_none=True)
        self.budget_final = check.boolean("budget_final", budget_final)
        self.save_weights = check.boolean("save_weights", save_weights)
        if isinstance(save_weights_dtype, str):
            named = _DTYPE_NAMES.get(save_weights_dtype.removeprefix("torch."))
            save_weights_dtype = named or save_weights_dtype
        self.save_weights_dtype = check.choice("save_weights_dtype", save_weights_dtype, _SNAPSHOT_DTYPES)
        self.save_weights_max_bytes = check.positive_int(
            "save_weights_max_bytes", save_weights_max_bytes, allow_none=True
        )
        self.bn = check.choice("bn", bn, ("interpolate", "keep", "recompute"))
        self.metric_fn = check.callable_arg("metric_fn", metric_fn, "metric_fn(model, batch)")
        if not isinstance(metric_name, str) or not metric_name:
            raise ValueError(f"`metric_name` must be a non-empty string, got {metric_name!r}")
        self.metric_name = metric_name
        self.reliability = reliability
        indicators = Indicators(reliability)
        self.pca_centred = check.boolean("pca_centred", pca_centred)

        self.schedule = LandscapeSchedule(
            self.every_n_epochs, self.snapshot_every_n_steps, snapshot_every_n_epochs, self.resolution,
            self.final_resolution, self.line_resolution, self.metrics, self.final_metrics, self.max_overhead,
            self.budget_final, hessian_plane=directions == "hessian", bn=self.bn,
            metric=metric_fn is not None, final=self.final,
            reliability=(
                (lambda plan: indicators.evaluations(plan.stage, plan.metrics, self.max_snapshots))
                if indicators.enabled else None
            ),
        )  # fmt: skip
        self.probe = ProbeSet(num_batches, probe_dataloader, loss_fn)
        self.warnings = Warnings()
        self.builder = LandscapeBuilder(
            directions, span, self.margin, seed, self.include_1d, engine, self.interpolation_range,
            self.warnings, self.bn, metric_fn, metric_name, indicators, self.pca_centred,
        )  # fmt: skip
        self.publisher = Publisher(name, self.save_records, self.log_figures, self.warnings)
        self.recorder = TrajectoryRecorder(max_snapshots)
        self.records: list[SurfaceRecord | LineRecord | MetricsRecord | ReliabilityRecord] = []
        self._module_state = (
            ModuleStateKeeper()
        )  # the module's Python state, restored around each computation
        self._param_names: list[str] = []
        self._state_key: str | None = None

    def __init_snapshots(
        self, every_n_steps: int | None, every_n_epochs: int | None, max_snapshots: int
    ) -> None:
        check.positive_int("snapshot_every_n_steps", every_n_steps, allow_none=True)
        check.positive_int("snapshot_every_n_epochs", every_n_epochs, allow_none=True)
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError(
                "`snapshot_every_n_steps` and `snapshot_every_n_epochs` are both set "
                f"({every_n_steps} and {every_n_epochs}); choose one cadence"
            )
        self.snapshot_every_n_steps = (
            10 if every_n_steps is None and every_n_epochs is None else every_n_steps
        )
        self.snapshot_every_n_epochs = every_n_epochs
        self.max_snapshots = check.positive_int("max_snapshots", max_snapshots, minimum=2)

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads this on every hook call (profiler names): build it once.
        if self._state_key is None:
            self._state_key = self._generate_state_key(**self._settings(keyed=True))
        return self._state_key

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer.strategy)
        mine = [c for c in trainer.callbacks if isinstance(c, LossLandscapeCallback)]  # type: ignore[attr-defined]
        if len({c.name for c in mine}) < len(mine):
            raise MisconfigurationException(
                "This Trainer has several LossLandscapeCallbacks without distinct names: their records and "
                "logged figures would overwrite each other. Give each one its own `name=` "
                "(for example `LossLandscapeCallback(name='pca')`, `LossLandscapeCallback(name='random')`)."
            )
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
        self.records = []
        self._param_names = [n for n, _ in landscape_parameters(pl_module)]
        log_dir = trainer.log_dir or trainer.default_root_dir  # called on every rank: it broadcasts
        self.publisher.setup(log_dir, trainer.loggers, self._settings(), rank=trainer.global_rank)
        params = self._params(pl_module)
        wide = str(trainer.precision).startswith("64") or any(p.dtype == torch.float64 for p in params)
        self.builder.work_dtype = torch.float64 if wide else torch.float32
        dtype, rank = self.snapshot_dtype or self.builder.work_dtype, trainer.global_rank
        self.recorder, note = recorder_for(
            sum(p.numel() for p in params), self.max_snapshots, dtype, self.snapshot_budget_bytes,
            self.snapshot_storage, self.publisher.record_dir, rank,
        )  # fmt: skip
        if note:  # a budget too small for two snapshots in memory: they go to a file
            self.warnings.warn("snapshot storage", f"LossLandscapeCallback: {note}")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(self.recorder) == 0:
            self._snapshot(0, trainer, pl_module)
            # the initial floating-point buffers (BatchNorm statistics): the interpolation line's alpha = 0
            # and the saved weights' initial model (small, on the CPU)
            buffers = self._guarded(0, buffer_snapshot, pl_module, "cpu")
            self.builder.start_buffers = None if buffers is False else buffers

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule.start_epoch(trainer.current_epoch)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Events count optimizer steps: a snapshot when global_step // n first reaches a new value. Under
        # gradient accumulation the step stands still between optimizer steps (no duplicate); with
        # several optimizers it may jump past a multiple of n (the next step is taken instead).
        step = trainer.global_step
        self.schedule.count_batch(step)
        event = self.schedule.snapshot_event(step=step)
        if event is not None and self.recorder.wants(event):
            self._snapshot(event, trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        event = self.schedule.snapshot_event(epoch_end=trainer.current_epoch)
        if event is not None:
            self._snapshot(event, trainer, pl_module)
        if self.schedule.landscape_due(trainer.current_epoch, trainer.global_step):
            self._observe("periodic", trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final:
            self._observe("final", trainer, pl_module)
        if self.save_weights and trainer.is_global_zero:
            self.builder.part = "saving the weights"
            self._guarded(trainer.global_step, self._save_weights, trainer, pl_module)
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
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict["recorder"])
        self.schedule.load_state_dict(state_dict.get("schedule", state_dict))  # 0.1: its keys at the top
        buffers = state_dict.get("initial_buffers", state_dict.get("start_buffers"))  # absent before 0.2
        self.builder.start_buffers = dict(buffers) if buffers is not None else None

    # ------------------------------------------------------------------ one landscape

    def _observe(
        self, stage: Literal["periodic", "final"], trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        """Plan, compute and publish one landscape and its metrics; nothing raises out of here."""
        step = trainer.global_step
        self.builder.part = "the overhead budget"
        plan = self._guarded(step, self.schedule.plan, stage, trainer.world_size, self.probe.size)
        if plan is False:
            return
        note = self.schedule.explain(plan, stage)
        if note:  # a landscape skipped or reduced for the budget
            self.warnings.warn(f"{stage} budget", f"LossLandscapeCallback: {note}")
        if plan is None:
            if stage == "periodic":
                self.schedule.skip()
            self.publisher.begin()  # the settings text shows even when no landscape does
            return
        self.schedule.charge(plan)
        # The epoch that just ended, 0-based, as in Lightning's progress bar (at the end of training
        # `current_epoch` has moved past the last epoch run; the schedule remembers it).
        epoch = self.schedule.epoch if self.schedule.epoch >= 0 else max(trainer.current_epoch - 1, 0)
        common = {"stage": stage, "epoch": epoch, "global_step": step}
        common.update({"callback_name": self.name} if self.name else {})
        args = (trainer, pl_module, self._params(pl_module), plan, self.probe, self.recorder, common)
        kept: list[Any] = []
        # each guarded on its own; the reliability after the metrics (a final trace feeds its check)
        for compute in (self.builder.compute, self.builder.metrics_record, self.builder.reliability_record):
            records = self._guarded(step, self._compute, compute, args, trainer, pl_module)
            kept.extend(records or [])
        if kept:  # published together: the surface's figure shows the reliability's flags
            self._guarded(step, self._keep, kept, trainer, stage)

    def _compute(
        self,
        compute: Callable[..., list[Any]],
        args: tuple[Any, ...],
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
    ) -> list[Any]:
        """``compute(*args)`` with the module's Python state (lists, counters, torchmetrics states that
        ``training_step`` touches) restored afterwards."""
        out: list[Any] = []
        uses_step = self.loss_fn is None
        self._module_state.run(trainer, pl_module, uses_step, lambda: out.extend(compute(*args)))
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

    def _save_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The run's weights under ``<record dir>/weights`` (rank zero; the caller guards it)."""
        if len(self.recorder) == 0:
            raise ValueError("no snapshot of the initial weights was taken")
        initial_buffers = self.builder.start_buffers
        if initial_buffers is None:  # resumed from a checkpoint without them: unknown, not invented
            raise ValueError("the checkpoint this run resumed from holds no initial BatchNorm statistics")
        save_run_weights(
            self.publisher.record_dir / "weights", pl_module, self.recorder.snapshots[0],
            initial_buffers=initial_buffers, trajectory=self.recorder.stacked(), steps=self.recorder.steps,
            names=self._param_names, dtype=self.save_weights_dtype, max_bytes=self.save_weights_max_bytes,
            meta={"global_step": trainer.global_step, "epoch": trainer.current_epoch, "seed": self.seed,
                  "name": self.name, "snapshot_dtype": str(self.recorder.dtype).removeprefix("torch.")},
        )  # fmt: skip

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

    # ------------------------------------------------------------------ helpers

    def _settings(self, keyed: bool = False) -> dict[str, Any]:
        """The settings from the one list: raw, those in ``state_key`` (``keyed``), or as the loggers'
        text summary shows them (all, readable)."""
        if keyed:
            raw = {n: getattr(self, n) for n, in_key in _SETTINGS if in_key}
            return {**raw, "snapshot_dtype": str(self.snapshot_dtype)}
        shown = {n: getattr(self, n) for n, _ in _SETTINGS}
        return describe_settings(shown, self.publisher.record_dir if self.publisher.log_dir else None)

    def _params(self, pl_module: nn.Module) -> list[Tensor]:
        named = dict(pl_module.named_parameters())
        return [named[n] for n in self._param_names if n in named]  # a missing one: caught downstream
