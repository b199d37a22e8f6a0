"""A callback's life over fits: fresh starts, resumed state, warnings, epochs, reuse at the last step."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape import LossLandscapeCallback, load_records

QUIET = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}


def run(trainer_kwargs, cb, seed=0, **over):
    pl.seed_everything(seed)
    trainer = pl.Trainer(**{**trainer_kwargs, **over}, callbacks=[cb] if isinstance(cb, pl.Callback) else cb)
    trainer.fit(TinyNet(), loader(32, 8, shuffle=True))
    return trainer


def assert_same_records(a, b):
    assert [r.meta["name"] for r in a] == [r.meta["name"] for r in b]
    for ra, rb in zip(a, b):
        for key, value in ra.arrays().items():
            np.testing.assert_array_equal(value, rb.arrays()[key], err_msg=f"{ra.meta['name']}: {key}")
        assert untimed(ra.meta) == untimed(rb.meta)


def untimed(meta):
    """Metadata without wall-clock times and run ids (what two identical runs differ in)."""
    if isinstance(meta, dict):
        return {k: untimed(v) for k, v in meta.items() if k not in ("seconds", "run_id")}
    return meta


def test_a_reused_callback_starts_fresh(trainer_kwargs, tmp_path, monkeypatch):
    # no measured time (a frozen clock): the budget's decisions are counted, the same on both runs
    module = importlib.import_module("lightning_landscape.callback.callback")
    monkeypatch.setattr(module, "clock", lambda: 0.0)
    kwargs = {**QUIET, "max_overhead": 0.5, "snapshot_every_n_steps": 2, "metrics": ("sam",)}
    reused = LossLandscapeCallback(**kwargs)
    for seed in (0, 1):  # the natural SGD-vs-SAM loop, one callback object
        run(trainer_kwargs, reused, seed, default_root_dir=str(tmp_path / f"reused{seed}"))
    fresh = LossLandscapeCallback(**kwargs)
    run(trainer_kwargs, fresh, 1, default_root_dir=str(tmp_path / "fresh"))
    assert reused.recorder.steps == fresh.recorder.steps == [0, 2, 4, 6, 8]
    assert torch.equal(reused.recorder.stacked(), fresh.recorder.stacked())
    assert reused.schedule.state_dict() == fresh.schedule.state_dict()
    assert_same_records(reused.records, fresh.records)


def test_warnings_are_shown_once_counted_and_point_at_the_callers_code(trainer_kwargs):
    def broken(model, batch):
        raise KeyError("no such column")

    cb = LossLandscapeCallback(**QUIET, loss_fn=broken, metrics=None, final_metrics=None, max_overhead=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(trainer_kwargs, cb, max_epochs=3)
    ours = [w for w in caught if "LossLandscapeCallback" in str(w.message)]
    failed = [w for w in ours if "failed and was skipped" in str(w.message)]
    assert len(failed) == 1 and "the surface at step 4 failed" in str(failed[0].message)
    (summary,) = [w for w in ours if "repeated" in str(w.message)]
    assert "the surface failed: 4 times" in str(summary.message)  # 3 periodic landscapes and the final one
    for w in ours:  # not at callback.py or any file of the package: at this test (the `fit` call)
        assert Path(w.filename).resolve() == Path(__file__).resolve(), w.filename


def test_a_failing_metric_is_named(trainer_kwargs):
    def nan_loss(model, batch):
        return ce_loss(model, batch) * float("nan")

    cb = LossLandscapeCallback(**QUIET, loss_fn=nan_loss, metrics=("eigenvalues",), final_metrics=None)
    with pytest.warns(RuntimeWarning, match="metric 'eigenvalues' at step 4 failed"):
        run(trainer_kwargs, cb)


def test_settings_are_logged_even_when_every_landscape_is_skipped(trainer_kwargs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = LossLandscapeCallback(**QUIET, every_n_epochs=None, budget_final=True, max_overhead=0.01)
    with pytest.warns(RuntimeWarning, match="final landscape was skipped"):
        run(trainer_kwargs, cb, logger=logger)
    assert cb.records == []
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("landscape/settings/text_summary")
    assert "| budget_final | True |" in text.tensor_proto.string_val[0].decode()


def test_epochs_agree_across_record_types_and_with_the_progress_bar(trainer_kwargs):
    cb = LossLandscapeCallback(**QUIET, max_overhead=None, metrics=("sam",), final_metrics=("sam",))
    run(trainer_kwargs, cb, max_epochs=3)
    periodic = [(r.kind, r.meta["epoch"]) for r in cb.records if r.meta["stage"] == "periodic"]
    kinds = (
        "surface",
        "line",
        "metrics",
        "reliability",
        "line",
        "line",
    )  # + the reliability's distance lines
    assert periodic == [(k, e) for e in (0, 1, 2) for k in kinds]
    # The final records: the last epoch run (2, 0-based), as the last periodic ones, not max_epochs (3).
    assert {r.meta["epoch"] for r in cb.records if r.meta["stage"] == "final"} == {2}


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, batch):
        self.calls += 1
        return ce_loss(model, batch)


class Nudge(pl.Callback):
    """Moves the weights at the end of training, before the landscape callback sees them."""

    def on_train_end(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module.net[0].bias.add_(0.5)


@pytest.mark.parametrize("nudged", [False, True])
def test_the_final_landscape_reuses_what_the_last_periodic_one_computed(trainer_kwargs, nudged):
    loss = Counting()
    kwargs = {**QUIET, "final_resolution": 3, "metrics": None, "final_metrics": None, "max_overhead": None}
    cb = LossLandscapeCallback(**kwargs, loss_fn=loss)
    run(trainer_kwargs, [Nudge(), cb] if nudged else cb)
    # Per periodic landscape: 3 x 3 surface + 5-point line, on 2 batches, and the reliability indicators
    # (a random plane: no snapshot path; 3 directions x 4 points + 2 axes x 2 signs x 5 distances); the
    # final one adds 2 axis lines, their 3 points on the 3 x 3 grid taken from the surface.
    periodic, axes = 2 * (9 + 5 + 32), 2 * 2 * (5 - 3)
    final = axes + (periodic if nudged else 0)  # at other weights it computes everything again
    assert loss.calls == 2 * periodic + final
    trust = [r for r in cb.records if r.kind == "reliability"]
    assert [r.meta["stage"] for r in trust] == ["periodic", "periodic", "final"]
    assert ("reused_from" in trust[-1].meta) != nudged
    assert trust[-1].meta["name"] == "final_reliability_step00000008"
    surfaces = [r for r in cb.records if r.kind == "surface"]
    last, fin = surfaces[-2], surfaces[-1]
    assert fin.meta["stage"] == "final" and (("reused_from" in fin.meta) != nudged)
    if not nudged:
        np.testing.assert_array_equal(fin.losses, last.losses)
        assert fin.meta["name"] == "final_surface_step00000008" and fin.meta["epoch"] == 1
    else:
        assert not np.array_equal(fin.losses, last.losses)


def test_a_01_checkpoint_state_loads(trainer_kwargs, tmp_path):
    cb = LossLandscapeCallback(**QUIET, max_overhead=None, snapshot_every_n_steps=2)
    run(trainer_kwargs, cb)
    state = cb.state_dict()
    old = {"recorder": state["recorder"], "written": ["x"], "seed": 0, "name": "", **state["schedule"]}
    for key in ("periodic", "step", "epoch"):  # keys 0.1 did not have
        old.pop(key)
    other = LossLandscapeCallback(**QUIET, max_overhead=None, snapshot_every_n_steps=2)
    other.load_state_dict(old)
    assert other.recorder.steps == cb.recorder.steps and other.schedule.spent == cb.schedule.spent
    assert other.schedule.periodic == 1 and other.schedule.last_landscape_step == 8


# --------------------------------------------------------------------------- runs into one folder (issue 21)

CHEAP = {**QUIET, "metrics": None, "final_metrics": None, "reliability": False, "max_overhead": None}


def _files(folder):
    """Every file under ``folder`` with its bytes (what a later run must leave alone)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_ids(folder):
    return {r.meta["run_id"] for r in load_records(folder)}


