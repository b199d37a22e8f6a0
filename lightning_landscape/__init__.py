"""lightning-landscape: loss-landscape geometry for PyTorch Lightning.

Add :class:`LossLandscapeCallback` to a ``Trainer``; use :mod:`lightning_landscape.functional`
from a notebook; read saved results back with :func:`load_records`.

The callback and SAM (which import torch and Lightning) load on first use, so that reading records
and the ``lightning-landscape`` command start without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_landscape.records import (
    LineRecord,
    MetricsRecord,
    RecordError,
    SurfaceRecord,
    load_record,
    load_records,
)

if TYPE_CHECKING:
    from lightning_landscape.callback import LossLandscapeCallback
    from lightning_landscape.optim import SAM

__version__ = "0.1.0"

_LAZY = {"LossLandscapeCallback": "lightning_landscape.callback", "SAM": "lightning_landscape.optim"}

__all__ = [
    "SAM",
    "LineRecord",
    "LossLandscapeCallback",
    "MetricsRecord",
    "RecordError",
    "SurfaceRecord",
    "__version__",
    "load_record",
    "load_records",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_landscape' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
