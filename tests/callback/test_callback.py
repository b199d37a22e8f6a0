"""End-to-end tests of LossLandscapeCallback with real Lightning Trainers on the CPU."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader, naive_mean_loss
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from lightning_landscape import LineRecord, LossLandscapeCallback, SurfaceRecord, load_records

SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2}
QUIET = {**SMALL, "log_figures": False}  # rendering PNGs is most of a tiny run's time


def fit(kwargs: dict[str, Any], model: pl.LightningModule, train_loader: Any, callbacks: list, **over: Any):
    ckpt_path = over.pop("ckpt_path", None)
    trainer = pl.Trainer(**{**kwargs, **over}, callbacks=callbacks)
    trainer.fit(model, train_loader, ckpt_path=ckpt_path)
    return trainer


def batches_of(dl: Any, n: int) -> list[Any]:
    out = []
    for i, b in enumerate(dl):
        if i >= n:
            break
        out.append(b)
    return out


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"state_dict entry {k} differs"


def user_metrics_from_csv(path: Path, keys: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [(r["step"], r[k]) for r in rows if r.get(k)] for k in keys}


def surfaces(records: list, stage: str) -> list[SurfaceRecord]:
    return [r for r in records if isinstance(r, SurfaceRecord) and r.meta["stage"] == stage]


# --------------------------------------------------------------------------- 1. observing changes nothing


class ModeChecker(pl.Callback):
    """Records, at each training batch start, the train flags and requires_grad of the module."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, dict[str, bool]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        all_train = all(m.training for m in pl_module.modules())
        grads = {n: p.requires_grad for n, p in pl_module.named_parameters()}
        self.seen.append((trainer.current_epoch, all_train, grads))


@pytest.mark.parametrize("own_generator", [False, True], ids=["global-rng", "loader-generator"])
def test_observing_does_not_change_training(trainer_kwargs, tmp_path, own_generator):
    def run(with_callback: bool, name: str):
        pl.seed_everything(7)
        model = TinyNet(norm="batch", dropout=0.3)
        extra = {"generator": torch.Generator().manual_seed(3)} if own_generator else {}
        dl = loader(48, 8, shuffle=True, noise=0.1, **extra)
        checker = ModeChecker()
        cbs: list = [checker]
        if with_callback:
            cbs.insert(0, LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=2, **SMALL))
        logger = CSVLogger(tmp_path, name=name)
        trainer = fit(trainer_kwargs, model, dl, cbs, max_epochs=3, limit_train_batches=None, logger=logger)
        return model, trainer, checker, Path(logger.log_dir) / "metrics.csv"

    m1, t1, c1, csv1 = run(True, "with")
    m2, t2, c2, csv2 = run(False, "without")

    assert_same_state(m1, m2)
    for attr in ("logged_metrics", "callback_metrics"):
        d1, d2 = getattr(t1, attr), getattr(t2, attr)
        assert d1.keys() == d2.keys()
        assert {"train_loss_step", "train_loss_epoch"} <= d1.keys()
        for k in d1:
            assert torch.equal(d1[k], d2[k]), f"{attr}[{k}] differs"
    keys = ("train_loss_step", "train_loss_epoch", "epoch")
    got1, got2 = user_metrics_from_csv(csv1, keys), user_metrics_from_csv(csv2, keys)
    assert got1["train_loss_step"] and got1["train_loss_epoch"]
    # The landscape scalars add rows with only `landscape/...` set; compare the user's rows that carry a loss.
    with open(csv1, newline="") as fh:
        header = next(csv.reader(fh))
    assert "landscape/loss/centre" in header
    assert got1["train_loss_step"] == got2["train_loss_step"]
    assert got1["train_loss_epoch"] == got2["train_loss_epoch"]

    # Landscapes ran after epochs 0 and 1; in epochs 1 and 2 the model still trains with grads on.
    later = [s for s in c1.seen if s[0] >= 1]
    assert later and all(train for _, train, _ in later)
    assert all(grads == c2.seen[0][2] for _, _, grads in later)
    assert all(all(grads.values()) for _, _, grads in later)


