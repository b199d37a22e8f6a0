"""The callback's critical sharpness along the optimizer's actual update, against an independent reference.

Full-batch least squares is exactly quadratic in the weights: with the weights ``w_s`` before step ``s``
(recorded by a separate callback), the update ``d = (w_{s+1} - w_s) / lr``, the full-batch gradient ``g``
and Hessian ``H`` from autograd, ``lambda_c = d^T H d / (-g.d)`` whatever the optimizer.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.optim import SAM

LR = 0.05


def data(seed: int, n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return TensorDataset(x, y)


def mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


class LeastSquares(pl.LightningModule):
    def __init__(self, optimizer: str, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 2).double()
        self.drop = nn.Dropout(dropout)  # draws random numbers in training only
        self.optimizer = optimizer
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1  # Python state the callback's evaluations must leave as it was
        return mse(self, batch)

    def configure_optimizers(self) -> Any:
        p = self.parameters()
        return {
            "sgd": lambda: torch.optim.SGD(p, lr=LR),
            "momentum": lambda: torch.optim.SGD(p, lr=LR, momentum=0.9),
            "adam": lambda: torch.optim.Adam(p, lr=LR),
            "adamw": lambda: torch.optim.AdamW(p, lr=LR, weight_decay=0.1),
            "sam": lambda: SAM(p, torch.optim.SGD, rho=0.05, lr=LR),
        }[self.optimizer]()


class WeightLog(Callback):
    """The weights before every optimizer step (an independent record of the trajectory)."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.weights.append(torch.cat([p.detach().reshape(-1).clone() for p in pl_module.parameters()]))


