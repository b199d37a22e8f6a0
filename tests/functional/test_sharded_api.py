"""The public functional API on a sharded model: the functions find the sharding themselves.

In one process: what the objective does with plain parameters is unchanged, and the slicing of directions
refuses what fits no parameter. In two processes (FSDP2 on the CPU, gloo: ``tests/helpers/
fsdp_functional.py``): every public function called on the sharded model, every rank calling, against the
same call on the gathered unsharded model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.two_ranks import run_two_ranks
from torch import nn

from lightning_landscape.functional import Objective
from lightning_landscape.functional.landscape.shards import ShardLayout

ROOT = Path(__file__).resolve().parents[2]


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def test_an_unsharded_objective_has_no_layout_and_is_not_refused():
    model = nn.Linear(3, 2)
    objective = Objective.build(model, _mse, [(torch.ones(4, 3), torch.zeros(4, 2))], engine="vmap")
    assert objective.layout is None and objective.engine == "vmap"
    assert objective.unsharded("landscape_reliability") is objective
    with pytest.raises(ValueError, match="does not support sharded parameters"):
        objective.replace(layout=ShardLayout.of(objective.params)).unsharded("barrier")


def test_layout_slices_take_full_or_local_tensors_and_name_the_argument():
    params = [torch.randn(4, 3), torch.randn(4)]
    layout = ShardLayout(
        params, [p[2:] for p in params], [p.shape for p in params], [2, 2], [False] * 2, lambda t: t
    )
    full = [torch.arange(12.0).reshape(4, 3), torch.arange(4.0)]
    local = layout.slices(full, "directions")
    assert torch.equal(local[0], full[0][2:]) and torch.equal(local[1], full[1][2:])
    assert layout.slices(local)[0] is local[0]  # already this process's slices: as they are
    with pytest.raises(ValueError, match=r"`origin`\[1\] has shape \(3,\)"):
        layout.slices([full[0], torch.zeros(3)], "origin")
    with pytest.raises(ValueError, match="`start` has 1 tensors"):
        layout.slices(full[:1], "start")


@pytest.mark.slow
def test_fsdp2_public_functions_give_the_unsharded_numbers():
    rows = run_two_ranks("fsdp_functional.py")
    for r in rows:
        assert r["kinds"] == ["DTensor"]
        # curvature: converged Lanczos (gradient differences) against the exact products
        np.testing.assert_allclose(*r["eigenvalues"], rtol=1e-3)
        assert r["eigenvector_kinds"] == ["DTensor"] and min(r["eigenvector_cosines"]) > 1 - 1e-4
        assert r["trace"][0] == pytest.approx(r["trace"][1], rel=1e-3)  # the same Rademacher probes
        np.testing.assert_allclose(*r["sam"], rtol=1e-5)
        np.testing.assert_allclose(*r["average"], rtol=1e-5)  # the same Gaussian draws
        assert r["gradient"][0] == pytest.approx(r["gradient"][1], rel=1e-6) and r["gradient"][2] < 1e-5
        assert r["hvp_rel"] < 1e-3
        assert r["eos"][0] == pytest.approx(r["eos"][1], rel=1e-3)
        assert r["critical"][0] == pytest.approx(r["critical"][1], rel=1e-3)
        # landscapes: the same seeded directions, as DTensors; surfaces and lines as unsharded
        assert r["direction_kinds"] == ["DTensor"] and r["directions_equal"]
        mine, exact, plain = (np.array(s) for s in r["surface"])
        np.testing.assert_allclose(mine, exact, rtol=1e-5)
        np.testing.assert_allclose(plain, exact, rtol=1e-5)  # full-shaped plain directions, sliced
        assert r["surface_engine"] == "loop"
        np.testing.assert_allclose(*r["line"], rtol=1e-5)
        np.testing.assert_allclose(*r["interpolation"], rtol=1e-6)
        assert r["distance"][0] == pytest.approx(r["distance"][1], rel=1e-6)
        assert r["evaluate_loss"][0] == pytest.approx(r["evaluate_loss"][1], rel=1e-6)
        # what cannot work sharded says so and names what does
        mine, exact = r["reliability"]
        assert mine.keys() == exact.keys() and len(mine) > 5
        for name, value in exact.items():
            assert mine[name] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), name
        for a, b in zip(*r["reliability_lines"]):
            np.testing.assert_allclose(a, b, rtol=1e-5)
        np.testing.assert_allclose(*r["snapshot_losses"], rtol=1e-6)
        refusals = r["refusals"]
        assert "barrier does not support sharded" in refusals["barrier"]
        assert "loss_surface" in refusals["barrier"]
        assert refusals["vmap"].startswith("`engine`='vmap'") and refusals["shard"].startswith("`shard`")
        # observing changed nothing
        assert r["weights_same"] and r["still_dtensors"] and r["grads_none"] and r["training"]
    for key in ("eigenvalues", "trace", "sam", "surface", "line", "interpolation", "critical"):
        assert rows[0][key] == rows[1][key], key  # every rank gets the same numbers
