"""The callback's curvature and sharpness metrics and Hessian-direction surfaces, end to end on the CPU."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader
from lightning.pytorch.loggers import CSVLogger
from torch.func import functional_call

from lightning_landscape import LossLandscapeCallback, MetricsRecord, load_records
from lightning_landscape.callback import metrics as metrics_module
from lightning_landscape.functional import hessian_eigenvalues, sam_sharpness

SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}


def _fit(trainer_kwargs, model, cbs, **over):
    trainer = pl.Trainer(**{**trainer_kwargs, **over}, callbacks=cbs)
    trainer.fit(model, loader(32, 8))
    return trainer


def _probe(n=2):
    return [b for _, b in zip(range(n), loader(32, 8))]


def _exact_hessian(model, batches):
    """Float64 Hessian of the mean probe loss over the trainable parameters, model in eval mode."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    w0 = torch.cat([p.detach().double().reshape(-1) for _, p in named])
    m = model.double().eval()

    def loss(flat):
        params, off = {}, 0
        for n, p in named:
            params[n] = flat[off : off + p.numel()].view(p.shape)
            off += p.numel()
        return torch.stack(
            [ce_loss(lambda x: functional_call(m, params, (x,)), (x.double(), y)) for x, y in batches]
        ).mean()

    return torch.autograd.functional.hessian(loss, w0)


def test_metrics_are_logged_recorded_and_right(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    model = TinyNet(dropout=0.3)
    cb = LossLandscapeCallback(max_overhead=None, seed=5, loss_fn=ce_loss, **SMALL)
    logger = CSVLogger(tmp_path, name="csv")
    _fit(trainer_kwargs, model, [cb], logger=logger)
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))

    def logged(key):
        return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]

    assert [s for s, _ in logged("landscape/hessian/lambda_max")] == [4, 8]
    assert [s for s, _ in logged("landscape/sharpness/sam")] == [4, 8]
    assert logged("landscape/hessian/trace") == []  # not a periodic default
    for key in (
        "hessian/lambda_max",
        "hessian/lambda_min",
        "hessian/trace",
        "hessian/trace_stderr",
        "sharpness/sam",
        "sharpness/sam_first_order",
        "sharpness/average",
        "sharpness/average_stderr",
    ):
        assert len(logged(f"landscape/final/{key}")) == 1, key

    records = [r for r in load_records(tmp_path) if isinstance(r, MetricsRecord)]
    assert [r.meta["stage"] for r in records] == ["periodic", "periodic", "final"]
    final = records[-1]
    values = final.as_dict()
    assert values["hessian/lambda_max"] == logged("landscape/final/hessian/lambda_max")[0][1]
    # Seeds of the random probes are stored, so another run can use the same protocol.
    for name in ("eigenvalues", "trace", "average"):
        assert final.meta[name]["seed"] == 5
    assert final.meta["eigenvalues"]["max_iter"] == 50 and final.meta["trace"]["samples"] == 64
    assert final.meta["sam"]["probe_samples"] == 16

    # Against independent references on the final weights.
    batches = _probe()
    sam = sam_sharpness(model.float(), ce_loss, batches, rho=0.05)
    assert values["sharpness/sam"] == pytest.approx(sam.sharpness, rel=1e-4, abs=1e-7)
    h = _exact_hessian(model, batches)
    evals = torch.linalg.eigvalsh(h).numpy()
    assert values["hessian/lambda_max"] == pytest.approx(evals[-1], rel=1e-3)
    assert abs(values["hessian/trace"] - float(torch.trace(h))) <= 4 * values["hessian/trace_stderr"]


def test_lanczos_starts_warm_from_the_last_landscapes_ritz_vectors(trainer_kwargs):
    """Each landscape's 5-step Lanczos starts from the Ritz vectors of the one before: the final lambda_max
    is near the exact one (float64 Hessian) where a 5-step Lanczos from the seeded random start is not."""
    pl.seed_everything(0)
    model = TinyNet()
    five = {"eigenvalues": {"which": "both", "max_iter": 5, "tol": 1e-9}}
    cb = LossLandscapeCallback(
        max_overhead=None, loss_fn=ce_loss, metrics=five, final_metrics=five, reliability=False, **SMALL
    )
    _fit(trainer_kwargs, model, [cb], max_epochs=4)
    metrics = [r for r in cb.records if r.kind == "metrics"]
    assert [r.meta["eigenvalues"]["start"] for r in metrics] == ["rademacher"] + ["warm"] * (len(metrics) - 1)
    batches = _probe()
    exact = float(torch.linalg.eigvalsh(_exact_hessian(model, batches))[-1])
    model.float()
    cold = hessian_eigenvalues(model, ce_loss, batches, which="both", max_iter=5, tol=1e-9)
    warm = metrics[-1].as_dict()["hessian/lambda_max"]
    assert abs(warm - exact) < 1e-3 * exact < abs(cold.lambda_max - exact)


