"""`compare` with two runs compared as solutions: the shared plane and barrier drawn and tabulated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.cli_runs import make_run, run_main
from torch import nn

from lightning_landscape.records.record import SCALAR_GROUPS, LineRecord
from lightning_landscape.records.runs import load_run
from lightning_landscape.solutions.compare import compare_solutions
from lightning_landscape.solutions.weights import save_run_weights


def _loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return ((m(b[0]) - b[1]) ** 2).mean()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two runs (records + weights) from one initialization, and their compared solutions."""
    logs = tmp_path_factory.mktemp("logs")
    torch.manual_seed(0)
    batch = (torch.randn(16, 2), torch.randn(16, 1))
    model = nn.Linear(2, 1)
    init = [p.detach().clone() for p in model.parameters()]
    for run, optimizer, scale in (("sgd", torch.optim.SGD, 1.0), ("adam", torch.optim.Adam, 2.0)):
        make_run(logs / run, scale)
        m = nn.Linear(2, 1)
        m.load_state_dict(dict(zip(["weight", "bias"], init)))
        opt = optimizer(m.parameters(), lr=0.1)
        for _ in range(10):
            opt.zero_grad()
            _loss(m, batch).backward()
            opt.step()
        save_run_weights(logs / run / "landscape" / "weights", m, init)
    result = compare_solutions(model, _loss, [batch], logs / "sgd", logs / "adam", resolution=5)
    return logs, result


def _row(out: str, key: str) -> float:
    line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == key)
    return float(line.split()[-1])


def test_compare_draws_and_tabulates_the_shared_solutions(compared, capsys):
    logs, result = compared
    assert result.directory == logs / "shared_sgd_vs_adam"
    out = logs / "figs" / "cmp.png"
    rc, stdout, err = run_main(capsys, "compare", str(logs / "sgd"), str(logs / "adam"), "--out", str(out))
    assert rc == 0, err
    for name in ("cmp.png", "cmp_shared_plane.png", "cmp_barrier.png"):
        assert (out.parent / name).stat().st_size > 1000, name
    assert "A = sgd, B = adam" in stdout
    # loss_A is not loss/centre: another probe set, and the table says so (issue 21).
    (probe,) = [ln for ln in stdout.splitlines() if ln.startswith("probe set")]
    assert "compare_solutions' batches (1 batch(es), 16 samples)" in probe and "landscape probe set" in probe
    for key, value in result.summary().items():
        assert math.isclose(_row(stdout, key), value, rel_tol=1e-3, abs_tol=1e-6), key
    rc, _, err = run_main(
        capsys,
        "compare",
        str(logs / "sgd"),
        str(logs / "adam"),
        "--out",
        str(out),
        "--shared",
        str(logs / "x"),
    )
    assert rc == 2 and err.count("\n") == 1 and "--shared" in err


def test_runs_never_compared_draw_nothing_shared(tmp_path, capsys):
    make_run(tmp_path / "a", 1.0)
    make_run(tmp_path / "b", 2.0)
    out = tmp_path / "c.png"
    rc, stdout, _ = run_main(capsys, "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out))
    assert rc == 0 and out.exists() and not (tmp_path / "c_barrier.png").exists()
    assert "shared solutions" not in stdout


def test_shared_folders_are_not_runs(compared, capsys):
    logs, result = compared
    # Given among the runs (a glob like logs/*), the shared folder is skipped with a note (and found
    # again as --shared says).
    out = logs / "g.png"
    argv = ["compare", str(logs / "sgd"), str(logs / "adam"), str(result.directory), "--out", str(out)]
    rc, stdout, err = run_main(capsys, *argv, "--shared", str(result.directory))
    assert rc == 0 and "skipping" in err and "shared_sgd_vs_adam" in err
    assert math.isclose(_row(stdout, "barrier"), result.summary()["barrier"], rel_tol=1e-3, abs_tol=1e-6)
    # ... and a folder holding one run and the shared records below it is still one run.
    inner = logs / "sgd" / "shared_x"
    inner.mkdir()
    for f in result.directory.iterdir():
        (inner / f.name).write_bytes(f.read_bytes())
    assert {r.meta.get("stage") for r in load_run(logs / "sgd").records} == {"periodic", "final"}


def test_barrier_lines_have_scalars_in_a_group():
    meta = {"directions": "barrier", "barrier": 0.25, "distance": 3.0, "name": "barrier"}
    line = LineRecord(np.linspace(0, 1, 3), np.array([0.0, 0.5, 0.5]), meta)
    assert line.scalars() == {"barrier/height": 0.25, "barrier/distance": 3.0}
    naive = LineRecord(line.alphas, line.losses, {**meta, "name": "barrier_naive", "barrier": 0.4})
    assert naive.scalars()["barrier/height_naive"] == 0.4
    assert any("barrier/height".startswith(p) for ps in SCALAR_GROUPS.values() for p in ps)
