"""The demo end to end, small: both runs write TensorBoard images, scalars and records."""

import importlib.util
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_landscape import LossLandscapeCallback, load_records

DEMO = Path(__file__).resolve().parents[1] / "examples" / "sgd_vs_sam.py"


def _demo_module():
    spec = importlib.util.spec_from_file_location("sgd_vs_sam", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_logs_landscapes_for_sgd_and_sam(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    demo = _demo_module()
    # The demo's settings, its metrics and reliability indicators included, on one probe batch, not four:
    # what is logged and recorded is the same, at a quarter of the callback's work.
    monkeypatch.setattr(
        demo, "LossLandscapeCallback", lambda **kw: LossLandscapeCallback(**{**kw, "num_batches": 1})
    )
    results = demo.main(
        ["--epochs", "2", "--log-dir", str(tmp_path), "--resolution", "3", "--final-resolution", "5"]
    )
    out = capsys.readouterr().out
    assert "tensorboard --logdir" in out and "val accuracy" in out
    assert set(results) == {"sgd", "sam"}
    for name, r in results.items():
        assert 0.0 < r["train_loss"] < 2.3  # learned something: chance level is ln(10) = 2.30
        assert r["val_acc"] > 0.5
        (event_file,) = (tmp_path / name).rglob("events.out.tfevents.*")
        acc = EventAccumulator(str(event_file.parent), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        images, scalars = acc.Tags()["images"], acc.Tags()["scalars"]
        assert {"landscape/surface", "landscape/interpolation", "landscape/final/surface"} <= set(images)
        assert len({e.step for e in acc.Images("landscape/surface")}) >= 2  # several steps
        assert "landscape/explained_variance/pc1" in scalars and "landscape/loss/centre" in scalars
        kinds = {(rec.kind, rec.meta["stage"]) for rec in load_records(event_file.parent)}
        assert kinds == {
            ("surface", "periodic"),
            ("line", "periodic"),
            ("surface", "final"),
            ("line", "final"),
            ("metrics", "periodic"),
            ("metrics", "final"),
            ("reliability", "periodic"),
            ("reliability", "final"),
        }
        assert {"landscape/hessian/lambda_max", "landscape/sharpness/sam"} <= set(scalars)
        assert {
            "landscape/reliability/path/on_plane_share",
            "landscape/final/reliability/failed_checks",
        } <= set(scalars)
        assert {"landscape/final/hessian/trace", "landscape/final/sharpness/average"} <= set(scalars)


def test_demo_seeds_share_the_initialization_per_seed(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    demo = _demo_module()
    # The landscapes themselves are tested above; here only the seeds matter: keep each run cheap.
    cheap = {"metrics": None, "final_metrics": None, "log_figures": False, "line_resolution": 5}
    monkeypatch.setattr(demo, "LossLandscapeCallback", lambda **kw: LossLandscapeCallback(**{**kw, **cheap}))
    args = ["--epochs", "1", "--seeds", "2", "--log-dir", str(tmp_path), "--resolution", "3"]
    results = demo.main([*args, "--final-resolution", "3"])
    assert "mean ± std over 2 seeds" in capsys.readouterr().out
    digests = {}
    for name in ("sgd", "sam"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["seed0", "seed1"]
        runs = results[name]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert Path(r["log_dir"]) == tmp_path / name / f"seed{r['seed']}"
            assert any(rec.kind == "surface" for rec in load_records(r["log_dir"]))
            digests[name, r["seed"]] = r["init_sha256"]
        values = [r["val_acc"] for r in runs]
        assert results[name]["val_acc"] == pytest.approx(sum(values) / 2)
        assert results[name]["val_acc_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    # The same initial weights for both optimizers at a seed; another seed, other weights.
    assert digests["sgd", 0] == digests["sam", 0] and digests["sgd", 1] == digests["sam", 1]
    assert digests["sgd", 0] != digests["sgd", 1]


def test_the_commands_the_demo_prints_run_from_a_fresh_shell(monkeypatch):
    # Issue 21: after `make demo`, `tensorboard ...` was "command not found" (it lives in .venv/bin).
    import os
    import shutil
    import sys

    pytest.importorskip("sklearn")
    demo = _demo_module()
    for name in ("tensorboard", "lightning-landscape"):
        script = Path(sys.executable).parent / name
        if not script.is_file():
            continue  # not installed beside this Python: nothing to check
        monkeypatch.setenv("PATH", os.defpath)  # a fresh shell: the virtual environment is not activated
        found = shutil.which(demo.command(name))
        assert found is not None and Path(found).resolve() == script.resolve(), name
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.defpath}")  # activated: the bare name
        assert demo.command(name) == name


def test_running_the_demo_again_replaces_its_run(tmp_path, monkeypatch):
    # A run never overwrites another run's records (issue 21): the demo, run twice into one folder, starts
    # its run afresh rather than leaving two runs (landscape/ and landscape-2/) that its commands refuse.
    pytest.importorskip("sklearn")
    demo = _demo_module()
    cheap = {"resolution": 3, "final_resolution": 3, "line_resolution": 3, "num_batches": 1, "metrics": None,
             "final_metrics": None, "log_figures": False, "reliability": False}  # fmt: skip
    monkeypatch.setattr(demo, "LossLandscapeCallback", lambda **kw: LossLandscapeCallback(**{**kw, **cheap}))
    for _ in range(2):
        result = demo.train("sgd", 1, tmp_path, 0, {"max_overhead": None, "save_weights": True})
    run_dir = Path(result["log_dir"])
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("landscape")) == ["landscape"]
    assert len({r.meta["run_id"] for r in load_records(run_dir)}) == 1
