"""Precision, checkpoint/resume, several callbacks, bounded snapshot memory and unusual training loops."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.models import TinyNet, ce_loss, loader
from helpers.models import first_batches as first
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_landscape import LossLandscapeCallback, SurfaceRecord, load_records
from lightning_landscape.callback.recorder import TrajectoryRecorder
from lightning_landscape.functional import flatten, landscape_parameters, trajectory_pca

QUIET = {
    "resolution": 3,
    "final_resolution": 5,
    "line_resolution": 5,
    "num_batches": 2,
    "log_figures": False,
    "metrics": None,
    "final_metrics": None,
}


def fit(kwargs: dict[str, Any], model, train_loader, callbacks, **over):
    ckpt_path = over.pop("ckpt_path", None)
    trainer = pl.Trainer(**{**kwargs, **over}, callbacks=callbacks)
    trainer.fit(model, train_loader, ckpt_path=ckpt_path)
    return trainer


# --------------------------------------------------------------------------- precision


def _independent_centre(model, precision: str, batches) -> float:
    """The mean probe loss under ``precision``, computed by hand (eval mode, no_grad)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in batches:
            if precision == "64-true":
                loss = F.cross_entropy(model(x.double()), y)
            elif precision == "bf16-true":
                loss = F.cross_entropy(model(x.bfloat16()), y)
            elif precision == "bf16-mixed":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(x), y)
            else:
                loss = F.cross_entropy(model(x), y)
            total += float(loss)
    return total / len(batches)


@pytest.mark.parametrize(
    ("precision", "effective", "work", "rel"),
    [
        ("32-true", "32-true", torch.float32, 1e-6),
        ("64-true", "64-true", torch.float64, 1e-12),
        ("bf16-mixed", "bf16-mixed", torch.float32, 1e-3),
        ("bf16-true", "bf16-true", torch.float32, 1e-3),
        # Lightning runs 16-mixed as bf16-mixed on the CPU (fp16 autocast is a GPU feature).
        ("16-mixed", "bf16-mixed", torch.float32, 1e-3),
    ],
)
def test_precisions_give_finite_surfaces_in_the_right_dtypes(trainer_kwargs, precision, effective, work, rel):
    pl.seed_everything(0)
    model = TinyNet(norm="layer", dropout=0.0)
    cb = LossLandscapeCallback(max_overhead=None, loss_fn=ce_loss, snapshot_every_n_steps=1, **QUIET)
    trainer = fit(trainer_kwargs, model, loader(32, 8), [cb], precision=precision)
    assert str(trainer.precision) == effective
    assert all(np.isfinite(r.losses).all() for r in cb.records if r.kind != "reliability")
    (final,) = [r for r in cb.records if isinstance(r, SurfaceRecord) and r.meta["stage"] == "final"]
    assert final.meta["precision"] == effective and final.meta["directions"] == "pca"
    assert final.meta["direction_dtype"] == str(work).removeprefix("torch.")
    expected = _independent_centre(model, effective, first(loader(32, 8), 2))
    assert final.centre_loss == pytest.approx(expected, rel=rel)
    # Snapshots, directions and PCA stay float32 (float64 under 64-true) whatever the parameters are.
    assert cb.recorder.dtype == work and all(s.dtype == work for s in cb.recorder.snapshots)
    params = cb._params(model)
    if precision == "bf16-true":
        assert params[0].dtype == torch.bfloat16
    centre = flatten(params, dtype=work, device="cpu")
    plan = cb.schedule.plan("final", world_size=1, probe_batches=2)
    (d1, d2) = cb.builder.plane(model, ce_loss, [], params, cb.recorder, plan).directions
    assert all(t.dtype == work for t in (*d1, *d2))
    assert trajectory_pca(cb.recorder.stacked(), centre).components.dtype == work


# --------------------------------------------------------------------------- checkpoint and resume


