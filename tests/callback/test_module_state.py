"""The user's module keeps its Python state: lists, counters, torchmetrics states, generators (issue 11.1).

Unit tests of ModuleStateGuard against hand-made expectations, then end-to-end runs whose logged metrics
must equal those of the same run without the callback, value for value.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import random
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.models import TinyNet, ce_loss, loader
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.callback.module_state import (
    ModuleStateGuard,
    ModuleStateKeeper,
    UnrestorableStateError,
)

SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}


class Tracker:
    """A user's own bookkeeping object: its state lives in its attributes, out of the guard's reach."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.last = 0.0

    def record(self, value: float) -> None:
        self.values.append(value)
        self.last = value


# --------------------------------------------------------------------------- the guard on its own


class Sideways(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.outs: list[torch.Tensor] = []
        self.seen: dict[str, int] = {"a": 1}
        self.tags = {"x"}
        self.recent: collections.deque[int] = collections.deque([1, 2], maxlen=3)
        self.calls = 0
        self.name = "net"
        self.total = torch.zeros(2)
        self.hist = np.zeros(3)
        self.gen = torch.Generator().manual_seed(1)
        self.np_gen = np.random.default_rng(2)
        self.py_gen = random.Random(3)
        self.tracker = Tracker()
        self.acc = MulticlassAccuracy(num_classes=2)
        self.loose = [MulticlassAccuracy(num_classes=2)]  # unregistered modules in a plain list

    def training_step(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        loss = out.pow(2).mean()
        self.outs.append(loss.detach())
        self.seen[str(self.calls)] = self.calls
        self.tags.add(f"t{self.calls}")
        self.recent.append(self.calls)
        self.calls += 1
        self.name = self.name + "!"
        self.total += 1.0
        self.hist[0] += 1
        torch.rand(2, generator=self.gen)
        self.np_gen.random()
        self.py_gen.random()
        preds, target = out.argmax(1), torch.zeros(len(x), dtype=torch.long)
        self.acc(preds, target)
        self.loose[0].update(preds, target)
        self.added = True
        self.lin.register_forward_hook(lambda *a: None)
        return loss


def _state(m: Sideways) -> dict[str, Any]:
    return {
        "outs": list(m.outs),
        "seen": dict(m.seen),
        "tags": set(m.tags),
        "recent": list(m.recent),
        "calls": m.calls,
        "name": m.name,
        "total": m.total.clone(),
        "hist": m.hist.copy(),
        "gen": m.gen.get_state().clone(),
        "acc": {k: v.clone() for k, v in m.acc.metric_state.items()},
        "acc_count": m.acc._update_count,
        "loose": {k: v.clone() for k, v in m.loose[0].metric_state.items()},
        "hooks": len(m.lin._forward_hooks),
    }


def test_guard_restores_every_restorable_kind() -> None:
    torch.manual_seed(0)
    m = Sideways()
    x = torch.randn(4, 3)
    m.training_step(x)  # a non-trivial state to come back to
    del m.added
    before = _state(m)
    refs = (m.outs, m.seen, m.tags, m.recent, m.total, m.hist, m.acc)
    draws = (copy.deepcopy(m.np_gen).random(), copy.deepcopy(m.py_gen).random())
    with ModuleStateGuard(m) as guard:
        for _ in range(3):
            m.training_step(x)
        m.outs = ["rebound"]  # a rebinding is undone too
        del m.name
    assert guard.unrestorable == []
    after = _state(m)
    assert after.keys() == before.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, dict) and a and isinstance(next(iter(a.values())), torch.Tensor):
            assert all(torch.equal(a[k], b[k]) for k in a), key
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        elif isinstance(a, np.ndarray):
            assert np.array_equal(a, b), key
        else:
            assert a == b, key
    # The same objects, restored in place: references held elsewhere still see the module's state.
    assert (m.outs, m.seen, m.tags, m.recent, m.total, m.hist, m.acc) == refs
    assert all(x is y for x, y in zip((m.outs, m.seen, m.tags, m.recent, m.total, m.hist, m.acc), refs))
    assert m.recent.maxlen == 3 and not hasattr(m, "added")
    assert (m.np_gen.random(), m.py_gen.random()) == draws  # generators continue where they were


def test_metric_equals_one_fed_only_the_real_batches() -> None:
    """A torchmetrics state after extra updates inside the guard equals a twin that never saw them."""
    torch.manual_seed(0)
    m, twin = Sideways(), MulticlassAccuracy(num_classes=2)
    real = [torch.randn(5, 3) for _ in range(2)]
    for x in real:
        m.training_step(x)
        twin.update(m.lin(x).argmax(1), torch.zeros(5, dtype=torch.long))
    with ModuleStateGuard(m):
        for _ in range(4):
            m.training_step(torch.randn(5, 3) + 3)
    assert m.acc._update_count == 2 and m.acc._computed is None
    assert torch.equal(m.acc.compute(), twin.compute())
    for k, v in twin.metric_state.items():
        assert torch.equal(m.acc.metric_state[k], v)


def test_custom_object_change_is_reported_with_its_path() -> None:
    m = Sideways()
    with ModuleStateGuard(m) as guard:
        m.tracker.record(1.0)
    assert len(guard.unrestorable) == 1 and "`self.tracker` (a Tracker)" in guard.unrestorable[0]
    assert m.tracker.values == [1.0]  # detected, not undone


def test_watch_stops_after_the_first_call() -> None:
    m = Sideways()
    calls = []

    def step(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        m.tracker.record(1.0)
        return x.sum()

    m.training_step = step  # type: ignore[method-assign]
    with ModuleStateGuard(m, watch="training_step") as guard:
        for _ in range(5):
            m.training_step(torch.ones(1))
    assert len(calls) == 1 and guard.unrestorable and "self.tracker" in guard.unrestorable[0]
    assert m.training_step is step  # the watch wrapper is gone again
    # Only the guard's own error is swallowed; anything else raised inside propagates (after restoring).
    m.outs.append(1)
    with pytest.raises(UnrestorableStateError, match="mine"), ModuleStateGuard(m):
        m.outs.clear()
        raise UnrestorableStateError("mine")
    assert m.outs == [1]


def test_watch_is_sticky_through_fallbacks_and_metrics() -> None:
    """A caller that swallows errors (the engine's vmap -> loop fallback, compute_metrics) cannot go on."""
    from lightning_landscape.callback.metrics import compute_metrics, resolve_metrics
    from lightning_landscape.functional.landscape.params import landscape_parameters

    m = Sideways()
    calls = []

    def step(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        m.tracker.record(1.0)
        return m.lin(x).pow(2).mean()

    m.training_step = step  # type: ignore[method-assign]
    with ModuleStateGuard(m, watch="training_step") as guard:
        for _ in range(3):
            with contextlib.suppress(UnrestorableStateError):  # a fallback that retries
                m.training_step(torch.ones(2, 3))
    assert len(calls) == 1 and guard.unrestorable
    calls.clear()
    params = [p for _, p in landscape_parameters(m.lin)]
    spec = resolve_metrics(["eigenvalues", "sam"], final=False, seed=0, argument="metrics")
    with ModuleStateGuard(m, watch="training_step") as guard:
        compute_metrics(m, lambda model, b: model.training_step(b), [torch.ones(2, 3)], params, spec)
        raise AssertionError("compute_metrics must let the guard's error through")
    assert len(calls) == 1 and "self.tracker" in guard.unrestorable[0]


def test_large_tensor_changed_in_place_is_reported() -> None:
    m = nn.Linear(2, 2)
    m.cache = torch.zeros(100)
    with ModuleStateGuard(m, max_copy_bytes=16) as guard:
        m.cache += 1
    assert len(guard.unrestorable) == 1 and "too large to copy" in guard.unrestorable[0]
    with ModuleStateGuard(m, max_copy_bytes=10_000) as guard:
        m.cache += 1
    assert guard.unrestorable == [] and float(m.cache.sum()) == 100.0


def test_guard_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`module`"):
        ModuleStateGuard("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`watch`"):
        ModuleStateGuard(nn.Linear(1, 1), watch="training_step")


def test_keeper_runs_stop_after_an_unrestorable_change() -> None:
    m = Sideways()
    keeper, ran = ModuleStateKeeper(), []

    def compute() -> None:
        ran.append(1)
        m.training_step(torch.ones(2, 3))
        m.tracker.record(3.0)
        m.training_step(torch.ones(2, 3))

    m.training_step = lambda x: m.tracker.record(0.0) or x.sum()  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match=r"training_step changed `self.tracker`.*loss_fn="):
        keeper.run(None, m, True, compute)
    keeper.run(None, m, True, compute)
    assert len(ran) == 1 and keeper.stopped
    keeper.reset()
    assert keeper.stopped is None


# --------------------------------------------------------------------------- end to end


class ListOutputs(TinyNet):
    """Builds its epoch mean from a list of step outputs (the usual Lightning 2 pattern)."""

    def __init__(self) -> None:
        super().__init__(norm="batch", dropout=0.0)
        self.outs: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.outs.append(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("epoch_mean", torch.stack(self.outs).mean())
        self.log("epoch_outputs", float(len(self.outs)))
        self.outs.clear()


class MetricUpdates(TinyNet):
    def __init__(self) -> None:
        super().__init__(norm="batch", dropout=0.0)
        self.train_acc = MulticlassAccuracy(num_classes=3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.train_acc(logits.argmax(1), y)
        self.log("acc", self.train_acc, on_step=False, on_epoch=True)
        return F.cross_entropy(logits, y)


class Counter(TinyNet):
    def __init__(self) -> None:
        super().__init__(norm="batch", dropout=0.0)
        self.calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        x, y = batch
        return F.cross_entropy(self(x), y)

    def on_train_epoch_end(self) -> None:
        self.log("calls", float(self.calls))


def _run(
    tmp_path: Path, model_cls: type, callbacks: list, name: str
) -> tuple[pl.Trainer, pl.LightningModule]:
    pl.seed_everything(0)
    model = model_cls()
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=CSVLogger(str(tmp_path), name=name, version=0),
        log_every_n_steps=1,
        callbacks=callbacks,
    )
    trainer.fit(model, loader(48, 8))
    return trainer, model


def _csv(trainer: pl.Trainer, keys: list[str]) -> dict[tuple[str, str], str]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as fh:
        return {(r["step"], k): r[k] for r in csv.DictReader(fh) for k in keys if r.get(k)}


@pytest.mark.parametrize(
    ("model_cls", "keys"),
    [(ListOutputs, ["epoch_mean", "epoch_outputs"]), (MetricUpdates, ["acc"]), (Counter, ["calls"])],
    ids=["list", "torchmetrics", "counter"],
)
def test_logged_metrics_equal_a_run_without_the_callback(tmp_path, model_cls, keys) -> None:
    plain, plain_model = _run(tmp_path, model_cls, [], "plain")
    cb = LossLandscapeCallback(max_overhead=None, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing to warn about: all of it is restorable
        watched, watched_model = _run(tmp_path, model_cls, [cb], "watched")
    assert {r.meta["stage"] for r in cb.records} == {"periodic", "final"}  # the landscapes did run
    for k in keys:
        assert k in plain.logged_metrics
        assert torch.equal(watched.logged_metrics[k], plain.logged_metrics[k]), k
        assert torch.equal(watched.callback_metrics[k], plain.callback_metrics[k]), k
    user = _csv(plain, keys)
    assert user and _csv(watched, keys) == user
    if model_cls is Counter:
        assert watched_model.calls == plain_model.calls == 8


def test_unrestorable_change_warns_once_and_stops_calling_training_step(tmp_path) -> None:
    class Tracked(TinyNet):
        def __init__(self) -> None:
            super().__init__(norm="batch", dropout=0.0)
            self.tracker = Tracker()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.tracker.record(float(loss))
            return loss

    cb = LossLandscapeCallback(max_overhead=None, **SMALL)
    with pytest.warns(RuntimeWarning) as caught:
        _, model = _run(tmp_path, Tracked, [cb], "tracked")
    ours = [str(w.message) for w in caught if "cannot be undone" in str(w.message)]
    assert len(ours) == 1, ours
    assert "`self.tracker` (a Tracker)" in ours[0] and "loss_fn=" in ours[0]
    assert len(model.tracker.values) == 8 + 1  # 8 training steps and the one call that revealed it
    assert cb.records == []  # no landscape or metric after that call

    # The same module with a side-effect-free loss_fn: landscapes as usual, the tracker untouched.
    cb = LossLandscapeCallback(max_overhead=None, loss_fn=ce_loss, **SMALL)
    _, model = _run(tmp_path, Tracked, [cb], "with_loss_fn")
    assert len(model.tracker.values) == 8 and cb.records
