"""Nothing lost, nothing changed (issue 21): a failing metric, a loss that changes the module, a module
with nothing to train, and settings the callback must say something about."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_landscape import LineRecord, LossLandscapeCallback, SurfaceRecord

QUIET = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}


def fit(kwargs: dict[str, Any], model: pl.LightningModule, callbacks: list, **over: Any) -> pl.Trainer:
    trainer = pl.Trainer(**{**kwargs, **over}, callbacks=callbacks)
    trainer.fit(model, loader(32, 8, shuffle=True, noise=0.1))
    return trainer


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {float((a[k].double() - b[k].double()).abs().max())}"


# ---------------------------------------------------------------- 21.4: a loss that changes the module


class SideNet(TinyNet):
    """BatchNorm, a frozen parameter and a buffer outside any landscape; ``training_step`` may halve the
    first layer's weights in place (as a user's side effect would)."""

    def __init__(self, mutate_in_step: bool = False) -> None:
        super().__init__(norm="batch", dropout=0.0)
        self.scale = nn.Parameter(torch.ones(3), requires_grad=False)  # frozen: outside the landscape
        self.register_buffer("seen", torch.zeros(()))
        self.mutate_in_step = mutate_in_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.mutate_in_step:
            touch(self)
        return super().training_step(batch, batch_idx)


def touch(m: nn.Module) -> None:
    with torch.no_grad():
        m.net[0].weight.mul_(0.5)  # a landscape parameter
        m.scale.add_(0.25)  # a frozen parameter
        m.seen.add_(1)  # a buffer
        m.net[1].running_mean.add_(1.0)  # BatchNorm statistics


def mutating_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    touch(model)
    return ce_loss(model, batch)


def _run(trainer_kwargs: dict[str, Any], cb: LossLandscapeCallback | None, mutate_in_step: bool) -> Any:
    pl.seed_everything(0)
    model = SideNet(mutate_in_step)
    fit(trainer_kwargs, model, [cb] if cb is not None else [])
    return state_of(model)


@pytest.mark.parametrize("where", ["loss_fn", "training_step"])
def test_a_loss_that_changes_the_module_in_place_leaves_training_bit_identical(trainer_kwargs, where):
    in_step = where == "training_step"
    options = {"loss_fn": mutating_loss} if not in_step else {}
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=2, metrics=["sam"],
                               final_metrics=["eigenvalues"], **options, **QUIET)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_cb = _run(trainer_kwargs, cb, in_step)
    without = _run(trainer_kwargs, None, in_step)
    # every part ran: surfaces, lines, metrics and the reliability indicators
    kinds = {r.kind for r in cb.records}
    assert {"surface", "line", "metrics", "reliability"} <= kinds, kinds
    assert_bit_identical(with_cb, without)


# --------------------------------------------------------------------------- 21.2: a failing metric_fn


def broken_metric(model: nn.Module, batch: Any) -> torch.Tensor:
    raise KeyError("no labels in this batch")


def test_a_failing_metric_fn_leaves_the_surface_and_lines_and_warns_once(trainer_kwargs):
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=2, metric_fn=broken_metric,
                               metric_name="acc", metrics=None, final_metrics=None, **QUIET)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(trainer_kwargs, TinyNet(), [cb])
    ours = [str(w.message) for w in caught if "LossLandscapeCallback" in str(w.message)]
    about_metric = [m for m in ours if "metric_fn" in m]
    assert len(about_metric) == 1 and "no labels in this batch" in about_metric[0], ours
    assert not [m for m in ours if "failed and was skipped" in m], ours
    stages = [r.meta["stage"] for r in cb.records if isinstance(r, SurfaceRecord)]
    assert stages == ["periodic", "periodic", "final"]
    names = {r.meta["name"].split("_step")[0] for r in cb.records}
    assert {"final_surface", "final_line1", "final_line2", "final_interpolation"} <= names
    for r in cb.records:
        if isinstance(r, (SurfaceRecord, LineRecord)):
            assert np.isfinite(r.losses).all()
            assert r.metrics is None  # the metric is missing, and the record says why
    interp = [r for r in cb.records if r.meta.get("directions") == "interpolation"]
    final = next(r for r in cb.records if r.meta["name"].startswith("final_surface"))
    for r in (*interp, final):
        assert r.meta["metric_missing"].startswith("acc:") and "KeyError" in r.meta["metric_missing"]


def test_a_metric_fn_failing_at_some_points_only_is_marked_missing(trainer_kwargs):
    def far_fails(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = ce_loss(model, batch)
        if loss > 1.25:  # away from the centre
            raise ValueError("diverged")
        return loss

    cb = LossLandscapeCallback(max_overhead=None, metric_fn=far_fails, metrics=None, final_metrics=None,
                               directions="random", span=3.0, reliability=False, **QUIET)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(trainer_kwargs, TinyNet(norm="none", dropout=0.0), [cb], max_epochs=1)
    (final,) = [r for r in cb.records if isinstance(r, SurfaceRecord) and r.meta["stage"] == "final"]
    assert final.metrics is None and "diverged" in final.meta["metric_missing"]
    assert np.isfinite(final.losses).all()
    assert sum("metric_fn" in str(w.message) for w in caught) == 1


# --------------------------------------------------------------------------- 21.5: nothing to train


class AllFrozen(TinyNet):
    def __init__(self) -> None:
        super().__init__(norm="none", dropout=0.0)
        self.requires_grad_(False)
        self.steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.steps += 1  # nothing to optimize: Lightning runs the steps all the same

    def configure_optimizers(self) -> None:
        return None


def test_a_module_with_no_trainable_parameters_warns_once_and_training_completes(trainer_kwargs):
    model = AllFrozen()
    cb = LossLandscapeCallback(max_overhead=None, **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(trainer_kwargs, model, [cb])
    assert model.steps == 8 and trainer.state.finished
    ours = [str(w.message) for w in caught if "LossLandscapeCallback" in str(w.message)]
    assert len(ours) == 1 and "no trainable floating-point parameters" in ours[0] and "idle" in ours[0]
    assert cb.records == [] and len(cb.recorder) == 0
    assert not list(Path(trainer_kwargs["default_root_dir"]).rglob("*.npz"))


# --------------------------------------------------------------------------- smaller items


def test_two_unnamed_callbacks_get_the_pass_name_message_at_trainer_construction(trainer_kwargs):
    with pytest.raises(MisconfigurationException, match="name="):
        pl.Trainer(**trainer_kwargs, callbacks=[LossLandscapeCallback(), LossLandscapeCallback()])
    # named apart, they are accepted
    pl.Trainer(**trainer_kwargs, callbacks=[LossLandscapeCallback(name="a"), LossLandscapeCallback(name="b")])


def test_fewer_probe_batches_than_num_batches_warns_once(trainer_kwargs):
    cb = LossLandscapeCallback(max_overhead=None, **{**QUIET, "num_batches": 8}, metrics=None,
                               final_metrics=None, reliability=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(trainer_kwargs, TinyNet(), [cb])  # 32 samples in batches of 8: 4 batches
    said = [str(w.message) for w in caught if "`num_batches`=8" in str(w.message)]
    assert len(said) == 1 and "gives 4 batch(es)" in said[0], said
    assert all(r.meta["probe_batches"] == 4 for r in cb.records if isinstance(r, SurfaceRecord))


def linear_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, _ = batch
    return model.net[0](x).sum()  # linear in every parameter it uses: the Hessian is zero


def test_hessian_directions_on_a_zero_hessian_say_the_hessian_is_zero(trainer_kwargs):
    cb = LossLandscapeCallback(directions="hessian", loss_fn=linear_loss, max_overhead=None, metrics=None,
                               final_metrics=None, reliability=False, **QUIET)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(trainer_kwargs, TinyNet(norm="none", dropout=0.0), [cb], max_epochs=1)
    said = [str(w.message) for w in caught if "Hessian directions" in str(w.message)]
    assert said and "the Hessian is zero at w" in said[0], said
    assert "not finite" not in said[0] and "single parameter" not in said[0]
