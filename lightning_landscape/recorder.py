"""A bounded record of the weights along training: the data behind trajectory PCA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_landscape.functional.params import flatten

__all__ = ["TrajectoryRecorder"]


class TrajectoryRecorder:
    """Keeps at most ``max_snapshots`` flat CPU copies of the weights, covering the whole run.

    Snapshots are offered at regular *events* (every n steps or epochs), numbered 0, 1, 2, ...
    Event ``e`` is kept when ``e`` is a multiple of the current ``stride``. When the buffer is full,
    every other snapshot is dropped and the stride doubles, so the kept snapshots are always evenly
    spaced from the first (initial weights, always kept) to the latest, and memory stays bounded for
    any run length.

    Example::

        >>> rec = TrajectoryRecorder(max_snapshots=4)
        >>> w = [torch.zeros(2)]
        >>> for event in range(10):
        ...     _ = rec.offer(event, w, step=10 * event)
        >>> rec.steps, rec.stride
        ([0, 40, 80], 4)
    """

    def __init__(self, max_snapshots: int = 64, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(max_snapshots, int) or max_snapshots < 2:
            raise ValueError(f"`max_snapshots` must be an integer >= 2, got {max_snapshots!r}")
        self.max_snapshots = max_snapshots
        self.dtype = dtype
        self.stride = 1
        self.snapshots: list[Tensor] = []
        self.steps: list[int] = []
        self.events: list[int] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def wants(self, event: int) -> bool:
        """Whether event number ``event`` would be kept (so the caller can skip copying otherwise)."""
        return event % self.stride == 0 and (not self.events or event > self.events[-1])

    def offer(self, event: int, params: Sequence[Tensor], step: int) -> bool:
        """Record ``params`` (copied to a flat CPU tensor) if ``event`` is due; return whether it was."""
        if not self.wants(event):
            return False
        if len(self.snapshots) == self.max_snapshots:
            self._thin()  # make room first, so memory never exceeds max_snapshots copies
            if not self.wants(event):
                return False
        self.snapshots.append(flatten(params, dtype=self.dtype, device="cpu"))
        self.steps.append(int(step))
        self.events.append(int(event))
        return True

    def _thin(self) -> None:
        self.stride *= 2
        keep = [i for i, e in enumerate(self.events) if e % self.stride == 0]
        self.snapshots = [self.snapshots[i] for i in keep]
        self.steps = [self.steps[i] for i in keep]
        self.events = [self.events[i] for i in keep]

    def stacked(self) -> Tensor:
        """The snapshots as one ``(n, P)`` tensor."""
        return torch.stack(self.snapshots)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only, so checkpoints load with ``weights_only=True``."""
        return {
            "max_snapshots": self.max_snapshots,
            "stride": self.stride,
            "steps": list(self.steps),
            "events": list(self.events),
            "snapshots": self.stacked() if self.snapshots else torch.empty(0),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stride = int(state["stride"])
        self.steps = [int(s) for s in state["steps"]]
        self.events = [int(e) for e in state["events"]]
        snaps = state["snapshots"]
        self.snapshots = list(snaps.unbind(0)) if snaps.numel() else []