def _resumable(trainer_kwargs, root, max_epochs, ckpt_path=None):
    pl.seed_everything(0)
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=3, max_snapshots=4, **QUIET)
    saver = ModelCheckpoint(
        dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True
    )
    fit(
        trainer_kwargs,
        TinyNet(dropout=0.0),
        loader(32, 8),
        [cb, saver],
        default_root_dir=str(root),
        max_epochs=max_epochs,
        enable_checkpointing=True,
        ckpt_path=ckpt_path,
    )
    return cb


def test_resumed_run_writes_the_same_records_as_an_uninterrupted_one(trainer_kwargs, tmp_path):
    whole = _resumable(trainer_kwargs, tmp_path / "whole", 4)
    _resumable(trainer_kwargs, tmp_path / "split", 2)  # stopped after epoch 2 (step 8)
    ckpt = tmp_path / "split" / "ckpt" / "epoch=1-step=8.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"][whole.state_key]
    assert state["recorder"]["stride"] == 1 and state["recorder"]["steps"] == [0, 3, 6]
    assert state["schedule"]["last_landscape_step"] == 8 and state["seed"] == 0
    resumed = _resumable(trainer_kwargs, tmp_path / "split", 4, ckpt_path=ckpt)
    assert resumed.recorder.steps == whole.recorder.steps == [0, 6, 12]  # thinned after the restart
    assert resumed.recorder.stride == whole.recorder.stride == 2
    assert torch.equal(resumed.recorder.stacked(), whole.recorder.stacked())

    expected = load_records(tmp_path / "whole")
    got = {r.meta["name"]: r for r in load_records(tmp_path / "split")}
    # The stopped run also wrote its own final records at step 8; everything else matches.
    assert sorted(got) == sorted([r.meta["name"] for r in expected] + [
        "final_surface_step00000008", "final_interpolation_step00000008",
        "final_line1_step00000008", "final_line2_step00000008", "final_reliability_step00000008",
        "final_distance1_step00000008", "final_distance2_step00000008",
    ])  # fmt: skip
    for rec in expected:
        other = got[rec.meta["name"]]
        assert rec.arrays().keys() == other.arrays().keys()
        for key, arr in rec.arrays().items():
            np.testing.assert_array_equal(other.arrays()[key], arr, err_msg=f"{rec.meta['name']}:{key}")
        # how long an evaluation took differs between any two runs, and so does the run id
        timing = {"seconds", "run_id"}
        assert {k: v for k, v in other.meta.items() if k not in timing} == {
            k: v for k, v in rec.meta.items() if k not in timing
        }


# --------------------------------------------------------------------------- several callbacks


def test_two_unnamed_callbacks_are_refused(trainer_kwargs):
    cbs = [
        LossLandscapeCallback(max_overhead=None, **QUIET),
        LossLandscapeCallback(directions="random", **QUIET),
    ]
    with pytest.raises(MisconfigurationException, match="name="):
        fit(trainer_kwargs, TinyNet(), loader(32, 8), cbs)


