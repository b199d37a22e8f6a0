"""Figures off the training thread: built and rendered by one background worker, delivered in order.

Drawing a landscape figure costs 0.1-0.15 s of matplotlib (building the artists, laying them out,
rasterising with Agg, encoding PNG), four figures per landscape. :class:`FigureRenderer` moves all of
that to a single worker thread. The training thread only queues a job (a builder and its arguments,
say ``contour_figure, surface``) and, at its next hook, hands the finished images to the sink.

Why the logger call stays on the training thread: the worker touches nothing but its own
``Figure`` objects (matplotlib's object API with the Agg canvas, no pyplot and its global figure
manager; matplotlib caches fonts per thread), so no logger has to be thread-safe. TensorBoard's
``SummaryWriter`` is, but Lightning creates it lazily, the W&B and MLflow clients make no such
promise, and :class:`~lightning_landscape.sinks.SinkSet` drops a failing sink from a plain list.
The worker therefore returns a :class:`RenderedFigure` (PNG bytes and/or RGB pixels, whatever the
sink says it needs in ``figure_formats``) and the sink's ``image(tag, rendered, step)`` writes it from
the caller's thread, in submission order, in :meth:`FigureRenderer.deliver_ready` (non-blocking: the
jobs finished so far) or :meth:`FigureRenderer.drain` (waits for all; call it at the end of fit, on an
exception and at teardown). The output is what each sink's synchronous ``figure(tag, fig, step)``
makes of a freshly built figure (the same :func:`~lightning_landscape.plots.landscape.figure_to_png` /
:func:`~lightning_landscape.plots.landscape.figure_to_rgb` calls, see :func:`render_figure`), on another
thread.

An exception in a builder, in rendering or in delivery is never raised into training: it is collected,
the job is skipped, and :meth:`FigureRenderer.drain` reports all of them as one warning.

One worker thread serves every renderer of the process and outlives them (a daemon, idle between
jobs): matplotlib keeps its loaded fonts per thread, and a new thread per ``fit`` loaded them again
inside every ``fit`` (about 25 ms of a short run's figures on one CPU core).
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure

from lightning_landscape.plots.base import figure_to_rgb, png_bytes

__all__ = ["FigureRenderer", "ImageSink", "RenderedFigure", "render_figure"]

FORMATS = ("png", "rgb")


@dataclass(frozen=True)
class RenderedFigure:
    """A figure rendered once, in the formats the sinks take: PNG bytes, ``(H, W, 3)`` uint8 pixels."""

    png: bytes | None = None
    rgb: np.ndarray | None = None


def render_figure(build: Callable[[], Figure | np.ndarray], formats: Iterable[str]) -> RenderedFigure:
    """Render the figure ``build()`` makes in ``formats`` ("png", "rgb"): drawn once (Agg at 100 dpi, what
    ``add_figure`` in TensorBoard draws), the PNG encoded from those pixels, so every sink gets the same
    image. A builder may also return the pixels themselves (``(H, W, 3)`` uint8, as the brief figures of
    :mod:`~lightning_landscape.plots.brief` do).

    Example::

        >>> out = render_figure(lambda: Figure(figsize=(2, 1)), {"png", "rgb"})
        >>> out.png[:4], out.rgb.shape
        (b'\\x89PNG', (100, 200, 3))
    """
    formats = _checked_formats(formats)
    if not formats:
        return RenderedFigure()
    built = build()
    rgb = built if isinstance(built, np.ndarray) else figure_to_rgb(built)
    return RenderedFigure(
        png=png_bytes(rgb) if "png" in formats else None, rgb=rgb if "rgb" in formats else None
    )


def _checked_formats(formats: Iterable[str]) -> set[str]:
    formats = set(formats)
    unknown = formats - set(FORMATS)
    if unknown:
        raise ValueError(f"figure formats must be drawn from {FORMATS}, got {sorted(unknown)}")
    return formats


class ImageSink(Protocol):
    """Where rendered figures go: :class:`~lightning_landscape.sinks.SinkSet` is one."""

    @property
    def figure_formats(self) -> set[str]: ...

    def image(self, tag: str, rendered: RenderedFigure, step: int) -> None: ...


class _Job:
    __slots__ = (
        "args", "build", "done", "error", "formats", "kwargs", "rendered", "seconds", "sink", "step", "tag"
    )  # fmt: skip

    def __init__(
        self,
        sink: ImageSink,
        tag: str,
        step: int,
        build: Callable[..., Figure | np.ndarray],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.sink, self.tag, self.step = sink, tag, step
        self.build: Callable[..., Figure | np.ndarray] | None = build
        self.args, self.kwargs = args, kwargs
        self.formats = _checked_formats(sink.figure_formats)  # read on the caller's thread
        self.rendered: RenderedFigure | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0  # how long drawing it took (wall time: the overhead budget counts it)
        self.done = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        try:
            build, args, kwargs = self.build, self.args, self.kwargs
            assert build is not None  # run() runs once, before the references are dropped
            self.rendered = render_figure(lambda: build(*args, **kwargs), self.formats)
        except Exception as err:  # reported at drain, never raised into training
            self.error = err
        finally:
            self.build, self.args, self.kwargs = None, (), {}  # free the records as soon as possible
            self.seconds = time.perf_counter() - start
            self.done.set()


class _SharedWorker:
    """The process's one figure thread: started at the first job, kept (idle) for later renderers."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the thread and its queue (a forked child has neither)."""
        self.queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def put(self, job: _Job) -> threading.Thread:
        """Queue ``job`` for the worker (started if need be); the worker thread."""
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._work, args=(self.queue,), name="lightning-landscape-figures", daemon=True
                )
                self.thread.start()
            thread = self.thread
        self.queue.put(job)
        return thread

    @staticmethod
    def _work(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            jobs.get().run()


_WORKER = _SharedWorker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.reset)


