"""FigureRenderer: the same output as synchronous rendering, in order, delivered on the caller's thread."""

import threading
import warnings

import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from lightning_landscape.plots.landscape import contour_figure, figure_to_png, figure_to_rgb, line_figure
from lightning_landscape.plots.render import FigureRenderer, RenderedFigure, render_figure
from lightning_landscape.records.record import LineRecord, SurfaceRecord
from lightning_landscape.sinks import FileSink, SinkSet, TensorBoardSink


class Recorder:
    """A sink that keeps what it is given, and on which thread."""

    name = "recorder"

    def __init__(self, figure_format: str = "png") -> None:
        self.figure_format = figure_format
        self.calls: list[tuple[str, int, bytes]] = []
        self.threads: set[str] = set()

    @property
    def figure_formats(self) -> set[str]:  # used directly as the renderer's sink, too
        return {self.figure_format}

    def _keep(self, tag: str, data: bytes, step: int) -> None:
        self.calls.append((tag, step, data))
        self.threads.add(threading.current_thread().name)

    def figure(self, tag: str, fig: Figure, step: int) -> None:  # the synchronous path
        data = figure_to_png(fig) if self.figure_format == "png" else figure_to_rgb(fig).tobytes()
        self._keep(tag, data, step)

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None:
        data = rendered.png if self.figure_format == "png" else rendered.rgb.tobytes()
        self._keep(tag, data, step)


def _records(step: int) -> tuple[SurfaceRecord, list[LineRecord]]:
    xs = np.linspace(-1.0, 1.0, 7)
    surface = SurfaceRecord(xs, xs, np.add.outer(xs**2, (1 + step) * xs**2) + 0.1, meta={"global_step": step})
    alphas = np.linspace(-0.5, 1.5, 9)
    interp = LineRecord(alphas, (alphas - 1) ** 2 + step, meta={"directions": "interpolation"})
    lines = [LineRecord(xs, xs**2 * (k + 1), meta={"directions": "random"}) for k in range(2)]
    return surface, [interp, *lines]


def _demo_jobs(steps=(2,)):
    """The figures of a few landscapes, as the publisher draws them: (tag, step, builder, args, kwargs)."""
    jobs = []
    for step in steps:
        surface, (interp, *lines) = _records(step)
        jobs.append(("landscape/surface", step, contour_figure, (surface,), {}))
        jobs.append(("landscape/interpolation", step, line_figure, ([interp],), {"xlabel": "alpha"}))
        jobs.append(("landscape/lines", step, line_figure, (lines,), {"xlabel": "distance"}))
    return jobs


def _tensorboard_images(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    return {tag: [(e.step, e.encoded_image_string) for e in acc.Images(tag)] for tag in tags}


def _sinks(root, name):
    tb = TensorBoardLogger(root, name=name)
    return tb, SinkSet([TensorBoardSink(tb, root), FileSink(root / name / "files"), Recorder("rgb")])


def test_same_output_and_order_as_synchronous_rendering(tmp_path):
    jobs = _demo_jobs()
    tb_sync, sync = _sinks(tmp_path, "sync")
    for tag, step, build, args, kwargs in jobs:
        for sink in sync.sinks:  # each sink draws a new figure, as if it were the only one
            sink.figure(tag, build(*args, **kwargs), step)
    tb_async, deferred = _sinks(tmp_path, "async")
    assert deferred.figure_formats == {"png", "rgb"}
    renderer = FigureRenderer()
    for tag, step, build, args, kwargs in jobs:
        renderer.submit(deferred, tag, step, build, *args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        renderer.drain()
    renderer.close()
    assert renderer.pending == 0
    for tb in (tb_sync, tb_async):
        tb.experiment.flush()
    # TensorBoard: add_figure (synchronous) and add_image of the worker's pixels give the same images.
    tb_images = _tensorboard_images(tb_sync.log_dir)
    assert tb_images and tb_images == _tensorboard_images(tb_async.log_dir)
    assert sorted(tb_images) == ["landscape/interpolation", "landscape/lines", "landscape/surface"]
    # Files: the same names and the same PNG bytes.
    files = {p.name: p.read_bytes() for p in (tmp_path / "sync" / "files").iterdir()}
    assert len(files) == len(jobs)
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "async" / "files").iterdir()}
    # Order and thread: every call in submission order, all on this (the training) thread.
    sync_rec, async_rec = sync.sinks[2], deferred.sinks[2]
    assert [(t, s) for t, s, _ in async_rec.calls] == [(t, s) for t, s, *_ in jobs]
    assert async_rec.calls == sync_rec.calls
    assert async_rec.threads == {threading.current_thread().name}


