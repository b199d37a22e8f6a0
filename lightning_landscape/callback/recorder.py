"""A bounded record of the weights along training: the data behind trajectory PCA.

The snapshots live in one preallocated ``(capacity, P)`` buffer: in memory, or in a memory-mapped file
(``path=``) for models whose snapshots do not fit a memory budget. A snapshot is copied into its row
parameter by parameter (no temporary flat copy), and thinning moves rows in place, so the recorder never
holds more than ``capacity`` snapshots' worth of memory.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_landscape.functional import checks as check

__all__ = ["TrajectoryRecorder", "recorder_for"]

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _keep(events: Sequence[int], stride: int) -> list[int]:
    return [i for i, e in enumerate(events) if e % stride == 0]


class TrajectoryRecorder:
    """Keeps at most ``max_snapshots`` flat CPU copies of the weights, covering the whole run.

    Snapshots are offered at regular *events* (every n steps or epochs), numbered 0, 1, 2, ...
    Event ``e`` is kept when ``e`` is a multiple of the current ``stride``. When the buffer is full,
    the stride doubles (as often as needed) and the snapshots off the new stride are dropped, so the
    kept snapshots are always evenly spaced from the first (initial weights, always kept) to the
    latest, and memory stays bounded for any run length.

    Args:
        max_snapshots: most snapshots kept (>= 2).
        dtype: storage dtype: float32 (default), float64, or bfloat16/float16 to halve the memory.
        budget_bytes: most bytes of snapshot storage in memory; the capacity becomes
            ``min(max_snapshots, budget_bytes // (P * itemsize))`` once the parameter count ``P`` is
            known (a ValueError if that is below 2). Not applied to a memory-mapped ``path``.
        path: keep the snapshots in this memory-mapped file (created or overwritten) instead of memory;
            pages are handed back to the page cache after each write, so resident memory stays low.

    Example::

        >>> rec = TrajectoryRecorder(max_snapshots=4)
        >>> w = [torch.zeros(2)]
        >>> for event in range(10):
        ...     _ = rec.offer(event, w, step=10 * event)
        >>> rec.steps, rec.stride
        ([0, 40, 80], 4)
    """

    def __init__(
        self,
        max_snapshots: int = 64,
        dtype: torch.dtype = torch.float32,
        budget_bytes: int | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        check.positive_int("max_snapshots", max_snapshots, minimum=2)
        check.choice("dtype", dtype, _FLOAT_DTYPES)
        check.positive_int("budget_bytes", budget_bytes, allow_none=True)
        self.max_snapshots = max_snapshots
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self.path = Path(path) if path is not None else None
        self.stride = 1
        self.steps: list[int] = []
        self.events: list[int] = []
        self.capacity: int | None = None
        self._buffer: Tensor | None = None
        self._mmap: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self.events)

    # ------------------------------------------------------------------ storage

    def capacity_for(self, num_params: int) -> int:
        """How many snapshots of ``num_params`` parameters this recorder keeps."""
        capacity = self.max_snapshots
        if self.budget_bytes is not None and self.path is None:
            per = num_params * self.dtype.itemsize
            capacity = min(capacity, self.budget_bytes // per)
            if capacity < 2:
                raise ValueError(
                    f"`budget_bytes`={self.budget_bytes} holds {capacity} snapshot(s) of {num_params} "
                    f"{self.dtype} parameters ({per} bytes each); at least 2 are needed. Raise the budget, "
                    "store snapshots at lower precision, or keep them in a memory-mapped file."
                )
        return capacity

    def _allocate(self, num_params: int) -> Tensor:
        if self._buffer is not None:
            if self._buffer.shape[1] != num_params:
                raise ValueError(
                    f"snapshot of {num_params} parameters offered to a recorder of {self._buffer.shape[1]}"
                )
            return self._buffer
        capacity = self.capacity_for(num_params)
        nbytes = capacity * num_params * self.dtype.itemsize
        if self.path is None:
            # torch.empty touches no page: resident memory grows only as rows are written.
            self._buffer = torch.empty(capacity, num_params, dtype=self.dtype)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "w+b") as fh:
                    fh.truncate(nbytes)
                    self._mmap = mmap.mmap(fh.fileno(), nbytes)
            except OSError as err:
                raise OSError(
                    f"could not create the snapshot file {self.path} ({nbytes} bytes): "
                    f"{err.strerror or err}. Give the trainer a writable log directory, or pass "
                    "snapshot_storage='memory'."
                ) from err
            self._buffer = torch.frombuffer(self._mmap, dtype=self.dtype).view(capacity, num_params)
        self.capacity = capacity
        return self._buffer

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callback: a mapped file does not pickle (its snapshots stay in the file,
        # mapped again on the other side); an in-memory buffer goes as it is.
        if self._mmap is None:
            return dict(self.__dict__)
        self._mmap.flush()
        return {**self.__dict__, "_buffer": None, "_mmap": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._buffer is None and self.path is not None and self.capacity is not None:
            try:
                with open(self.path, "r+b") as fh:
                    self._mmap = mmap.mmap(fh.fileno(), 0)
            except (OSError, ValueError):  # the file is gone (or empty): its snapshots with it
                self.capacity, self.steps, self.events = None, [], []
                return
            self._buffer = torch.frombuffer(self._mmap, dtype=self.dtype).view(self.capacity, -1)

    def release(self) -> None:
        """Hand a memory-mapped buffer's pages back to the page cache (their data stays in the file)."""
        if self._mmap is not None and hasattr(self._mmap, "madvise"):
            self._mmap.flush()
            self._mmap.madvise(mmap.MADV_DONTNEED)

    @property
    def nbytes(self) -> int:
        """Bytes of snapshot storage allocated (in memory or in the mapped file)."""
        return 0 if self._buffer is None else self._buffer.numel() * self._buffer.element_size()

    @property
    def snapshots(self) -> list[Tensor]:
        """The kept snapshots, oldest first, as flat views into the buffer (copy one to keep it)."""
        return [] if self._buffer is None else list(self._buffer[: len(self)].unbind(0))

    def stacked(self) -> Tensor:
        """The snapshots as one ``(n, P)`` view into the buffer (no copy; thinning overwrites it)."""
        if self._buffer is None:
            raise ValueError("no snapshots recorded yet")
        return self._buffer[: len(self)]

    # ------------------------------------------------------------------ schedule

    def wants(self, event: int) -> bool:
        """Whether event number ``event`` would be kept (so the caller can skip copying otherwise)."""
        return event % self.stride == 0 and (not self.events or event > self.events[-1])

    def offer(self, event: int, params: Sequence[Tensor], step: int) -> bool:
        """Record ``params`` (copied into a flat CPU row) if ``event`` is due; return whether it was."""
        if not self.wants(event):
            return False
        buffer = self._allocate(sum(p.numel() for p in params))
        assert self.capacity is not None
        if len(self) == self.capacity:
            self._thin(self.capacity - 1)  # make room first, so memory never exceeds the capacity
            if not self.wants(event):
                return False
        row = buffer[len(self)]
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                row[offset : offset + n].copy_(p.detach().reshape(-1))
                offset += n
        self.steps.append(int(step))
        self.events.append(int(event))
        self.release()
        return True

    def _thin(self, room: int) -> None:
        """Double the stride until at most ``room`` snapshots are left; move the kept rows up in place."""
        keep = list(range(len(self)))
        while len(keep) > room:
            self.stride *= 2
            keep = _keep(self.events, self.stride)
        if self._buffer is not None:
            for j, i in enumerate(keep):
                if i != j:
                    self._buffer[j].copy_(self._buffer[i])
                    self.release()  # a mapped buffer: keep at most two rows resident while moving
        self.steps = [self.steps[i] for i in keep]
        self.events = [self.events[i] for i in keep]

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only, so checkpoints load with ``weights_only=True``.

        The snapshots are saved in their storage dtype. With a full buffer the buffer itself is saved
        (no copy in memory); otherwise a copy of the kept rows.
        """
        if self._buffer is None or not self.events:
            snaps = torch.empty(0)
        elif len(self) == self._buffer.shape[0]:
            snaps = self._buffer
        else:
            snaps = self._buffer[: len(self)].clone()
        return {
            "max_snapshots": self.max_snapshots,
            "stride": self.stride,
            "steps": list(self.steps),
            "events": list(self.events),
            "dtype": str(self.dtype).removeprefix("torch."),
            "snapshots": snaps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stride = int(state["stride"])
        self.steps = [int(s) for s in state["steps"]]
        self.events = [int(e) for e in state["events"]]
        snaps: Tensor = state["snapshots"]
        if not snaps.numel():
            self.steps, self.events = [], []
            return
        buffer = self._allocate(int(snaps.shape[1]))
        assert self.capacity is not None
        rows = list(range(len(self.events)))
        if len(rows) > self.capacity:  # a smaller budget than the checkpoint's: thin on the way in
            while len(rows) > self.capacity:
                self.stride *= 2
                rows = _keep(self.events, self.stride)
            self.steps = [self.steps[i] for i in rows]
            self.events = [self.events[i] for i in rows]
        for j, i in enumerate(rows):
            buffer[j].copy_(snaps[i])
        self.release()


def recorder_for(
    num_params: int,
    max_snapshots: int,
    dtype: torch.dtype,
    budget_bytes: int | None,
    storage: str,
    directory: str | os.PathLike,
    rank: int = 0,
    write: bool = True,
) -> tuple[TrajectoryRecorder, str | None]:
    """A recorder for ``num_params`` parameters, and a note when it is not what was asked.

    In memory, or in ``directory/snapshots[-rankN].bin`` with ``storage="memmap"``, with ``"auto"`` when
    ``budget_bytes`` holds fewer than two snapshots, and with ``"memory"`` in that case too (the note
    says so). Without ``write`` (``fast_dev_run``: nothing on disk) always in memory, and where the budget
    holds fewer than two snapshots, two (the note says so).

    Example::

        >>> recorder, note = recorder_for(10, 64, torch.float32, None, "memmap", "unused", write=False)
        >>> recorder.path is None, note
        (True, None)
    """
    fits = budget_bytes is None or budget_bytes // (num_params * dtype.itemsize) >= 2
    note = None
    if not write:
        if fits:
            return TrajectoryRecorder(max_snapshots, dtype=dtype, budget_bytes=budget_bytes), None
        note = (
            f"`snapshot_budget_bytes`={budget_bytes} holds fewer than 2 snapshots of {num_params} {dtype} "
            "parameters in memory, and `fast_dev_run` writes no file: keeping 2 in memory."
        )
        return TrajectoryRecorder(2, dtype=dtype), note
    if storage == "memory" and not fits:
        note = (
            f"`snapshot_budget_bytes`={budget_bytes} holds fewer than 2 snapshots of {num_params} {dtype} "
            "parameters in memory; keeping them in a memory-mapped file instead."
        )
    path = None
    if storage == "memmap" or not fits:
        path = Path(directory) / (f"snapshots-rank{rank}.bin" if rank else "snapshots.bin")
    return TrajectoryRecorder(max_snapshots, dtype=dtype, budget_bytes=budget_bytes, path=path), note
