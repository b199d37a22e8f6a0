"""Sharded trace and average sharpness equal the one-process results (two ranks simulated in turn)."""

import numpy as np
import pytest
import torch
from helpers.exact_hessian import ce as _ce
from torch import nn

from lightning_landscape.functional import PointShard, average_sharpness, hessian_trace


def _case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]
    return model, batches


def _two_ranks(run):
    """Run ``run(shard)`` as rank 1 then rank 0; the fake all-gather hands rank 1's values to rank 0."""
    sent = {}

    def gather_rank1(local):
        sent[1] = local.clone()
        return torch.stack([torch.ones_like(local), local])  # rank 0 "succeeded"; its values are not used

    def gather_rank0(local):
        return torch.stack([local, sent[1]])

    calls = []

    def counted(rank, gather):
        def all_gather(local):
            calls.append(rank)
            return gather(local)

        return PointShard(rank=rank, world_size=2, all_gather=all_gather)

    run(counted(1, gather_rank1))  # rank 1's own result is incomplete here; rank 0 sees everything
    return run(counted(0, gather_rank0)), calls


@pytest.mark.parametrize("samples", [7, 8])
def test_sharded_trace_equals_one_process(samples):
    model, batches = _case()
    whole = hessian_trace(model, _ce, batches, samples=samples, seed=3)
    shared, calls = _two_ranks(
        lambda shard: hessian_trace(model, _ce, batches, samples=samples, seed=3, shard=shard)
    )
    np.testing.assert_allclose(shared.samples, whole.samples, rtol=1e-12, atol=1e-12)
    assert shared.trace == pytest.approx(whole.trace, rel=1e-12) and shared.stderr == pytest.approx(
        whole.stderr
    )
    assert calls == [1, 0]  # one collective per process


def test_sharded_average_sharpness_equals_one_process():
    model, batches = _case()
    counts = {"n": 0}

    def counting(m, b):
        counts["n"] += 1
        return _ce(m, b)

    whole = average_sharpness(model, counting, batches, sigma=0.05, samples=9, seed=4)
    one_process = counts["n"]
    counts["n"] = 0
    shared, _ = _two_ranks(
        lambda shard: average_sharpness(model, counting, batches, sigma=0.05, samples=9, seed=4, shard=shard)
    )
    np.testing.assert_allclose(shared.losses, whole.losses, rtol=1e-6)
    assert shared.sharpness == pytest.approx(whole.sharpness, rel=1e-5, abs=1e-9)
    # Each rank evaluated its own samples (5 + 4) and L(w): one process's work plus one more L(w).
    assert one_process == (9 + 1) * len(batches) and counts["n"] == one_process + len(batches)
