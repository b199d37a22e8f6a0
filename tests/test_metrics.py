"""The metrics spec: the per-block curvature entry (names, options, cost) and its results."""

from __future__ import annotations

import pytest
from helpers.exact_hessian import ce, make_batches, mlp

from lightning_landscape.functional import block_curvature
from lightning_landscape.metrics import compute_metrics, estimated_cost, resolve_metrics


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
