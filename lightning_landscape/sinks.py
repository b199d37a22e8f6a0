"""The one place that knows each logger: where figures, scalars, meshes and settings go.

=====================  ==================================================================================
logger                 what it gets
=====================  ==================================================================================
TensorBoard            figures (Images tab), scalars, the final surface as a 3-D mesh (Mesh tab), a
                       custom-scalars layout grouping the ``landscape/`` metrics, a text summary of the
                       settings (Text tab)
CSVLogger              scalars through ``log_metrics`` (``metrics.csv``); figures as PNG files in
                       ``<log_dir>/landscape/figures``
WandbLogger            scalars through ``log_metrics``; figures through ``log_image`` (``wandb.Image``)
MLFlowLogger           scalars through ``log_metrics``; figures as run artifacts under
                       ``landscape/figures``; the settings as ``landscape/settings.md``
any other logger       scalars through ``log_metrics``; figures as PNG files beside the run
no logger              figures as PNG files in ``<log_dir>/landscape/figures``
=====================  ==================================================================================

Loggers are recognised by the names of the classes they are built from, not by importing them, so
the classes of ``lightning.pytorch``, ``pytorch_lightning`` (and subclasses of either) all work, and
neither wandb nor mlflow is needed unless its logger is used. Nothing touches a logger's
``experiment`` (which starts a W&B or MLflow run) before the first thing is written to it.

A sink that raises warns once and is skipped from then on; records on disk are written separately
and are not affected. Only rank zero writes (:func:`build_sinks` with ``rank != 0`` gives an empty set).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from lightning_landscape.plots.base import png_bytes
from lightning_landscape.plots.landscape import figure_to_png, figure_to_rgb
from lightning_landscape.plots.render import RenderedFigure
from lightning_landscape.records.record import SCALAR_GROUPS, SurfaceRecord

__all__ = [
    "CSVSink",
    "FileSink",
    "MLFlowSink",
    "MetricsSink",
    "SinkSet",
    "TensorBoardSink",
    "WandbSink",
    "build_sinks",
    "custom_scalars_layout",
    "settings_markdown",
    "surface_mesh",
    "tensorboard_image",
]


def _safe_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_")


def _png_name(tag: str, step: int) -> str:
    return f"{_safe_name(tag)}_step{step:08d}.png"


def settings_markdown(settings: Mapping[str, Any]) -> str:
    """The settings as a two-column Markdown table (what TensorBoard's Text tab and MLflow show).

    Example::

        >>> print(settings_markdown({"resolution": 11, "directions": "pca"}))
        | setting | value |
        | --- | --- |
        | resolution | 11 |
        | directions | pca |
    """
    rows = [f"| {k} | {str(v).replace('|', '/')} |" for k, v in settings.items()]
    return "\n".join(["| setting | value |", "| --- | --- |", *rows])


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard custom-scalars layout: one chart per group of ``landscape/`` metrics.

    Tags are regular expressions, so metrics added later under the same prefixes are picked up.
    """
    charts = {
        title: [rf"landscape/{p}.*" if p.endswith("/") else rf"landscape/{p}" for p in prefixes]
        for title, prefixes in SCALAR_GROUPS.items()
    }
    return {"landscape": {title: ["Multiline", tags] for title, tags in charts.items()}}


def surface_mesh(record: SurfaceRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A surface record as a triangle mesh: ``(vertices (N, 3) float32, faces (F, 3) int32, colours
    (N, 3) uint8)`` with one vertex per grid point, ``k = i * nx + j`` at ``(xs[j], ys[i], height)``.

    The height is the loss rescaled to the grid's width (``(loss - min) / (max - min) * width``) so
    the mesh is neither a needle nor a flat sheet in a 3-D viewer; the colour (viridis) carries the
    loss on the same linear scale. Cells that touch a non-finite loss get no faces (a hole).

    Example::

        >>> xs = np.linspace(-1, 1, 3)
        >>> v, f, c = surface_mesh(SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2)))
        >>> v.shape, f.shape, c.shape
        ((9, 3), (8, 3), (9, 3))
    """
    xs, ys = np.asarray(record.xs, np.float64), np.asarray(record.ys, np.float64)
    z = np.asarray(record.losses, np.float64)
    finite = np.isfinite(z)
    lo, hi = (float(z[finite].min()), float(z[finite].max())) if finite.any() else (0.0, 1.0)
    unit = (np.where(finite, z, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(z)
    width = float(max(xs.max() - xs.min(), ys.max() - ys.min(), 1e-12))
    gx, gy = np.meshgrid(xs, ys)
    vertices = np.stack([gx, gy, unit * width], axis=-1).reshape(-1, 3).astype(np.float32)
    colours = (np.asarray(colormaps["viridis"](unit.ravel()))[:, :3] * 255).round().astype(np.uint8)
    ny, nx = z.shape
    k = np.arange(ny * nx).reshape(ny, nx)[:-1, :-1].ravel()
    cell_ok = (finite[:-1, :-1] & finite[1:, :-1] & finite[:-1, 1:] & finite[1:, 1:]).ravel()
    k = k[cell_ok]
    lower = np.stack([k, k + 1, k + nx], axis=1)
    upper = np.stack([k + 1, k + nx + 1, k + nx], axis=1)
    faces = np.concatenate([lower, upper]).astype(np.int32)
    return vertices, faces, colours


class FileSink:
    """Figures as PNG files: ``directory/TAG_stepNNNNNNNN.png`` (``/`` in tags becomes ``_``).

    Example::

        >>> import tempfile
        >>> sink = FileSink(tempfile.mkdtemp())
        >>> sink.figure("landscape/surface", Figure(), 3)
        >>> [p.name for p in sink.directory.iterdir()]
        ['landscape_surface_step00000003.png']
    """

    name = "files"
    #: What :meth:`image` takes from a :class:`RenderedFigure` (rendered off the training thread).
    figure_format = "png"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self._write(tag, figure_to_png(fig), step)

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        """A figure already rendered (by :class:`~lightning_landscape.plots.render.FigureRenderer`)."""
        assert rendered.png is not None
        self._write(tag, rendered.png, step)

    def _write(self, tag: str, png: bytes, step: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / _png_name(tag, step)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(png)
        tmp.replace(path)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Scalars live in the records on disk; nothing more to do."""


