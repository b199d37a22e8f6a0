"""ProbeSet without a Trainer: plain loaders and a trainer-like object."""

from __future__ import annotations

import contextlib
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader
from torch import nn

from lightning_landscape.callback.probe import ProbeSet, training_step_loss


def same_batches(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def rng_states(gen: torch.Generator | None = None) -> tuple:
    return (
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
        random.getstate(),
        gen.get_state() if gen is not None else None,
    )


def assert_same_rng(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert (a[3] is None and b[3] is None) or torch.equal(a[3], b[3])


class FakeTrainer:
    """What ProbeSet uses of a Trainer: rank, world size, loader, device transfer, precision."""

    def __init__(self, train_dataloader: Any) -> None:
        self.is_global_zero, self.world_size, self.train_dataloader = True, 1, train_dataloader
        self.moved: list[Any] = []
        self.entered = 0

        def to_device(batch: Any, device: torch.device) -> Any:
            self.moved.append(batch)
            return batch

        @contextlib.contextmanager
        def forward_context():
            self.entered += 1
            yield

        self.strategy = SimpleNamespace(batch_to_device=to_device)
        self.precision_plugin = SimpleNamespace(convert_input=lambda b: b, forward_context=forward_context)


@pytest.mark.parametrize("own_generator", [False, True])
def test_fetch_takes_the_first_batches_and_no_random_state(own_generator):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(3) if own_generator else None
    dl = loader(40, 8, shuffle=True, noise=0.1, **({"generator": gen} if gen is not None else {}))
    before = rng_states(gen)
    got = ProbeSet(num_batches=3).fetch(dl)
    after = rng_states(gen)
    assert_same_rng(before, after)
    # The reference: the same loader iterated from the same random state, by hand.
    expected = [b for _, b in zip(range(3), dl)]
    assert same_batches(got, expected)
    assert not same_batches(got, [b for _, b in zip(range(3), dl)])  # a shuffled loader moves on...


def test_batches_are_taken_once_moved_once_and_cached():
    trainer = FakeTrainer(loader(32, 8))
    probe = ProbeSet(num_batches=2)
    assert probe.size == 2 and probe.cached is None
    first = probe.batches(trainer, TinyNet())
    assert probe.batches(trainer, TinyNet()) is first and len(trainer.moved) == 2 and probe.size == 2
    assert same_batches(first, [b for _, b in zip(range(2), loader(32, 8))])
    probe.reset()
    assert probe.cached is None and probe.batches(trainer, TinyNet()) is not first


def test_a_user_loader_wins_and_several_training_loaders_are_combined():
    user = loader(12, 4, seed=5)
    probe = ProbeSet(num_batches=5, probe_dataloader=user)
    got = probe.batches(FakeTrainer(loader(32, 8)), TinyNet())
    assert probe.size == 3 and same_batches(got, list(user))  # only 3 batches exist: all of them
    two = FakeTrainer({"a": loader(32, 8), "b": loader(8, 4)})
    combined = ProbeSet(num_batches=3).batches(two, TinyNet())
    a, b = list(loader(32, 8)), list(loader(8, 4))
    assert [set(batch) for batch in combined] == [{"a", "b"}] * 3
    assert same_batches([c["a"] for c in combined], a[:3])
    assert same_batches([c["b"] for c in combined], [b[0], b[1], b[0]])  # max_size_cycle: b restarts


def test_missing_or_empty_loaders_are_clear_errors():
    with pytest.raises(RuntimeError, match="probe_dataloader"):
        ProbeSet().batches(FakeTrainer(None), TinyNet())
    with pytest.raises(RuntimeError, match="gave no batches"):
        ProbeSet(probe_dataloader=[]).batches(FakeTrainer(None), TinyNet())


class Logging(TinyNet):
    def training_step(self, batch, batch_idx):
        loss = ce_loss(self, batch)
        self.log("train_loss", loss)  # outside a Trainer this raises unless silenced
        return {"loss": loss, "extra": 1}


class NoIndex(TinyNet):
    def training_step(self, batch):
        return ce_loss(self, batch)


class NotALoss(TinyNet):
    def training_step(self, batch, batch_idx):
        return "loss"


@pytest.mark.parametrize("module_cls", [Logging, NoIndex])
def test_the_loss_is_the_silenced_training_step_in_the_forward_context(module_cls):
    torch.manual_seed(0)
    model: nn.Module = module_cls(dropout=0.0).eval()
    trainer = FakeTrainer(None)
    batch = next(iter(loader(16, 8)))
    loss = ProbeSet().loss_fn(model, trainer.precision_plugin.forward_context)
    assert torch.equal(loss(model, batch), ce_loss(model, batch)) and trainer.entered == 1
    assert "log" not in model.__dict__  # the silencing is undone


def test_a_user_loss_fn_is_used_and_bad_training_steps_are_named():
    torch.manual_seed(0)
    model, batch = TinyNet(dropout=0.0).eval(), next(iter(loader(16, 8)))
    calls = []
    probe = ProbeSet(loss_fn=lambda m, b: calls.append(1) or ce_loss(m, b) * 2)
    assert torch.equal(probe.loss_fn(model)(model, batch), 2 * ce_loss(model, batch)) and calls == [1]
    with pytest.raises(ValueError, match="loss_fn="):
        ProbeSet().loss_fn(NotALoss())(NotALoss(), batch)
    with pytest.raises(ValueError, match="'loss'"):
        training_step_loss(type("D", (TinyNet,), {"training_step": lambda s, b, i: {"x": 1}})(), batch)