# --------------------------------------------------------------------------- 2. TensorBoard output


def test_tensorboard_images_and_scalars(trainer_kwargs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    model = TinyNet()
    dl = loader(32, 8)
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, **SMALL)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = fit(trainer_kwargs, model, dl, [cb], max_epochs=3, logger=logger)
    logger.experiment.flush()

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images, scalars = set(acc.Tags()["images"]), set(acc.Tags()["scalars"])
    assert {
        "landscape/surface",
        "landscape/interpolation",
        "landscape/final/surface",
        "landscape/final/interpolation",
        "landscape/final/lines",
    } <= images
    periodic_steps = [4, 8, 12]
    assert [e.step for e in acc.Images("landscape/surface")] == periodic_steps
    assert [e.step for e in acc.Images("landscape/interpolation")] == periodic_steps
    assert all(e.encoded_image_string.startswith(b"\x89PNG") for e in acc.Images("landscape/surface"))
    for tag in (
        "landscape/loss/centre",
        "landscape/explained_variance/pc1",
        "landscape/explained_variance/pc2",
        "landscape/loss/surface_min",
        "landscape/loss/surface_max",
        "landscape/distance_from_init",
    ):
        assert tag in scalars
        assert [e.step for e in acc.Scalars(tag)] == periodic_steps
    for tag in ("landscape/final/loss/centre", "landscape/final/explained_variance/pc1"):
        assert [e.step for e in acc.Scalars(tag)] == [trainer.global_step]
    assert [e.step for e in acc.Images("landscape/final/surface")] == [trainer.global_step]
    # The reliability indicators, on by default: scalars, the distance figure and the checks' table.
    assert {"landscape/distance", "landscape/final/distance"} <= images
    for tag in ("landscape/reliability/distance/basin_radius_axis1", "landscape/reliability/failed_checks"):
        assert [e.step for e in acc.Scalars(tag)] == periodic_steps
    assert "landscape/final/reliability/path/on_plane_share" in scalars
    texts = {t for t in acc.Tags()["tensors"]}
    assert "landscape/final/reliability/text_summary" in texts
    (event,) = acc.Tensors("landscape/final/reliability/text_summary")
    assert b"| check | value | threshold | status |" in event.tensor_proto.string_val[0]

    # The logged centre loss is the loss of the final weights on the probe batches, in eval mode.
    expected = naive_mean_loss(model, batches_of(dl, SMALL["num_batches"]))
    final_centre = acc.Scalars("landscape/final/loss/centre")[0].value
    assert final_centre == pytest.approx(expected, rel=1e-5)
    # At the last epoch end the weights were already the final ones: same loss.
    assert acc.Scalars("landscape/loss/centre")[-1].value == pytest.approx(expected, rel=1e-5)
    pc1 = [e.value for e in acc.Scalars("landscape/explained_variance/pc1")]
    assert all(0 < v <= 1 for v in pc1)
    for e in acc.Scalars("landscape/loss/surface_min"):
        centre = next(c.value for c in acc.Scalars("landscape/loss/centre") if c.step == e.step)
        assert e.value <= centre + 1e-6


# --------------------------------------------------------------------------- 3. records


