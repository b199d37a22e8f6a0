"""Which run wrote a record: run ids, each run's own record folder, the refusal of records that mix runs.

Every record the callback writes carries ``meta["run_id"]`` (:func:`new_run_id`: the start time and a random
tail, ``20261207-113322-3f9a1c``); a fit resumed from a checkpoint keeps its run's id. Records written
before run ids existed (0.1) have none: a folder of them is one *legacy* run.

A run's records go to ``<log_dir>/landscape[/NAME]/``; when that folder already holds another run's records
(a second ``fit`` into the same logger version, or into the same working directory with ``logger=False``),
they go to the first of ``<log_dir>/landscape-2[/NAME]/``, ``landscape-3``, ... that holds none
(:func:`record_folder`). A run never writes into another run's folder, and :func:`check_one_run` refuses a
set of records that mixes runs, naming them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LEGACY",
    "RUN_ID_KEY",
    "check_one_run",
    "describe_runs",
    "folder_run_ids",
    "is_landscape_folder",
    "new_run_id",
    "own_record_folder",
    "record_folder",
    "record_folders",
]

RUN_ID_KEY = "run_id"
#: How a run without a run id (written by 0.1) is named in messages.
LEGACY = "(no run id: written by lightning-landscape 0.1)"
_NUMBERED = re.compile(r"landscape-([0-9]+)")


def new_run_id() -> str:
    """A new run's id: its start time (local, to the second) and six random hex digits.

    Example::

        >>> import re
        >>> bool(re.fullmatch(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}", new_run_id()))
        True
    """
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def is_landscape_folder(name: str) -> bool:
    """Whether a folder named ``name`` is a log directory's record folder: ``landscape`` or ``landscape-N``.

    Example::

        >>> [is_landscape_folder(n) for n in ("landscape", "landscape-2", "landscapes", "figures")]
        [True, True, False, False]
    """
    return name == "landscape" or _NUMBERED.fullmatch(name) is not None


def _folder(log_dir: Path, name: str | None, number: int) -> Path:
    base = log_dir / ("landscape" if number == 1 else f"landscape-{number}")
    return base / name if name else base


def record_folders(log_dir: str | os.PathLike, name: str | None = None) -> list[Path]:
    """The record folders of ``log_dir`` (for the callback ``name``) that exist: ``landscape[/NAME]``, then
    ``landscape-N[/NAME]`` by ``N``."""
    log_dir = Path(log_dir)
    numbers = {1} | {
        int(m.group(1))
        for p in log_dir.glob("landscape-*")
        if (m := _NUMBERED.fullmatch(p.name)) and p.is_dir()
    }
    return [f for n in sorted(numbers) if (f := _folder(log_dir, name, n)).is_dir()]


def _sidecar_meta(path: Path) -> Mapping[str, Any] | None:
    """A record sidecar's (or a weights manifest's) ``meta``; None for other JSON files."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "format_version" not in data:
        return None
    meta = data.get("meta")
    return meta if isinstance(meta, dict) else {}


def folder_run_ids(folder: str | os.PathLike) -> dict[str | None, int]:
    """The runs whose records lie directly in ``folder`` (and whose weights lie in ``folder/weights``), with
    how many files each: ``{run id (None: a legacy run): count}``; empty for a folder without any."""
    folder = Path(folder)
    found: dict[str | None, int] = {}
    files = [*sorted(folder.glob("*.json")), folder / "weights" / "manifest.json"]
    for path in files:
        meta = _sidecar_meta(path) if path.is_file() else None
        if meta is not None:
            run_id = meta.get(RUN_ID_KEY)
            key = run_id if isinstance(run_id, str) and run_id else None
            found[key] = found.get(key, 0) + 1
    return found


def record_folder(log_dir: str | os.PathLike, name: str | None, run_id: str) -> Path:
    """Where the run ``run_id`` writes its records: ``<log_dir>/landscape[/NAME]`` unless another run's
    records are there, else the first ``landscape-N[/NAME]`` (N = 2, 3, ...) free of other runs' records.

    Example::

        >>> import tempfile
        >>> from lightning_landscape.records.record import LineRecord, save_record
        >>> import numpy as np
        >>> log = Path(tempfile.mkdtemp())
        >>> _ = save_record(LineRecord(np.arange(3.0), np.ones(3), {"run_id": "a"}), log / "landscape", "l")
        >>> record_folder(log, None, "a").name, record_folder(log, None, "b").name
        ('landscape', 'landscape-2')
    """
    log_dir, number = Path(log_dir), 1
    while True:
        folder = _folder(log_dir, name, number)
        if set(folder_run_ids(folder)) <= {run_id}:
            return folder
        number += 1


def own_record_folder(log_dir: str | os.PathLike, name: str | None, run_id: str) -> Path | None:
    """The folder under ``log_dir`` that already holds the records of ``run_id`` (a resumed run), if any."""
    for folder in record_folders(log_dir, name):
        if run_id in folder_run_ids(folder):
            return folder
    return None


def describe_runs(owners: Mapping[str | None, Iterable[Path]]) -> str:
    """``run ID (N records in FOLDER)`` for each run, joined by ``;``."""
    parts = []
    for run_id, paths in owners.items():
        paths = list(paths)
        folders = sorted({str(p.parent) for p in paths})
        where = ", ".join(folders[:3]) + (" ..." if len(folders) > 3 else "")
        parts.append(f"run {run_id or LEGACY} ({len(paths)} record(s) in {where})")
    return "; ".join(parts)


def check_one_run(
    directory: str | os.PathLike,
    metas: Iterable[tuple[Path, Mapping[str, Any]]],
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` if the records ``(path, meta)`` read from ``directory`` come from more than one run,
    naming each run, its record count and folders."""
    owners: dict[str | None, list[Path]] = {}
    for path, meta in metas:
        run_id = meta.get(RUN_ID_KEY)
        owners.setdefault(run_id if isinstance(run_id, str) else None, []).append(path)
    if len(owners) > 1:
        raise error(
            f"{directory}: mixes the records of {len(owners)} runs: {describe_runs(owners)}. Load one run's "
            "folder (a later run into the same log directory writes to landscape-2/, landscape-3/, ...)"
        )
