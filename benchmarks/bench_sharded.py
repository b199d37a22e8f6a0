"""Sharded models (FSDP2, 2 CPU ranks): a surface's time against the eager floor of the same sharded forward
passes, memory per rank against the unsharded run, and one Hessian-vector product of the sharded model (exact,
through FSDP2's gathered parameters; and by gradient differences) against the double-backward product of the
unsharded model.

One launch of two CPU processes (gloo). Each builds the same seeded MLP (``64 -> H -> H -> 10``, tanh, ``H``
odd so that the hidden rows split unevenly, chosen for ``--params`` parameters) and shards it as Lightning's
``ModelParallelStrategy`` does with ``fully_shard`` in ``configure_model``: FSDP2's ``fully_shard`` on every
Linear layer, then on the whole model (every parameter a ``DTensor``, ``Shard(0)``). Every rank evaluates the
same probe batches (random, ``common.probe("mlp")``), as the callback does under sharding.

(a) Time, per rank, interleaved in alternating order after one warm-up round, a barrier before each call:

- A, the surface: ``loss_surface_of`` on the objective the callback builds for a sharded model (its local
  slices as the parameters, the loss wrapped by ``resharding_loss``, engine "auto"), on an R x R grid of
  seeded filter-normalized directions (``sharded_filter_normalized_directions``);
- B, the eager floor: the same R*R*batches sharded forward passes with the same in-place perturbations
  (copy the saved slices, add ``x d1 + y d2``), under ``no_grad`` in eval mode, every FSDP module resharded
  after each forward, by a plain loop written here (none of the package's code). Its losses are the accuracy
  reference: the largest relative difference from the surface is printed (target: <= 1e-6).

(b) Memory per rank against the unsharded model in one process: the snapshot buffer's bytes (a
``TrajectoryRecorder`` at the callback's defaults, 64 snapshots of float32), one direction's elements, and
the Lanczos basis vectors' length (``basis_length`` reported by ``hessian_eigenvalues_of``), as ratios.

(c) One Hessian-vector product, per rank, interleaved likewise: on the sharded model, the default exact
product (``hessian_operator_of(..., layout=)``: double backward through FSDP2's gathered parameters, its
gradient graph built once, the full vector all-gathered and the result all-reduced) and the gradient
difference (``sharded_hessian="difference"``: two forward-backward passes per probe batch), against the
double-backward product on the gathered, unsharded model in one process (each rank holds such a copy),
with each one's relative error against it; the operators' set-up (the reused graph, or the gradient at w)
is a one-time cost, reported apart.

Median [min-max] over ``--reps`` (at least 5); rank 0 prints every rank's row, with the load average before
and after. Written to ``benchmarks/results/sharded.txt``.

    OMP_NUM_THREADS=1 python benchmarks/bench_sharded.py [--params 300000] [--resolution 9] [--reps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Report, ce_loss, machine, probe, ratio_spread, spread, table

FEATURES, CLASSES = 64, 10  # common.probe("mlp")'s inputs and labels
SNAPSHOTS = 64  # the callback's default max_snapshots
ACCURACY = 1e-6  # surface against the floor loop: largest relative difference allowed


def hidden_for(params: int) -> int:
    """The odd hidden width ``H`` whose MLP ``64 -> H -> H -> 10`` has about ``params`` parameters."""
    b = FEATURES + CLASSES + 2  # H^2 + (64 + 10 + 2) H + 10 = params
    h = max(3, round((-b + math.sqrt(b * b + 4 * max(params - CLASSES, 1))) / 2))
    return h if h % 2 else h + 1


def make_net(hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(FEATURES, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, CLASSES),
    )  # fmt: skip


def synced_alternating(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """``common.alternating`` across processes: every call starts after a barrier (not timed), so each
    rank's clock covers the same collective work; order reversed every other round."""
    for _ in range(warmup):
        for fn in fns.values():
            dist.barrier()
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for rep in range(reps):
        for k in order if rep % 2 == 0 else order[::-1]:
            dist.barrier()
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def eager_floor(
    net: nn.Module,
    fsdp: list[Any],
    local: list[torch.Tensor],
    d1: list[torch.Tensor],
    d2: list[torch.Tensor],
    xs: np.ndarray,
    ys: np.ndarray,
    batches: list[tuple[torch.Tensor, ...]],
) -> np.ndarray:
    """Mean cross-entropy over ``batches`` at ``w + xs[j] d1 + ys[i] d2`` (``[i, j]``): the local slices moved
    in place from a saved copy, one sharded forward per batch under ``no_grad`` in eval mode, every FSDP
    module resharded after it (so that the next forward gathers the moved slices), the slices put back."""
    saved = [t.detach().clone() for t in local]
    was = net.training
    net.eval()
    out = np.empty((len(ys), len(xs)))
    try:
        with torch.no_grad():
            for i, b in enumerate(ys):
                for j, a in enumerate(xs):
                    for t, w, u, v in zip(local, saved, d1, d2):
                        t.copy_(w)
                        t.add_(u, alpha=float(a))
                        t.add_(v, alpha=float(b))
                    values = []
                    for x, y in batches:
                        values.append(F.cross_entropy(net(x), y))
                        for m in fsdp:
                            m.reshard()
                    out[i, j] = float(torch.stack(values).double().mean())
    finally:
        with torch.no_grad():
            for t, w in zip(local, saved):
                t.copy_(w)
        net.train(was)
    return out


