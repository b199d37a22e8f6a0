"""Curvature of sharded parameters: the gradient-difference operator on each rank's slices, through the same
cores as the double-backward one (``layout=``), against independent references.

In one process a layout of plain parameters holds them whole (every parameter "replicated"): the operator
is then compared with the exact double-backward product. Two ranks' slices are simulated for what needs no
collective forward (the probes and inner products of :class:`ShardedSpace`); the rest runs in two real
processes (FSDP2 on the CPU, gloo: ``tests/helpers/fsdp_curvature.py``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.functional import PointShard
from lightning_landscape.functional.curvature.estimators import VectorSpace, hutchinson_samples, lanczos
from lightning_landscape.functional.curvature.hessian import (
    hessian_directions_of,
    hessian_eigenvalues_of,
    hessian_trace_of,
)
from lightning_landscape.functional.curvature.operators import hessian_operator_of
from lightning_landscape.functional.curvature.sharded import ShardedSpace, restrict
from lightning_landscape.functional.curvature.sharpness import average_sharpness_of, sam_sharpness_of
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import Objective, rademacher

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import fsdp_run  # noqa: E402  (the FSDP2 tests' model, loss and probe set)
from helpers.two_ranks import run_two_ranks  # noqa: E402


def _case() -> tuple[nn.Module, list, Objective, Objective, ShardLayout]:
    """The network, its probe batches, the exact objective, and the objective of its (whole) slices."""
    torch.manual_seed(0)
    model = fsdp_run.make_net()
    batches = list(fsdp_run.probe_loader())
    layout = ShardLayout.of(list(model.parameters()))
    exact = Objective.build(model, fsdp_run.ce, batches, require_grad=True)
    return model, batches, exact, Objective(model, fsdp_run.ce, batches, layout.local), layout


# --------------------------------------------------------------------------- one process


def test_gradient_difference_operator_matches_the_exact_product_and_restores_everything():
    model, _, exact, sliced, layout = _case()
    params = list(model.parameters())
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in params]
    with hessian_operator_of(exact) as h:
        reference = h.matvec(v)
    with hessian_operator_of(sliced, layout=layout) as op:
        assert (op.numel, op.space.numel, op.space.local_numel) == (v.numel(), v.numel(), v.numel())
        approx = op.matvec(v)
        # a block: the product with v zero outside it, read on it
        block = op.block([2, 3])
        a, b = sum(p.numel() for p in params[:2]), sum(p.numel() for p in params[:4])
        masked = torch.zeros_like(v)
        masked[a:b] = v[a:b]
        with hessian_operator_of(exact) as h:
            block_reference = h.matvec(masked)[a:b]
        block_approx = block.matvec(v[a:b])
    assert float((approx - reference).norm() / reference.norm()) < 1e-3
    assert float((block_approx - block_reference).norm() / block_reference.norm()) < 1e-3
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and all(p.grad is None for p in params)
    assert model.training


def test_cores_with_a_layout_give_the_exact_numbers():
    _, _, exact, sliced, layout = _case()
    options = {"which": "both", "max_iter": 80, "tol": 1e-7}
    mine, reference = (
        hessian_eigenvalues_of(sliced, **options, layout=layout),
        hessian_eigenvalues_of(exact, **options),
    )
    np.testing.assert_allclose(mine.eigenvalues, reference.eigenvalues, rtol=1e-3)
    assert (
        mine.meta["hvp"] == "gradient difference" and mine.meta["parameters"] == reference.meta["parameters"]
    )
    trace, trace_ref = hessian_trace_of(sliced, 8, 4, layout=layout), hessian_trace_of(exact, 8, 4)
    np.testing.assert_allclose(trace.samples, trace_ref.samples, rtol=1e-3, atol=1e-4 * abs(trace_ref.trace))
    (m1, m2), _ = hessian_directions_of(sliced, max_iter=80, tol=1e-7, layout=layout)
    (e1, e2), _ = hessian_directions_of(exact, max_iter=80, tol=1e-7)
    for e, m in ((e1, m1), (e2, m2)):
        flat_e, flat_m = torch.cat([t.reshape(-1) for t in e]), torch.cat([t.reshape(-1) for t in m])
        assert float(flat_e @ flat_m) > 1 - 1e-4  # unit vectors, same sign
    for adaptive in (False, True):
        sam, sam_ref = (
            sam_sharpness_of(sliced, 0.05, adaptive, layout=layout),
            sam_sharpness_of(exact, 0.05, adaptive),
        )
        for field in ("sharpness", "first_order", "loss", "perturbed_loss", "grad_norm"):
            assert getattr(sam, field) == pytest.approx(getattr(sam_ref, field), rel=1e-5, abs=1e-7), field
        average = average_sharpness_of(sliced, 0.05, 4, adaptive, 2, layout=layout)
        np.testing.assert_allclose(
            average.losses, average_sharpness_of(exact, 0.05, 4, adaptive, 2).losses, rtol=1e-5
        )


def test_a_layout_refuses_shared_points_and_other_parameters():
    _, _, exact, sliced, layout = _case()
    shared = sliced.replace(shard=PointShard(0, 2, lambda t: t))
    with pytest.raises(ValueError, match="`shard`"):
        hessian_trace_of(shared, 4, layout=layout)
    with pytest.raises(ValueError, match="`layout`"):
        hessian_eigenvalues_of(exact.replace(params=exact.params[:2]), layout=layout)


# --------------------------------------------------------------------------- two ranks' slices, simulated


def _two_ranks(params: list[torch.Tensor]) -> list[ShardLayout]:
    """Rank r's layout over row slices of plain tensors (uneven: ceil(rows / 2) on rank 0)."""
    layouts = []
    for rank in range(2):
        local, offsets = [], []
        for p in params:
            rows = -(-p.shape[0] // 2)
            a, b = min(rank * rows, p.shape[0]), min((rank + 1) * rows, p.shape[0])
            local.append(p.detach()[a:b])
            offsets.append(a)
        layouts.append(
            ShardLayout(params, local, [p.shape for p in params], offsets, [False] * len(params), lambda t: t)
        )
    return layouts


def _global(layout: ShardLayout, index: list[int]) -> torch.Tensor:
    """The positions in the full flat vector over the parameters ``index`` of rank's local elements."""
    out, start = [], 0
    for i in index:
        n = layout.shapes[i].numel()
        row = n // layout.shapes[i][0]
        a = start + layout.row_offsets[i] * row
        out.append(torch.arange(a, a + layout.local[i].numel()))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("index", [None, [1, 2, 4]])
def test_sharded_space_draws_the_unsharded_probes_sliced_and_sums_inner_products(index):
    _, _, exact, _, _ = _case()
    params = list(exact.params)
    chosen = list(range(len(params))) if index is None else index
    full_n = sum(params[i].numel() for i in chosen)
    # two probes in sequence from one generator: the second depends on how many numbers the first took
    gen = torch.Generator().manual_seed(7)
    expected = [rademacher(full_n, gen), rademacher(full_n, gen)]
    assert torch.equal(VectorSpace(full_n).rademacher(torch.Generator().manual_seed(7)), expected[0])
    x, y = torch.randn(full_n, dtype=torch.float64), torch.randn(full_n, dtype=torch.float64)
    basis = torch.randn(3, full_n, dtype=torch.float64)
    dots, projections, lengths = [], [], []
    for layout in _two_ranks(params):
        space = ShardedSpace(layout, index)
        where = _global(layout, chosen)
        assert space.numel == full_n and space.local_numel == where.numel()
        gen = torch.Generator().manual_seed(7)
        for probe in expected:
            assert torch.equal(space.rademacher(gen), probe[where])
        dots.append(space.partial_dot(x[where], y[where]))
        projections.append(space.partial_project(basis[:, where], x[where]))
        lengths.append(space.local_numel)
    assert float(sum(dots)) == pytest.approx(float(x @ y), rel=1e-12)
    torch.testing.assert_close(sum(projections), basis @ x)
    assert sum(lengths) == full_n and max(lengths) < full_n


def test_restrict_keeps_the_chosen_parameters_layout():
    _, _, exact, _, _ = _case()
    layout = _two_ranks(list(exact.params))[1]
    sub = restrict(layout, [4, 1])
    assert sub.params == [layout.params[4], layout.params[1]] and sub.row_offsets == [
        layout.row_offsets[4],
        layout.row_offsets[1],
    ]
    assert sub.local[0] is layout.local[4] and sub.all_reduce is layout.all_reduce


class _Exchange:
    """The sum over two threads (one per simulated rank) of a tensor each hands in: an all-reduce."""

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = [None, None]
        self.barrier = threading.Barrier(2)

    def for_rank(self, rank: int):
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = self.slots[0] + self.slots[1]  # type: ignore[operator]
            self.barrier.wait()  # both have read before either writes again
            return total

        return all_reduce


def test_lanczos_and_hutchinson_on_two_ranks_slices_give_the_one_process_numbers():
    """Two ranks as two threads, each holding its slices of a diagonal operator's vectors over the network's
    parameters, their partial sums exchanged: the Ritz values, Ritz vectors (sliced) and probe values of one
    process, with each rank's basis holding only its slices."""
    _, _, exact, _, _ = _case()
    params = list(exact.params)
    n = sum(p.numel() for p in params)
    diag = torch.linspace(-1.0, 3.0, n, dtype=torch.float64) ** 3
    options = {"which": "both", "max_iter": n, "tol": 1e-10, "return_vectors": True, "dtype": torch.float64}
    whole = lanczos(lambda v: diag * v, n, seed=3, **options)
    whole_trace = hutchinson_samples(lambda v: diag * v, n, 5, seed=3, dtype=torch.float64)
    exchange, results = _Exchange(), {}
    layouts = _two_ranks(params)

    def rank(r: int) -> None:
        layout = ShardLayout(
            *[getattr(layouts[r], f) for f in ("params", "local", "shapes", "row_offsets", "replicated")],
            exchange.for_rank(r),
        )
        where = _global(layout, list(range(len(params))))
        space = ShardedSpace(layout)
        res = lanczos(lambda v: diag[where] * v, n, seed=3, space=space, **options)
        trace = hutchinson_samples(lambda v: diag[where] * v, n, 5, seed=3, dtype=torch.float64, space=space)
        results[r] = (res, trace, where)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1]
    for res, trace, where in results.values():
        np.testing.assert_allclose(res.values, whole.values, rtol=1e-10)
        assert res.iterations == whole.iterations and res.basis_length == where.numel() < n
        torch.testing.assert_close(res.vectors, whole.vectors[:, where])
        np.testing.assert_allclose(trace, whole_trace, rtol=1e-12)
    with pytest.raises(ValueError, match="`space`"):
        lanczos(lambda v: diag * v, n, space=VectorSpace(n + 1))


