"""examples/compare_solutions.py on two small synthetic runs of the demo's model (no training loop)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lightning_landscape.functional import buffer_snapshot
from lightning_landscape.solutions.compare import load_solutions
from lightning_landscape.solutions.weights import save_run_weights

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "compare_solutions.py"


def test_compare_solutions_script_prints_the_summary(tmp_path, capsys):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("compare_solutions_example", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sys.modules.pop("sgd_vs_sam", None)
    torch.manual_seed(0)
    model = script.DigitsCNN()
    init = [p.detach().clone() for p in model.parameters()]
    b0 = buffer_snapshot(model)
    batches = script.probe_batches(1, batch_size=64)
    probe = script.probe_batches(1)  # what the script evaluates on: the first 256 samples
    own = {}
    for run, lr in (("sgd", 0.05), ("sam", 0.1)):  # a few steps each from one initialization
        m = script.DigitsCNN()
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for batch in batches * 3:
            opt.zero_grad()
            script.loss_fn(m, batch).backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            own[run] = float(script.loss_fn(m, probe[0]))
        save_run_weights(tmp_path / run / "seed0" / "landscape" / "weights", m, init, initial_buffers=b0)
    argv = [str(tmp_path / "sgd" / "seed0"), str(tmp_path / "sam" / "seed0"), "--resolution", "3"]
    summary = script.main([*argv, "--barrier-resolution", "3", "--num-batches", "1"])
    out = capsys.readouterr().out
    assert "A = sgd, B = sam" in out and "barrier" in out
    folder = tmp_path / "shared_sgd_vs_sam_seed0"  # one folder per pair of seeds
    assert (folder / "shared_plane.png").exists() and (folder / "barrier.png").exists()
    assert load_solutions(folder).summary() == pytest.approx(summary, nan_ok=True)
    # The barrier's endpoints are the runs' own models (own BatchNorm statistics) on the probe batch.
    assert summary["loss_A"] == pytest.approx(own["sgd"], rel=1e-5)
    assert summary["loss_B"] == pytest.approx(own["sam"], rel=1e-5)
    assert own["sgd"] != pytest.approx(own["sam"], rel=1e-3)
