"""lightning-landscape: loss-landscape geometry for PyTorch Lightning.

Add :class:`LossLandscapeCallback` to a ``Trainer``; use :mod:`lightning_landscape.functional`
from a notebook; read saved results back with :func:`load_records`.
"""

from lightning_landscape.callback import LossLandscapeCallback
from lightning_landscape.optim import SAM
from lightning_landscape.records import (
    LineRecord,
    MetricsRecord,
    RecordError,
    SurfaceRecord,
    load_record,
    load_records,
)

__version__ = "0.1.0"

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
