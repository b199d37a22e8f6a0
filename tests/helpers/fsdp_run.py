"""A sharded training run with LossLandscapeCallback, for the FSDP2 tests (run as a script, not collected).

    python tests/helpers/fsdp_run.py OUT_DIR [--scenarios pca,random,hessian,bare]

Two CPU processes (gloo) under ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``:
``configure_model`` applies FSDP2's ``fully_shard`` to every Linear layer and then to the whole model, so
every parameter is a ``DTensor`` sharded on dimension 0 (rows 7, 5 and 3: uneven shards included). Each
scenario is one fit in ``OUT_DIR/<scenario>/`` (records in ``landscape/``, written by rank zero), with the
callback at its defaults but for: no overhead budget, no figures, a fixed probe loader, a snapshot every
2 steps, smaller grids (5, final 9, lines 9: the numbers compared do not depend on them), for ``pca``
the per-block curvature (a block per Linear) and the edge-of-stability ratio among the final metrics,
for ``random`` ``directions="random"`` and ``save_weights=True`` (gathered one parameter at a time);
``hessian`` draws on Hessian directions (no metrics); ``defaults`` runs the callback at every default
(only the probe loader given) with a TensorBoard logger (records in ``tb/version_0/landscape``);
``bare`` is the same fit without the callback (its final weights must be the same, bit for bit);
``bn`` trains a network with a BatchNorm layer (both ranks see the same batches, so their running
statistics agree) under two callbacks, ``bn="interpolate"`` (saving its weights) and
``bn="recompute"``, on random planes, the final landscape only, records in ``landscape/<bn mode>/``.
Every callback computes its reliability indicators (``bn``: none). After the fit the full weights
(initial, final and those at every snapshot step, as ``trajectory`` and ``steps``) and the BatchNorm
statistics (initial and final), gathered one parameter at a time, go to ``weights.npz`` (rank zero),
and each rank writes ``rank{r}.json``: its snapshot buffer's bytes, the local and full parameter counts
and the records, and ``warnings{r}.json`` the callback's warnings.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from helpers.models import FEATURES, NoisyDataset, loader
from lightning_landscape import LossLandscapeCallback

CALLBACK_OPTIONS = {
    "max_overhead": None,
    "log_figures": False,
    "resolution": 5,
    "final_resolution": 9,
    "line_resolution": 9,
    "snapshot_every_n_steps": 2,
}
SCENARIOS = {
    "pca": {
        "final_metrics": {  # few probes: the check compares the same probes sharded and unsharded
            **dict.fromkeys(("eigenvalues", "sam", "eos")),
            "trace": {"samples": 8},
            "average": {"samples": 4},
            "blocks": {"blocks": ["net.0", "net.2", "net.4"], "samples": 4},  # the three Linear layers
        }
    },
    "random": {"directions": "random", "save_weights": True, "sharded_hessian": "difference"},
    "hessian": {"directions": "hessian", "metrics": None, "final_metrics": None},
    "bare": {"bare": True},
    "defaults": {"defaults": True},
    "frozen": {
        "model": "frozen",
        "directions": "random",
        "metrics": None,
        "final_metrics": None,
        "reliability": False,
        "every_n_epochs": None,
        "save_weights": True,
    },
    "bn": {
        "model": "bn",
        "callbacks": [
            {
                "name": mode,
                "bn": mode,
                "directions": "random",
                "metrics": None,
                "final_metrics": None,
                "reliability": False,
                "save_weights": mode == "interpolate",
                "every_n_epochs": None,
            }
            for mode in ("interpolate", "recompute")
        ],
    },
}


def probe_loader() -> DataLoader:
    """The fixed probe set: 4 batches of 8 (the callback's default ``num_batches``)."""
    return loader(32, 8, seed=5)


def make_net() -> nn.Sequential:
    """The plain network (the unsharded reference builds the same one)."""
    return nn.Sequential(
        nn.Linear(FEATURES, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3)
    )  # fmt: skip


def make_relu_net() -> nn.Sequential:
    """A ReLU network (kinks where a finite step of the weights changes which units are active)."""
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 3))


def make_bn_net() -> nn.Sequential:
    """A network with a BatchNorm layer (its weight and bias are sharded, its statistics are not)."""
    return nn.Sequential(nn.Linear(FEATURES, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3))


def ce(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class ShardedNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d)):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = ce(self, batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)

    def train_dataloader(self) -> DataLoader:
        data, world = NoisyDataset(64, 0), self.trainer.world_size
        sampler = DistributedSampler(data, world, self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=8 // world, sampler=sampler)


class ShardedBNNet(ShardedNet):
    """:func:`make_bn_net`, every rank on the same batches (one BatchNorm statistics on every rank)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_bn_net()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(NoisyDataset(64, 0), batch_size=8)


def full_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter gathered in full, one at a time (a collective: every rank calls it)."""
    out = {}
    for name, p in module.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.removeprefix("net.")] = full.detach().cpu().numpy().copy()
    return out


