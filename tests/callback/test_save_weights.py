"""`save_weights=True`: the run's initial/final weights, statistics and trajectory on disk, never a crash."""

from __future__ import annotations

import copy
import io
import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.solutions.weights import load_run_weights

QUIET = {"resolution": 3, "final_resolution": 3, "line_resolution": 3, "num_batches": 1, "log_figures": False}
QUIET.update(metrics=(), final_metrics=(), loss_fn=ce_loss, snapshot_every_n_steps=2, max_overhead=None)


def _fit(tmp_path, model, cb, **over):
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=4, logger=False, default_root_dir=tmp_path, callbacks=[cb],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **over,
    )  # fmt: skip
    trainer.fit(model, loader(32))
    return trainer


def test_saved_weights_are_the_runs_own(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    before = copy.deepcopy(model)  # the initial weights and BatchNorm statistics, taken independently
    cb = LossLandscapeCallback(**QUIET, save_weights=True, name="a")
    _fit(tmp_path, model, cb)
    run = load_run_weights(tmp_path / "landscape" / "a" / "weights", model)
    names = [n for n, p in model.named_parameters()]
    assert run.names == names
    init = torch.cat([p.detach().reshape(-1) for p in before.parameters()])
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(run.initial, init) and torch.equal(run.final, final)
    assert not torch.equal(run.initial, run.final)  # training moved them
    assert torch.equal(run.initial_buffers["net.1.running_mean"], before.net[1].running_mean)
    assert torch.equal(run.initial_buffers["net.1.running_var"], before.net[1].running_var)
    assert torch.equal(run.final_buffers["net.1.running_mean"], model.net[1].running_mean)
    assert not torch.equal(run.initial_buffers["net.1.running_mean"], run.final_buffers["net.1.running_mean"])
    assert run.trajectory is not None and torch.equal(run.trajectory, cb.recorder.stacked())
    assert run.steps.tolist() == cb.recorder.steps == [0, 2, 4, 6, 8]
    assert run.meta["global_step"] == 8 and run.meta["name"] == "a"


def test_too_large_warns_and_fit_completes(tmp_path):
    cb = LossLandscapeCallback(**QUIET, save_weights=True, save_weights_max_bytes=100)
    with pytest.warns(RuntimeWarning, match="saving the weights .*max_bytes"):
        _fit(tmp_path, TinyNet(), cb)
    assert not (tmp_path / "landscape" / "weights").exists()
    assert any(r.meta["stage"] == "final" for r in cb.records)


def test_off_by_default_and_bfloat16_halves(tmp_path):
    cb = LossLandscapeCallback(**QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(tmp_path / "off", TinyNet(), cb)
    assert not (tmp_path / "off" / "landscape" / "weights").exists()
    cb = LossLandscapeCallback(**QUIET, save_weights=True, save_weights_dtype="bfloat16")
    model = TinyNet()
    _fit(tmp_path / "bf16", model, cb)
    run = load_run_weights(tmp_path / "bf16", model)
    assert run.final.dtype == torch.bfloat16
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(run.final, final.to(torch.bfloat16))


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="save_weights"):
        LossLandscapeCallback(save_weights="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="save_weights_dtype"):
        LossLandscapeCallback(save_weights_dtype=torch.int8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="save_weights_max_bytes"):
        LossLandscapeCallback(save_weights_max_bytes=0)


def test_initial_buffers_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    before = copy.deepcopy(model)
    cb = LossLandscapeCallback(**QUIET)
    _fit(tmp_path, model, cb)
    state = cb.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = LossLandscapeCallback(**QUIET)
    fresh.load_state_dict(loaded)
    assert fresh.builder.start_buffers is not None
    assert torch.equal(fresh.builder.start_buffers["net.1.running_var"], before.net[1].running_var)


def test_frozen_layers_through_the_callback_compare_as_each_runs_own(tmp_path):
    # Issue 21, item 6 as a user meets it: two fits from one initialization with different frozen
    # first layers (two backbones), compared through a fresh model holding a third.
    from helpers.models import naive_mean_loss

    from lightning_landscape import compare_solutions

    torch.manual_seed(0)
    init = TinyNet()
    states = {}
    for run, seed in (("a", 1), ("b", 2)):
        model = copy.deepcopy(init)
        torch.manual_seed(seed)
        model.net[0].load_state_dict(torch.nn.Linear(*model.net[0].weight.shape[::-1]).state_dict())
        model.net[0].requires_grad_(False)
        _fit(tmp_path / run, model, LossLandscapeCallback(**QUIET, save_weights=True))
        states[run] = copy.deepcopy(model.state_dict())
    probe = [next(iter(loader(32)))]
    fresh = TinyNet()
    fresh.net[0].requires_grad_(False)
    result = compare_solutions(
        fresh, ce_loss, probe, tmp_path / "a", tmp_path / "b", shared_plane=False, save=False
    )
    own = []
    for run in ("a", "b"):  # reference: each run's full state loaded into another fresh model
        reference = TinyNet()
        reference.load_state_dict(states[run])
        own.append(naive_mean_loss(reference, probe))
    assert result.barrier.losses[[0, -1]] == pytest.approx(own, rel=1e-5)
    assert result.barrier.meta["frozen_interpolated"] == ["net.0.weight", "net.0.bias"]
    with pytest.raises(ValueError, match=r"frozen parameters \['net.0.weight', 'net.0.bias'\] differ"):
        compare_solutions(fresh, ce_loss, probe, tmp_path / "a", tmp_path / "b", save=False)
