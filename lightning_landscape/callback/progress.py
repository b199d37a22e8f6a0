"""Progress of one landscape on rank zero: points done and time left, once it takes more than a moment.

:class:`LandscapeProgress` counts the points of a landscape's evaluations (each one reports through
the ``progress(done, total)`` hook of the functional core) and, after ``DELAY`` seconds, shows
``landscape 120/441, ~8 s left`` in Lightning's training progress bar (TQDM or Rich: appended to the
bar's description, restored afterwards; another bar gets a printed line every few seconds). At the
end it says how long the landscape took, if it was shown. Nothing is shown when the trainer has no
progress bar (``enable_progress_bar=False``) or it is disabled, or on other ranks. Display failures
are swallowed: progress must never stop a landscape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["DELAY", "LandscapeProgress"]

DELAY = 2.0  # seconds before progress is shown (a quick landscape stays silent)
_PRINT_EVERY = 10.0  # seconds between printed lines for a progress bar we cannot write into


class _BarText:
    """Write a short text into the trainer's training progress bar, and restore it."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.restore: Callable[[], None] | None = None
        self._original = ""
        self._last_print = -1e9

    def show(self, text: str, now: float) -> None:
        bar = self.bar
        tqdm_bar = getattr(bar, "_train_progress_bar", None)
        if tqdm_bar is not None and hasattr(tqdm_bar, "set_description_str"):  # TQDMProgressBar
            if self.restore is None:
                self._original = original = str(tqdm_bar.desc)
                self.restore = lambda: tqdm_bar.set_description_str(original)
            tqdm_bar.set_description_str(f"{self._original}[{text}] ")
            return
        progress, task = getattr(bar, "progress", None), getattr(bar, "train_progress_bar_id", None)
        if progress is not None and task is not None:  # RichProgressBar
            if self.restore is None:
                original = progress.tasks[task].description

                def restore() -> None:
                    progress.update(task, description=original)
                    bar.refresh()

                self.restore = restore
                self._original = original
            progress.update(task, description=f"{self._original} [{text}]")
            bar.refresh()
            return
        if now - self._last_print >= _PRINT_EVERY:  # another progress bar: a line now and then
            self._last_print = now
            bar.print(f"LossLandscapeCallback: {text}")

    def print(self, text: str) -> None:
        self.bar.print(text)


class LandscapeProgress:
    """Counts a landscape's points; shows progress after ``delay`` seconds through ``bar`` (if any).

    Args:
        total: points the landscape plans to evaluate (all evaluations together, this process's share).
        label: what is being computed, for the final line (``"final landscape at step 120"``).
        bar: the trainer's progress bar callback, or ``None`` for no display (counting and timing only).
        delay: seconds before anything is shown (default ``DELAY``).
        clock: the time source (tests pass a fake one).

    Example::

        >>> ticks = iter(range(100))
        >>> p = LandscapeProgress(10, "a landscape", bar=None, clock=lambda: float(next(ticks)))
        >>> report = p.part(10)
        >>> for done in (5, 10):
        ...     report(done, 10)
        >>> p.done, p.remaining_seconds() is not None
        (10, True)
    """

    def __init__(
        self,
        total: int,
        label: str,
        bar: Any = None,
        delay: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.delay = DELAY if delay is None else delay
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.shown = False
        self._writer = _BarText(bar) if bar is not None else None

    @classmethod
    def for_trainer(
        cls, trainer: Any, total: int, label: str, clock: Callable[[], float] = time.monotonic
    ) -> LandscapeProgress:
        """Progress shown in ``trainer``'s progress bar on rank zero; silent without one."""
        bar = getattr(trainer, "progress_bar_callback", None)
        if bar is None or not getattr(trainer, "is_global_zero", True) or getattr(bar, "is_disabled", False):
            bar = None
        return cls(total, label, bar, clock=clock)

    def part(self, points: int) -> Callable[[int, int], None]:
        """The ``progress(done, total)`` hook for one evaluation of ``points`` points."""
        base = self.done

        def report(done: int, total: int) -> None:
            self.done = min(base + round(points * done / max(total, 1)), self.total)
            self._show()

        return report

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining_seconds(self) -> float | None:
        """Seconds left at the rate so far (``None`` before the first point)."""
        if self.done <= 0:
            return None
        return self.elapsed() * (self.total - self.done) / self.done

    def _show(self) -> None:
        if self._writer is None:
            return
        now = self.clock()
        if now - self.start < self.delay:
            return
        left = self.remaining_seconds()
        eta = f", ~{left:.0f} s left" if left is not None else ""
        try:
            self._writer.show(f"landscape {self.done}/{self.total}{eta}", now)
            self.shown = True
        except Exception:  # a display problem never stops the landscape
            self._writer = None

    def close(self) -> float:
        """Restore the bar; if progress was shown, say how long it took. Returns the seconds taken."""
        seconds = self.elapsed()
        writer = self._writer
        if writer is not None and self.shown:
            try:
                if writer.restore is not None:
                    writer.restore()
                writer.print(f"LossLandscapeCallback: {self.label}: {self.done} points in {seconds:.1f} s")
            except Exception:
                pass
        return seconds
