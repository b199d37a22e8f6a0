"""Small training runs with LossLandscapeCallback, for the DDP tests (run as a script, not collected).

    python tests/helpers/ddp_run.py OUT_DIR STRATEGY [--probe user|train] [--fail-rank N] [--metrics]
    python tests/helpers/ddp_run.py OUT_DIR STRATEGY --scenarios plain,reliability,metrics,fail

STRATEGY is ``single`` (one process, batch 8) or a Lightning strategy on 2 CPU processes (batch 4 per
rank, so each optimizer step sees the same 8 samples as the single run). Each rank writes
``OUT_DIR/rank{r}.json``: its loss_fn call count, a digest of its probe batches, what it wrote and
logged, and its final step. Records go to ``OUT_DIR/landscape/`` (rank zero only).

With ``--scenarios`` the same processes run one fit per scenario, one after the other (a second fit in a
DDP script reuses the launched processes and the process group), each in ``OUT_DIR/<scenario>/`` with
its own call count: ``plain`` (the options above), ``reliability`` (as ``--reliability``), ``metrics``
(as ``--metrics``) and ``fail`` (as ``--fail-rank 1``; put it last). The processes start once: most of a
run's time is importing Lightning, in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from helpers.models import NoisyDataset, TinyNet, ce_loss, loader
from lightning_landscape import LossLandscapeCallback

CALLS = {"n": 0}


def counting_loss(model, batch):
    CALLS["n"] += 1
    fail_rank = int(os.environ.get("LL_FAIL_RANK", "-1"))
    if fail_rank >= 0 and torch.distributed.is_initialized() and torch.distributed.get_rank() == fail_rank:
        raise RuntimeError(f"loss_fn broken on rank {fail_rank}")
    return ce_loss(model, batch)


def probe_digest(batches) -> list[float]:
    return [float(x.double().sum() + 1000 * y.double().sum()) for x, y in batches]


class ShardedNet(TinyNet):
    """Rank r trains on samples r, r + W, ... in order (Lightning's own sampler would shuffle)."""

    def train_dataloader(self) -> DataLoader:
        data, world = NoisyDataset(64, 0), self.trainer.world_size
        if world == 1:
            return DataLoader(data, batch_size=8)
        sampler = DistributedSampler(data, world, self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=8 // world, sampler=sampler)


class Report(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, LossLandscapeCallback))
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "calls": CALLS["n"],
            "probe": probe_digest(cb.probe.cached) if cb.probe.cached else None,
            "written": list(cb.publisher.written),
            "has_sinks": cb.publisher.sinks is not None,
            "records": len(cb.records),
            "global_step": trainer.global_step,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


SCENARIOS = {
    "plain": {},
    "reliability": {"reliability": True},
    "metrics": {"metrics": True},
    "fail": {"fail_rank": 1},
}


def fit(out: Path, strategy: str, probe: str, fail_rank: int, metrics: bool, reliability: bool) -> None:
    CALLS["n"] = 0
    os.environ["LL_FAIL_RANK"] = str(fail_rank)
    out.mkdir(parents=True, exist_ok=True)
    single = strategy == "single"
    pl.seed_everything(0)
    model = ShardedNet(norm="none", dropout=0.0)
    cb = LossLandscapeCallback(
        max_overhead=None,
        loss_fn=counting_loss,
        resolution=5,
        final_resolution=7,
        line_resolution=5,
        num_batches=2,
        snapshot_every_n_steps=2,
        log_figures=False,
        metrics=None,
        final_metrics={"trace": {"samples": 8}, "average": {"samples": 8}} if metrics else None,
        probe_dataloader=loader(16, 8, seed=5) if probe == "user" else None,
        reliability=reliability,
    )
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        devices=1 if single else 2,
        strategy="auto" if single else strategy,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[cb, Report(out)],
    )
    trainer.fit(model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("strategy")
    parser.add_argument("--probe", default="user", choices=["user", "train"])
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--metrics", action="store_true", help="final trace + average sharpness (sharded)")
    parser.add_argument("--reliability", action="store_true", help="the reliability indicators (sharded)")
    parser.add_argument("--scenarios", help=f"comma-separated, each in OUT/<name>/: {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    options = {
        "probe": args.probe,
        "fail_rank": args.fail_rank,
        "metrics": args.metrics,
        "reliability": args.reliability,
    }
    if not args.scenarios:
        fit(out, args.strategy, **options)
        return
    for name in args.scenarios.split(","):
        fit(out / name, args.strategy, **{**options, **SCENARIOS[name]})


if __name__ == "__main__":
    main()