def test_submit_returns_before_the_figure_is_built_and_order_is_kept():
    release = threading.Event()
    built: list[str] = []

    def slow(name):
        release.wait()
        built.append(name)
        return Figure(figsize=(1, 1))

    def quick(name):
        built.append(name)
        return Figure(figsize=(1, 1))

    sink = Recorder()
    renderer = FigureRenderer()
    renderer.submit(sink, "first", 0, slow, "first")
    renderer.submit(sink, "second", 1, quick, "second")
    assert built == [] and renderer.deliver_ready() == 0  # the worker waits on the first builder
    assert renderer.pending == 2 and sink.calls == []
    release.set()
    renderer.drain()
    assert built == ["first", "second"]
    assert [tag for tag, *_ in sink.calls] == ["first", "second"]
    renderer.close()


def test_a_failing_builder_warns_once_at_drain_and_the_rest_is_written():
    def broken(record):
        raise KeyError("no such axis")

    class BrokenSink(Recorder):
        def image(self, tag, rendered, step):
            if step == 1:
                raise OSError("disk full")
            super().image(tag, rendered, step)

    sink = BrokenSink()
    for synchronous in (False, True):
        sink.calls.clear()
        renderer = FigureRenderer(synchronous=synchronous)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            renderer.submit(sink, "a", 0, Figure)
            renderer.submit(sink, "bad", 0, broken, None)  # never raises into the caller
            renderer.submit(sink, "b", 1, Figure)  # delivery fails
            renderer.submit(sink, "c", 2, Figure)
            assert caught == []  # nothing is reported before drain
            renderer.drain()
            renderer.drain()  # reported once
        assert [(t, s) for t, s, _ in sink.calls] == [("a", 0), ("c", 2)]
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "2 figure(s)" in messages[0] and "no such axis" in messages[0]
        renderer.close()


def test_failures_go_to_the_given_warn():
    messages: list[str] = []
    renderer = FigureRenderer(synchronous=True, warn=messages.append)
    renderer.submit(Recorder(), "bad", 4, lambda: 1 / 0)
    renderer.drain()
    assert len(messages) == 1 and "'bad' at step 4: ZeroDivisionError" in messages[0]


def test_synchronous_mode_delivers_inside_submit():
    sink = Recorder()
    renderer = FigureRenderer(synchronous=True)
    surface, _ = _records(3)
    renderer.submit(sink, "landscape/surface", 3, contour_figure, surface)
    assert [(t, s) for t, s, _ in sink.calls] == [("landscape/surface", 3)]
    assert sink.calls[0][2] == figure_to_png(contour_figure(surface))
    assert renderer._thread is None and renderer.pending == 0


def test_max_pending_bounds_the_queue():
    sink = Recorder()
    renderer = FigureRenderer(max_pending=1)
    for step in range(4):
        renderer.submit(sink, "t", step, Figure)
        assert renderer.pending <= 1
    renderer.close()
    assert [s for _, s, _ in sink.calls] == [0, 1, 2, 3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="`max_pending`"):
        FigureRenderer(max_pending=0)
    with pytest.raises(ValueError, match="figure formats"):
        render_figure(Figure, {"jpeg"})


class _FakeWandb:
    def __init__(self) -> None:
        self.images: list[tuple[str, int, bytes]] = []

    def log_image(self, key, images, step):
        self.images.append((key, step, images[0].tobytes()))


class _FakeMlflow:
    run_id = "run"

    def __init__(self) -> None:
        self.images: list[tuple[str, str, bytes]] = []
        self.experiment = self

    def log_artifact(self, run_id, path, artifact_path):
        with open(path, "rb") as fh:
            self.images.append((artifact_path, path.rsplit("/", 1)[-1], fh.read()))


@pytest.mark.parametrize("kind", ["wandb", "mlflow"])
def test_image_writes_what_figure_writes(tmp_path, kind):
    from lightning_landscape.sinks import MLFlowSink, WandbSink

    logger = _FakeWandb() if kind == "wandb" else _FakeMlflow()
    sink = (WandbSink if kind == "wandb" else MLFlowSink)(logger, tmp_path)
    _, lines = _records(1)
    sink.figure("landscape/lines", line_figure(lines), 1)
    sink.image("landscape/lines", render_figure(lambda: line_figure(lines), {sink.figure_format}), 1)
    assert len(logger.images) == 2 and logger.images[0] == logger.images[1]


def test_one_worker_thread_serves_every_renderer_and_outlives_them():
    # matplotlib loads its fonts once per thread: a renderer per fit must not start a new thread.
    seen: list[int] = []

    def where():
        seen.append(threading.get_ident())
        return Figure(figsize=(1, 1))

    first = FigureRenderer()
    first.submit(Recorder(), "a", 0, where)
    first.close()
    second = FigureRenderer()  # the next fit's
    second.submit(Recorder(), "b", 0, where)
    second.submit(Recorder(), "c", 1, where)
    second.drain()
    assert len(seen) == 3 and len(set(seen)) == 1 and seen[0] != threading.get_ident()
    worker = next(t for t in threading.enumerate() if t.ident == seen[0])
    assert worker.daemon and worker.is_alive()  # idle, kept for the next renderer
    second.close()
    assert worker.is_alive() and second.pending == 0
