"""The metrics spec: the per-block curvature entry (names, options, cost) and its results."""

from __future__ import annotations

import pytest
import torch
from helpers.exact_hessian import ce, make_batches, mlp

from lightning_landscape.callback.metrics import compute_metrics, resolve_metrics
from lightning_landscape.callback.schedule import estimated_cost
from lightning_landscape.functional import block_curvature, edge_of_stability_ratio


def test_blocks_metric_options_are_validated_and_seeded():
    spec = resolve_metrics({"blocks": {"blocks": ["0", "2"], "samples": 4}}, final=False, seed=7)
    assert spec == {"blocks": {"max_iter": 10, "tol": 1e-3, "samples": 4, "blocks": ["0", "2"], "seed": 7}}
    with pytest.raises(ValueError, match=r"`final_metrics`\['blocks'\]: unknown option"):
        resolve_metrics({"blocks": {"rho": 0.1}}, final=True, seed=0, argument="final_metrics")
    # Two listed blocks cost less than the four assumed when none are listed, and more than nothing.
    two = estimated_cost(spec)
    assumed = estimated_cost(resolve_metrics(("blocks",), final=False, seed=7))
    assert 0 < two < assumed


def test_blocks_metric_gives_the_functions_scalars():
    model, batches = mlp(), make_batches("mlp")
    params = list(model.parameters())
    spec = resolve_metrics({"blocks": {"samples": 4, "max_iter": 5}}, final=False, seed=3)
    scalars, meta, errors = compute_metrics(model, ce, batches, params, spec)
    direct = block_curvature(model, ce, batches, samples=4, max_iter=5, seed=3, params=params)
    assert not errors and scalars == direct.scalars()
    assert set(scalars) == {
        f"blocks/{b}/{k}" for b in ("0", "2") for k in ("lambda_max", "trace", "trace_stderr")
    }
    assert meta["blocks"]["seed"] == 3 and meta["blocks"]["block_sizes"] == {"0": 30, "2": 21}


def test_eos_metric_reads_the_optimizer_it_is_given():
    model, batches = mlp(), make_batches("mlp")
    params = list(model.parameters())
    spec = resolve_metrics(("eos",), final=False, seed=2)
    assert spec == {"eos": {"max_iter": 20, "tol": 1e-3, "seed": 2}}
    with pytest.raises(ValueError, match="unknown option"):
        resolve_metrics({"eos": {"optimizer": None}}, final=False, seed=0)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    scalars, meta, errors = compute_metrics(model, ce, batches, params, spec, optimizer=opt)
    direct = edge_of_stability_ratio(model, ce, batches, opt, seed=2, params=params)
    assert not errors and scalars == direct.scalars() and meta["eos"]["lr"] == 0.1
    # Without an optimizer (or with one that has no known threshold) it is an error, the rest still run.
    both = resolve_metrics(("eos", "sam"), final=False, seed=2)
    scalars, _, errors = compute_metrics(model, ce, batches, params, both)
    assert "optimizer" in errors["eos"] and "sharpness/sam" in scalars
    _, _, errors = compute_metrics(model, ce, batches, params, spec, optimizer=torch.optim.Adagrad(params))
    assert "Adagrad" in errors["eos"]