class MetricsSink:
    """Any Lightning logger: scalars through ``log_metrics``; figures as PNG files beside the run.

    "Beside the run" is ``<logger.log_dir>/landscape/figures`` when the logger has a ``log_dir``,
    else ``<fallback_dir>/landscape/figures``; it is looked up at the first figure, not before.
    ``folder`` replaces ``landscape`` (``landscape-2`` for a second run into the same log directory).
    """

    def __init__(self, logger: Any, fallback_dir: str | Path, folder: str = "landscape") -> None:
        self.logger = logger
        self.name = type(logger).__name__
        self._fallback = Path(fallback_dir)
        self._folder = folder
        self._files: FileSink | None = None

    def _file_sink(self) -> FileSink:
        if self._files is None:
            try:
                own = getattr(self.logger, "log_dir", None)
            except Exception:
                own = None
            base = Path(own) if isinstance(own, (str, Path)) and str(own) else self._fallback
            self._files = FileSink(base / self._folder / "figures")
        return self._files

    figure_format = "png"

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self._file_sink().figure(tag, fig, step)

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        self._file_sink().image(tag, rendered, step)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step=step)


class CSVSink(MetricsSink):
    """CSVLogger: scalars in its ``metrics.csv``; figures as PNG files in ``<log_dir>/landscape/figures``."""


def _torch_writer(writer: Any) -> bool:
    """Whether ``writer`` is PyTorch's ``SummaryWriter`` (it takes an encoded image as a summary)."""
    return type(writer).__module__.startswith("torch.utils.tensorboard") and hasattr(
        writer, "_get_file_writer"
    )