# --------------------------------------------------------------------------- two processes (FSDP2)


@pytest.mark.slow
def test_fsdp2_curvature_cores_give_the_unsharded_numbers_with_a_basis_of_slices():
    rows = run_two_ranks("fsdp_curvature.py")
    assert sum(r["local_numel"] for r in rows) == rows[0]["full_numel"]
    for r in rows:
        assert r["kinds"] == ["DTensor"] and r["hvp"] == "gathered double backward"
        # Lanczos (converged, 80 steps) on exact products: lambda_max and lambda_min as unsharded
        mine, exact = (np.array(v) for v in r["eigenvalues"])
        np.testing.assert_allclose(mine, exact, rtol=1e-5)
        # the basis holds this rank's slices: ~1/W of the full length (rows split 4/3, 3/2, 2/1)
        assert r["basis_length"] == [r["local_numel"], r["full_numel"]]
        assert r["basis_length"][0] <= 0.6 * r["full_numel"]
        assert min(r["direction_cosines"]) > 1 - 1e-6  # the eigenvectors' slices, signs as unsharded
        assert r["largest_only"][1] == 1
        # Hutchinson: the same Rademacher probes (seed 4), probe by probe
        np.testing.assert_allclose(*r["trace_samples"], rtol=1e-5, atol=1e-6)
        for adaptive in ("False", "True"):
            np.testing.assert_allclose(*r[f"sam_{adaptive}"], rtol=1e-5)
            np.testing.assert_allclose(*r[f"average_{adaptive}"], rtol=1e-5)  # the same Gaussian draws
        (names, lam, tr, sizes), (names_ref, lam_ref, tr_ref, sizes_ref) = r["blocks"]
        assert names == names_ref == ["0", "2", "4"] and sizes == sizes_ref  # full block sizes
        np.testing.assert_allclose(lam, lam_ref, rtol=1e-5)
        np.testing.assert_allclose(tr, tr_ref, rtol=1e-5)
        assert r["eos_sgd"][0] == pytest.approx(r["eos_sgd"][1], rel=1e-5)
        assert r["eos_adam"][2] == "preconditioned" and r["adam_step_same"]
        assert r["eos_adam"][0] == pytest.approx(r["eos_adam"][1], rel=1e-5)
        assert r["weights_same_before_step"] and r["weights_same"] and r["grads_none"] and r["training"]
        # sharded_hessian="difference": the slices only, within its step's error on this smooth network
        route, values = r["difference"]
        assert route == "gradient difference"
        np.testing.assert_allclose(values, exact, rtol=1e-3)
        # a ReLU network: lambda_max within 1e-6 of a converged Lanczos on the unsharded copy, and the
        # callback's 5 steps give the unsharded 5 steps (the gradient difference was 3.6 % low on a
        # held-out ReLU transformer); its parameters were shards, and are again after
        converged, reference, five, five_reference = (np.array(v) for v in r["relu"])
        np.testing.assert_allclose(converged, reference, rtol=1e-6)
        np.testing.assert_allclose(five, five_reference, rtol=1e-6)
        np.testing.assert_allclose(*r["relu_fresh"], rtol=1e-6)  # reuse_graph=False: the same products
        assert r["relu_states"] == ["DTensor"]
        assert r["once_differentiable"] == ["SecondOrderError", True]  # refused; training's next step as ever
    for key in ("eigenvalues", "trace_samples", "blocks", "eos_sgd", "eos_adam", "relu"):
        assert rows[0][key] == rows[1][key], key  # every rank reports the same numbers
