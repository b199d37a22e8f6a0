"""Tests for lightning_landscape.optim.SAM (SAM / ASAM) in plain PyTorch and inside Lightning."""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.func import functional_call, grad
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.optim import SAM

EPS = 1e-12


def _mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 1)]
    return nn.Sequential(*layers)


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = torch.randn(n, 1, generator=g)
    return x, y


def _closure(opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def _reference_ascent(
    params: dict[str, torch.Tensor], g: dict[str, torch.Tensor], rho: float, adaptive: bool
) -> dict[str, torch.Tensor]:
    """e(w) written out from the papers (Foret et al. 2021; Kwon et al. 2021 with T_w = |w|)."""
    if adaptive:
        norm = torch.sqrt(sum(((params[n].abs() * g[n]) ** 2).sum() for n in params))
        return {n: rho * params[n] ** 2 * g[n] / (norm + EPS) for n in params}
    norm = torch.sqrt(sum((g[n] ** 2).sum() for n in params))
    return {n: rho * g[n] / (norm + EPS) for n in params}


# --------------------------------------------------------------------------- plain PyTorch
@pytest.mark.parametrize("adaptive", [False, True])
def test_two_sam_steps_match_functional_reference(adaptive: bool) -> None:
    model = _mlp()
    x, y = _data()
    rho, lr, mom = 0.3, 0.1, 0.9
    w = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_fn(ps: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(functional_call(model, ps, (x,)), y)

    # reference: SAM gradient g(w + e(w)) fed to SGD with momentum, two steps
    expected_losses = []
    buf: dict[str, torch.Tensor] = {}
    ref = dict(w)
    for _ in range(2):
        expected_losses.append(loss_fn(ref).detach())
        g = grad(loss_fn)(ref)
        e = _reference_ascent(ref, g, rho, adaptive)
        g2 = grad(loss_fn)({n: ref[n] + e[n] for n in ref})
        buf = {n: (mom * buf[n] + g2[n]) if buf else g2[n] for n in ref}
        ref = {n: ref[n] - lr * buf[n] for n in ref}

    opt = SAM(model, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr, momentum=mom)
    losses = [opt.step(_closure(opt, model, x, y)) for _ in range(2)]
    for got, exp in zip(losses, expected_losses):
        torch.testing.assert_close(got.detach(), exp, rtol=1e-6, atol=1e-7)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_restore_is_bit_exact_and_perturbation_is_the_papers(adaptive: bool) -> None:
    model = _mlp()
    x, y = _data()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = SAM(model, torch.optim.SGD, rho=0.7, adaptive=adaptive, lr=0.0)
    seen: list[dict[str, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(seen) == 2
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), w0[n])  # lr = 0: w must be back bit for bit
    g = grad(lambda ps: F.mse_loss(functional_call(model, ps, (x,)), y))(w0)
    e = _reference_ascent(w0, g, 0.7, adaptive)
    for n in w0:
        torch.testing.assert_close(seen[1][n], w0[n] + e[n], rtol=1e-6, atol=1e-7)
        assert not torch.equal(seen[1][n], w0[n])


def test_manual_two_pass_api_equals_closure_step() -> None:
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = SAM(m1, torch.optim.SGD, rho=0.2, lr=0.1)
    o2 = SAM(m2, torch.optim.SGD, rho=0.2, lr=0.1)
    o1.step(_closure(o1, m1, x, y))
    F.mse_loss(m2(x), y).backward()
    o2.perturb()
    o2.zero_grad()
    F.mse_loss(m2(x), y).backward()
    o2.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_batchnorm_stats_only_from_first_pass_plain_torch() -> None:
    model = _mlp(bn=True)
    x, y = _data()
    ref = copy.deepcopy(model)
    ref(x)  # exactly one forward in train mode
    opt = SAM(model, torch.optim.SGD, rho=0.5, lr=0.1)
    opt.step(_closure(opt, model, x, y))
    for (n, b), (_, rb) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(b, rb), n
    assert int(model[1].num_batches_tracked) == 1


def test_warns_once_when_model_unknown() -> None:
    model = _mlp(bn=True)
    x, y = _data()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.warns(UserWarning, match="could not find the model"):
        opt.step(_closure(opt, model, x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(_closure(opt, model, x, y))
        opt2 = SAM(model, torch.optim.SGD, lr=0.1)  # module given: no warning
        opt2.step(_closure(opt2, model, x, y))


def test_state_dict_round_trip_weights_only() -> None:
    x, y = _data()
    model = _mlp()
    opt = SAM(model, torch.optim.Adam, rho=0.1, adaptive=True, lr=1e-2)
    opt.param_groups[0]["lr"] = 5e-3
    for _ in range(2):
        opt.step(_closure(opt, model, x, y))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    model2 = copy.deepcopy(model)
    opt2 = SAM(model2, torch.optim.Adam, rho=0.9, lr=1.0)
    opt2.load_state_dict(loaded)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.state is opt2.base_optimizer.state
    assert opt2.param_groups[0]["rho"] == 0.1 and opt2.param_groups[0]["adaptive"] is True
    assert opt2.param_groups[0]["lr"] == 5e-3
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd1["param_groups"] == sd2["param_groups"]
    for k, st in sd1["state"].items():
        for key, v in st.items():
            assert torch.equal(v, sd2["state"][k][key])
    # both continue identically
    opt.step(_closure(opt, model, x, y))
    opt2.step(_closure(opt2, model2, x, y))
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p1, p2)


@pytest.mark.parametrize("rho", [0, 0.0, -0.1, math.nan, math.inf, "0.05", None, True])
def test_invalid_rho(rho: Any) -> None:
    with pytest.raises(ValueError, match="rho"):
        SAM(_mlp(), torch.optim.SGD, rho=rho, lr=0.1)


@pytest.mark.parametrize("adaptive", ["yes", "no", 1, 0, None])
def test_invalid_adaptive(adaptive: Any) -> None:
    with pytest.raises(ValueError, match="`adaptive` must be True or False"):
        SAM(_mlp(), torch.optim.SGD, adaptive=adaptive, lr=0.1)
    model = _mlp()
    groups = [{"params": list(model.parameters()), "adaptive": adaptive}]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['adaptive'\]"):
        SAM(groups, torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("base", [None, "SGD", 3, torch.nn.Linear, SAM])
def test_invalid_base_optimizer(base: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="base_optimizer"):
        SAM(_mlp(), base, lr=0.1)


def test_invalid_base_optimizer_instance() -> None:
    model = _mlp()
    with pytest.raises((TypeError, ValueError), match="base_optimizer"):
        SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)  # type: ignore[arg-type]


def test_step_without_closure_raises() -> None:
    opt = SAM(_mlp(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="bf16-mixed") as err:
        opt.step()
    assert "manual optimization" in str(err.value)


# --------------------------------------------------------------------------- Lightning
class _BNModule(pl.LightningModule):
    def __init__(self, mode: str = "module", scheduler: bool = False, manual: bool = False) -> None:
        super().__init__()
        self.net = _mlp(bn=True)
        self.mode = mode
        self.scheduler = scheduler
        self.automatic_optimization = not manual
        self.batch_end_outputs: list[dict[str, torch.Tensor]] = []
        self.seen_weights: list[torch.Tensor] = []
        self.second_pass_flags: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        self.seen_weights.append(self.net[0].weight.detach().clone())
        self.second_pass_flags.append(self.optimizers().in_second_pass)
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        self.log_dict({"train_loss_dict": loss}, on_step=True, on_epoch=False)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.perturb()  # through the LightningOptimizer wrapper
            opt.zero_grad()
            self.manual_backward(F.mse_loss(self.net(x), y))
            opt.step()
        return {"loss": loss, "extra": loss.detach() * 2}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_end_outputs.append({k: v.detach().clone() for k, v in outputs.items()})

    def configure_optimizers(self) -> Any:
        params = self if self.mode == "module" else self.parameters()
        opt = SAM(params, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _Recorder(pl.Callback):
    """Snapshots the net and batch before each step and the logged loss after it."""

    def __init__(self) -> None:
        self.nets: list[nn.Module] = []
        self.batches: list[Any] = []
        self.after: list[dict[str, torch.Tensor]] = []
        self.logged: list[float] = []
        self.logged_dict: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx > 0:
            self._read_logged(trainer)
        self.nets.append(copy.deepcopy(pl_module.net))
        self.batches.append(batch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.after.append({n: b.clone() for n, b in pl_module.net.named_buffers()})

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._read_logged(trainer)

    def _read_logged(self, trainer: pl.Trainer) -> None:
        self.logged.append(float(trainer.callback_metrics["train_loss"]))
        self.logged_dict.append(float(trainer.callback_metrics["train_loss_dict"]))


def _trainer(steps: int, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _loader() -> DataLoader:
    x, y = _data(48)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


@pytest.mark.parametrize("mode", ["module", "parameters"])
def test_lightning_bn_stats_logged_loss_and_outputs(mode: str) -> None:
    module = _BNModule(mode=mode)
    rec = _Recorder()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not find the model.*")
        _trainer(3, callbacks=[rec]).fit(module, _loader())

    assert len(rec.nets) == 3 and len(rec.logged) == 3
    # training_step ran twice per step (w and w + e)
    assert len(module.seen_weights) == 6
    assert module.second_pass_flags == [False, True] * 3
    for k in range(3):
        net, (x, y) = copy.deepcopy(rec.nets[k]), rec.batches[k]
        with torch.no_grad():
            loss_w = F.mse_loss(net(x), y)  # one train-mode forward: L(w) and the reference BN update
        for name, buf in net.named_buffers():
            assert torch.equal(rec.after[k][name], buf), (k, name)
        assert int(rec.after[k]["1.num_batches_tracked"]) == k + 1
        # the perturbed point has a clearly different loss, and nothing of it leaks out
        assert not torch.equal(module.seen_weights[2 * k + 1], module.seen_weights[2 * k])
        assert torch.equal(module.seen_weights[2 * k], rec.nets[k][0].weight)
        assert rec.logged[k] == pytest.approx(float(loss_w), rel=1e-6, abs=1e-7)
        assert rec.logged_dict[k] == pytest.approx(float(loss_w), rel=1e-6, abs=1e-7)
        out = module.batch_end_outputs[k]
        assert float(out["loss"]) == pytest.approx(float(loss_w), rel=1e-6, abs=1e-7)
        assert float(out["extra"]) == pytest.approx(2 * float(loss_w), rel=1e-6, abs=1e-7)
    # second pass loss really differs from L(w) (so the checks above can fail)
    x, y = rec.batches[0]
    net = copy.deepcopy(rec.nets[0])
    with torch.no_grad():
        net[0].weight.copy_(module.seen_weights[1])
        loss_pert = float(F.mse_loss(net(x), y))
    assert abs(loss_pert - rec.logged[0]) > 1e-4
    # the log methods are the class methods again
    assert "log" not in module.__dict__ and "log_dict" not in module.__dict__


def test_lightning_lr_scheduler_drives_sam() -> None:
    module = _BNModule(scheduler=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*")
        trainer = _trainer(3)
        trainer.fit(module, _loader())
    opt = trainer.optimizers[0]
    assert isinstance(opt, SAM)
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_lightning_manual_optimization_two_pass_matches_automatic() -> None:
    auto, manual = _BNModule(), _BNModule(manual=True)
    _trainer(2).fit(auto, _loader())
    _trainer(2).fit(manual, _loader())
    for p1, p2 in zip(auto.parameters(), manual.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-7)


class _PlainStepManual(_BNModule):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(F.mse_loss(self.net(x), y))
        opt.step()  # no closure and no perturb(): must not silently degrade to the base optimizer


def test_lightning_manual_step_without_closure_raises() -> None:
    with pytest.raises(RuntimeError, match="bf16-mixed"):
        _trainer(1).fit(_PlainStepManual(manual=True), _loader())


def test_lightning_16_mixed_grad_scaler_raises_clear_error() -> None:
    # Trainer(accelerator="cpu", precision="16-mixed") is rewritten to bf16-mixed by Lightning on CPU, so the
    # fp16 + GradScaler plugin is passed explicitly: it runs the closure itself, then scaler.step(optimizer).
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(RuntimeError, match="bf16-mixed") as err:
        _trainer(1, plugins=[plugin]).fit(_BNModule(), _loader())
    assert "manual optimization" in str(err.value)


@pytest.mark.parametrize("mode", ["module", "parameters"])
def test_lightning_accumulate_grad_batches_raises(mode: str) -> None:
    module = _BNModule(mode=mode)
    with pytest.raises(RuntimeError, match=r"accumulate_grad_batches.*accumulate_grad_batches=2"):
        _trainer(1, accumulate_grad_batches=2).fit(module, _loader())
    # SAM(self, ...) sees the trainer when it is built: refused when fit starts, before any training step;
    # SAM(self.parameters(), ...) only at its first step
    assert len(module.seen_weights) == (0 if mode == "module" else 1)


# --------------------------------------------------------------------------- DDP (2 CPU processes)
_HOOK_CALLS = [0]


def _counting_allreduce_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects non-GradBucket hints
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    _HOOK_CALLS[0] += 1
    return allreduce_hook(None, bucket)


class _DDPModule(_BNModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_start(self) -> None:
        # Lightning registers `ddp_comm_hook` on CUDA only, so register the counting hook directly
        ddp = self.trainer.strategy.model
        assert isinstance(ddp, nn.parallel.DistributedDataParallel)
        ddp.register_comm_hook(None, _counting_allreduce_hook)

    def on_train_end(self) -> None:
        result = {
            "hook_calls": _HOOK_CALLS[0],
            "seen": [w.flatten().tolist() for w in self.seen_weights],
            "final": [p.detach().flatten().tolist() for p in self.parameters()],
        }
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_ddp_first_pass_is_local(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    steps = 2
    module = _DDPModule(str(tmp_path))
    init = [p.detach().flatten().tolist() for p in module.parameters()]
    trainer = _trainer(steps, devices=2, strategy=DDPStrategy(start_method="spawn"))
    trainer.fit(module, _loader())
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    for r in (r0, r1):
        # one all-reduce (tiny model: one bucket) per step: only the second backward synchronises
        assert r["hook_calls"] == steps
        assert len(r["seen"]) == 2 * steps
    for k in range(steps):
        assert r0["seen"][2 * k] == r1["seen"][2 * k]  # w identical on both ranks
        assert r0["seen"][2 * k + 1] != r1["seen"][2 * k + 1]  # w + e from local gradients
    assert r0["final"] == r1["final"]
    assert r0["final"] != init
