"""The callback's BatchNorm modes, metric_fn and reliability indicators, end to end with real Trainers."""

from __future__ import annotations

import copy
import io
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.models import TinyNet, loader
from helpers.models import first_batches as first
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import LineRecord, LossLandscapeCallback, SurfaceRecord, load_records
from lightning_landscape.callback.schedule import LandscapeSchedule
from lightning_landscape.functional import ReliabilitySettings, reliability_cost
from lightning_landscape.records.record import ReliabilityRecord

SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}
LIGHT = {"metrics": (), "final_metrics": ()}  # no curvature: these tests are about the lines and checks


class BNConvNet(pl.LightningModule):
    """A small BatchNorm CNN on 8 x 8 images: conv -> BN -> ReLU -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(16, 3),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def images(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g) * 2 + 1  # off-centre inputs: the BN statistics move
    y = (x.mean(dim=(1, 2, 3)) > 1).long() + (x[:, 0, 0, 0] > 1).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@torch.no_grad()
def naive(model: nn.Module, batches: list[Any], fn: Any) -> float:
    """Reference: the mean of ``fn(model, batch)`` over the batches in eval mode."""
    model.eval()
    return float(sum(float(fn(model, b)) for b in batches) / len(batches))


def ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def accuracy(model: nn.Module, batch: Any) -> torch.Tensor:
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


def fit(kwargs: dict[str, Any], model: pl.LightningModule, dl: Any, cb: Any, **over: Any) -> pl.Trainer:
    trainer = pl.Trainer(**{**kwargs, **over}, callbacks=[cb])
    trainer.fit(model, dl)
    return trainer


def at(line: LineRecord, alpha: float, values: np.ndarray | None = None) -> float:
    k = int(np.abs(line.alphas - alpha).argmin())
    assert abs(line.alphas[k] - alpha) < 1e-9
    return float((line.losses if values is None else values)[k])


# --------------------------------------------------------------------------- BatchNorm


def test_bn_interpolation_line_ends_are_the_real_models(trainer_kwargs):
    pl.seed_everything(0)
    model = BNConvNet()
    initial = copy.deepcopy(model)  # initial weights and buffers
    dl = images()
    cb = LossLandscapeCallback(every_n_epochs=None, max_overhead=None, reliability=False, **SMALL, **LIGHT)
    fit(trainer_kwargs, model, dl, cb, max_epochs=3)
    (line,) = [r for r in cb.records if r.meta.get("directions") == "interpolation"]
    probe = first(dl, 2)
    assert line.meta["bn"] == "interpolate"
    assert at(line, 0.0) == pytest.approx(naive(initial, probe, ce), rel=1e-6, abs=1e-6)
    assert at(line, 1.0) == pytest.approx(naive(model, probe, ce), rel=1e-6, abs=1e-6)
    # Without the initial statistics alpha = 0 is a different model: the test can tell them apart.
    stale = copy.deepcopy(initial)
    stale.load_state_dict(
        {**initial.state_dict(), **{k: v for k, v in model.state_dict().items() if "running" in k}}
    )
    assert abs(naive(stale, probe, ce) - at(line, 0.0)) > 1e-3

    # The initial buffers are checkpointed (tensors only) and restored.
    state = cb.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = LossLandscapeCallback(**SMALL)
    fresh.load_state_dict(loaded)
    expected = {k: v for k, v in initial.state_dict().items() if v.is_floating_point() and "running" in k}
    got = fresh.builder.start_buffers
    assert got is not None and got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_bn_keep_and_recompute_modes(trainer_kwargs):
    pl.seed_everything(0)
    model = BNConvNet()
    dl = images()
    cb = LossLandscapeCallback(
        every_n_epochs=None, max_overhead=None, reliability=False, bn="recompute", **SMALL, **LIGHT
    )
    fit(trainer_kwargs, model, dl, cb, max_epochs=2)
    lines = [r for r in cb.records if isinstance(r, (LineRecord, SurfaceRecord))]
    assert lines and all(r.meta["bn"] == "recompute" for r in lines)
    # Recompute at the centre: the statistics of the probe batches themselves (reference by hand).
    surface = next(r for r in cb.records if isinstance(r, SurfaceRecord))
    ref = copy.deepcopy(model)
    probe = first(dl, 2)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        for x, _ in probe:
            ref(x)
    assert surface.centre_loss == pytest.approx(naive(ref, probe, ce), rel=1e-5)


def test_budget_counts_recompute_metric_and_reliability():
    plain = LandscapeSchedule(  # budget_final=False: the configured sizes, whatever the budget
        resolution=5, final_resolution=7, line_resolution=9, metrics={}, final_metrics={}, budget_final=False
    )
    rel = ReliabilitySettings()
    heavy = LandscapeSchedule(
        resolution=5, final_resolution=7, line_resolution=9, metrics={}, final_metrics={}, bn="recompute",
        metric=True, reliability=lambda plan: reliability_cost(rel, snapshots=64), budget_final=False,
    )  # fmt: skip
    p0, p1 = plain.plan("periodic", 1, 2), heavy.plan("periodic", 1, 2)
    assert p0.cost == 2 * (25 + 9) and not p0.reliability
    assert p1.reliability and p1.cost == 2 * (2 * (25 + 9) + 9 + 40)
    f1 = heavy.plan("final", 1, 2)  # the metric on the final surface too; 3 of each axis line's 9 points
    assert f1.cost == 2 * (2 * (49 + 9 + 2 * (9 - 3)) + 9 + 49 + 40)  # are on the 7 x 7 grid


# --------------------------------------------------------------------------- metric_fn


def test_metric_fn_on_interpolation_line_and_final_surface(trainer_kwargs):
    pl.seed_everything(0)
    model = TinyNet(dropout=0.0)
    initial = copy.deepcopy(model)
    dl = loader(32, 8)
    cb = LossLandscapeCallback(
        max_overhead=None, reliability=False, metric_fn=accuracy, metric_name="accuracy", **SMALL, **LIGHT
    )
    fit(trainer_kwargs, model, dl, cb, max_epochs=2)
    probe = first(dl, 2)
    final = [r for r in cb.records if r.meta["stage"] == "final"]
    surface = next(r for r in final if isinstance(r, SurfaceRecord))
    line = next(r for r in final if r.meta.get("directions") == "interpolation")
    periodic = [r for r in cb.records if isinstance(r, SurfaceRecord) and r.meta["stage"] == "periodic"]
    assert periodic and all(r.metrics is None for r in periodic)  # periodic surfaces stay cheap
    assert surface.meta["metric_name"] == "accuracy" and surface.metrics.shape == surface.losses.shape
    final_acc = naive(model, probe, accuracy)
    assert surface.scalars()["metric/centre"] == pytest.approx(final_acc, abs=1e-6)
    assert at(line, 1.0, line.metrics) == pytest.approx(final_acc, abs=1e-6)
    assert line.scalars()["metric/initial"] == pytest.approx(naive(initial, probe, accuracy), abs=1e-6)
    # Another point of the plane, by hand: the weights moved along the surface's first direction.
    assert np.all((surface.metrics >= 0) & (surface.metrics <= 1))


# --------------------------------------------------------------------------- reliability


def test_reliability_by_default_with_every_landscape(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    model = TinyNet()
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, pca_centred=True, **SMALL)
    trainer = fit(trainer_kwargs, model, loader(32, 8), cb, max_epochs=3)
    records = load_records(trainer.default_root_dir)
    rel = [r for r in records if isinstance(r, ReliabilityRecord)]
    surfaces = [r for r in records if isinstance(r, SurfaceRecord)]
    assert len(rel) == len(surfaces) == 4  # 3 periodic and the final one
    for r, s in zip(
        sorted(rel, key=lambda r: r.meta["name"]), sorted(surfaces, key=lambda r: r.meta["name"])
    ):
        assert r.meta["surface"] == s.meta["name"] and r.meta["stage"] == s.meta["stage"]
        values = r.as_dict()
        assert "distance/basin_radius_axis1" in values and "direction/curvature_spread" in values
        assert values["noise/relative_stderr"] == pytest.approx(s.meta["probe_noise"])
        if s.meta["directions"] == "pca":
            assert s.meta["pca_convention"] == "centred" and r.meta["convention"] == "centred"
            assert 0 <= values["path/on_plane_share"] <= 1 + 1e-9
            assert r.path_losses is not None and np.isfinite(r.path_losses).all()
    final = next(r for r in rel if r.meta["stage"] == "final")
    assert "direction/trace_ratio" in final.as_dict()  # the final trace metric feeds the cross-check
    distance = [r for r in records if isinstance(r, LineRecord) and r.meta.get("directions") == "distance"]
    assert len(distance) == 2 * len(rel)
