"""The one place that knows each logger: where figures and scalars go.

Loggers are recognised by duck typing (what their ``experiment`` can do), so the classes of both
``lightning.pytorch`` and ``pytorch_lightning`` work. A sink that raises warns once and is skipped
from then on; records on disk are written separately and are not affected.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lightning_landscape.plots import figure_to_png

__all__ = ["FileSink", "MetricsSink", "SinkSet", "TensorBoardSink", "build_sinks"]


def _safe_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_")


class FileSink:
    """Figures as PNG files: ``directory/TAG_stepNNNNNNNN.png`` (``/`` in tags becomes ``_``)."""

    name = "files"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{_safe_name(tag)}_step{step:08d}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(figure_to_png(fig))
        tmp.replace(path)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Scalars live in the records on disk; nothing more to do."""


class MetricsSink:
    """Any Lightning logger: scalars through ``log_metrics``; figures as PNG files beside the run."""

    def __init__(self, logger: Any, figure_dir: str | Path) -> None:
        self.logger = logger
        self.name = type(logger).__name__
        self._files = FileSink(figure_dir)

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self._files.figure(tag, fig, step)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step=step)


class TensorBoardSink(MetricsSink):
    """TensorBoard: figures as images (``add_figure``), scalars through ``log_metrics``."""

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self.logger.experiment.add_figure(tag, fig, global_step=step, close=False)


def _is_tensorboard(logger: Any) -> bool:
    experiment = getattr(type(logger), "experiment", None)
    if experiment is None:
        return False
    try:
        exp = logger.experiment
    except Exception:
        return False
    return callable(getattr(exp, "add_figure", None)) and callable(getattr(exp, "add_scalar", None))


class SinkSet:
    """Fans figures and scalars out to several sinks; a sink that raises warns once and is dropped."""

    def __init__(self, sinks: Sequence[Any]) -> None:
        self.sinks = list(sinks)

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as err:
                self.sinks.remove(sink)
                warnings.warn(
                    f"lightning-landscape: logging to {sink.name} failed ({type(err).__name__}: {err}); "
                    "it is skipped from now on. Records on disk are still written.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        self._each("figure", tag, fig, step)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self._each("scalars", metrics, step)


def build_sinks(loggers: Sequence[Any], log_dir: str | Path) -> SinkSet:
    """Sinks for a trainer's loggers; with no logger, figures go to ``log_dir/landscape/figures``."""
    sinks: list[Any] = []
    for logger in loggers:
        if _is_tensorboard(logger):
            sinks.append(TensorBoardSink(logger, log_dir))
        else:
            own_dir = getattr(logger, "log_dir", None) or log_dir
            sinks.append(MetricsSink(logger, Path(own_dir) / "landscape" / "figures"))
    if not sinks:
        sinks.append(FileSink(Path(log_dir) / "landscape" / "figures"))
    return SinkSet(sinks)