def reference(model: LeastSquares, w: torch.Tensor, d: torch.Tensor, dataset: TensorDataset) -> float:
    """``d^T H d / (-g.d)`` at ``w``, by autograd on the full-batch loss as a function of flat weights."""
    x, y = dataset.tensors
    shapes = [p.shape for p in model.parameters()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        weight = flat[: shapes[0].numel()].reshape(shapes[0])
        bias = flat[shapes[0].numel() :]
        return ((x @ weight.T + bias - y) ** 2).mean()

    g = torch.autograd.functional.jacobian(loss, w)
    H = torch.autograd.functional.hessian(loss, w)
    slope = -float(g @ d)
    return float(d @ H @ d) / slope if slope > 0 else float("nan")


def fit(
    trainer_kwargs: dict[str, Any], optimizer: str, dropout: float = 0.0, batch_size: int = 64, **options: Any
) -> tuple[Any, Any, Any]:
    log = WeightLog()
    cb = LossLandscapeCallback(every_n_epochs=None, final=False, metrics=None, final_metrics=None,
                               reliability=False, num_batches=1, **options)  # fmt: skip
    model = LeastSquares(optimizer, dropout)
    shuffle = torch.Generator().manual_seed(3)
    loader = DataLoader(data(0), batch_size=batch_size, shuffle=batch_size < 64, generator=shuffle)
    kwargs = {**trainer_kwargs, "max_epochs": 8, "limit_train_batches": 64 // batch_size}
    pl.Trainer(callbacks=[log, cb], **kwargs).fit(model, loader)
    return cb, log, model


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw", "sam"])
def test_lambda_c_along_the_actual_update_matches_the_quadratic(
    trainer_kwargs: dict[str, Any], optimizer: str
) -> None:
    cb, log, model = fit(trainer_kwargs, optimizer, critical_sharpness=2)
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    trajectory = [*log.weights, final]
    history = cb.critical.history
    assert [step for step, _, _ in history] == [1, 3, 5, 7]  # the steps from 0, 2, 4, 6
    checked = 0
    for step, _, scalars in history:
        d = (trajectory[step] - trajectory[step - 1]) / LR
        truth = reference(model, trajectory[step - 1], d, data(0))
        if np.isnan(truth):  # the update goes uphill (momentum can): flagged, no lambda_c
            assert scalars["critical/uphill"] == 1.0 and "critical/lambda_c" not in scalars
            continue
        assert scalars["critical/uphill"] == 0.0
        assert scalars["critical/lambda_c"] == pytest.approx(truth, rel=1e-2)
        assert scalars["critical/ratio"] == pytest.approx(
            scalars["critical/lambda_c"] / scalars["critical/threshold"], rel=1e-12
        )
        checked += 1
    assert checked >= 2
    if optimizer in ("sgd", "sam"):
        assert history[0][2]["critical/threshold"] == pytest.approx(2 / LR)
    line = [r for r in cb.records if r.meta.get("directions") == "critical"]
    assert line and line[-1].alphas[0] == 0.0 and np.all(np.diff(line[-1].alphas) >= 0)


def test_training_is_unchanged_by_measuring(trainer_kwargs: dict[str, Any]) -> None:
    """Bit for bit, with the loss from training_step (the module's Python state restored too), dropout
    and a shuffled loader (random state given back), mini-batches (some steps uphill on the probe)."""
    cb, _, measured = fit(trainer_kwargs, "adam", dropout=0.2, batch_size=16, critical_sharpness=1)
    _, _, plain = fit(trainer_kwargs, "adam", dropout=0.2, batch_size=16, critical_sharpness=None)
    assert len(cb.critical.history) == 32
    for a, b in zip(measured.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    assert measured.calls == plain.calls == 32


def test_relative_critical_sharpness_of_a_second_loss(trainer_kwargs: dict[str, Any]) -> None:
    second = data(1)
    probe = (DataLoader(second, batch_size=64), mse)
    cb, log, model = fit(trainer_kwargs, "sgd", critical_sharpness=1, critical_probe=probe)
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    trajectory = [*log.weights, final]
    seen = 0
    for step, _, scalars in cb.critical.history:
        d = (trajectory[step] - trajectory[step - 1]) / LR
        truth = reference(model, trajectory[step - 1], d, second)
        if np.isnan(truth):
            assert scalars["critical/relative_uphill"] == 1.0
            assert "critical/relative_lambda_c" not in scalars
        else:
            assert scalars["critical/relative_uphill"] == 0.0
            assert scalars["critical/relative_lambda_c"] == pytest.approx(truth, rel=1e-2)
            seen += 1
        own = reference(model, trajectory[step - 1], d, data(0))
        assert scalars["critical/lambda_c"] == pytest.approx(own, rel=1e-2)
    assert seen >= 1


def test_a_resumed_fit_keeps_the_series(trainer_kwargs: dict[str, Any], tmp_path: Any) -> None:
    """Resumed from a checkpoint (loaded with ``weights_only=True``), the series goes on as in one fit,
    and the resumed fit's records join the first fit's in its folder (each record carries the run id)."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_landscape import load_records

    def run(epochs: int, ckpt: Any = None) -> LossLandscapeCallback:
        cb = LossLandscapeCallback(every_n_epochs=None, final=False, metrics=None, final_metrics=None,
                                   reliability=False, num_batches=1, critical_sharpness=1)  # fmt: skip
        folder = tmp_path / ("ckpt" if ckpt is None else "ckpt-resumed")
        saver = ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1)
        kwargs = {**trainer_kwargs, "max_epochs": epochs, "limit_train_batches": 1}
        kwargs["enable_checkpointing"] = True
        trainer = pl.Trainer(callbacks=[cb, saver], **kwargs)
        trainer.fit(LeastSquares("sgd"), DataLoader(data(0), batch_size=64), ckpt_path=ckpt)
        return cb

    whole = run(4)
    assert [step for step, _, _ in whole.critical.history] == [1, 2, 3, 4]
    ckpt = tmp_path / "ckpt" / "epoch=1-step=2.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"][whole.state_key]["critical"]
    assert [step for step, _, _ in state["history"]] == [1, 2]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*records of another run")
        resumed = run(4, ckpt)
    assert resumed.critical.history == whole.critical.history  # the values too (the same searches)
    line = [r for r in resumed.records if r.meta.get("directions") == "critical"][-1]
    assert line.meta["history_steps"] == [1, 2, 3, 4]
    assert not (tmp_path / "landscape-2").exists()
    assert {r.meta["run_id"] for r in load_records(tmp_path / "landscape")} == {whole.publisher.run_id}


# The state_key of a default callback before the critical options were settings: checkpoints carry it.
STATE_KEY = (
    "LossLandscapeCallback{'name': None, 'every_n_epochs': 1, 'directions': 'pca', 'seed': 0, "
    "'include_1d': False, 'resolution': 11, 'final_resolution': 31, 'line_resolution': 41, 'span': None, "
    "'margin': 0.25, 'num_batches': 4, 'interpolation_range': (-0.5, 1.5), 'snapshot_every_n_steps': 10, "
    "'snapshot_every_n_epochs': None, 'max_snapshots': 64, 'snapshot_dtype': 'None', "
    "'snapshot_budget_bytes': None, 'snapshot_storage': 'auto', 'max_overhead': 0.1}"
)


def test_the_settings_text_shows_the_critical_options_and_state_keys_stay() -> None:
    from lightning_landscape.callback.publish import describe_settings

    probe = (DataLoader(data(1), batch_size=64), mse)
    cb = LossLandscapeCallback(critical_sharpness=5, critical_probe=probe)
    shown = describe_settings(cb._setting_values(), None)
    assert shown["critical_sharpness"] == "every 5 optimizer step(s)"
    assert shown["critical_probe"] == "(dataloader, loss_fn)"
    off = describe_settings(LossLandscapeCallback()._setting_values(), None)
    assert off["critical_sharpness"] == off["critical_probe"] == "none"
    # appended out of the state_key: a checkpoint written before still finds its callback's state
    assert LossLandscapeCallback().state_key == cb.state_key == STATE_KEY


def test_options_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="`critical_sharpness` must be an integer >= 1 or None"):
        LossLandscapeCallback(critical_sharpness=0)
    with pytest.raises(ValueError, match="`critical_probe` must be a pair"):
        LossLandscapeCallback(critical_sharpness=5, critical_probe="loader")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`critical_probe`"):
        LossLandscapeCallback(critical_sharpness=5, critical_probe=([1], "not callable"))  # type: ignore[arg-type]


def test_scalars_figures_and_records_reach_the_loggers(trainer_kwargs: dict[str, Any], tmp_path: Any) -> None:
    import csv
    from pathlib import Path

    from lightning.pytorch.loggers import CSVLogger

    from lightning_landscape import load_records
    from lightning_landscape.records.record import LineRecord

    logger = CSVLogger(tmp_path, name="csv")
    cb = LossLandscapeCallback(every_n_epochs=None, final=False, reliability=False, num_batches=1,
                               critical_sharpness=3)  # fmt: skip
    kwargs = {**trainer_kwargs, "max_epochs": 2, "limit_train_batches": 4, "logger": logger}
    pl.Trainer(callbacks=[cb], **kwargs).fit(LeastSquares("sgd"), DataLoader(data(0), batch_size=16))
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    logged = [
        (int(r["step"]), float(r["landscape/critical/lambda_c"]))
        for r in rows
        if r.get("landscape/critical/lambda_c")
    ]
    expected = [
        (step, s["critical/lambda_c"]) for step, _, s in cb.critical.history if "critical/lambda_c" in s
    ]
    assert [step for step, _, _ in cb.critical.history] == [1, 4, 7]  # steps taken from 0, 3, 6
    assert logged == [(step, pytest.approx(v, rel=1e-6)) for step, v in expected] and logged
    pngs = {p.name for p in Path(logger.log_dir).glob("landscape/figures/*.png")}
    pngs |= {p.name for p in Path(tmp_path).rglob("*.png")}
    assert any("critical_line" in name for name in pngs), sorted(pngs)
    assert any("critical_step" in name for name in pngs), sorted(pngs)
    lines = [
        r
        for r in load_records(tmp_path)
        if isinstance(r, LineRecord) and r.meta.get("directions") == "critical"
    ]
    assert [r.meta["global_step"] for r in lines] == [4, 8]
    assert lines[-1].meta["history_steps"] == [1, 4, 7]


@pytest.mark.slow
def test_ddp_every_rank_measures_the_same_update(tmp_path: Any) -> None:
    """Under DDP (2 CPU processes, each its own training batches) the probe batches are rank zero's and
    the update is the all-reduced one: every rank logs the same values, at the same steps."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = root / "tests" / "helpers" / "ddp_critical.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=480
    )
    reports = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert sorted(reports) == ["rank0.json", "rank1.json"], proc.stderr[-3000:]
    zero, one = reports["rank0.json"], reports["rank1.json"]
    assert [s for s, _ in zero["history"]] == [1, 3, 5, 7]
    assert zero["history"] == one["history"] and zero["weights"] == one["weights"]
    assert all("critical/lambda_c" in v or v["critical/uphill"] == 1.0 for _, v in zero["history"])
    assert any("critical/relative_lambda_c" in v for _, v in zero["history"])