def tensorboard_image(writer: Any, tag: str, rgb: np.ndarray, step: int) -> None:
    """``writer.add_image(tag, rgb, step, dataformats="HWC")`` with the PNG encoded at
    :data:`~lightning_landscape.plots.base.PNG_LEVEL` (:func:`tensorboard_png`); another writer
    (tensorboardX) its own ``add_image``.

    Example::

        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> writer = SummaryWriter(tempfile.mkdtemp())
        >>> tensorboard_image(writer, "landscape/surface", np.zeros((4, 6, 3), np.uint8), step=3)
        >>> writer.close()
    """
    if not _torch_writer(writer):
        writer.add_image(tag, rgb, global_step=step, dataformats="HWC")
        return
    tensorboard_png(writer, tag, png_bytes(rgb), step)


def tensorboard_png(writer: Any, tag: str, png: bytes, step: int) -> None:
    """An RGB PNG (as :func:`~lightning_landscape.plots.base.png_bytes` encodes it) written to PyTorch's
    ``SummaryWriter`` as an image summary, as ``add_image`` writes one, without decoding it: its size is
    read from the PNG's header.

    Example::

        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> writer = SummaryWriter(tempfile.mkdtemp())
        >>> tensorboard_png(writer, "landscape/surface", png_bytes(np.zeros((4, 6, 3), np.uint8)), step=3)
        >>> writer.close()
    """
    from tensorboard.compat.proto.summary_pb2 import Summary  # type: ignore[import-untyped]

    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("`png` must be PNG bytes")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(png[25], 3)  # grey, RGB, grey + alpha, RGBA
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class TensorBoardSink(MetricsSink):
    """TensorBoard: figures (as ``add_figure`` draws them, PNG-encoded faster: :func:`tensorboard_image`),
    scalars, the final surface as a mesh (``add_mesh``), a custom-scalars layout and a text summary of the
    settings (written once, at the first write)."""

    def begin(self, settings: Mapping[str, Any]) -> None:
        writer = self.logger.experiment
        writer.add_custom_scalars(custom_scalars_layout())
        if settings:
            writer.add_text("landscape/settings", settings_markdown(settings), global_step=0)

    @property
    def figure_format(self) -> str:  # type: ignore[override]
        """PNG for PyTorch's ``SummaryWriter`` (encoded on the figure thread), pixels for another writer."""
        try:
            return "png" if _torch_writer(self.logger.experiment) else "rgb"
        except Exception:
            return "rgb"

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        tensorboard_image(self.logger.experiment, tag, figure_to_rgb(fig), step)

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        # The image add_figure makes of the same figure (Agg at the figure's 100 dpi), pixel for pixel.
        writer = self.logger.experiment
        if rendered.png is not None and _torch_writer(writer):
            tensorboard_png(writer, tag, rendered.png, step)
        else:
            assert rendered.rgb is not None
            tensorboard_image(writer, tag, rendered.rgb, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.logger.experiment.add_text(tag, markdown, global_step=step)

    def mesh(self, tag: str, record: SurfaceRecord, step: int) -> None:
        vertices, faces, colours = surface_mesh(record)
        self.logger.experiment.add_mesh(
            tag, vertices=vertices[None], colors=colours[None], faces=faces[None], global_step=step
        )


class WandbSink(MetricsSink):
    """Weights & Biases: scalars through ``log_metrics``, figures through ``log_image`` (wandb images)."""

    figure_format = "rgb"

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self.logger.log_image(key=tag, images=[figure_to_rgb(fig)], step=step)

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        self.logger.log_image(key=tag, images=[rendered.rgb], step=step)


class MLFlowSink(MetricsSink):
    """MLflow: scalars through ``log_metrics``; figures and the settings as artifacts of the run."""

    def _artifact(self, filename: str, data: bytes, folder: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            self.logger.experiment.log_artifact(self.logger.run_id, str(path), artifact_path=folder)

    def begin(self, settings: Mapping[str, Any]) -> None:
        if settings:
            self._artifact("settings.md", settings_markdown(settings).encode(), "landscape")

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self._artifact(_png_name(tag, step), figure_to_png(fig), "landscape/figures")

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        assert rendered.png is not None
        self._artifact(_png_name(tag, step), rendered.png, "landscape/figures")


# Matched against the names of the classes a logger is built from (first match wins).
_SINKS_BY_CLASS: tuple[tuple[str, type[MetricsSink]], ...] = (
    ("TensorBoardLogger", TensorBoardSink),
    ("WandbLogger", WandbSink),
    ("MLFlowLogger", MLFlowSink),
    ("CSVLogger", CSVSink),
)


def sink_for(logger: Any, fallback_dir: str | Path, folder: str = "landscape") -> MetricsSink:
    """The sink for one logger, chosen by the class names in its MRO (any Lightning package); PNG figures
    go to ``<log_dir>/<folder>/figures``."""
    names = {cls.__name__ for cls in type(logger).__mro__}
    for class_name, sink_cls in _SINKS_BY_CLASS:
        if class_name in names:
            return sink_cls(logger, fallback_dir, folder)
    return MetricsSink(logger, fallback_dir, folder)


class SinkSet:
    """Fans figures, scalars and meshes out to several sinks; a sink that raises warns once and is dropped.

    A sink's optional ``begin(settings)`` runs once, just before the first thing is written to it;
    sinks without ``mesh`` (or ``text``, or ``begin``) simply skip that call.

    Example::

        >>> class Broken:
        ...     name = "broken"
        ...     def scalars(self, metrics, step):
        ...         raise OSError("disk full")
        >>> sinks = SinkSet([Broken()])
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     sinks.scalars({"landscape/loss/centre": 1.0}, 0)
        ...     sinks.scalars({"landscape/loss/centre": 1.0}, 1)
        >>> len(w), sinks.sinks
        (1, [])
    """

    def __init__(self, sinks: Sequence[Any], settings: Mapping[str, Any] | None = None) -> None:
        self.sinks = list(sinks)
        self.settings = dict(settings or {})
        self._begun: set[int] = set()

    def _drop(self, sink: Any, err: Exception) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
        warnings.warn(
            f"lightning-landscape: logging to {getattr(sink, 'name', type(sink).__name__)} failed "
            f"({type(err).__name__}: {err}); it is skipped from now on. Records on disk are still written.",
            RuntimeWarning,
            stacklevel=4,
        )

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                if id(sink) not in self._begun:
                    self._begun.add(id(sink))
                    begin = getattr(sink, "begin", None)
                    if begin is not None:
                        begin(self.settings)
                fn(*args)
            except Exception as err:
                self._drop(sink, err)

    def begin(self) -> None:
        """Run each sink's ``begin(settings)`` now, if not yet (the settings show even before results)."""
        for sink in list(self.sinks):
            if id(sink) in self._begun:
                continue
            self._begun.add(id(sink))
            try:
                begin = getattr(sink, "begin", None)
                if begin is not None:
                    begin(self.settings)
            except Exception as err:
                self._drop(sink, err)

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self._each("figure", tag, fig, step)

    @property
    def figure_formats(self) -> set[str]:
        """What the sinks' ``image`` methods take ("png", "rgb"): render only those, once each."""
        return {getattr(sink, "figure_format", "png") for sink in self.sinks}

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        """A figure already rendered in :attr:`figure_formats` (off the training thread), to every sink."""
        self._each("image", tag, rendered, step)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self._each("scalars", metrics, step)

    def mesh(self, tag: str, record: SurfaceRecord, step: int) -> None:
        self._each("mesh", tag, record, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Markdown for loggers with a text panel (TensorBoard's Text tab); the others skip it."""
        self._each("text", tag, markdown, step)


def build_sinks(
    loggers: Sequence[Any],
    log_dir: str | Path,
    settings: Mapping[str, Any] | None = None,
    rank: int = 0,
    folder: str = "landscape",
) -> SinkSet:
    """Sinks for a trainer's loggers; with no logger, figures go to ``log_dir/landscape/figures``
    (``folder`` instead of ``landscape``: the run's own record folder, ``landscape-2`` say).

    Only rank zero writes: any other ``rank`` gets an empty set.
    """
    if rank != 0:
        return SinkSet([], settings)
    sinks: list[Any] = [sink_for(logger, log_dir, folder) for logger in loggers]
    if not sinks:
        sinks.append(FileSink(Path(log_dir) / folder / "figures"))
    return SinkSet(sinks, settings)