def measure(rank: int, opts: dict[str, Any]) -> dict[str, Any]:
    """Every measurement of one rank (collectives inside: both ranks call it together)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from lightning_landscape.callback.distributed import resharding_loss
    from lightning_landscape.callback.recorder import TrajectoryRecorder
    from lightning_landscape.functional.curvature.hessian import hessian_eigenvalues_of
    from lightning_landscape.functional.curvature.operators import hessian_operator_of
    from lightning_landscape.functional.landscape.shards import (
        ShardLayout,
        sharded_filter_normalized_directions,
    )
    from lightning_landscape.functional.landscape.surface import loss_surface_of, odd_grid
    from lightning_landscape.functional.objective import Objective

    torch.manual_seed(0)
    hidden = hidden_for(opts["params"])
    net, ref = make_net(hidden), make_net(hidden)
    ref.load_state_dict(net.state_dict())
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    fsdp = [m for m in net.modules() if isinstance(m, FSDPModule)]
    batches = probe("mlp", opts["batches"], opts["batch_size"])
    layout = ShardLayout.of(list(net.parameters()))
    before = [p.detach().full_tensor().clone() for p in net.parameters()]  # type: ignore[attr-defined]
    row: dict[str, Any] = {
        "rank": rank,
        "hidden": hidden,
        "kinds": sorted({type(p).__name__ for p in net.parameters()}),
        "full_numel": layout.numel,
        "local_numel": layout.local_numel,
    }

    # ---- (a) the surface against the eager floor
    sharded = Objective(net, resharding_loss(ce_loss, net), batches, layout.local)
    t0 = time.perf_counter()
    d1, d2 = sharded_filter_normalized_directions(layout, 2, seed=0)
    row["directions_s"] = time.perf_counter() - t0  # one-time: both directions drawn and normalized
    grid = odd_grid(1.0, opts["resolution"])
    results: dict[str, Any] = {}

    def surface() -> None:
        results["surface"] = loss_surface_of(sharded, (d1, d2), grid, grid.copy())

    def floor() -> None:
        results["floor"] = eager_floor(net, fsdp, layout.local, d1, d2, grid, grid, batches)

    times = synced_alternating({"surface": surface, "floor": floor}, opts["reps"])
    record = results["surface"]
    reference = results["floor"]
    row["surface_s"], row["floor_s"] = times["surface"], times["floor"]
    row["surface_rel_diff"] = float(np.max(np.abs(record.losses - reference) / np.abs(reference)))
    row["engine"] = record.meta.get("engine")
    row["forwards"] = opts["resolution"] ** 2 * len(batches)

    # ---- (b) memory per rank against the unsharded model
    mine, whole_rec = TrajectoryRecorder(SNAPSHOTS), TrajectoryRecorder(SNAPSHOTS)
    mine.offer(0, layout.local, step=0)
    whole_rec.offer(0, list(ref.parameters()), step=0)
    row["snapshot_bytes"], row["unsharded_snapshot_bytes"] = mine.nbytes, whole_rec.nbytes
    row["direction_numel"] = sum(t.numel() for t in d1)
    whole = Objective.build(ref, ce_loss, batches, require_grad=True)
    lanczos = {"max_iter": opts["lanczos_iter"], "tol": 1e-4}
    eig_s = hessian_eigenvalues_of(sharded, **lanczos, layout=layout)
    eig_u = hessian_eigenvalues_of(whole, **lanczos)
    row["basis_length"] = [eig_s.meta["basis_length"], eig_u.meta["basis_length"]]
    row["lambda_max"] = [eig_s.lambda_max, eig_u.lambda_max]

    # ---- (c) one Hessian-vector product: gradient differences (sharded) against double backward (unsharded)
    full = torch.randn(layout.numel, generator=torch.Generator().manual_seed(1))
    v_local = torch.cat([t.reshape(-1) for t in layout.to_local(full)])
    products: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        dist.barrier()
        t0 = time.perf_counter()
        gd = stack.enter_context(
            hessian_operator_of(sharded.replace(sharded_hessian="difference"), layout=layout)
        )
        row["gd_setup_s"] = time.perf_counter() - t0
        dist.barrier()
        t0 = time.perf_counter()
        gathered = stack.enter_context(hessian_operator_of(sharded, layout=layout))
        row["gathered_setup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact = stack.enter_context(hessian_operator_of(whole))
        row["exact_setup_s"] = time.perf_counter() - t0
        row["routes"] = [type(gathered).__name__, type(gd).__name__]

        def by_gathered() -> None:
            products["gathered"] = gathered.matvec(v_local)

        def by_differences() -> None:
            products["gd"] = gd.matvec(v_local)

        def by_double_backward() -> None:
            products["exact"] = exact.matvec(full)

        fns = {"gathered": by_gathered, "gd": by_differences, "exact": by_double_backward}
        times = synced_alternating(fns, opts["reps"])
    row["gathered_s"], row["gd_s"], row["exact_s"] = times["gathered"], times["gd"], times["exact"]
    exact_full = products["exact"].double()
    for key in ("gathered", "gd"):
        pieces = list(products[key].split([t.numel() for t in layout.local]))
        mine = layout.to_full(pieces, torch.float64)
        row[f"{key}_rel_error"] = float((mine - exact_full).norm() / exact_full.norm())

    after = [p.detach().full_tensor() for p in net.parameters()]  # type: ignore[attr-defined]
    row["weights_unchanged"] = all(torch.equal(a, b) for a, b in zip(after, before))
    row["training"] = net.training
    return row


def worker(rank: int, world: int, port: int, opts: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(opts["threads"])
    try:
        row = measure(rank, opts)
        rows: list[Any] = [None] * world
        dist.all_gather_object(rows, row)
        if rank == 0:
            write(rows, opts)
    finally:
        dist.destroy_process_group()


def write(rows: list[dict[str, Any]], opts: dict[str, Any]) -> None:
    report = Report("sharded")
    first = rows[0]
    r, n = opts["resolution"], first["forwards"]
    report(f"## Sharded models: 2 CPU ranks, gloo, FSDP2  [{opts['machine']}]")
    report(
        f"MLP {FEATURES}-{first['hidden']}-{first['hidden']}-{CLASSES} (tanh), "
        f"{first['full_numel']} parameters "
        f"({first['kinds']}; rank 0 holds {rows[0]['local_numel']}, rank 1 {rows[1]['local_numel']}), "
        f"fully_shard per Linear and on the whole model; probe {opts['batches']} x {opts['batch_size']} "
        f"on every rank; {opts['threads']} thread(s) per rank"
    )
    report(
        f"{opts['reps']} interleaved repetitions (order alternated, one warm-up round excluded, a barrier "
        "before each call), median [min-max]"
    )
    report()
    report(f"### (a) a {r}x{r} surface against the eager floor ({n} sharded forward passes each)")
    report(
        table(
            [
                [
                    row["rank"],
                    spread(row["surface_s"]),
                    spread(row["floor_s"]),
                    ratio_spread(row["surface_s"], row["floor_s"]),
                    f"{row['surface_rel_diff']:.1e}",
                ]
                for row in rows
            ],
            ["rank", "surface s", "floor s", "surface/floor", "max rel. diff"],
        )
    )
    ok = all(row["surface_rel_diff"] <= ACCURACY for row in rows)
    report(
        f"surface: loss_surface_of as the callback calls it (engine {first['engine']}); floor: a plain loop "
        f"in this script, the accuracy reference (max rel. diff <= {ACCURACY:g}: {'ok' if ok else 'FAILED'})"
    )
    report(
        "one-time: the two seeded directions, drawn per full parameter and sliced: "
        + ", ".join(f"rank {row['rank']} {row['directions_s']:.3g} s" for row in rows)
    )
    report()
    report("### (b) memory per rank against the unsharded model in one process")
    full = first["full_numel"]

    def ratios(key: str, unsharded: int) -> list[Any]:
        mine = [row[key] if not isinstance(row[key], list) else row[key][0] for row in rows]
        return [unsharded, *mine, " / ".join(f"{m / unsharded:.2f}" for m in mine)]

    mem_rows = [
        [
            f"snapshot buffer, bytes ({SNAPSHOTS} x float32)",
            *ratios("snapshot_bytes", first["unsharded_snapshot_bytes"]),
        ],
        ["one direction, elements", *ratios("direction_numel", full)],
        ["Lanczos basis vector, elements (basis_length)", *ratios("basis_length", first["basis_length"][1])],
    ]
    report(table(mem_rows, ["quantity", "unsharded", "rank 0", "rank 1", "rank 0 / rank 1 to unsharded"]))
    lam = first["lambda_max"]
    report(
        f"lambda_max after {opts['lanczos_iter']} Lanczos steps: "
        f"sharded {lam[0]:.6g}, unsharded {lam[1]:.6g} "
        f"(rel. diff {abs(lam[0] - lam[1]) / abs(lam[1]):.1e})"
    )
    report()
    report("### (c) one Hessian-vector product of the sharded model against double backward unsharded")
    report(
        table(
            [
                [
                    row["rank"],
                    spread(row["gathered_s"]),
                    spread(row["gd_s"]),
                    spread(row["exact_s"]),
                    ratio_spread(row["gathered_s"], row["exact_s"]),
                    ratio_spread(row["gd_s"], row["exact_s"]),
                    f"{row['gathered_rel_error']:.1e} / {row['gd_rel_error']:.1e}",
                    f"{row['gathered_setup_s']:.3g} / {row['gd_setup_s']:.3g} / {row['exact_setup_s']:.3g}",
                ]
                for row in rows
            ],
            [
                "rank",
                "exact sharded s",
                "difference s",
                "unsharded s",
                "exact sharded/unsharded",
                "difference/unsharded",
                "rel. error exact / difference",
                "set-up s (one-time) exact / difference / unsharded",
            ],
        )
    )
    report(
        f"exact sharded ({rows[0]['routes'][0]}, the default): hessian_operator_of(..., layout=) on the "
        "sharded model, double backward through FSDP2's gathered parameters (gradient graph built once; per "
        "product the vector all-gathered one parameter at a time, the modules unsharded again, one backward "
        f"pass per batch, the result all-reduced); difference ({rows[0]['routes'][1]}, "
        'sharded_hessian="difference"): two forward-backward passes per probe batch on the slices; '
        "unsharded: the double-backward operator on the gathered, unsharded model in one process, its graph "
        "built once; rel. error: |Hv - Hv_unsharded| / |Hv_unsharded| over the full vector (the reference: "
        "PyTorch's double backward on a plain model); set-up: the reused graph / the gradient at w / the "
        "reused graph"
    )
    unchanged = all(row["weights_unchanged"] and row["training"] for row in rows)
    report(f"weights bit-identical and training mode kept after everything, every rank: {unchanged}")
    report(f"[after: {machine()}]")
    report(f"written to {report.write()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=300_000, help="about this many model parameters")
    parser.add_argument("--resolution", type=int, default=9, help="odd grid size R: R x R points")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--lanczos-iter", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps: at least 5 repetitions")
    if args.resolution < 3 or args.resolution % 2 == 0:
        parser.error("--resolution: an odd number >= 3")
    torch.set_num_threads(args.threads)
    opts = {**vars(args), "machine": machine()}
    mp.spawn(worker, args=(2, free_port(), opts), nprocs=2)


if __name__ == "__main__":
    main()
