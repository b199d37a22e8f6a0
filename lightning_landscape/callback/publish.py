"""Where results go: records on disk first, then scalars, figures and meshes through the sinks; warnings.

:class:`Publisher` owns the record directory and the sinks (rank zero only). Scalars are those each
record declares (``record.scalars()``) under ``records.tag_prefix``. :class:`Warnings` shows each kind
of warning once, pointing at the user's code, and counts the repeats.

The record directory is the run's own: ``<log_dir>/landscape[/NAME]/``, or ``landscape-2``, ``landscape-3``,
... when an earlier run's records are there (:func:`~lightning_landscape.records.identity.record_folder`);
a run resumed from a checkpoint keeps its run id and goes back to its folder (:meth:`Publisher.resume`).
Under ``fast_dev_run`` nothing is written (Lightning suppresses logging there too).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_landscape.plots.render import FigureRenderer
from lightning_landscape.records.identity import RUN_ID_KEY, new_run_id, own_record_folder, record_folder
from lightning_landscape.records.record import (
    LineRecord,
    Record,
    ReliabilityRecord,
    SurfaceRecord,
    save_record,
    tag_prefix,
)
from lightning_landscape.sinks import SinkSet, build_sinks
from lightning_landscape.solutions.stream import StreamedWeights
from lightning_landscape.solutions.weights import save_run_weights

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from lightning_landscape.callback.recorder import TrajectoryRecorder

__all__ = ["Publisher", "Warnings", "describe_settings", "record_name", "warn_at_user_code"]


def _package_dirs() -> tuple[str, ...]:
    dirs = [str(Path(__file__).resolve().parent)]
    for name in ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities", "torch"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            dirs.append(str(Path(location).resolve()))
    return tuple(d.rstrip("/\\") + ("/" if "/" in d else "\\") for d in dirs)


_INTERNAL: tuple[str, ...] | None = None


@functools.lru_cache(maxsize=1024)
def _resolved(filename: str) -> str:
    """``filename`` resolved (a file system walk: cached, as the same frames come back at every warning)."""
    return str(Path(filename).resolve())


def warn_at_user_code(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside this package, Lightning and torch (the
    user's ``trainer.fit(...)`` line), or to no file at all when there is none."""
    global _INTERNAL
    if _INTERNAL is None:
        _INTERNAL = _package_dirs()
    frame: FrameType | None = sys._getframe(0)
    level = 1
    while frame is not None and _resolved(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class Warnings:
    """Each kind of warning once per ``fit``; repeats are counted and summed up by :meth:`summary`.

    Example::

        >>> w = Warnings()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     for step in (1, 2, 3):
        ...         w.warn("metric 'trace'", f"metric 'trace' at step {step} failed")
        >>> len(caught), w.counts
        (1, {"metric 'trace'": 3})
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # False on ranks other than zero
        self.counts: dict[str, int] = {}

    def reset(self, enabled: bool = True) -> None:
        self.enabled, self.counts = enabled, {}

    def warn(self, key: str, message: str, category: type[Warning] = RuntimeWarning) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.enabled and self.counts[key] == 1:
            warn_at_user_code(message, category)

    def summary(self) -> None:
        """One warning listing what repeated (say at the end of ``fit``), then start counting again."""
        repeated = {k: n for k, n in self.counts.items() if n > 1}
        self.counts = {}
        if repeated and self.enabled:
            listed = "; ".join(f"{k}: {n} times" for k, n in repeated.items())
            warn_at_user_code(
                f"LossLandscapeCallback: warnings shown once but repeated during this fit: {listed}."
            )


def _sketchable(lines: Sequence[LineRecord]) -> bool:
    """Whether :func:`~lightning_landscape.plots.brief.brief_lines` draws ``lines``: up to five, named by
    colour, without a ``metric_fn``'s values (those need a second axis: matplotlib's brief figure)."""
    from lightning_landscape.plots.brief import COLOURS

    return 0 < len(lines) <= len(COLOURS) and all(ln.metrics is None for ln in lines)


def record_name(stage: str, what: str, step: int) -> str:
    """A record's file name (without suffix): ``STAGE_WHAT_stepNNNNNNNN``, sorted by step within a stage.

    Example::

        >>> record_name("final", "line1", 12)
        'final_line1_step00000012'
    """
    return f"{stage}_{what}_step{step:08d}"


def describe_settings(values: Mapping[str, Any], record_dir: Path | None) -> dict[str, Any]:
    """The callback's settings as the loggers' text summary shows them (readable, one per row)."""
    from lightning_landscape._version import __version__

    shown: dict[str, Any] = {}
    for n, value in values.items():
        if n == "span" and value is None:
            value = "path + margin" if values.get("directions") == "pca" else 1.0
        elif n in ("metrics", "final_metrics"):
            value = ", ".join(value) or "none"
        elif n == "probe_dataloader":
            n, value = "probe", "probe_dataloader" if value is not None else "training loader"
        elif n == "loss_fn":
            n, value = "loss", "loss_fn" if value is not None else "training_step"
        elif n == "critical_sharpness" and value is not None:
            value = f"every {value} optimizer step(s)"
        elif n == "critical_probe" and value is not None:
            value = "(dataloader, loss_fn)"
        shown[n] = (value or "") if n == "name" else "none" if value is None else value
    return {**shown, "records": str(record_dir or ""), "lightning_landscape": __version__}


def _surface_title(surface: SurfaceRecord) -> str:
    from lightning_landscape.plots.base import record_title

    return record_title(surface.meta, "loss surface")


def _reliability_text(record: ReliabilityRecord) -> str:
    """The text panel's entry: the verdict line and the checks' table."""
    flags = record.flags
    head = f"**{len(flags)} check(s) failed**: {'; '.join(flags)}" if flags else "**all checks passed**"
    walk = record.meta.get("random_walk")
    return "\n\n".join(p for p in (head, f"trajectory PCA: {walk}" if walk else "", record.markdown()) if p)


class Publisher:
    """Writes records to ``<log_dir>/landscape[/NAME]/`` (``landscape-N`` when an earlier run's records are
    there) and logs their scalars and figures (rank zero). Every record written carries ``meta["run_id"]``.

    Example::

        >>> import tempfile, numpy as np
        >>> pub = Publisher(log_figures=False)
        >>> pub.setup(tempfile.mkdtemp(), loggers=[], settings={})
        >>> line = LineRecord(np.linspace(0, 1, 3), np.ones(3), {"name": "periodic_line_step00000004"})
        >>> [p.name for p in pub.publish([line], step=4, stage="periodic")]
        ['periodic_line_step00000004.json']
    """

    def __init__(
        self,
        name: str | None = None,
        save_records: bool = True,
        log_figures: bool = True,
        warn: Warnings | None = None,
    ) -> None:
        self.name = name
        self.save_records = save_records
        self.log_figures = log_figures
        self.warnings = warn if warn is not None else Warnings()
        self.log_dir: Path | None = None
        self.directory: Path | None = None  # the run's record folder, chosen in setup()
        self.run_id = ""
        self.write = True  # False under fast_dev_run: no records, figures or weights on disk
        self.sinks: SinkSet | None = None
        self._loggers: list[Any] = []
        self._settings: dict[str, Any] = {}
        self.written: list[str] = []  # names of the records written since setup
        self.renderer: FigureRenderer | None = None  # made in setup(): a thread does not cross processes
        self.metric_history: list[tuple[int, str, dict[str, float]]] = []  # metrics of this fit, in order
        self._previewed: tuple[int, str] | None = None  # (step, stage) whose figures preview() submitted

    def setup(
        self,
        log_dir: str | Path,
        loggers: Sequence[Any],
        settings: Mapping[str, Any],
        rank: int = 0,
        run_id: str | None = None,
        write: bool = True,
    ) -> None:
        """Point at a run's log directory and choose the run's record folder (one that holds no other run's
        records); rank zero gets the sinks of ``loggers``, other ranks none. ``write=False``
        (``fast_dev_run``): nothing goes to disk or to the loggers."""
        self.log_dir, self.run_id, self.write = Path(log_dir), run_id or new_run_id(), write
        self.directory = record_folder(self.log_dir, self.name, self.run_id) if write else self._default_dir
        self.written, self.metric_history = [], []
        if self.renderer is not None:
            self.renderer.close()
        self.renderer = FigureRenderer(warn=self._figure_warning)
        self._loggers, self._settings = list(loggers), dict(settings)
        self.sinks = None
        if rank == 0 and write:
            self._build_sinks()

    def resume(self, run_id: str) -> None:
        """The run ``run_id`` goes on (a checkpoint restored it): its records go back to its own folder."""
        self.run_id = run_id
        if self.log_dir is not None and self.write:
            own = own_record_folder(self.log_dir, self.name, run_id)
            self.directory = own or record_folder(self.log_dir, self.name, run_id)
            if self.sinks is not None:  # nothing written to them yet: figures go beside the run's records
                self._build_sinks()

    def _build_sinks(self) -> None:
        """The sinks of this run's loggers, PNG figures in its record folder's ``figures/``, and the folder
        and run id in the settings text (written with the first result)."""
        assert self.log_dir is not None
        folder = self.record_dir.relative_to(self.log_dir).parts[0]  # landscape, landscape-2, ...
        settings = {**self._settings, "records": str(self.record_dir), "run_id": self.run_id}
        self.sinks = build_sinks(self._loggers, self.log_dir, settings=settings, folder=folder)

    def announce(self, has_logger: bool) -> None:
        """Say once where the records go: a warning when the usual folder held another run's records, a note
        when there is no logger to find them by, a warning under ``fast_dev_run`` that none are written."""
        if not self.warnings.enabled or not self.save_records:
            return
        if not self.write:
            self.warnings.warn(
                "fast_dev_run",
                "LossLandscapeCallback: `fast_dev_run` is on, so no records, figures, weights or snapshot "
                "files are written (Lightning suppresses logging there too); the landscapes are computed and "
                "kept in `callback.records`.",
                UserWarning,
            )
        elif self.record_dir != self._default_dir:
            self.warnings.warn(
                "record folder",
                f"LossLandscapeCallback: {self._default_dir} holds the records of another run, so this run "
                f"(run id {self.run_id}) writes its records to {self.record_dir}.",
                UserWarning,
            )
        elif not has_logger:
            rank_zero_info(f"LossLandscapeCallback: no logger; records go to {self.record_dir.resolve()}")

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the trainer's callbacks before setup(): leave the renderer's thread behind.
        return {**self.__dict__, "renderer": None}

    def _figure_warning(self, message: str) -> None:
        self.warnings.warn("figures", message)

    @property
    def _default_dir(self) -> Path:
        if self.log_dir is None:
            raise RuntimeError("Publisher.setup() has not been called")
        return self.log_dir / "landscape" / self.name if self.name else self.log_dir / "landscape"

    @property
    def record_dir(self) -> Path:
        """This run's record folder (see :meth:`setup`)."""
        return self.directory if self.directory is not None else self._default_dir

    def begin(self) -> None:
        """Write the settings to the loggers now if nothing has been written yet (a skipped landscape)."""
        if self.sinks is not None:
            self.sinks.begin()

    def publish(self, records: Sequence[Record], step: int, stage: str) -> list[Path]:
        """Write ``records`` first (nothing saved is lost if a logger fails), then log their scalars and
        figures. Returns the JSON paths written."""
        written: list[Path] = []
        for record in records:
            record.meta[RUN_ID_KEY] = self.run_id
        if self.save_records and self.write:
            for record in records:
                name = record.meta["name"]
                try:
                    written.append(save_record(record, self.record_dir, name))
                    self.written.append(name)
                except OSError as err:
                    self.warnings.warn(
                        "record", f"LossLandscapeCallback: could not write record {name} ({err})"
                    )
        if self.renderer is not None:
            self.renderer.deliver_ready()  # figures drawn in the background so far, after the records
        if self.sinks is None:
            return written
        prefix = tag_prefix(self.name, stage)
        scalars = {f"{prefix}{k}": v for r in records for k, v in r.scalars().items()}
        if scalars:
            self.sinks.scalars(scalars, step)
        for record in records:  # the checks as a table in the text panel (loggers that have one)
            if isinstance(record, ReliabilityRecord):
                self.sinks.text(f"{prefix}reliability", _reliability_text(record), step)
        if self.log_figures:
            self.render(records, prefix, step, stage)
        return written

    def preview(self, records: Sequence[Record], step: int, stage: str) -> None:
        """Start drawing the figures of a landscape's surface and lines now, before its metrics are
        computed: with two CPU cores the figure thread draws them meanwhile (at the end of a short fit, the
        final landscape's figures were drawn while training waited). For records whose figures need no
        record computed later: without reliability indicators (their flags go in the surface's title).
        :meth:`publish` then draws only the rest."""
        if not (self.log_figures and self.write) or self.sinks is None or self.renderer is None:
            return
        for record in records:  # set before the figure thread reads them (publish sets the same)
            record.meta[RUN_ID_KEY] = self.run_id
        self._landscape_figures(records, tag_prefix(self.name, stage), step)
        self._previewed = (step, stage)

    def render(self, records: Sequence[Record], prefix: str, step: int, stage: str) -> None:
        """Draw the figures of a landscape's records and send them (and, at the end, the mesh).

        With a reliability record: the surface with the path's true losses as coloured markers and the
        failed checks in its title, and the loss against log distance (``{prefix}distance``). A landscape
        the budget reduced (its records' meta ``budget``) draws only the figures listed in
        ``budget["figures"]`` (:data:`~lightning_landscape.callback.sizing.ESSENTIAL_FIGURES`), brief
        (``budget["brief_figures"]``: fewer ticks, no legend, drawn straight to pixels by
        :mod:`~lightning_landscape.plots.brief`).
        """
        if self._previewed == (step, stage):  # the surface and lines figures are drawn already
            self._previewed = None
        else:
            self._landscape_figures(records, prefix, step)
        self._metric_figures(records, prefix, step, stage)
        if stage == "final":
            assert self.sinks is not None
            for surface in (r for r in records if isinstance(r, SurfaceRecord)):
                self.sinks.mesh(f"{prefix}surface_mesh", surface, step)

    def _landscape_figures(self, records: Sequence[Record], prefix: str, step: int) -> None:
        """The figures of a landscape's surface and lines (see :meth:`render`)."""
        from lightning_landscape.plots.brief import brief_lines, brief_surface
        from lightning_landscape.plots.landscape import (
            contour_figure,
            distance_figure,
            line_figure,
            path_contour_figure,
        )

        surfaces = [r for r in records if isinstance(r, SurfaceRecord)]
        lines = [r for r in records if isinstance(r, LineRecord)]
        interp = [ln for ln in lines if ln.meta.get("directions") == "interpolation"]
        distance = [ln for ln in lines if ln.meta.get("directions") == "distance"]
        axes = [ln for ln in lines if ln.meta.get("directions") not in ("interpolation", "distance")]
        trust = next((r for r in records if isinstance(r, ReliabilityRecord)), None)
        flags = trust.flags if trust is not None else []
        budget = next((r.meta["budget"] for r in records if r.meta.get("budget")), None)
        brief = False
        if budget is not None and "figures" in budget:  # a landscape the budget reduced: fewer figures
            keep = set(budget["figures"])
            interp = interp if "interpolation" in keep else []
            axes = axes if "lines" in keep else []
            distance = distance if "distance" in keep else []
            brief = bool(budget.get("brief_figures"))
        for surface in surfaces:
            if trust is not None and trust.path_points is not None and trust.path_losses is not None:
                self._figure(
                    f"{prefix}surface", step, path_contour_figure, surface, trust.path_points,
                    trust.path_losses, flags=flags,
                )  # fmt: skip
            else:
                title = trust.title(_surface_title(surface)) if trust is not None else None
                build = brief_surface if brief else contour_figure
                self._figure(f"{prefix}surface", step, build, surface, title=title)
        for tag, group, xlabel in (
            ("interpolation", interp, "alpha"),
            ("lines", axes, "distance along direction"),
        ):
            if group and brief and _sketchable(group):
                self._figure(f"{prefix}{tag}", step, brief_lines, group, xlabel=xlabel)
            elif group:
                self._figure(
                    f"{prefix}{tag}",
                    step,
                    line_figure,
                    group,
                    xlabel=xlabel,
                    **({"brief": True} if brief else {}),
                )
        if distance:
            self._figure(f"{prefix}distance", step, distance_figure, distance, flags=flags)

    def _figure(self, tag: str, step: int, build: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``build(*args, **kwargs)`` drawn by the background renderer and sent to the sinks under ``tag``."""
        assert self.sinks is not None and self.renderer is not None  # both made in setup()
        self.renderer.submit(self.sinks, tag, step, build, *args, **kwargs)

    def _metric_figures(self, records: Sequence[Record], prefix: str, step: int, stage: str) -> None:
        """The metrics over this fit so far: ``{prefix}stability`` (edge-of-stability ratio) and
        ``{prefix}blocks`` (curvature per block), when the records hold those metrics."""
        from lightning_landscape.plots import metrics as metric_plots
        from lightning_landscape.records.record import MetricsRecord

        new = [(step, stage, r.scalars()) for r in records if isinstance(r, MetricsRecord)]
        if not new:
            return
        self.metric_history.extend(new)
        history = tuple(self.metric_history)  # a copy: the worker draws it later
        if any(metric_plots.has_stability(s) for _, _, s in new):
            self._figure(f"{prefix}stability", step, metric_plots.stability_figure, history)
        if any(metric_plots.has_blocks(s) for _, _, s in new):
            self._figure(f"{prefix}blocks", step, metric_plots.blocks_figure, history)

    def save_weights(
        self,
        model: nn.Module,
        recorder: TrajectoryRecorder,
        initial_buffers: Mapping[str, Tensor] | None,
        names: Sequence[str],
        dtype: torch.dtype | None,
        max_bytes: int | None,
        meta: Mapping[str, Any],
        stream: StreamedWeights | None = None,
    ) -> Path | None:
        """The run's weights, BatchNorm statistics and snapshots under ``<record dir>/weights``
        (:func:`~lightning_landscape.save_run_weights`; rank zero, the caller guards it); nothing under
        ``fast_dev_run``.

        ``stream``: for a sharded model, the initial and final weights and the snapshots as full
        parameters gathered one at a time by the caller, written as they come (the recorder and the
        parameters hold this rank's slices only); the caller drains it on every rank afterwards.
        """
        if not self.write:
            return None
        if stream is not None:
            return save_run_weights(
                self.record_dir / "weights", model, stream=stream, initial_buffers=initial_buffers,
                steps=recorder.steps, names=names, dtype=dtype, max_bytes=max_bytes,
                meta={**meta, "snapshot_dtype": str(recorder.dtype).removeprefix("torch."), "sharded": True,
                      RUN_ID_KEY: self.run_id},
            )  # fmt: skip
        if len(recorder) == 0:
            raise ValueError("no snapshot of the initial weights was taken")
        if initial_buffers is None:  # resumed from a checkpoint without them: unknown, not invented
            raise ValueError("the checkpoint this run resumed from holds no initial BatchNorm statistics")
        return save_run_weights(
            self.record_dir / "weights", model, recorder.snapshots[0], initial_buffers=initial_buffers,
            trajectory=recorder.stacked(), steps=recorder.steps, names=names, dtype=dtype,
            max_bytes=max_bytes, meta={**meta, "snapshot_dtype": str(recorder.dtype).removeprefix("torch."),
                                       RUN_ID_KEY: self.run_id},
        )  # fmt: skip

    @property
    def figure_seconds(self) -> float:
        """Seconds spent building and rendering the figures finished so far in this ``fit``."""
        return self.renderer.seconds if self.renderer is not None else 0.0

    def drain(self) -> None:
        """Wait for the figures still being drawn and send them (end of fit, on an exception)."""
        if self.renderer is not None:
            self.renderer.drain()

    def close(self) -> None:
        """:meth:`drain`, then stop the renderer's worker thread (teardown)."""
        if self.renderer is not None:
            self.renderer.close()

    def critical_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """The critical sharpness of one optimizer step to the loggers (see ``callback/critical.py``)."""
        if self.sinks is not None:
            prefix = tag_prefix(self.name, "periodic")
            finite = {f"{prefix}{k}": v for k, v in scalars.items() if v == v and abs(v) != float("inf")}
            if finite:
                self.sinks.scalars(finite, step)

    def critical_line(self, line: LineRecord, history: Sequence[Any], step: int) -> None:
        """The loss along the last measured update (a record, a line figure) and ``lambda_c`` over training
        (``{prefix}critical_line``, ``{prefix}critical``)."""
        name = line.meta["name"]
        line.meta[RUN_ID_KEY] = self.run_id  # a resumed fit finds its folder by it
        if self.save_records and self.write:
            try:
                save_record(line, self.record_dir, name)
                self.written.append(name)
            except OSError as err:
                self.warnings.warn("record", f"LossLandscapeCallback: could not write record {name} ({err})")
        if self.sinks is not None and self.log_figures:
            from lightning_landscape.plots.landscape import line_figure
            from lightning_landscape.plots.metrics import critical_figure

            prefix = tag_prefix(self.name, "periodic")
            xlabel = "step eta along the update (per unit learning rate)"
            title = (
                f"loss along the update of step {line.meta.get('measured_step')}: "
                f"eta_c = {line.meta.get('eta_c', float('nan')):.3g}, "
                f"lambda_c = {line.meta.get('lambda_c', float('nan')):.3g}"
            )
            self._figure(f"{prefix}critical_line", step, line_figure, [line], xlabel=xlabel, title=title)
            self._figure(f"{prefix}critical", step, critical_figure, tuple(history))