def test_named_callbacks_keep_their_records_and_figures_apart(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    small = {**QUIET, "log_figures": True, "every_n_epochs": None}
    a = LossLandscapeCallback(max_overhead=None, name="pca", **small)
    b = LossLandscapeCallback(max_overhead=None, name="random", directions="random", **small)
    fit(trainer_kwargs, TinyNet(), loader(32, 8), [a, b], max_epochs=1)
    for cb in (a, b):
        recs = load_records(tmp_path / "landscape" / cb.name)
        assert len(recs) == 4 + 3 and all(r.meta["callback_name"] == cb.name for r in recs)  # + reliability
    assert load_records(tmp_path / "landscape" / "random")[-1].meta["directions"] == "random"
    figures = {p.name for p in (tmp_path / "landscape" / "figures").glob("*.png")}
    assert {
        "landscape_pca_final_surface_step00000004.png",
        "landscape_random_final_surface_step00000004.png",
    } <= figures


@pytest.mark.parametrize(
    "change",
    [
        {"name": "x"}, {"every_n_epochs": 2}, {"resolution": 5}, {"final_resolution": 7},
        {"line_resolution": 7},
        {"directions": "random"}, {"span": 2.0}, {"margin": 0.5}, {"num_batches": 3}, {"seed": 1},
        {"include_1d": True}, {"interpolation_range": (0.0, 1.0)}, {"snapshot_every_n_steps": 5},
        {"snapshot_every_n_epochs": 1}, {"max_snapshots": 8}, {"snapshot_dtype": torch.bfloat16},
        {"snapshot_budget_bytes": 10**6}, {"snapshot_storage": "memmap"}, {"max_overhead": None},
    ],
)  # fmt: skip
def test_state_key_covers_every_setting(change):
    assert LossLandscapeCallback(**change).state_key != LossLandscapeCallback().state_key
    assert LossLandscapeCallback(**change).state_key == LossLandscapeCallback(**change).state_key


# --------------------------------------------------------------------------- memory


def _weights(value: float, n: int = 1000) -> list[torch.Tensor]:
    return [torch.full((n - 10,), value), torch.arange(10.0) + value]


def test_budget_bounds_the_buffer_and_low_precision_doubles_it():
    rec = TrajectoryRecorder(64, budget_bytes=12_000)  # 3 float32 snapshots of 1000 parameters
    half = TrajectoryRecorder(64, dtype=torch.bfloat16, budget_bytes=12_000)  # 6 bfloat16 ones
    for e in range(100):
        for r in (rec, half):
            r.offer(e, _weights(0.01 * e), step=e)
    assert (rec.capacity, half.capacity) == (3, 6)
    assert rec.nbytes <= 12_000 and half.nbytes <= 12_000
    assert len(rec) <= 3 and len(half) <= 6 and half.events[0] == 0
    for snap, e in zip(half.snapshots, half.events):
        assert snap.dtype == torch.bfloat16
        assert torch.equal(snap, flatten(_weights(0.01 * e)).to(torch.bfloat16))


def test_too_small_a_budget_is_a_clear_error_or_a_file(trainer_kwargs, tmp_path):
    with pytest.raises(ValueError, match="`budget_bytes`"):
        TrajectoryRecorder(8, budget_bytes=100).offer(0, _weights(0.0), step=0)
    cb = LossLandscapeCallback(
        max_overhead=None,
        snapshot_budget_bytes=100,
        snapshot_storage="memory",
        snapshot_every_n_steps=2,
        **QUIET,
    )
    with pytest.warns(RuntimeWarning, match="`snapshot_budget_bytes`.*memory-mapped file instead"):
        fit(trainer_kwargs, TinyNet(), loader(32, 8), [cb])  # the run completes
    assert cb.recorder.path == tmp_path / "landscape" / "snapshots.bin" and cb.recorder.steps == [
        0,
        2,
        4,
        6,
        8,
    ]


def test_events_that_skip_multiples_still_respect_the_bound():
    rec = TrajectoryRecorder(3)
    for e in range(0, 60, 2):  # every event even: one doubling of the stride would drop nothing
        rec.offer(e, _weights(float(e), 20), step=e)
        assert len(rec) <= 3
    assert rec.events[0] == 0


def test_memmap_snapshots_match_memory_ones_and_round_trip(tmp_path):
    path = tmp_path / "snaps.bin"
    disk, ram = TrajectoryRecorder(5, path=path), TrajectoryRecorder(5)
    for e in range(23):
        for r in (disk, ram):
            r.offer(e, _weights(np.sin(e) + 0.1 * e), step=e)
    assert path.stat().st_size == 5 * 1000 * 4 and disk.events == ram.events
    assert torch.equal(disk.stacked(), ram.stacked())
    centre = flatten(_weights(3.0))
    a, b = trajectory_pca(disk.stacked(), centre, release=disk.release), trajectory_pca(ram.stacked(), centre)
    assert torch.equal(a.components, b.components) and torch.equal(a.coords, b.coords)
    torch.save(disk.state_dict(), tmp_path / "s.pt")
    back = TrajectoryRecorder(5)
    back.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back.events == ram.events and torch.equal(back.stacked(), ram.stacked())


def test_callback_puts_snapshots_in_a_mapped_file_when_the_budget_is_too_small(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    model = TinyNet(dropout=0.0)
    cb = LossLandscapeCallback(
        max_overhead=None,
        snapshot_every_n_steps=1,
        snapshot_budget_bytes=64,
        snapshot_dtype=torch.float16,
        **QUIET,
    )
    fit(trainer_kwargs, model, loader(32, 8), [cb])
    assert cb.recorder.path == tmp_path / "landscape" / "snapshots.bin" and cb.recorder.path.exists()
    assert cb.recorder.dtype == torch.float16 and len(cb.recorder) == 9
    last = flatten([p for _, p in landscape_parameters(model)]).to(torch.float16)
    assert torch.equal(cb.recorder.snapshots[-1], last)
    assert all(np.isfinite(r.losses).all() for r in cb.records if r.kind != "reliability")


# --------------------------------------------------------------------------- training loops


class StepWatcher(pl.Callback):
    """The flat weights after each optimizer step (when global_step changes)."""

    def __init__(self) -> None:
        self.after: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        self.after[0] = flatten(list(pl_module.parameters()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.setdefault(trainer.global_step, flatten(list(pl_module.parameters())))


def test_gradient_accumulation_counts_optimizer_steps(trainer_kwargs):
    pl.seed_everything(0)
    watcher = StepWatcher()
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, every_n_epochs=None, **QUIET)
    trainer = fit(
        trainer_kwargs, TinyNet(dropout=0.0), loader(32, 8), [cb, watcher], accumulate_grad_batches=2
    )
    assert trainer.global_step == 4
    assert cb.recorder.steps == [0, 1, 2, 3, 4]  # one per optimizer step, none per batch
    for snap, step in zip(cb.recorder.snapshots, cb.recorder.steps):
        assert torch.equal(snap, watcher.after[step])


class TwoOptimizerNet(TinyNet):
    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        for opt in self.optimizers():
            opt.zero_grad()
            self.manual_backward(ce_loss(self, batch))
            opt.step()

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.net[0].parameters(), lr=0.1),
            torch.optim.SGD(self.net[4].parameters(), lr=0.1),
        )


def test_several_optimizers_under_manual_optimization(trainer_kwargs):
    pl.seed_everything(0)
    watcher = StepWatcher()
    cb = LossLandscapeCallback(max_overhead=None, loss_fn=ce_loss, snapshot_every_n_steps=3, **QUIET)
    trainer = fit(trainer_kwargs, TwoOptimizerNet(), loader(32, 8), [cb, watcher])
    assert trainer.global_step == 16  # two optimizer steps per batch
    # Steps jump by 2: a snapshot at the first step past each multiple of 3, none twice.
    assert cb.recorder.steps == [0, 4, 6, 10, 12, 16]
    for snap, step in zip(cb.recorder.snapshots, cb.recorder.steps):
        assert torch.equal(snap, watcher.after[step])
    assert len(cb.records) == 2 * 2 + 4 + 3 * 3 and all(
        np.isfinite(r.losses).all() for r in cb.records if r.kind != "reliability"
    )


def test_several_optimizers_under_automatic_optimization_get_lightnings_error(trainer_kwargs):
    class Auto(TwoOptimizerNet):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = True

    with pytest.raises(Exception, match="manual optimization"):
        fit(trainer_kwargs, Auto(), loader(32, 8), [LossLandscapeCallback(max_overhead=None, **QUIET)])


def test_runs_with_and_without_validation_give_the_same_landscapes(trainer_kwargs):
    class WithVal(TinyNet):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", ce_loss(self, batch))

    out = []
    for cls, over in ((TinyNet, {}), (WithVal, {"limit_val_batches": 2})):
        pl.seed_everything(0)
        cb = LossLandscapeCallback(max_overhead=None, **QUIET)
        model = cls(dropout=0.0)
        trainer = pl.Trainer(**{**trainer_kwargs, **over}, callbacks=[cb])
        trainer.fit(model, loader(32, 8), val_dataloaders=loader(16, 8, seed=4) if over else None)
        out.append(cb.records)
    assert [r.meta["name"] for r in out[0]] == [r.meta["name"] for r in out[1]]
    for a, b in zip(*out):
        np.testing.assert_array_equal(*(r.losses if r.kind != "reliability" else r.values for r in (a, b)))