def test_records_random_before_two_snapshots_then_pca(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    model = TinyNet()
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_epochs=2, seed=11, **QUIET)
    trainer = fit(trainer_kwargs, model, loader(32, 8), [cb], max_epochs=3)
    records = load_records(trainer.default_root_dir)
    assert len(records) == len(cb.records)

    periodic = surfaces(records, "periodic")
    final = surfaces(records, "final")
    assert [r.meta["epoch"] for r in periodic] == [0, 1, 2]
    assert [r.meta["global_step"] for r in periodic] == [4, 8, 12]
    assert len(final) == 1 and final[0].meta["global_step"] == 12
    # Epoch 0: only the initial snapshot exists -> seeded random directions; afterwards PCA.
    assert periodic[0].meta["directions"] == "random" and periodic[0].meta["seed"] == 11
    assert periodic[0].path is None
    for r in (*periodic[1:], *final):
        assert r.meta["directions"] == "pca"
        ev = r.meta["explained_variance"]
        assert len(ev) == 2 and 0 <= ev[1] <= ev[0] <= 1 and sum(ev) <= 1 + 1e-9
        assert r.path is not None and r.path.shape[1] == 2
        np.testing.assert_array_equal(r.path[-1], [0.0, 0.0])
    for r in (*periodic, *final):
        assert r.kind == "surface"
        res = r.meta["resolution"]
        assert res % 2 == 1 and r.losses.shape == (res, res) == (len(r.ys), len(r.xs))
        assert r.xs[res // 2] == 0.0 and r.ys[res // 2] == 0.0
        assert r.meta["probe_batches"] == 2 and r.meta["probe_samples"] == 16
        assert np.isfinite(r.losses).all()
    assert periodic[0].meta["resolution"] == 3 and final[0].meta["resolution"] == 5

    lines = [r for r in records if isinstance(r, LineRecord)]
    interp = [r for r in lines if r.meta["directions"] == "interpolation"]
    assert sorted(r.meta["stage"] for r in interp) == ["final"] + ["periodic"] * 3
    axes = [r for r in lines if r.meta["directions"] not in ("interpolation", "distance")]
    assert len(axes) == 2 and all(r.meta["stage"] == "final" and r.kind == "line" for r in axes)
    # The interpolation line passes through the current weights at alpha = 1 and initial ones at 0.
    last = interp[-1]
    i1 = int(np.argmin(np.abs(last.alphas - 1.0)))
    assert last.alphas[i1] == pytest.approx(1.0) and last.losses[i1] == pytest.approx(final[0].centre_loss)
    expected = naive_mean_loss(model, batches_of(loader(32, 8), 2))
    assert final[0].centre_loss == pytest.approx(expected, rel=1e-6)


def test_interpolation_starts_at_initial_weights(trainer_kwargs):
    pl.seed_everything(0)
    model = TinyNet(dropout=0.0)
    initial = TinyNet(dropout=0.0)
    initial.load_state_dict(model.state_dict())
    cb = LossLandscapeCallback(
        max_overhead=None, every_n_epochs=None, interpolation_range=(0.0, 1.0), bn="keep", **QUIET
    )
    fit(trainer_kwargs, model, loader(32, 8), [cb])
    (interp,) = [r for r in cb.records if r.meta.get("directions") == "interpolation"]
    assert interp.alphas[0] == 0.0 and interp.meta["bn"] == "keep"
    # bn="keep": alpha = 0 is the initial weights with the final BatchNorm statistics (buffers, not weights).
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        getattr(initial.net[1], name).copy_(getattr(model.net[1], name))
    expected = naive_mean_loss(initial, batches_of(loader(32, 8), 2))
    assert interp.losses[0] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- 4. probe batches


def test_probe_batches_default_and_user_loader(trainer_kwargs):
    pl.seed_everything(0)
    train = loader(64, 8)
    probe = loader(24, 4, seed=5)
    results = {}
    for name, kwargs in (("train", {}), ("user", {"probe_dataloader": probe})):
        pl.seed_everything(0)
        model = TinyNet(dropout=0.0)
        cb = LossLandscapeCallback(
            max_overhead=None,
            every_n_epochs=None,
            resolution=3,
            final_resolution=3,
            line_resolution=3,
            num_batches=3,
            log_figures=False,
            **kwargs,
        )
        fit(trainer_kwargs, model, train, [cb])
        (final,) = surfaces(cb.records, "final")
        results[name] = (model, final)
    model, final = results["train"]
    assert final.meta["probe_batches"] == 3 and final.meta["probe_samples"] == 24
    assert final.centre_loss == pytest.approx(naive_mean_loss(model, batches_of(train, 3)), rel=1e-6)
    # Not just any batches: the first three.
    assert final.centre_loss != pytest.approx(naive_mean_loss(model, batches_of(loader(64, 8, seed=9), 3)))
    model, final = results["user"]
    assert final.meta["probe_batches"] == 3 and final.meta["probe_samples"] == 12
    assert final.centre_loss == pytest.approx(naive_mean_loss(model, batches_of(probe, 3)), rel=1e-6)
    assert final.centre_loss != pytest.approx(naive_mean_loss(model, batches_of(train, 3)), rel=1e-4)


class TwoLoaderNet(TinyNet):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch["a"], batch_idx) + 0.0 * batch["b"][0].sum()


