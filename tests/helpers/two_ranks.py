"""Two gloo processes from a test: launch a helper script, collect the one JSON line of rows it prints.

Each ``tests/helpers/fsdp_*.py`` script spawns two ranks (``mp.spawn``) on a free port, and rank zero
prints every rank's row as one JSON line (:func:`print_rows`): two processes writing to one pipe could
interleave.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_two_ranks(script: str, timeout: float = 540) -> list[dict[str, Any]]:
    """Run ``tests/helpers/<script>`` (two ranks on a free port); its rows, rank 0 then rank 1."""
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / script), port],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    return sorted(rows, key=lambda r: r["rank"])


def print_rows(row: dict[str, Any], world: int) -> None:
    """Every rank's ``row`` gathered, printed by rank zero as one JSON line (call it on every rank)."""
    import torch.distributed as dist

    rows: list[object] = [None] * world
    dist.all_gather_object(rows, row)
    if dist.get_rank() == 0:
        print(json.dumps(rows, default=lambda x: np.asarray(x).tolist()), flush=True)
