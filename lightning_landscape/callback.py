"""LossLandscapeCallback: the Lightning shell around the functional core.

Hooks -> schedule -> core -> plots -> sinks. No math lives here.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape._module_state import ModuleStateKeeper
from lightning_landscape._silence import silenced_logging
from lightning_landscape.distributed import agree, broadcast_from_zero, check_strategy, point_shard
from lightning_landscape.functional.curvature import hessian_directions
from lightning_landscape.functional.directions import filter_normalized_directions
from lightning_landscape.functional.params import (
    Direction,
    LossFn,
    flatten,
    landscape_parameters,
    preserved_random_state,
    unflatten,
)
from lightning_landscape.functional.surface import (
    check_engine,
    interpolation_line,
    loss_line,
    loss_surface,
)
from lightning_landscape.functional.trajectory import trajectory_pca
from lightning_landscape.metrics import (
    DEFAULT_FINAL_METRICS,
    DEFAULT_METRICS,
    compute_metrics,
    estimated_cost,
    resolve_metrics,
)
from lightning_landscape.plots import contour_figure, line_figure
from lightning_landscape.recorder import TrajectoryRecorder
from lightning_landscape.records import LineRecord, MetricsRecord, SurfaceRecord, save_record
from lightning_landscape.sinks import SinkSet, build_sinks

__all__ = ["LossLandscapeCallback"]

_DIRECTIONS = ("pca", "random", "hessian")
_HESSIAN_PLANE_ITERATIONS = {"periodic": 20, "final": 50}  # Lanczos steps for directions="hessian"
_STORAGES = ("auto", "memory", "memmap")
_SNAPSHOT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in _SNAPSHOT_DTYPES}  # "bfloat16" from a config file
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TRAIN_STEP_COST = 3.0  # a training step costs about 3 forward passes (forward + backward) of its batch


@dataclass(frozen=True)
class _Plan:
    """What one landscape computation evaluates, and its cost in forward passes over one probe batch."""

    resolution: int
    line_resolution: int
    metrics: dict[str, dict[str, Any]]
    cost: float
    reduced: bool = False


def _positive_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")


def _odd(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 3 or value % 2 == 0:
        raise ValueError(
            f"`{name}` must be an odd integer >= 3 (the grid must contain its centre), got {value!r}"
        )


def _training_step_loss(module: pl.LightningModule, batch: Any, takes_index: bool | None = None) -> Tensor:
    """The loss ``training_step`` returns, with ``self.log``/``self.log_dict`` silenced for the call."""
    if takes_index is None:  # inspect.signature is slow: callers evaluating many points pass it in
        takes_index = len(inspect.signature(module.training_step).parameters) >= 2
    with silenced_logging(module):
        out = module.training_step(batch, 0) if takes_index else module.training_step(batch)
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError("training_step returned a dict without a 'loss' key; pass `loss_fn=` instead")
        out = out["loss"]
    if not isinstance(out, Tensor):
        raise ValueError(
            f"training_step returned {type(out).__name__}, not a loss tensor; pass `loss_fn=` instead"
        )
    return out


class LossLandscapeCallback(Callback):
    r"""Watch the geometry of the loss while training: trajectory PCA, loss surfaces and 1-D lines.

    During training the callback snapshots the trainable weights into a bounded CPU buffer. Every
    ``every_n_epochs`` epochs it evaluates a low-resolution loss surface around the current weights
    on the trajectory-PCA plane (seeded filter-normalized random directions until two snapshots
    exist) with the optimizer's projected path, plus the interpolation line from the initial
    weights. At the end of training it computes a higher-resolution surface and 1-D lines. Results
    go to the trainer's loggers (contour and line figures, ``landscape/`` scalars) and to
    ``<log_dir>/landscape/`` as ``.npz`` + ``.json`` records (read them with
    :func:`lightning_landscape.load_records`).

    Evaluation runs on the trainer's device and inside its precision context, on the first
    ``num_batches`` training batches (moved to the device once), with the model in eval mode. The
    weights, buffers, train/eval flags and random state are restored afterwards, so training is
    bit-identical with and without the callback.

    Args:
        every_n_epochs: period of the low-resolution surface; ``None`` for the final one only.
        resolution: points per axis of periodic surfaces (odd).
        final_resolution: points per axis of the final surface (odd).
        line_resolution: points of each 1-D line.
        directions: ``"pca"`` (trajectory PCA), ``"random"`` (filter-normalized Gaussian) or
            ``"hessian"`` (the unit eigenvectors of ``lambda_max`` and ``lambda_min`` by Lanczos, 20 steps
            periodically and 50 at the end; a span of ``s`` is a Euclidean distance ``s``).
        span: half-width of the grid, or a ``(low, high)`` pair, in units of the directions. By default
            the trajectory-PCA grid covers the path plus ``margin``; random directions use 1.0.
        margin: extra room around the path as a fraction of its extent.
        num_batches: number of training batches in the probe set.
        probe_dataloader: batches to use instead of the training loader's first ``num_batches``.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; by default the module's
            ``training_step`` with ``self.log`` silenced. Required under manual optimization, and
            advised when ``training_step`` has side effects beyond logging.
        snapshot_every_n_steps: snapshot cadence in optimizer steps.
        snapshot_every_n_epochs: snapshot cadence in epochs (instead of steps).
        max_snapshots: snapshot buffer size; when full, every other snapshot is dropped and the
            cadence halves, so the whole run stays covered.
        seed: seed of the random directions.
        include_1d: give random directions non-zero 1-D parts (biases, norm weights).
        interpolation_range: alpha range of the line from the initial (0) to current (1) weights.
        on_train_end: compute the final surface and lines when training ends.
        save_records: write ``.npz`` + ``.json`` records under ``<log_dir>/landscape/``.
        log_figures: send figures to the loggers (scalars are always sent).
        name: tells several callbacks in one trainer apart: records go to ``<log_dir>/landscape/NAME/``
            and logged tags start with ``landscape/NAME/``. Required (distinct) when a trainer has more
            than one ``LossLandscapeCallback``; part of ``state_key``.
        snapshot_dtype: storage dtype of the snapshots; default float32 (float64 under ``64-true``).
            ``torch.bfloat16`` or ``torch.float16`` halve the memory; the PCA is still computed in float64.
            A name (``"bfloat16"``) is accepted too, as a config file gives it.
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
            loop on the CPU and for models that cannot be vmapped), ``"loop"`` or ``"vmap"``. See
            :func:`lightning_landscape.functional.loss_surface`.
        max_overhead: most work the callback may add, as a fraction of the training work so far
            (default 0.1). Work is counted, not timed, so the schedule is the same on every run and
            rank: a training step costs about 3 forward passes of its batch, a landscape one forward
            pass per grid point and probe batch (metrics by their measured equivalents). A periodic
            landscape that does not fit is skipped; the final one is made coarser (fewer grid points,
            then fewer metrics, down to 5 x 5) until it fits, or skipped if even that does not. A
            warning says so. ``None`` computes everything as scheduled, whatever it costs.

    Distributed training: under DDP (``ddp``, ``ddp_spawn``, ...) every rank evaluates its share of the
    grid and line points and the values are gathered, so the work per rank falls with the number of
    ranks; the probe batches are rank zero's, broadcast to all; only rank zero writes and logs. Sharded
    strategies (FSDP, DeepSpeed, model parallel) are refused at fit start.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> import tempfile
        >>> # A toy run, far shorter than its landscapes: lift the overhead budget to see them all.
        >>> cb = LossLandscapeCallback(resolution=5, final_resolution=7, num_batches=2, max_overhead=None)
        >>> trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[cb],
        ...                   logger=False, default_root_dir=tempfile.mkdtemp(), enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> sorted({r.meta["stage"] for r in cb.records})
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
        snapshot_every_n_steps: int | None = 10,
        snapshot_every_n_epochs: int | None = None,
        max_snapshots: int = 64,
        seed: int = 0,
        include_1d: bool = False,
        interpolation_range: tuple[float, float] = (-0.5, 1.5),
        on_train_end: bool = True,
        save_records: bool = True,
        log_figures: bool = True,
        name: str | None = None,
        snapshot_dtype: torch.dtype | Literal["float32", "float64", "bfloat16", "float16"] | None = None,
        snapshot_budget_bytes: int | None = None,
        snapshot_storage: Literal["auto", "memory", "memmap"] = "auto",
        metrics: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None = DEFAULT_METRICS,
        final_metrics: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None = DEFAULT_FINAL_METRICS,
        engine: Literal["auto", "loop", "vmap"] = "auto",
        max_overhead: float | None = 0.1,
    ) -> None:
        _positive_int("every_n_epochs", every_n_epochs, allow_none=True)
        check_engine(engine, "engine")
        _odd("resolution", resolution)
        _odd("final_resolution", final_resolution)
        _odd("line_resolution", line_resolution)
        if directions not in _DIRECTIONS:
            raise ValueError(f"`directions` must be one of {_DIRECTIONS}, got {directions!r}")
        if span is not None:
            pair = (-span, span) if isinstance(span, (int, float)) and not isinstance(span, bool) else span
            try:
                lo, hi = (float(v) for v in pair)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise ValueError(
                    f"`span` must be a positive number or a (low, high) pair, got {span!r}"
                ) from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < 0 < hi):
                raise ValueError(
                    "`span` must be a positive number or a (low, high) pair with low < 0 < high, "
                    f"got {span!r}"
                )
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 10:
            raise ValueError(f"`margin` must be a number in [0, 10), got {margin!r}")
        _positive_int("num_batches", num_batches)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(
                f"`loss_fn` must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}"
            )
        if probe_dataloader is not None and not isinstance(probe_dataloader, Iterable):
            raise ValueError(f"`probe_dataloader` must be iterable, got {type(probe_dataloader).__name__}")
        _positive_int("snapshot_every_n_steps", snapshot_every_n_steps, allow_none=True)
        _positive_int("snapshot_every_n_epochs", snapshot_every_n_epochs, allow_none=True)
        if snapshot_every_n_epochs is not None:
            snapshot_every_n_steps = None
        if snapshot_every_n_steps is None and snapshot_every_n_epochs is None:
            raise ValueError("one of `snapshot_every_n_steps` and `snapshot_every_n_epochs` must be set")
        _positive_int("max_snapshots", max_snapshots, minimum=2)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer, got {seed!r}")
        try:
            lo, hi = (float(v) for v in interpolation_range)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"`interpolation_range` must be (low, high) with low < high, got {interpolation_range!r}"
            )

        self.every_n_epochs = every_n_epochs
        self.resolution = resolution
        self.final_resolution = final_resolution
        self.line_resolution = line_resolution
        self.directions = directions
        self.span = span
        self.margin = float(margin)
        self.num_batches = num_batches
        self.probe_dataloader = probe_dataloader
        self.loss_fn = loss_fn
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.snapshot_every_n_epochs = snapshot_every_n_epochs
        self.seed = seed
        self.include_1d = include_1d
        self.interpolation_range = (float(lo), float(hi))
        self.compute_on_train_end = on_train_end
        self.save_records = save_records
        self.log_figures = log_figures
        if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise ValueError(
                f"`name` must be a non-empty string of letters, digits, '_', '.', '-'; got {name!r}"
            )
        if isinstance(snapshot_dtype, str):
            snapshot_dtype = _DTYPE_NAMES.get(snapshot_dtype.removeprefix("torch."), snapshot_dtype)  # type: ignore[assignment]
        if snapshot_dtype is not None and snapshot_dtype not in _SNAPSHOT_DTYPES:
            raise ValueError(
                f"`snapshot_dtype` must be None or one of {_SNAPSHOT_DTYPES} (or their names, like "
                f"'bfloat16'), got {snapshot_dtype!r}"
            )
        _positive_int("snapshot_budget_bytes", snapshot_budget_bytes, allow_none=True)
        if snapshot_storage not in _STORAGES:
            raise ValueError(f"`snapshot_storage` must be one of {_STORAGES}, got {snapshot_storage!r}")
        self.name = name
        self.max_snapshots = max_snapshots
        self.snapshot_dtype = snapshot_dtype
        self.snapshot_budget_bytes = snapshot_budget_bytes
        self.snapshot_storage = snapshot_storage
        self._work_dtype = torch.float32
        self._last_landscape_step = -1
        self._precision = "32-true"
        self.metrics = resolve_metrics(metrics, final=False, seed=seed, argument="metrics")
        self.final_metrics = resolve_metrics(final_metrics, final=True, seed=seed, argument="final_metrics")
        self.engine = engine
        if max_overhead is not None and (
            isinstance(max_overhead, bool)
            or not isinstance(max_overhead, (int, float))
            or not 0 < max_overhead < math.inf
        ):
            raise ValueError(f"`max_overhead` must be a positive number or None, got {max_overhead!r}")
        self.max_overhead = None if max_overhead is None else float(max_overhead)
        self._state_key: str | None = None
        self._train_batches = 0  # training batches seen: the budget's measure of training cost
        self._spent = 0.0  # the callback's work so far, in forward passes over one probe batch
        self._skipped = 0  # periodic landscapes skipped to stay within max_overhead

        self.recorder = TrajectoryRecorder(max_snapshots)
        self.records: list[SurfaceRecord | LineRecord | MetricsRecord] = []
        self._param_names: list[str] = []
        self._probe: list[Any] | None = None
        self._log_dir: Path | None = None
        self._sinks: SinkSet | None = None
        self._written: list[str] = []
        self._module_state = ModuleStateKeeper()  # restores the module's Python state around each computation

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads this on every hook call (profiler names): build it once.
        if self._state_key is None:
            self._state_key = self._make_state_key()
        return self._state_key

    def _make_state_key(self) -> str:
        # Every setting that shapes the state or the records; not the output switches.
        return self._generate_state_key(
            name=self.name,
            every_n_epochs=self.every_n_epochs,
            directions=self.directions,
            seed=self.seed,
            include_1d=self.include_1d,
            resolution=self.resolution,
            final_resolution=self.final_resolution,
            line_resolution=self.line_resolution,
            span=self.span,
            margin=self.margin,
            num_batches=self.num_batches,
            interpolation_range=self.interpolation_range,
            snapshot_every_n_steps=self.snapshot_every_n_steps,
            snapshot_every_n_epochs=self.snapshot_every_n_epochs,
            max_snapshots=self.max_snapshots,
            snapshot_dtype=str(self.snapshot_dtype),
            snapshot_budget_bytes=self.snapshot_budget_bytes,
            snapshot_storage=self.snapshot_storage,
            max_overhead=self.max_overhead,
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer.strategy)
        self._module_state.reset()
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
        self._param_names = [n for n, _ in landscape_parameters(pl_module)]
        log_dir = trainer.log_dir or trainer.default_root_dir  # called on every rank: it broadcasts
        self._log_dir = Path(log_dir)
        if trainer.is_global_zero:
            self._sinks = build_sinks(
                trainer.loggers, self._log_dir, settings=self._settings(), rank=trainer.global_rank
            )
        self._precision = str(trainer.precision)
        params = self._params(pl_module)
        wide = self._precision.startswith("64") or any(p.dtype == torch.float64 for p in params)
        self._work_dtype = torch.float64 if wide else torch.float32
        if len(self.recorder) == 0:
            self.recorder = self._new_recorder(sum(p.numel() for p in params), trainer.global_rank)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe = None
        if len(self.recorder) == 0:
            self.recorder.offer(0, self._params(pl_module), step=trainer.global_step)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Events count optimizer steps: a snapshot when global_step // n first reaches a new value. Under
        # gradient accumulation the step stands still between optimizer steps (no duplicate); with
        # several optimizers it may jump past a multiple of n (the next step is taken instead).
        self._train_batches += 1
        n = self.snapshot_every_n_steps
        step = trainer.global_step
        if n is not None and self.recorder.wants(step // n):
            self.recorder.offer(step // n, self._params(pl_module), step=step)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.snapshot_every_n_epochs
        epoch = trainer.current_epoch + 1  # event 0 is the initial weights
        if n is not None and epoch % n == 0:
            self.recorder.offer(epoch // n, self._params(pl_module), step=trainer.global_step)
        due = self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if due and trainer.global_step != self._last_landscape_step:  # not twice at one step (resume)
            self._last_landscape_step = trainer.global_step
            plan = self._plan(trainer, final=False)
            if plan is None:
                self._skipped += 1
                if self._skipped == 1:
                    rank_zero_warn(
                        f"LossLandscapeCallback: skipping periodic landscapes that would take the callback's "
                        f"work above max_overhead={self.max_overhead} of the training work so far; they "
                        "resume as training accumulates. Pass `max_overhead=None` to compute all of them.",
                        category=RuntimeWarning,
                    )
                return
            self._spent += plan.cost
            self._safely(self._landscape, trainer, pl_module, final=False, plan=plan)
            self._safely(self._curvature, trainer, pl_module, final=False, spec=plan.metrics)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.compute_on_train_end:
            plan = self._plan(trainer, final=True)
            if plan is None:
                rank_zero_warn(
                    "LossLandscapeCallback: the final landscape was skipped: even a 5 x 5 surface would "
                    f"take the callback's work above max_overhead={self.max_overhead} of this run's "
                    f"training work ({self._train_batches} batches). Pass `max_overhead=None` (or a larger "
                    "fraction) to compute it anyway.",
                    category=RuntimeWarning,
                )
                return
            if plan.reduced:
                rank_zero_warn(
                    f"LossLandscapeCallback: the final landscape was reduced to {plan.resolution} x "
                    f"{plan.resolution} points (asked: {self.final_resolution}) with metrics "
                    f"{sorted(plan.metrics) or 'none'} to stay within max_overhead={self.max_overhead} of "
                    "the training work. Pass `max_overhead=None` for the full one.",
                    category=RuntimeWarning,
                )
            self._spent += plan.cost
            self._safely(self._landscape, trainer, pl_module, final=True, plan=plan)
            self._safely(self._curvature, trainer, pl_module, final=True, spec=plan.metrics)

    @override
    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (checkpoints load with ``weights_only=True``)."""
        return {
            "recorder": self.recorder.state_dict(),  # snapshot buffer, stride, steps, events
            "written": list(self._written),  # names of the records written so far
            "seed": self.seed,  # the random directions' seed
            "name": self.name or "",
            "last_landscape_step": self._last_landscape_step,  # schedule position
            "train_batches": self._train_batches,  # the overhead budget's accounts
            "spent": self._spent,
            "skipped": self._skipped,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict["recorder"])
        self._written = list(state_dict.get("written", []))
        self._last_landscape_step = int(state_dict.get("last_landscape_step", -1))
        self._train_batches = int(state_dict.get("train_batches", 0))
        self._spent = float(state_dict.get("spent", 0.0))
        self._skipped = int(state_dict.get("skipped", 0))

    # ------------------------------------------------------------------ helpers

    def _cost(
        self, trainer: pl.Trainer, resolution: int, lines: int, line_resolution: int, metrics: Any
    ) -> float:
        """Forward passes over one probe batch that a landscape takes on each rank."""
        probe = len(self._probe) if self._probe is not None else self.num_batches
        points = resolution**2 + lines * line_resolution  # shared out among the ranks
        hessian = 3.9 * _HESSIAN_PLANE_ITERATIONS["final" if lines > 1 else "periodic"]
        per_rank = estimated_cost(metrics) + (hessian if self.directions == "hessian" else 0.0)
        return probe * (points / max(trainer.world_size, 1) + per_rank)

    def _plan(self, trainer: pl.Trainer, final: bool) -> _Plan | None:
        """The largest landscape that fits the overhead budget (None: skip it).

        Counted work, not time: every rank reaches the same decision without a collective, and
        identical runs make identical records.
        """
        lines = 3 if final else 1
        if not final:
            plan = _Plan(self.resolution, self.line_resolution, self.metrics, 0.0)
            cost = self._cost(trainer, plan.resolution, lines, plan.line_resolution, plan.metrics)
            plan = _Plan(plan.resolution, plan.line_resolution, plan.metrics, cost)
            if self.max_overhead is None or self._spent + cost <= self._allowance():
                return plan
            return None
        full = self._cost(trainer, self.final_resolution, lines, self.line_resolution, self.final_metrics)
        if self.max_overhead is None or self._spent + full <= self._allowance():
            return _Plan(self.final_resolution, self.line_resolution, self.final_metrics, full)
        # Coarser: first fewer grid points (down to the periodic resolution), then fewer metrics, then
        # fewer points still, down to a 5 x 5 surface with 11-point lines and no metrics.
        floor = min(self.resolution, self.final_resolution)
        candidates = [
            (r, spec)
            for spec in (self.final_metrics, self.metrics, {})
            for r in range(self.final_resolution - 2, floor - 1, -2)
        ] + [(r, {}) for r in range(floor - 2, 4, -2)]
        for r, spec in candidates:
            line_resolution = min(self.line_resolution, 2 * r + 1)
            cost = self._cost(trainer, r, lines, line_resolution, spec)
            if self._spent + cost <= self._allowance():
                return _Plan(r, line_resolution, spec, cost, reduced=True)
        return None  # not even a 5 x 5 surface fits: the budget is a promise, keep it

    def _allowance(self) -> float:
        assert self.max_overhead is not None
        return self.max_overhead * _TRAIN_STEP_COST * self._train_batches

    def _new_recorder(self, num_params: int, rank: int) -> TrajectoryRecorder:
        dtype = self.snapshot_dtype or self._work_dtype
        budget, storage = self.snapshot_budget_bytes, self.snapshot_storage
        if storage == "auto":
            fits = budget is None or budget // (num_params * dtype.itemsize) >= 2
            storage = "memory" if fits else "memmap"
        path = None
        if storage == "memmap":
            path = self._record_dir() / (f"snapshots-rank{rank}.bin" if rank else "snapshots.bin")
        recorder = TrajectoryRecorder(self.max_snapshots, dtype=dtype, budget_bytes=budget, path=path)
        try:
            recorder.capacity_for(num_params)
        except ValueError as err:
            raise ValueError(f"`snapshot_budget_bytes`: {err}") from None
        return recorder

    def _record_dir(self) -> Path:
        assert self._log_dir is not None
        return self._log_dir / "landscape" / self.name if self.name else self._log_dir / "landscape"

    def _settings(self) -> dict[str, Any]:
        """What a reader needs to know to compare runs (the loggers' text summary)."""
        from lightning_landscape import __version__

        cadence = (
            f"{self.snapshot_every_n_steps} steps"
            if self.snapshot_every_n_steps is not None
            else f"{self.snapshot_every_n_epochs} epochs"
        )
        return {
            "directions": self.directions,
            "every_n_epochs": self.every_n_epochs,
            "resolution": self.resolution,
            "final_resolution": self.final_resolution,
            "line_resolution": self.line_resolution,
            "span": "path + margin" if self.span is None and self.directions == "pca" else self.span,
            "margin": self.margin,
            "probe": "probe_dataloader"
            if self.probe_dataloader is not None
            else f"{self.num_batches} batches",
            "loss": "loss_fn" if self.loss_fn is not None else "training_step",
            "snapshot_every": cadence,
            "max_snapshots": self.recorder.max_snapshots,
            "seed": self.seed,
            "metrics": ", ".join(self.metrics) or "none",
            "final_metrics": ", ".join(self.final_metrics) or "none",
            "engine": self.engine,
            "max_overhead": "none" if self.max_overhead is None else self.max_overhead,
            "name": self.name or "",
            "records": str(self._record_dir()) if self._log_dir is not None else "",
            "lightning_landscape": __version__,
        }

    def _params(self, pl_module: nn.Module) -> list[Tensor]:
        named = dict(pl_module.named_parameters())
        return [named[n] for n in self._param_names]

    def _safely(self, fn: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, **kwargs: Any) -> None:
        """Run ``fn``; on failure warn and let training go on (the core has already restored the model)."""
        try:
            self._module_state.run(trainer, pl_module, self.loss_fn is None, fn, trainer, pl_module, **kwargs)
        except Exception as err:
            rank_zero_warn(
                f"LossLandscapeCallback: the landscape at step {trainer.global_step} failed and was skipped "
                f"({type(err).__name__}: {err}). Training continues.",
                category=RuntimeWarning,
            )

    def _probe_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        """The first ``num_batches`` batches, moved to the device once and cached for the whole fit.

        Rank zero takes them and broadcasts them (a collective: called on every rank), so under DDP,
        where each rank's training loader yields its own shard, all ranks evaluate the same probe set.
        """
        if self._probe is not None:
            return self._probe
        fetched, error = None, None
        if trainer.is_global_zero:
            try:
                fetched = self._fetch_probe(trainer, pl_module)
            except Exception as err:  # sent to the other ranks, raised everywhere below
                error = f"{type(err).__name__}: {err}"
        fetched, error = broadcast_from_zero(trainer, (fetched, error))
        if error is not None:
            raise RuntimeError(f"could not take the probe batches ({error})")
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with preserved_random_state(devices):  # batch-transfer hooks may draw random numbers
            batches = [
                trainer.precision_plugin.convert_input(trainer.strategy.batch_to_device(b, pl_module.device))
                for b in fetched
            ]
        self._probe = batches
        return batches

    def _fetch_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        """The first ``num_batches`` batches of the probe (or training) loader, as the loader gives them."""
        loader = self.probe_dataloader if self.probe_dataloader is not None else trainer.train_dataloader
        if loader is None:
            raise RuntimeError("no training dataloader to take probe batches from; pass `probe_dataloader=`")
        members = [loader]
        if self.probe_dataloader is None and isinstance(loader, (Mapping, Sequence)):
            # Several training loaders (a dict or list given to `fit`): combine them the way training does,
            # so each probe batch is what `training_step` receives.
            combined = CombinedLoader(loader, mode="max_size_cycle")
            members = combined.flattened
            loader = (batch for batch, _, _ in combined)
        generators = [
            g
            for m in members
            for g in (
                getattr(m, "generator", None),
                getattr(getattr(m, "sampler", None), "generator", None),
                getattr(getattr(getattr(m, "batch_sampler", None), "sampler", None), "generator", None),
            )
            if isinstance(g, torch.Generator)
        ]
        batches: list[Any] = []
        # Iterating a shuffled loader draws from the global RNGs (and the loader's own generator); datasets
        # often augment with Python's or NumPy's RNG. Give every one of them back afterwards.
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with preserved_random_state(devices, generators):
            for i, batch in enumerate(loader):
                if i >= self.num_batches:
                    break
                batches.append(batch)
        if not batches:
            raise RuntimeError("the probe dataloader gave no batches")
        return batches

    def _loss_fn(self, trainer: pl.Trainer) -> LossFn:
        user = self.loss_fn
        precision = trainer.precision_plugin
        step = trainer.lightning_module.training_step
        takes_index = len(inspect.signature(step).parameters) >= 2

        def loss(model: nn.Module, batch: Any) -> Tensor:
            with precision.forward_context():
                if user is not None:
                    return user(model, batch)
                return _training_step_loss(model, batch, takes_index)  # type: ignore[arg-type]

        return loss

    def _plane(
        self, params: Sequence[Tensor], centre: Tensor
    ) -> tuple[tuple[Direction, Direction], np.ndarray | None, float | tuple[float, float], dict[str, Any]]:
        """Directions, projected path, span and metadata of the plane to draw."""
        if self.directions == "pca" and len(self.recorder) >= 2:
            pca = trajectory_pca(self.recorder.stacked(), centre, release=self.recorder.release)
            d1, d2 = (unflatten(c, params, dtype=self._work_dtype) for c in pca.components)
            path = np.vstack([pca.coords.numpy(), np.zeros((1, 2))])  # the path ends at the centre
            span = self.span
            if span is None:
                extent = float(np.abs(path).max())
                span = extent * (1.0 + self.margin) if extent > 0 else 1.0
            meta = {
                "directions": "pca",
                "explained_variance": pca.explained_variance_ratio.tolist(),
                "snapshots": len(self.recorder),
                "snapshot_steps": list(self.recorder.steps),
            }
            return (d1, d2), path, span, meta
        d1, d2 = filter_normalized_directions(params, count=2, seed=self.seed, include_1d=self.include_1d)
        d1, d2 = ([t.to(self._work_dtype) for t in d] for d in (d1, d2))
        meta = {"directions": "random", "seed": self.seed, "include_1d": self.include_1d}
        return (d1, d2), None, (self.span if self.span is not None else 1.0), meta

    def _hessian_plane(
        self, pl_module: nn.Module, loss_fn: LossFn, batches: list[Any], params: Sequence[Tensor], stage: str
    ) -> tuple[tuple[Direction, Direction], None, float | tuple[float, float], dict[str, Any]]:
        """The eigenvectors of lambda_max and lambda_min as the plane (Boettcher & Wheeler, 2024)."""
        max_iter = _HESSIAN_PLANE_ITERATIONS[stage]
        (d1, d2), eig = hessian_directions(
            pl_module, loss_fn, batches, max_iter=max_iter, tol=1e-4, seed=self.seed, params=params
        )
        meta = {
            "directions": "hessian",
            "seed": self.seed,
            "lambda_max": eig.lambda_max,
            "lambda_min": eig.lambda_min,
            "residuals": eig.residuals.tolist(),
            "lanczos_iterations": eig.iterations,
        }
        return (d1, d2), None, (self.span if self.span is not None else 1.0), meta

    def _curvature(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        final: bool,
        spec: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Curvature and sharpness scalars: computed by the core, recorded, saved and logged here."""
        if spec is None:
            spec = self.final_metrics if final else self.metrics
        if not spec:
            return
        params = self._params(pl_module)
        batches = self._probe_batches(trainer, pl_module)
        step, stage = trainer.global_step, ("final" if final else "periodic")
        shard = point_shard(trainer, pl_module.device)  # every rank runs the same spec: collectives match
        scalars, meta, errors = compute_metrics(
            pl_module, self._loss_fn(trainer), batches, params, spec, shard=shard
        )
        for name, message in errors.items():
            rank_zero_warn(
                f"LossLandscapeCallback: metric {name!r} at step {step} failed or is not finite ({message}). "
                "Training continues.",
                category=RuntimeWarning,
            )
        if not scalars:
            return  # every metric failed: the warnings above say why
        name = f"{stage}_metrics_step{step:08d}"
        record = MetricsRecord.from_dict(
            scalars,
            {"stage": stage, "epoch": trainer.current_epoch, "global_step": step, "name": name, **meta},
        )
        if errors:
            record.meta["errors"] = errors
        self.records.append(record)
        if not trainer.is_global_zero:
            return
        assert self._log_dir is not None
        if self.save_records:
            try:
                save_record(record, self._record_dir(), name)
                self._written.append(name)
            except OSError as err:
                rank_zero_warn(
                    f"LossLandscapeCallback: could not write record {name} ({err})", category=RuntimeWarning
                )
        if self._sinks is not None:
            base = f"landscape/{self.name}/" if self.name else "landscape/"
            prefix = base if stage == "periodic" else f"{base}final/"
            finite = {f"{prefix}{k}": v for k, v in scalars.items() if math.isfinite(v)}
            if finite:
                self._sinks.scalars(finite, step)

    def _prepare(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batches: list[Any], stage: str
    ) -> tuple[Any, ...]:
        """This rank's inputs of a landscape: parameters, loss, plane and the interpolation start."""
        params = self._params(pl_module)
        loss_fn = self._loss_fn(trainer)
        if self.directions == "hessian":
            plane = self._hessian_plane(pl_module, loss_fn, batches, params, stage)
        else:
            centre = flatten(params, dtype=self._work_dtype, device="cpu")
            plane = self._plane(params, centre)
            del centre
        start = None
        if len(self.recorder) >= 1:
            start = unflatten(self.recorder.snapshots[0], params, dtype=self._work_dtype)
        return params, loss_fn, plane, start

    def _landscape(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool, plan: _Plan | None = None
    ) -> None:
        # Every rank runs this whole method: each collective below (the probe broadcast, the agreement,
        # one all-gather per surface or line) is reached by all ranks in the same order, and a failure
        # on one rank is turned into the same exception on every rank *after* a collective.
        batches = self._probe_batches(trainer, pl_module)
        prepared: tuple[Any, ...] | None = None
        error: Exception | None = None
        stage = "final" if final else "periodic"
        try:
            prepared = self._prepare(trainer, pl_module, batches, stage)
        except Exception as err:
            error = err
        if not agree(trainer, error is None):
            raise error if error is not None else RuntimeError("the landscape failed on another rank")
        assert prepared is not None
        params, loss_fn, ((d1, d2), path, span, plane_meta), start = prepared
        shard = point_shard(trainer, pl_module.device)
        step, epoch = trainer.global_step, trainer.current_epoch
        common = {
            "stage": stage,
            "epoch": epoch,
            "global_step": step,
            **plane_meta,
            "precision": self._precision,
            "direction_dtype": str(d1[0].dtype).removeprefix("torch."),
            "snapshot_dtype": str(self.recorder.dtype).removeprefix("torch."),
            "world_size": trainer.world_size,
        }
        if self.name:
            common["callback_name"] = self.name

        resolution = plan.resolution if plan else self.final_resolution if final else self.resolution
        line_resolution = plan.line_resolution if plan else self.line_resolution
        if plan is not None and plan.reduced:
            common["reduced_by_max_overhead"] = True
        surface = loss_surface(
            pl_module,
            loss_fn,
            batches,
            (d1, d2),
            resolution=resolution,
            span=span,
            params=params,
            shard=shard,
            engine=self.engine,
        )
        surface.path = path
        surface.meta.update(common, span=span, resolution=resolution, name=f"{stage}_surface_step{step:08d}")
        results: list[SurfaceRecord | LineRecord] = [surface]

        lines: list[LineRecord] = []
        if start is not None:
            interp = interpolation_line(
                pl_module,
                loss_fn,
                batches,
                start,
                resolution=line_resolution,
                alpha_range=self.interpolation_range,
                params=params,
                shard=shard,
                engine=self.engine,
            )
            interp.meta.update(
                common,
                directions="interpolation",
                label="initial → current (alpha)",
                name=f"{stage}_interpolation_step{step:08d}",
            )
            lines.append(interp)
        if final:
            for axis, d in enumerate((d1, d2)):
                line = loss_line(
                    pl_module,
                    loss_fn,
                    batches,
                    d,
                    resolution=line_resolution,
                    span=span,
                    params=params,
                    shard=shard,
                    engine=self.engine,
                )
                label = f"{plane_meta['directions']} direction {axis + 1}"
                line.meta.update(
                    common, label=label, axis=axis, name=f"{stage}_line{axis + 1}_step{step:08d}"
                )
                lines.append(line)
        results.extend(lines)

        bad = sum(r.meta.get("nonfinite", 0) for r in results)
        if bad:
            rank_zero_warn(
                f"LossLandscapeCallback: {bad} evaluation point(s) at step {step} gave a non-finite loss; "
                "they are stored as NaN/inf and drawn as gaps.",
                category=RuntimeWarning,
            )
        self.records.extend(results)
        if trainer.is_global_zero:
            self._publish(surface, lines, step, stage)

    def _publish(self, surface: SurfaceRecord, lines: list[LineRecord], step: int, stage: str) -> None:
        """Write records first (nothing already saved is lost if a logger fails), then log."""
        assert self._log_dir is not None
        if self.save_records:
            for rec in [surface, *lines]:
                try:
                    save_record(rec, self._record_dir(), rec.meta["name"])
                    self._written.append(rec.meta["name"])
                except OSError as err:
                    rank_zero_warn(
                        f"LossLandscapeCallback: could not write record {rec.meta['name']} ({err})",
                        category=RuntimeWarning,
                    )
        if self._sinks is None:
            return
        base = f"landscape/{self.name}/" if self.name else "landscape/"
        prefix = base if stage == "periodic" else f"{base}final/"
        finite = surface.losses[np.isfinite(surface.losses)]
        scalars = {f"{prefix}loss/centre": surface.centre_loss}
        if finite.size:
            scalars[f"{prefix}loss/surface_min"] = float(finite.min())
            scalars[f"{prefix}loss/surface_max"] = float(finite.max())
        ratios = surface.meta.get("explained_variance")
        if ratios:
            scalars[f"{prefix}explained_variance/pc1"] = float(ratios[0])
            scalars[f"{prefix}explained_variance/pc2"] = float(ratios[1])
        interp = [ln for ln in lines if ln.meta.get("directions") == "interpolation"]
        if interp:
            scalars[f"{prefix}distance_from_init"] = float(interp[0].meta["distance"])
        self._sinks.scalars(scalars, step)
        if self.log_figures:
            self._sinks.figure(f"{prefix}surface", contour_figure(surface), step)
            if interp:
                self._sinks.figure(f"{prefix}interpolation", line_figure(interp, xlabel="alpha"), step)
            axes = [ln for ln in lines if ln.meta.get("directions") != "interpolation"]
            if axes:
                fig = line_figure(axes, xlabel="distance along direction")
                self._sinks.figure(f"{prefix}lines", fig, step)
            if stage == "final":
                self._sinks.mesh(f"{prefix}surface_mesh", surface, step)