def float_buffers(module: nn.Module) -> dict[str, np.ndarray]:
    """The floating-point buffers (BatchNorm statistics: not sharded), as this rank holds them."""
    return {
        n.removeprefix("net."): b.detach().cpu().numpy().copy()
        for n, b in module.named_buffers()
        if b.is_floating_point()
    }


def eager_floor(module: nn.Module, trainer) -> dict[str, float]:
    """Seconds of the final surface's forward passes alone (9 x 9 points x 4 batches, no_grad, eval mode,
    resharded after each as the callback does), at the current weights: the floor a surface can reach."""
    import time

    from torch.distributed.fsdp import FSDPModule

    batches = list(probe_loader())
    fsdp = [m for m in module.modules() if isinstance(m, FSDPModule)]
    was = module.training
    module.eval()
    trainer.strategy.barrier()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(81):
            for b in batches:
                ce(module, b)
                for m in fsdp:
                    m.reshard()
    seconds = time.perf_counter() - start
    module.train(was)
    return {"forwards": 81 * len(batches), "seconds": seconds}


class Report(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.initial: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.trajectory: list[np.ndarray] = []  # the full weights at every snapshot step (flat)
        self.steps: list[int] = []

    def _keep(self, pl_module, step: int) -> None:
        self.trajectory.append(np.concatenate([v.reshape(-1) for v in full_weights(pl_module).values()]))
        self.steps.append(step)

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = full_weights(pl_module)
        self.buffers = float_buffers(pl_module)
        self._keep(pl_module, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % CALLBACK_OPTIONS["snapshot_every_n_steps"] == 0:
            self._keep(pl_module, trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        final = full_weights(pl_module)
        if trainer.is_global_zero:
            arrays = {f"final/{k}": v for k, v in final.items()}
            arrays.update({f"initial/{k}": v for k, v in self.initial.items()})
            arrays.update({f"final_buffers/{k}": v for k, v in float_buffers(pl_module).items()})
            arrays.update({f"initial_buffers/{k}": v for k, v in self.buffers.items()})
            arrays.update(trajectory=np.stack(self.trajectory), steps=np.asarray(self.steps))
            np.savez(self.out / "weights.npz", **arrays)
        cb = next((c for c in trainer.callbacks if isinstance(c, LossLandscapeCallback)), None)
        if cb is None:
            return
        floor = eager_floor(pl_module, trainer)
        params = [p for _, p in pl_module.named_parameters()]
        buffer = getattr(cb.recorder, "_buffer", None)
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "param_types": sorted({type(p).__name__ for p in params}),
            "local_numel": sum(p.to_local().numel() for p in params),
            "full_numel": sum(p.numel() for p in params),
            "snapshot_buffer_bytes": int(buffer.numel() * buffer.element_size()) if buffer is not None else 0,
            "snapshots": len(cb.recorder),
            # what an unsharded run's buffer would take: the same capacity rule, for the full parameter count
            "unsharded_buffer_bytes": int(
                cb.recorder.capacity_for(sum(p.numel() for p in params)) * sum(p.numel() for p in params) * 4
            ),
            "records": [r.meta.get("name") for r in cb.records],
            "global_step": trainer.global_step,
            "eager_floor_seconds": floor,  # measured, never asserted
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def fit(out: Path, options: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = dict(options)
        bare = options.pop("bare", False)
        defaults = options.pop("defaults", False)
        kind = options.pop("model", None)
        model = ShardedBNNet() if kind == "bn" else ShardedNet()
        if kind == "frozen":  # the first layer frozen (fine-tuning): outside the landscape, still saved
            model.net[0].requires_grad_(False)
        callbacks = [
            LossLandscapeCallback(probe_dataloader=probe_loader(), **{**CALLBACK_OPTIONS, **each})
            for each in options.pop("callbacks", [options])
        ]
        if defaults:  # the callback as a user starts it: every default, figures to TensorBoard
            callbacks = [LossLandscapeCallback(probe_dataloader=probe_loader())]
        trainer = pl.Trainer(
            default_root_dir=str(out),
            accelerator="cpu",
            devices=2,
            strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
            max_epochs=2,
            logger=TensorBoardLogger(str(out), name="tb", version=0) if defaults else False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            use_distributed_sampler=False,
            callbacks=[Report(out)] if bare else [*callbacks, Report(out)],
        )
        trainer.fit(model)
    notes = [str(w.message) for w in caught if "LossLandscapeCallback" in str(w.message)]
    (out / f"warnings{trainer.global_rank}.json").write_text(json.dumps(notes))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--scenarios", default="pca", help=f"comma-separated: {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.scenarios.split(","):
        fit(Path(args.out) / name, SCENARIOS[name])


if __name__ == "__main__":
    main()
