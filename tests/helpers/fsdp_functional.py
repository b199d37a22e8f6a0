"""Two CPU processes (gloo): the PUBLIC functional API called on a model sharded by FSDP2's ``fully_shard``
(every Linear, then the whole model: rows 7, 5 and 3, uneven shards), with the user's plain loss, every
rank calling each function; beside it the same calls on the gathered, unsharded model in each process.
The functions find the sharding themselves (no layout passed). Rank zero prints one JSON line: the list
of every rank's row. Run by ``tests/functional/test_sharded_api.py`` as
``python fsdp_functional.py PORT``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers import fsdp_run
from helpers.two_ranks import print_rows


def _full(direction: list[torch.Tensor]) -> list[torch.Tensor]:
    """The full tensors of a direction given as DTensors (a collective), or the tensors themselves."""
    return [t.full_tensor() if hasattr(t, "full_tensor") else t for t in direction]


def _flat(direction: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in _full(direction)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _refusal(call) -> str:
    try:
        call()
    except ValueError as err:
        return str(err)
    return "no error"


def run(rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torch.distributed.fsdp import fully_shard

    import lightning_landscape.functional as F

    torch.manual_seed(0)
    net, ref = fsdp_run.make_net(), fsdp_run.make_net()
    ref.load_state_dict(net.state_dict())
    start = [p.detach().clone() for p in ref.parameters()]  # the initial weights, full and plain
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    batches = list(fsdp_run.probe_loader())
    # a few SGD steps on the sharded model (the same batch on both ranks), then the gathered copy
    sgd = torch.optim.SGD(net.parameters(), lr=0.5)
    for batch in batches[:3]:
        sgd.zero_grad()
        fsdp_run.ce(net, batch).backward()
        sgd.step()
    sgd.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, q in zip(net.parameters(), ref.parameters()):
            q.copy_(p.full_tensor())  # type: ignore[attr-defined]
    before = [p.detach().to_local().clone() for p in net.parameters()]  # type: ignore[attr-defined]
    ce = fsdp_run.ce  # the user's plain loss: no resharding, no layout
    out: dict[str, object] = {"rank": rank, "kinds": sorted({type(p).__name__ for p in net.parameters()})}

    # curvature: lambda_max / lambda_min and their eigenvectors (as DTensors), the trace, SAM, average
    lanczos = dict(which="both", max_iter=80, tol=1e-7, return_eigenvectors=True)
    mine, exact = (
        F.hessian_eigenvalues(net, ce, batches, **lanczos),
        F.hessian_eigenvalues(ref, ce, batches, **lanczos),
    )
    out["eigenvalues"] = [mine.eigenvalues.tolist(), exact.eigenvalues.tolist()]
    out["eigenvector_kinds"] = sorted({type(t).__name__ for v in mine.eigenvectors or [] for t in v})
    out["eigenvector_cosines"] = [
        float(_flat(a) @ _flat(b)) for a, b in zip(mine.eigenvectors or [], exact.eigenvectors or [])
    ]
    trace = dict(samples=8, seed=4)
    out["trace"] = [
        F.hessian_trace(net, ce, batches, **trace).trace,
        F.hessian_trace(ref, ce, batches, **trace).trace,
    ]
    a, b = F.sam_sharpness(net, ce, batches, rho=0.05), F.sam_sharpness(ref, ce, batches, rho=0.05)
    out["sam"] = [[a.sharpness, a.grad_norm, a.loss], [b.sharpness, b.grad_norm, b.loss]]
    average = dict(sigma=0.05, samples=4, seed=2)
    out["average"] = [
        F.average_sharpness(net, ce, batches, **average).losses.tolist(),
        F.average_sharpness(ref, ce, batches, **average).losses.tolist(),
    ]
    (loss_s, grad_s), (loss_r, grad_r) = F.loss_gradient(net, ce, batches), F.loss_gradient(ref, ce, batches)
    out["gradient"] = [loss_s, loss_r, _rel(_flat(grad_s), _flat(grad_r))]
    v = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
        for i, p in enumerate(ref.parameters())
    ]
    out["hvp_rel"] = _rel(
        _flat(F.hessian_vector_product(net, ce, batches, v)),
        _flat(F.hessian_vector_product(ref, ce, batches, v)),
    )
    eos = dict(max_iter=30, tol=1e-6)
    out["eos"] = [
        F.edge_of_stability_ratio(net, ce, batches, sgd, **eos).ratio,
        F.edge_of_stability_ratio(ref, ce, batches, torch.optim.SGD(ref.parameters(), lr=0.5), **eos).ratio,
    ]
    step = [-g for g in grad_s]  # the SGD update as DTensors
    crit = dict(rtol=1e-3)
    out["critical"] = [
        F.critical_sharpness(net, ce, batches, step, **crit).lambda_c,
        F.critical_sharpness(ref, ce, batches, [-g for g in grad_r], **crit).lambda_c,
    ]

    # landscapes: seeded filter-normalized directions (DTensors), a surface, a line, the interpolation line
    dirs = F.filter_normalized_directions(list(net.parameters()), count=2, seed=3)
    dirs_ref = F.filter_normalized_directions(list(ref.parameters()), count=2, seed=3)
    out["direction_kinds"] = sorted({type(t).__name__ for d in dirs for t in d})
    out["directions_equal"] = all(
        torch.equal(x, y) for d, e in zip(dirs, dirs_ref) for x, y in zip(_full(d), e)
    )
    surf = dict(resolution=5, span=0.5)
    s_mine, s_ref = (
        F.loss_surface(net, ce, batches, dirs, **surf),
        F.loss_surface(ref, ce, batches, dirs_ref, **surf),
    )
    s_plain = F.loss_surface(net, ce, batches, dirs_ref, **surf)  # full-shaped plain directions, sliced
    out["surface"] = [s_mine.losses.tolist(), s_ref.losses.tolist(), s_plain.losses.tolist()]
    out["surface_engine"] = s_mine.meta["engine"]
    line = dict(resolution=7, span=0.5)
    out["line"] = [
        F.loss_line(net, ce, batches, dirs[0], **line).losses.tolist(),
        F.loss_line(ref, ce, batches, dirs_ref[0], **line).losses.tolist(),
    ]
    i_mine = F.interpolation_line(net, ce, batches, start, resolution=9)
    i_ref = F.interpolation_line(ref, ce, batches, start, resolution=9)
    out["interpolation"] = [i_mine.losses.tolist(), i_ref.losses.tolist()]
    out["distance"] = [i_mine.meta["distance"], i_ref.meta["distance"]]
    out["evaluate_loss"] = [F.evaluate_loss(net, ce, batches), F.evaluate_loss(ref, ce, batches)]

    # the reliability indicators (random directions and norms over the full weights) and snapshot losses
    settings = F.ReliabilitySettings(directions=2, direction_points=3, trace_directions=2)
    r_mine, lines_mine = F.landscape_reliability(net, ce, batches, dirs, s_mine, settings=settings)
    r_ref, lines_ref = F.landscape_reliability(ref, ce, batches, dirs_ref, s_ref, settings=settings)
    out["reliability"] = [r_mine.as_dict(), r_ref.as_dict()]
    out["reliability_lines"] = [
        [x.losses.tolist() for x in lines_mine],
        [x.losses.tolist() for x in lines_ref],
    ]
    snapshots = torch.stack([torch.cat([t.reshape(-1) for t in w]) for w in (start, list(ref.parameters()))])
    out["snapshot_losses"] = [
        F.snapshot_losses(net, ce, batches, snapshots.detach()).tolist(),
        F.snapshot_losses(ref, ce, batches, snapshots.detach()).tolist(),
    ]

    # what does not work sharded says so, and what does
    out["refusals"] = {
        "barrier": _refusal(lambda: F.barrier(net, ce, batches, start, dirs_ref[0])),
        "vmap": _refusal(lambda: F.loss_line(net, ce, batches, dirs[0], engine="vmap")),
        "shard": _refusal(
            lambda: F.hessian_trace(net, ce, batches, shard=F.PointShard(rank, world, lambda t: t))
        ),
    }

    after = [p.detach().to_local() for p in net.parameters()]  # type: ignore[attr-defined]
    out["weights_same"] = all(torch.equal(x, y) for x, y in zip(after, before))
    out["still_dtensors"] = all(type(p).__name__ == "DTensor" for p in net.parameters())
    out["grads_none"] = all(p.grad is None for p in net.parameters())
    out["training"] = net.training
    print_rows(out, world)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1]), nprocs=2)