def test_a_second_fit_into_one_logger_version_writes_beside_the_first(trainer_kwargs, tmp_path):
    from lightning_landscape import RecordError
    from lightning_landscape.cli import main

    first = run(trainer_kwargs, LossLandscapeCallback(**CHEAP), logger=TensorBoardLogger(tmp_path, "x", "v0"))
    log_dir = Path(first.log_dir)
    before = _files(log_dir / "landscape")
    assert before and len(_run_ids(log_dir / "landscape")) == 1
    again = TensorBoardLogger(tmp_path, "x", "v0")
    with pytest.warns(UserWarning, match=r"landscape holds the records of another run.*landscape-2") as seen:
        run(trainer_kwargs, LossLandscapeCallback(**CHEAP), 1, logger=again)
    assert len([w for w in seen if "records of another run" in str(w.message)]) == 1  # said once
    assert _files(log_dir / "landscape") == before  # nothing of run 1 overwritten, nothing added
    (one,), (two,) = _run_ids(log_dir / "landscape"), _run_ids(log_dir / "landscape-2")
    assert one != two
    assert len(load_records(log_dir / "landscape-2")) == len(load_records(log_dir / "landscape"))
    # Read together, the two runs are refused, each named.
    with pytest.raises(RecordError, match="mixes the records of 2 runs") as refused:
        load_records(log_dir)
    assert one in str(refused.value) and two in str(refused.value)
    assert main(["summary", str(log_dir / "landscape-2")]) == 0


