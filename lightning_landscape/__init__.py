"""lightning-landscape: loss-landscape geometry for PyTorch Lightning.

Add :class:`LossLandscapeCallback` to a ``Trainer``; use :mod:`lightning_landscape.functional`
from a notebook; read saved results back with :func:`load_records`.

The callback and SAM (which import torch and Lightning) load on first use, so that reading records
and the ``lightning-landscape`` command start without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_landscape.records.record import (
    LineRecord,
    MetricsRecord,
    RecordError,
    SurfaceRecord,
    load_record,
    load_records,
)

if TYPE_CHECKING:
    from lightning_landscape.callback.callback import LossLandscapeCallback
    from lightning_landscape.optim import SAM
    from lightning_landscape.solutions.compare import compare_solutions
    from lightning_landscape.solutions.weights import RunWeights, load_run_weights, save_run_weights

from lightning_landscape._version import __version__

_LAZY = {
    "LossLandscapeCallback": "lightning_landscape.callback.callback",
    "SAM": "lightning_landscape.optim",
    "RunWeights": "lightning_landscape.solutions.weights",
    "load_run_weights": "lightning_landscape.solutions.weights",
    "save_run_weights": "lightning_landscape.solutions.weights",
    "compare_solutions": "lightning_landscape.solutions.compare",
}

__all__ = [
    "SAM",
    "LineRecord",
    "LossLandscapeCallback",
    "MetricsRecord",
    "RecordError",
    "RunWeights",
    "SurfaceRecord",
    "__version__",
    "compare_solutions",
    "load_record",
    "load_records",
    "load_run_weights",
    "save_run_weights",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_landscape' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
