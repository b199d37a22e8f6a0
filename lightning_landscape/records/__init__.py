"""Typed results and their files (``.npz`` + ``.json``, no pickle), runs read back, small-sample statistics.

The bottom of the package: it imports nothing of lightning_landscape outside this folder, and no torch.
:mod:`.record` holds the record classes and their on-disk format (re-exported here, so
``from lightning_landscape.records import load_records`` works as before); :mod:`.reliability` the
reliability record, :mod:`.schema` the array checks, :mod:`.scalars` the scalar schema, :mod:`.runs`
runs and groups of runs read back, :mod:`.stats` Welch intervals.
"""

from lightning_landscape.records.record import (
    DIAGNOSTIC_SUFFIXES,
    FORMAT_VERSION,
    SCALAR_GROUPS,
    ArraySpec,
    LineRecord,
    MetricsRecord,
    Record,
    RecordError,
    ReliabilityRecord,
    SurfaceRecord,
    check_arrays,
    find_records,
    is_diagnostic,
    load_record,
    load_records,
    save_record,
    tag_prefix,
)

__all__ = [
    "DIAGNOSTIC_SUFFIXES",
    "FORMAT_VERSION",
    "SCALAR_GROUPS",
    "ArraySpec",
    "LineRecord",
    "MetricsRecord",
    "Record",
    "RecordError",
    "ReliabilityRecord",
    "SurfaceRecord",
    "check_arrays",
    "find_records",
    "is_diagnostic",
    "load_record",
    "load_records",
    "save_record",
    "tag_prefix",
]