def test_two_fits_without_logger_in_one_working_directory(trainer_kwargs, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    kwargs = {k: v for k, v in trainer_kwargs.items() if k != "default_root_dir"}  # records go to ./landscape
    figures = {**CHEAP, "log_figures": True}  # PNG files beside the records, without a logger
    with caplog.at_level(logging.INFO):
        run(kwargs, LossLandscapeCallback(**figures))
    said = [r.getMessage() for r in caplog.records if "records go to" in r.getMessage()]
    assert said == [f"LossLandscapeCallback: no logger; records go to {tmp_path.resolve() / 'landscape'}"]
    before = _files(tmp_path / "landscape")
    assert any(p.parts[0] == "figures" for p in before)
    with pytest.warns(UserWarning, match=r"writes its records to \S*landscape-2"):
        run(kwargs, LossLandscapeCallback(**figures), 1)
    assert _files(tmp_path / "landscape") == before  # records and figures of run 1 as they were
    assert {p.parts[0] for p in _files(tmp_path / "landscape-2") if len(p.parts) > 1} == {"figures"}
    assert len(_run_ids(tmp_path / "landscape")) == len(_run_ids(tmp_path / "landscape-2")) == 1
    assert _run_ids(tmp_path / "landscape") != _run_ids(tmp_path / "landscape-2")


def test_a_resumed_fit_is_the_same_run_in_the_same_folder(trainer_kwargs, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(max_epochs, ckpt_path=None):
        cb = LossLandscapeCallback(**CHEAP, snapshot_storage="memmap")  # its file lives beside the records
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
        logger = TensorBoardLogger(tmp_path, "x", "v0")
        kw = {"enable_checkpointing": True, "max_epochs": max_epochs, "logger": logger}
        pl.seed_everything(0)
        trainer = pl.Trainer(**{**trainer_kwargs, **kw}, callbacks=[cb, saver])
        trainer.fit(TinyNet(), loader(32, 8), ckpt_path=ckpt_path)
        return cb, Path(trainer.log_dir)

    first, log_dir = fit(2)
    ckpt = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"][first.state_key]
    assert state["run_id"] == first.publisher.run_id
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*records of another run")
        resumed, _ = fit(3, ckpt)
    assert resumed.publisher.run_id == first.publisher.run_id
    assert sorted(p.name for p in log_dir.iterdir() if p.name.startswith("landscape")) == ["landscape"]
    records = load_records(log_dir / "landscape")  # one run: both fits' records, together
    assert {r.meta["run_id"] for r in records} == {first.publisher.run_id}
    assert {r.meta["global_step"] for r in records if r.meta["stage"] == "periodic"} == {4, 8, 12}
    assert (log_dir / "landscape" / "snapshots.bin").is_file()


@pytest.mark.parametrize("storage", ["auto", "memmap"])
def test_fast_dev_run_writes_nothing(trainer_kwargs, tmp_path, monkeypatch, storage):
    monkeypatch.chdir(tmp_path)
    kwargs = {k: v for k, v in trainer_kwargs.items() if k not in ("default_root_dir", "logger")}
    options = {"log_figures": True, "save_weights": True, "snapshot_storage": storage}
    options["critical_sharpness"] = 1  # its critical_line records too
    cb = LossLandscapeCallback(**{**CHEAP, **options})
    with pytest.warns(UserWarning, match="`fast_dev_run` is on, so no records") as caught:
        run(kwargs, cb, fast_dev_run=True)
    assert len([w for w in caught if "fast_dev_run" in str(w.message)]) == 1
    assert cb.records and {r.meta["stage"] for r in cb.records} == {"periodic", "final"}  # still computed
    assert any(r.meta.get("directions") == "critical" for r in cb.records)
    assert cb.recorder.path is None and len(cb.recorder) >= 1  # the snapshots in memory, not in a file
    assert list(tmp_path.rglob("*")) == []  # no records, figures, weights or logs in the working directory
