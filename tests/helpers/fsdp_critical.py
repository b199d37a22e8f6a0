"""Two CPU processes (gloo), an MLP sharded by FSDP2 (``fully_shard``): critical sharpness along minus the
gradient on the sharded parameters, against the same search on an unsharded copy. Rank zero prints one JSON
line: the list of every rank's row. Run by ``tests/functional/test_critical.py`` as
``python fsdp_critical.py PORT``."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def run(rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    from torch.distributed.fsdp import fully_shard

    from lightning_landscape.functional import critical_sharpness

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))

    net, ref = mlp(), mlp()
    ref.load_state_dict(net.state_dict())
    fully_shard(net[0])
    fully_shard(net)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))

    def ce(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    ce(net, batch).backward()
    before = [p.detach().full_tensor().clone() for p in net.parameters()]  # type: ignore[attr-defined]
    sharded = critical_sharpness(net, ce, [batch], [-p.grad for p in net.parameters()], rtol=1e-6)
    kinds = sorted({type(p).__name__ for p in net.parameters()})
    same = all(torch.equal(p.detach().full_tensor(), b) for p, b in zip(net.parameters(), before))  # type: ignore[attr-defined]
    ce(ref, batch).backward()
    whole = critical_sharpness(ref, ce, [batch], [-p.grad for p in ref.parameters()], rtol=1e-6)
    out = {"rank": rank, "sharded": sharded.lambda_c, "whole": whole.lambda_c, "kinds": kinds, "same": same}
    # Rank zero prints every rank's row as one line: two processes writing to one pipe could interleave.
    rows: list[object] = [None] * world
    dist.all_gather_object(rows, out)
    if rank == 0:
        print(json.dumps(rows), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1]), nprocs=2)