def test_hessian_directions_and_all_metrics_do_not_change_training(trainer_kwargs):
    states = []
    every = ("eigenvalues", "trace", "sam", "average")
    for with_cb in (True, False):
        pl.seed_everything(3)
        model = TinyNet(norm="batch", dropout=0.5)
        cbs = []
        if with_cb:
            cbs = [
                LossLandscapeCallback(
                    max_overhead=None,
                    directions="hessian",
                    metrics=every,
                    snapshot_every_n_steps=2,
                    **SMALL,
                )
            ]
        trainer = pl.Trainer(**trainer_kwargs, callbacks=cbs)
        trainer.fit(model, loader(48, 8, shuffle=True, noise=0.1))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        if with_cb:
            surfaces = [r for r in cbs[0].records if r.kind == "surface"]
            assert surfaces and all(r.meta["directions"] == "hessian" for r in surfaces)
            assert all(r.meta["lambda_max"] >= r.meta["lambda_min"] for r in surfaces)
            metrics = [r for r in cbs[0].records if r.kind == "metrics"]
            assert len(metrics) == 3 and "hessian/trace" in metrics[0].as_dict()
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_failing_and_nan_metrics_warn_and_the_rest_are_kept(trainer_kwargs, monkeypatch):
    with pytest.raises(ValueError, match=r"`metrics`.*'sam'.*`rho`"):  # a bad option: refused up front
        LossLandscapeCallback(metrics={"sam": {"rho": -1.0}})

    def broken_sam(objective, rho=0.05, adaptive=False):
        raise RuntimeError(f"`rho`={rho} exploded")

    monkeypatch.setitem(metrics_module.METRIC_CORES, "sam", broken_sam)
    pl.seed_everything(0)
    cb = LossLandscapeCallback(
        max_overhead=None, metrics={"sam": {"rho": 0.5}, "eigenvalues": None}, final_metrics=None, **SMALL
    )
    with pytest.warns(RuntimeWarning, match="'sam'.*`rho`"):
        trainer = _fit(trainer_kwargs, TinyNet(), [cb])
    assert trainer.global_step == 8
    metrics = [r for r in cb.records if r.kind == "metrics"]
    assert len(metrics) == 2 and all("hessian/lambda_max" in r.as_dict() for r in metrics)
    assert all("sam" in r.meta["errors"] for r in metrics)

    def nan_loss(model, batch):
        return ce_loss(model, batch) * math.nan

    cb = LossLandscapeCallback(
        max_overhead=None,
        loss_fn=nan_loss,
        metrics=("eigenvalues",),
        final_metrics=None,
        **SMALL,
    )
    with pytest.warns(RuntimeWarning, match="'eigenvalues'"):
        _fit(trainer_kwargs, TinyNet(), [cb])
    metrics = [r for r in cb.records if r.kind == "metrics"]
    assert metrics and all(np.isnan(r.as_dict()["hessian/lambda_max"]) for r in metrics)


def test_no_metrics_when_switched_off(trainer_kwargs):
    pl.seed_everything(0)
    cb = LossLandscapeCallback(max_overhead=None, metrics=None, final_metrics=(), **SMALL)
    _fit(trainer_kwargs, TinyNet(), [cb])
    assert cb.records and not any(r.kind == "metrics" for r in cb.records)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"metrics": ("lambda",)}, "metrics"),
        ({"metrics": "sam"}, "metrics"),
        ({"metrics": {"sam": {"sigma": 1}}}, "metrics"),
        ({"metrics": {"sam": 0.1}}, "metrics"),
        ({"final_metrics": ("trace", "bogus")}, "final_metrics"),
        ({"final_metrics": {"eigenvalues": {"params": []}}}, "final_metrics"),
    ],
)
def test_bad_metric_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        LossLandscapeCallback(max_overhead=None, **kwargs)


def test_metrics_record_round_trip(tmp_path):
    from lightning_landscape.records.record import load_record, save_record

    rec = MetricsRecord.from_dict({"hessian/lambda_max": 2.5, "sharpness/sam": math.nan}, {"global_step": 3})
    path = save_record(rec, tmp_path, "m")
    back = load_record(path)
    assert isinstance(back, MetricsRecord) and back.meta == {"global_step": 3}
    assert back.as_dict()["hessian/lambda_max"] == 2.5 and math.isnan(back.as_dict()["sharpness/sam"])
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert data["names"].dtype.kind == "U"
