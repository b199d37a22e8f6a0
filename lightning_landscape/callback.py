"""LossLandscapeCallback: the Lightning shell around the functional core.

Hooks -> schedule -> core -> plots -> sinks. No math lives here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
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

from lightning_landscape.functional.directions import filter_normalized_directions
from lightning_landscape.functional.params import (
    Direction,
    LossFn,
    flatten,
    landscape_parameters,
    preserved_random_state,
    unflatten,
)
from lightning_landscape.functional.surface import interpolation_line, loss_line, loss_surface
from lightning_landscape.functional.trajectory import trajectory_pca
from lightning_landscape.plots import contour_figure, line_figure
from lightning_landscape.recorder import TrajectoryRecorder
from lightning_landscape.records import LineRecord, SurfaceRecord, save_record
from lightning_landscape.sinks import SinkSet, build_sinks

__all__ = ["LossLandscapeCallback"]

_DIRECTIONS = ("pca", "random")


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


def _training_step_loss(module: pl.LightningModule, batch: Any) -> Tensor:
    """The loss ``training_step`` returns, with ``self.log``/``self.log_dict`` silenced for the call."""
    takes_index = len(inspect.signature(module.training_step).parameters) >= 2
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        out = module.training_step(batch, 0) if takes_index else module.training_step(batch)
    finally:
        del module.log, module.log_dict
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
        directions: ``"pca"`` (trajectory PCA) or ``"random"`` (filter-normalized Gaussian).
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

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> import tempfile
        >>> cb = LossLandscapeCallback(resolution=5, final_resolution=7, num_batches=2)
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
        directions: Literal["pca", "random"] = "pca",
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
    ) -> None:
        _positive_int("every_n_epochs", every_n_epochs, allow_none=True)
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

        self.recorder = TrajectoryRecorder(max_snapshots)
        self.records: list[SurfaceRecord | LineRecord] = []
        self._param_names: list[str] = []
        self._probe: list[Any] | None = None
        self._log_dir: Path | None = None
        self._sinks: SinkSet | None = None
        self._written: list[str] = []

    # ------------------------------------------------------------------ Lightning plumbing

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_epochs=self.every_n_epochs,
            directions=self.directions,
            seed=self.seed,
            resolution=self.resolution,
            snapshot_every_n_steps=self.snapshot_every_n_steps,
            snapshot_every_n_epochs=self.snapshot_every_n_epochs,
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
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

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe = None
        if len(self.recorder) == 0:
            self.recorder.offer(0, self._params(pl_module), step=trainer.global_step)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.snapshot_every_n_steps
        step = trainer.global_step
        if n is not None and step % n == 0 and self.recorder.wants(step // n):
            self.recorder.offer(step // n, self._params(pl_module), step=step)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.snapshot_every_n_epochs
        epoch = trainer.current_epoch + 1  # event 0 is the initial weights
        if n is not None and epoch % n == 0:
            self.recorder.offer(epoch // n, self._params(pl_module), step=trainer.global_step)
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._safely(self._landscape, trainer, pl_module, final=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.compute_on_train_end:
            self._safely(self._landscape, trainer, pl_module, final=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"recorder": self.recorder.state_dict(), "written": list(self._written)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict["recorder"])
        self._written = list(state_dict.get("written", []))

    # ------------------------------------------------------------------ helpers

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
            "records": str(self._log_dir / "landscape") if self._log_dir is not None else "",
            "lightning_landscape": __version__,
        }

    def _params(self, pl_module: nn.Module) -> list[Tensor]:
        named = dict(pl_module.named_parameters())
        return [named[n] for n in self._param_names]

    def _safely(self, fn: Any, trainer: pl.Trainer, pl_module: pl.LightningModule, **kwargs: Any) -> None:
        """Run ``fn``; on failure warn and let training go on (the core has already restored the model)."""
        try:
            fn(trainer, pl_module, **kwargs)
        except Exception as err:
            rank_zero_warn(
                f"LossLandscapeCallback: the landscape at step {trainer.global_step} failed and was skipped "
                f"({type(err).__name__}: {err}). Training continues.",
                category=RuntimeWarning,
            )

    def _probe_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        """The first ``num_batches`` batches, moved to the device once and cached for the whole fit."""
        if self._probe is not None:
            return self._probe
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
                batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                batches.append(trainer.precision_plugin.convert_input(batch))
        if not batches:
            raise RuntimeError("the probe dataloader gave no batches")
        self._probe = batches
        return batches

    def _loss_fn(self, trainer: pl.Trainer) -> LossFn:
        user = self.loss_fn
        precision = trainer.precision_plugin

        def loss(model: nn.Module, batch: Any) -> Tensor:
            with precision.forward_context():
                return user(model, batch) if user is not None else _training_step_loss(model, batch)  # type: ignore[arg-type]

        return loss

    def _plane(
        self, params: Sequence[Tensor], centre: Tensor
    ) -> tuple[tuple[Direction, Direction], np.ndarray | None, float | tuple[float, float], dict[str, Any]]:
        """Directions, projected path, span and metadata of the plane to draw."""
        if self.directions == "pca" and len(self.recorder) >= 2:
            pca = trajectory_pca(self.recorder.stacked(), centre)
            d1, d2 = (unflatten(c, params) for c in pca.components)
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
        meta = {"directions": "random", "seed": self.seed, "include_1d": self.include_1d}
        return (d1, d2), None, (self.span if self.span is not None else 1.0), meta

    def _landscape(self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool) -> None:
        params = self._params(pl_module)
        batches = self._probe_batches(trainer, pl_module)
        loss_fn = self._loss_fn(trainer)
        step, epoch = trainer.global_step, trainer.current_epoch
        stage = "final" if final else "periodic"
        centre = flatten(params, dtype=torch.float32, device="cpu")
        (d1, d2), path, span, plane_meta = self._plane(params, centre)
        common = {"stage": stage, "epoch": epoch, "global_step": step, **plane_meta}

        resolution = self.final_resolution if final else self.resolution
        surface = loss_surface(
            pl_module, loss_fn, batches, (d1, d2), resolution=resolution, span=span, params=params
        )
        surface.path = path
        surface.meta.update(common, span=span, resolution=resolution, name=f"{stage}_surface_step{step:08d}")
        results: list[SurfaceRecord | LineRecord] = [surface]

        lines: list[LineRecord] = []
        if len(self.recorder) >= 1:
            start = unflatten(self.recorder.snapshots[0], params)
            interp = interpolation_line(
                pl_module,
                loss_fn,
                batches,
                start,
                resolution=self.line_resolution,
                alpha_range=self.interpolation_range,
                params=params,
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
                    pl_module, loss_fn, batches, d, resolution=self.line_resolution, span=span, params=params
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
                    save_record(rec, self._log_dir / "landscape", rec.meta["name"])
                    self._written.append(rec.meta["name"])
                except OSError as err:
                    rank_zero_warn(
                        f"LossLandscapeCallback: could not write record {rec.meta['name']} ({err})",
                        category=RuntimeWarning,
                    )
        if self._sinks is None:
            return
        prefix = "landscape/" if stage == "periodic" else "landscape/final/"
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