class FigureRenderer:
    """Build and render figures on one background thread; deliver them on the caller's thread, in order.

    Args:
        synchronous: build, render and deliver inside :meth:`submit`, on the caller's thread (tests,
            debugging); errors are still collected and reported by :meth:`drain`.
        max_pending: at most this many submitted jobs wait for delivery; :meth:`submit` waits for the
            oldest beyond that (bounds the memory held by rendered images).
        warn: how :meth:`drain` reports failures (one message); default ``warnings.warn`` with a
            ``RuntimeWarning``.

    Example::

        >>> from lightning_landscape.sinks import FileSink, SinkSet
        >>> import tempfile
        >>> sinks = SinkSet([FileSink(tempfile.mkdtemp())])
        >>> renderer = FigureRenderer()
        >>> renderer.submit(sinks, "landscape/empty", 3, Figure, figsize=(2, 2))
        >>> renderer.drain()  # at the end of fit: wait, deliver in order, warn once about failures
        >>> [p.name for p in sinks.sinks[0].directory.iterdir()]
        ['landscape_empty_step00000003.png']
        >>> renderer.close()
    """

    def __init__(
        self, synchronous: bool = False, max_pending: int = 16, warn: Callable[[str], None] | None = None
    ) -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"`max_pending` must be a positive integer, got {max_pending!r}")
        self.synchronous = synchronous
        self.max_pending = max_pending
        self._warn = warn
        self.errors: list[tuple[str, int, BaseException]] = []  # (tag, step, error) not yet reported
        self._pending: collections.deque[_Job] = collections.deque()  # submission order
        self._thread: threading.Thread | None = None  # the shared worker, once a job went to it
        self._delivered_seconds = 0.0  # building and rendering time of the figures delivered so far

    def submit(
        self,
        sink: ImageSink,
        tag: str,
        step: int,
        build: Callable[..., Figure | np.ndarray],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Queue ``build(*args, **kwargs)`` to be rendered and written to ``sink`` under ``tag`` at ``step``.

        Returns at once (after delivering the jobs already finished). ``args`` are used by the worker
        later: pass records that are not modified afterwards.
        """
        job = _Job(sink, tag, step, build, args, kwargs)
        if self.synchronous:
            job.run()
            self._deliver(job)
            return
        self.deliver_ready()
        while len(self._pending) >= self.max_pending:
            self._pending[0].done.wait()
            self.deliver_ready()
        self._pending.append(job)
        self._thread = _WORKER.put(job)

    def deliver_ready(self) -> int:
        """Deliver the jobs finished so far, in submission order (up to the first unfinished); how many."""
        count = 0
        while self._pending and self._pending[0].done.is_set():
            self._deliver(self._pending.popleft())
            count += 1
        return count

    def drain(self, timeout: float | None = None) -> None:
        """Wait for every submitted job, deliver them in order, and warn once about any that failed.

        With ``timeout`` (seconds per job), jobs still unfinished are left for a later call.
        """
        while self._pending:
            if not self._pending[0].done.wait(timeout):
                break
            self.deliver_ready()
        if self.errors:
            errors, self.errors = self.errors, []
            tag, step, first = errors[0]
            message = (
                f"lightning-landscape: {len(errors)} figure(s) could not be drawn or written; the first, "
                f"{tag!r} at step {step}: {type(first).__name__}: {first}. "
                "Records and scalars are unaffected."
            )
            if self._warn is not None:
                self._warn(message)
            else:
                warnings.warn(message, RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        """:meth:`drain`: every job of this renderer is delivered (the shared worker thread stays, idle)."""
        self.drain()
        self._thread = None

    @property
    def seconds(self) -> float:
        """Seconds spent building and rendering the figures finished so far (delivered or not)."""
        done = sum(job.seconds for job in list(self._pending) if job.done.is_set())
        return self._delivered_seconds + done

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet delivered."""
        return len(self._pending)

    def _deliver(self, job: _Job) -> None:
        self._delivered_seconds += job.seconds
        if job.error is None:
            try:
                assert job.rendered is not None
                job.sink.image(job.tag, job.rendered, job.step)
            except Exception as err:
                job.error = err
        if job.error is not None:
            self.errors.append((job.tag, job.step, job.error))
        job.rendered = None
