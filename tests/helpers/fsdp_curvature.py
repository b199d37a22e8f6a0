"""Two CPU processes (gloo), the FSDP2 test network sharded by ``fully_shard`` (every Linear, then the whole
model: rows 7, 5 and 3, uneven shards): every curvature core with ``layout=`` (exact products through
FSDP2's gathered parameters, on each rank's slices; the gradient difference too) against the same core on
an unsharded copy (exact double-backward products), same seeds; and a ReLU network's lambda_max.
Rank zero prints one JSON line: the list of every rank's row. Run by
``tests/functional/curvature/test_sharded.py`` as ``python fsdp_curvature.py PORT``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers import fsdp_run
from helpers.two_ranks import print_rows


def _flat(direction: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in direction])


class _Square(torch.autograd.Function):
    """x * x with a backward that cannot be differentiated again (``@once_differentiable``)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def _refused_then_trains(batches: list) -> list:
    """A sharded network with a once-differentiable op: exact curvature is refused with SecondOrderError
    (before, the second derivative silently missed that op's term), and a training step afterwards gives
    the gradients of the same step on a copy that was never observed."""
    from torch.distributed.fsdp import fully_shard

    from lightning_landscape.callback.distributed import resharding_loss
    from lightning_landscape.functional.curvature.hessian import hessian_eigenvalues_of
    from lightning_landscape.functional.curvature.second_order import SecondOrderError
    from lightning_landscape.functional.landscape.shards import ShardLayout
    from lightning_landscape.functional.objective import Objective

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(fsdp_run.FEATURES, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(_Square.apply(self.a(x)))

    grads = []
    for observe in (True, False):
        torch.manual_seed(2)
        net = Net()
        fully_shard(net.a)
        fully_shard(net)
        refused = None
        if observe:
            layout = ShardLayout.of(list(net.parameters()))
            objective = Objective(net, resharding_loss(fsdp_run.ce, net), batches, layout.local)
            try:
                hessian_eigenvalues_of(objective, max_iter=3, layout=layout)
            except SecondOrderError as err:
                refused = type(err).__name__
        fsdp_run.ce(net, batches[0]).backward()
        grads.append(([p.grad.full_tensor() for p in net.parameters()], refused))  # type: ignore[union-attr]
    same = all(torch.equal(a, b) for a, b in zip(grads[0][0], grads[1][0]))
    return [grads[0][1], same]


def run(rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torch.distributed.fsdp import fully_shard

    from lightning_landscape.callback.distributed import resharding_loss
    from lightning_landscape.functional.curvature.blocks import block_curvature_of
    from lightning_landscape.functional.curvature.hessian import (
        hessian_directions_of,
        hessian_eigenvalues_of,
        hessian_trace_of,
    )
    from lightning_landscape.functional.curvature.sharpness import average_sharpness_of, sam_sharpness_of
    from lightning_landscape.functional.curvature.stability import edge_of_stability_ratio_of
    from lightning_landscape.functional.landscape.shards import ShardLayout
    from lightning_landscape.functional.objective import Objective

    batches = list(fsdp_run.probe_loader())

    def pair(make: Callable[[], nn.Sequential]) -> tuple[nn.Sequential, ShardLayout, Objective, Objective]:
        """The network sharded (every Linear, then the whole), its layout, and the objectives of it and of an
        unsharded copy."""
        net, ref = make(), make()
        ref.load_state_dict(net.state_dict())
        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(net)
        layout = ShardLayout.of(list(net.parameters()))
        sharded = Objective(net, resharding_loss(fsdp_run.ce, net), batches, layout.local)
        return net, layout, sharded, Objective.build(ref, fsdp_run.ce, batches, require_grad=True)

    torch.manual_seed(0)
    net, layout, sharded, whole = pair(fsdp_run.make_net)
    ref = whole.model
    before = [p.detach().full_tensor().clone() for p in net.parameters()]  # type: ignore[attr-defined]
    out: dict[str, object] = {
        "rank": rank,
        "kinds": sorted({type(p).__name__ for p in net.parameters()}),
        "local_numel": layout.local_numel,
        "full_numel": layout.numel,
    }

    # lambda_max and lambda_min with their eigenvectors: one converged Lanczos each
    (m1, m2), mine = hessian_directions_of(sharded, max_iter=80, tol=1e-7, layout=layout)
    (e1, e2), exact = hessian_directions_of(whole, max_iter=80, tol=1e-7)
    out["eigenvalues"] = [mine.eigenvalues.tolist(), exact.eigenvalues.tolist()]
    out["basis_length"] = [mine.meta["basis_length"], exact.meta["basis_length"]]
    out["hvp"] = mine.meta["hvp"]
    largest = hessian_eigenvalues_of(sharded, max_iter=5, tol=1e-3, return_eigenvectors=True, layout=layout)
    out["largest_only"] = [largest.lambda_max, len(largest.eigenvectors or [])]
    cosines = []
    for mine_d, exact_d in ((m1, e1), (m2, e2)):
        sliced = [layout.local_rows(i, t) for i, t in enumerate(exact_d)]  # the exact one's slices
        part = torch.tensor(float(_flat(mine_d) @ _flat(sliced)), dtype=torch.float64)
        dist.all_reduce(part)
        cosines.append(float(part))
    out["direction_cosines"] = cosines

    trace = dict(samples=8, seed=4)
    mine_t, exact_t = hessian_trace_of(sharded, **trace, layout=layout), hessian_trace_of(whole, **trace)
    out["trace_samples"] = [mine_t.samples.tolist(), exact_t.samples.tolist()]

    for adaptive in (False, True):
        a, b = (
            sam_sharpness_of(sharded, 0.05, adaptive, layout=layout),
            sam_sharpness_of(whole, 0.05, adaptive),
        )
        out[f"sam_{adaptive}"] = [
            [a.sharpness, a.first_order, a.grad_norm],
            [b.sharpness, b.first_order, b.grad_norm],
        ]
        options = dict(sigma=0.05, samples=4, adaptive=adaptive, seed=2)
        c, d = average_sharpness_of(sharded, **options, layout=layout), average_sharpness_of(whole, **options)
        out[f"average_{adaptive}"] = [c.losses.tolist(), d.losses.tolist()]

    blocks = dict(max_iter=20, tol=1e-4, samples=6, seed=1)
    mine_b, exact_b = (
        block_curvature_of(sharded, **blocks, layout=layout),
        block_curvature_of(whole, **blocks),
    )
    out["blocks"] = [
        [mine_b.blocks, mine_b.lambda_max.tolist(), mine_b.trace.tolist(), mine_b.parameters.tolist()],
        [exact_b.blocks, exact_b.lambda_max.tolist(), exact_b.trace.tolist(), exact_b.parameters.tolist()],
    ]

    # the gradient difference (``sharded_hessian="difference"``): slices only, within its step's error
    _, approx = hessian_directions_of(sharded.replace(sharded_hessian="difference"), 80, 1e-7, layout=layout)
    out["difference"] = [approx.meta["hvp"], approx.eigenvalues.tolist()]

    # a ReLU network (kinks: where the gradient difference is biased): exact products, converged Lanczos
    torch.manual_seed(1)
    relu, relu_layout, relu_sharded, relu_whole = pair(fsdp_run.make_relu_net)
    converged = dict(max_iter=200, tol=1e-9)
    out["relu"] = [
        hessian_eigenvalues_of(relu_sharded, **converged, layout=relu_layout).eigenvalues.tolist(),
        hessian_eigenvalues_of(relu_whole, **converged).eigenvalues.tolist(),
        # the 5 steps of the callback's periodic landscapes, sharded and not: the same iterations
        hessian_eigenvalues_of(relu_sharded, max_iter=5, tol=1e-3, layout=relu_layout).eigenvalues.tolist(),
        hessian_eigenvalues_of(relu_whole, max_iter=5, tol=1e-3).eigenvalues.tolist(),
    ]
    fresh = dict(max_iter=20, tol=1e-9, layout=relu_layout)  # each product rebuilding its graph, and not
    out["relu_fresh"] = [
        hessian_eigenvalues_of(relu_sharded, **fresh, reuse_graph=False).eigenvalues.tolist(),
        hessian_eigenvalues_of(relu_sharded, **fresh).eigenvalues.tolist(),
    ]
    out["relu_states"] = sorted({type(p).__name__ for p in relu.parameters()})

    eos = dict(max_iter=30, tol=1e-6)
    sgd = [torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9) for m in (net, ref)]
    mine_s = edge_of_stability_ratio_of(sharded, sgd[0], **eos, layout=layout)
    exact_s = edge_of_stability_ratio_of(whole, sgd[1], **eos)
    out["eos_sgd"] = [mine_s.ratio, exact_s.ratio]
    now = [p.detach().full_tensor() for p in net.parameters()]  # type: ignore[attr-defined]
    out["weights_same_before_step"] = all(torch.equal(a, b) for a, b in zip(now, before))
    # Adam's preconditioner needs its state: one identical step on both (the gradients of the same loss on
    # the same batches; FSDP2 averages the two ranks' equal gradients exactly).
    adams = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (net, ref)]
    for model, adam in zip((net, ref), adams):
        adam.zero_grad()
        fsdp_run.ce(model, batches[0]).backward()
        adam.step()
        adam.zero_grad(set_to_none=True)
    before = [p.detach().full_tensor().clone() for p in net.parameters()]  # type: ignore[attr-defined]
    out["adam_step_same"] = all(torch.equal(b, p.detach()) for b, p in zip(before, ref.parameters()))
    mine_a = edge_of_stability_ratio_of(sharded, adams[0], **eos, layout=layout)
    exact_a = edge_of_stability_ratio_of(whole, adams[1], **eos)
    out["eos_adam"] = [mine_a.ratio, exact_a.ratio, mine_a.threshold.sharpness]

    after = [p.detach().full_tensor() for p in net.parameters()]  # type: ignore[attr-defined]
    out["weights_same"] = all(torch.equal(a, b) for a, b in zip(after, before))
    out["once_differentiable"] = _refused_then_trains(batches)
    out["grads_none"] = all(p.grad is None for p in net.parameters())
    out["training"] = net.training
    print_rows(out, world)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1]), nprocs=2)