def test_probe_batches_with_several_training_loaders(trainer_kwargs):
    """`fit` with a dict of loaders: probe batches are the combined dicts `training_step` receives."""
    pl.seed_everything(0)
    model = TwoLoaderNet(dropout=0.0)
    cb = LossLandscapeCallback(max_overhead=None, every_n_epochs=None, **QUIET)
    fit(trainer_kwargs, model, {"a": loader(32, 8), "b": loader(16, 4, seed=2)}, [cb])
    (final,) = surfaces(cb.records, "final")
    assert final.meta["probe_batches"] == 2
    assert final.centre_loss == pytest.approx(naive_mean_loss(model, batches_of(loader(32, 8), 2)), rel=1e-6)


# --------------------------------------------------------------------------- 5. models


class FrozenNet(TinyNet):
    def __init__(self) -> None:
        super().__init__(norm="layer")
        self.net[0].requires_grad_(False)


class TiedNet(TinyNet):
    def __init__(self) -> None:
        super().__init__(norm="none", dropout=0.0, hidden=6)
        self.mid_a = nn.Linear(6, 6)
        self.mid_b = nn.Linear(6, 6)
        self.mid_b.weight = self.mid_a.weight

    def forward(self, x):
        h = self.net[2](self.net[0](x))
        return self.net[4](self.mid_b(torch.relu(self.mid_a(h))))


class DictNet(TinyNet):
    def training_step(self, batch, batch_idx):
        return {"loss": super().training_step(batch, batch_idx), "extra": 1}


class NoIndexNet(TinyNet):
    def training_step(self, batch):
        return ce_loss(self, batch)


class ManualNet(TinyNet):
    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = ce_loss(self, batch)
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)


@pytest.mark.parametrize(
    ("model_cls", "loss_fn"),
    [
        (lambda: TinyNet(norm="batch"), None),
        (lambda: TinyNet(norm="layer", dropout=0.5), None),
        (DictNet, None),
        (NoIndexNet, None),
        (ManualNet, ce_loss),
    ],
    ids=["batchnorm-dropout", "layernorm-dropout", "dict-step", "no-batch-idx", "manual-with-loss_fn"],
)
def test_models_give_finite_landscapes(trainer_kwargs, model_cls, loss_fn):
    pl.seed_everything(0)
    model = model_cls()
    cb = LossLandscapeCallback(max_overhead=None, loss_fn=loss_fn, snapshot_every_n_steps=1, **QUIET)
    trainer = fit(trainer_kwargs, model, loader(32, 8), [cb])
    assert trainer.global_step == 8
    stages = [r.meta["stage"] for r in cb.records if isinstance(r, SurfaceRecord)]
    assert stages == ["periodic"] * 2 + ["final"]
    for r in cb.records:
        if r.kind != "reliability":  # its unused indicators are NaN, a basin wider than the scan inf
            assert np.isfinite(r.losses if r.kind != "metrics" else r.values).all()
    (final,) = surfaces(cb.records, "final")
    assert final.centre_loss == pytest.approx(naive_mean_loss(model, batches_of(loader(32, 8), 2)), rel=1e-6)


def test_manual_optimization_with_loss_fn_changes_nothing(trainer_kwargs):
    states = []
    for cbs in ([LossLandscapeCallback(max_overhead=None, loss_fn=ce_loss, **QUIET)], []):
        pl.seed_everything(0)
        model = ManualNet()
        fit(trainer_kwargs, model, loader(32, 8, shuffle=True), cbs)
        states.append(model)
    assert_same_state(*states)


def test_manual_optimization_without_loss_fn_fails_at_start(trainer_kwargs):
    model = ManualNet()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Exception, match="loss_fn") as info:
        fit(trainer_kwargs, model, loader(32, 8), [LossLandscapeCallback(max_overhead=None, **SMALL)])
    assert "manual optimization" in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_frozen_layer_stays_frozen_and_outside_the_landscape(trainer_kwargs):
    pl.seed_everything(0)
    model = FrozenNet()
    frozen_before = {n: p.detach().clone() for n, p in model.net[0].named_parameters()}
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, directions="pca", **QUIET)
    fit(trainer_kwargs, model, loader(32, 8), [cb])
    for n, p in model.net[0].named_parameters():
        assert p.requires_grad is False
        assert torch.equal(p, frozen_before[n])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cb.recorder.snapshots[0].numel() == trainable
    assert not any(n.startswith("net.0.") for n in cb._param_names)
    for r in cb.records:
        if r.kind != "reliability":  # its unused indicators are NaN, a basin wider than the scan inf
            assert np.isfinite(r.losses if r.kind != "metrics" else r.values).all()


def test_tied_parameters(trainer_kwargs):
    pl.seed_everything(0)
    model = TiedNet()
    cb = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, **QUIET)
    fit(trainer_kwargs, model, loader(32, 8), [cb])
    assert model.mid_a.weight is model.mid_b.weight
    unique = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied ones
    assert cb.recorder.snapshots[0].numel() == unique
    for r in cb.records:
        if r.kind != "reliability":  # its unused indicators are NaN, a basin wider than the scan inf
            assert np.isfinite(r.losses if r.kind != "metrics" else r.values).all()
    (final,) = surfaces(cb.records, "final")
    assert final.centre_loss == pytest.approx(naive_mean_loss(model, batches_of(loader(32, 8), 2)), rel=1e-6)


# --------------------------------------------------------------------------- 6. bad input


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"resolution": 4}, "resolution"),
        ({"resolution": 1}, "resolution"),
        ({"resolution": 5.0}, "resolution"),
        ({"final_resolution": 8}, "final_resolution"),
        ({"line_resolution": 2}, "line_resolution"),
        ({"directions": "bogus"}, "directions"),
        ({"span": -1}, "span"),
        ({"span": (1, 0)}, "span"),
        ({"span": "wide"}, "span"),
        ({"margin": -1}, "margin"),
        ({"num_batches": 0}, "num_batches"),
        ({"snapshot_every_n_steps": 0}, "snapshot_every_n_steps"),
        ({"snapshot_every_n_epochs": 0}, "snapshot_every_n_epochs"),
        ({"snapshot_every_n_steps": 5, "snapshot_every_n_epochs": 1}, "snapshot_every_n_epochs"),
        ({"snapshot_every_n_steps": 5, "snapshot_every_n_epochs": 1}, "snapshot_every_n_steps"),
        ({"directions": "pca "}, "directions"),
        ({"name": ".."}, "name"),
        ({"name": "."}, "name"),
        ({"resolution": 10001}, "resolution"),
        ({"final_resolution": 4001}, "final_resolution"),
        ({"metrics": {"eigenvalues": {"max_iter": None}}}, "metrics"),
        ({"final_metrics": {"trace": {"samples": "many"}}}, "final_metrics"),
        ({"max_snapshots": 1}, "max_snapshots"),
        ({"seed": "a"}, "seed"),
        ({"interpolation_range": (1, 0)}, "interpolation_range"),
        ({"interpolation_range": (0, 1, 2)}, "interpolation_range"),
        ({"interpolation_range": ("a", "b")}, "interpolation_range"),
        ({"loss_fn": 3}, "loss_fn"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, "every_n_epochs"),
        ({"probe_dataloader": 3}, "probe_dataloader"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        LossLandscapeCallback(max_overhead=None, **kwargs)


# --------------------------------------------------------------------------- 7. failures never stop training


def test_nan_points_warn_are_stored_and_drawn(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    model = TinyNet(dropout=0.0, lr=0.01)
    ref = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))

    def far_is_nan(m, batch):
        norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in m.parameters()))
        loss = ce_loss(m, batch)
        return loss if norm < 2.5 * ref else loss * float("nan")

    cb = LossLandscapeCallback(
        max_overhead=None,
        loss_fn=far_is_nan,
        directions="random",
        span=4.0,
        every_n_epochs=None,
        resolution=5,
        final_resolution=5,
        line_resolution=5,
        num_batches=2,
    )
    with pytest.warns(RuntimeWarning, match="non-finite"):
        trainer = fit(trainer_kwargs, model, loader(32, 8), [cb])
    assert trainer.global_step == 8
    records = load_records(tmp_path)
    (final,) = surfaces(records, "final")
    assert np.isnan(final.losses).any() and np.isfinite(final.losses).any()
    assert math.isfinite(final.centre_loss)
    assert np.isnan(final.losses[0, 0]) and np.isnan(final.losses[-1, -1])  # the far corners
    assert final.meta["nonfinite"] == int(np.isnan(final.losses).sum())
    figures = sorted(p.name for p in (tmp_path / "landscape" / "figures").glob("*.png"))
    assert "landscape_final_surface_step00000008.png" in figures


class _FailingCSV(CSVLogger):
    def log_metrics(self, metrics, step=None):
        if any(k.startswith("landscape/") for k in metrics):
            raise RuntimeError("metrics backend down")
        super().log_metrics(metrics, step)


class _Experiment:
    def __init__(self, inner) -> None:
        self._inner = inner

    def add_figure(self, *a, **k):
        raise ConnectionError("image upload failed")

    def add_image(self, *a, **k):  # figures drawn in the background arrive as images
        raise ConnectionError("image upload failed")

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _FailingTB(TensorBoardLogger):
    @property
    def experiment(self):
        return _Experiment(super().experiment)


@pytest.mark.parametrize("logger_cls", [_FailingCSV, _FailingTB], ids=["log_metrics", "experiment"])
def test_failing_logger_warns_once_and_training_finishes(trainer_kwargs, tmp_path, logger_cls):
    pl.seed_everything(0)
    logger = logger_cls(tmp_path, name="run")
    cb = LossLandscapeCallback(max_overhead=None, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(trainer_kwargs, TinyNet(), loader(32, 8), [cb], max_epochs=3, logger=logger)
    assert trainer.global_step == 12
    failed = [w for w in caught if "failed" in str(w.message) and issubclass(w.category, RuntimeWarning)]
    assert len(failed) == 1, [str(w.message) for w in failed]
    records = load_records(logger.log_dir)
    stages = sorted(r.meta["stage"] for r in records if isinstance(r, SurfaceRecord))
    assert stages == ["final"] + ["periodic"] * 3


def test_raising_loss_fn_warns_and_training_is_unchanged(trainer_kwargs):
    def broken(model, batch):
        torch.rand(3)  # consume random numbers first: they must be given back
        raise KeyError("no such column")

    states = []
    for cbs in ([LossLandscapeCallback(max_overhead=None, loss_fn=broken, **QUIET)], []):
        pl.seed_everything(0)
        model = TinyNet(dropout=0.5)
        if cbs:
            with pytest.warns(RuntimeWarning, match="no such column"):
                trainer = fit(trainer_kwargs, model, loader(32, 8, shuffle=True, noise=0.1), cbs)
            assert trainer.global_step == 8 and cbs[0].records == []
        else:
            fit(trainer_kwargs, model, loader(32, 8, shuffle=True, noise=0.1), cbs)
        states.append(model)
    assert_same_state(*states)


# --------------------------------------------------------------------------- 8. no logger / CSV logger


def test_no_logger_writes_pngs_and_records(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    fit(trainer_kwargs, TinyNet(), loader(32, 8), [LossLandscapeCallback(max_overhead=None, **SMALL)])
    names = sorted(p.name for p in (tmp_path / "landscape" / "figures").glob("*.png"))
    assert names == sorted(
        [
            "landscape_surface_step00000004.png",
            "landscape_surface_step00000008.png",
            "landscape_interpolation_step00000004.png",
            "landscape_interpolation_step00000008.png",
            "landscape_final_surface_step00000008.png",
            "landscape_final_interpolation_step00000008.png",
            "landscape_final_lines_step00000008.png",
            "landscape_distance_step00000004.png",  # the reliability's loss vs log distance
            "landscape_distance_step00000008.png",
            "landscape_final_distance_step00000008.png",
        ]
    )
    for p in (tmp_path / "landscape" / "figures").glob("*.png"):
        assert p.read_bytes().startswith(b"\x89PNG")
    # 2 periodic (surface + line) and 4 final records, plus a metrics record per period and at the end,
    # plus a reliability record and two distance lines with each landscape.
    assert len(load_records(tmp_path / "landscape")) == 2 * 2 + 4 + 3 + 3 * 3


def test_csv_logger_gets_scalars_and_pngs(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    model = TinyNet()
    logger = CSVLogger(tmp_path, name="csv")
    trainer = fit(
        trainer_kwargs,
        model,
        loader(32, 8),
        [LossLandscapeCallback(max_overhead=None, **SMALL)],
        logger=logger,
    )
    log_dir = Path(logger.log_dir)
    with open(log_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    key = "landscape/loss/centre"
    centre = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
    assert [s for s, _ in centre] == [4, 8]
    final = [float(r["landscape/final/loss/centre"]) for r in rows if r.get("landscape/final/loss/centre")]
    expected = naive_mean_loss(model, batches_of(loader(32, 8), 2))
    assert len(final) == 1 and final[0] == pytest.approx(expected, rel=1e-5)
    assert centre[-1][1] == pytest.approx(expected, rel=1e-5)
    pngs = {p.name for p in (log_dir / "landscape" / "figures").glob("*.png")}
    assert "landscape_surface_step00000004.png" in pngs and "landscape_final_surface_step00000008.png" in pngs
    assert not (Path(trainer.default_root_dir) / "landscape").exists()


# --------------------------------------------------------------------------- 9. checkpoints


def test_checkpoint_loads_weights_only_and_resumes(trainer_kwargs, tmp_path):
    pl.seed_everything(0)
    cb_a = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, name="a", **QUIET)
    cb_b = LossLandscapeCallback(max_overhead=None, directions="random", seed=3, name="b", **QUIET)
    assert cb_a.state_key != cb_b.state_key
    trainer = fit(trainer_kwargs, TinyNet(), loader(32, 8), [cb_a, cb_b])
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert {cb_a.state_key, cb_b.state_key} <= ckpt["callbacks"].keys()
    state = ckpt["callbacks"][cb_a.state_key]["recorder"]
    assert state["steps"] == cb_a.recorder.steps == list(range(9))
    assert torch.equal(state["snapshots"], cb_a.recorder.stacked())

    fresh = LossLandscapeCallback(max_overhead=None, snapshot_every_n_steps=1, name="a", **QUIET)
    assert fresh.state_key == cb_a.state_key
    fit(trainer_kwargs, TinyNet(), loader(32, 8), [fresh], max_epochs=3, ckpt_path=path)
    assert fresh.recorder.steps == list(range(13))
    assert torch.equal(fresh.recorder.snapshots[5], cb_a.recorder.snapshots[5])
