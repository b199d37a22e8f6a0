"""One small DDP (or single-process) run under either Lightning namespace (run as a script, not collected).

    python tests/helpers/ddp_namespace_run.py OUT_DIR NAMESPACE single|ddp

Records go to ``OUT_DIR/landscape/`` (rank zero only); each rank writes ``OUT_DIR/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from helpers.models import NoisyDataset
from helpers.namespaces import callback_class, namespace, tiny_net_class


def main() -> None:
    out, name, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    pl = namespace(name)

    class Sharded(tiny_net_class(name)):  # rank r trains on samples r, r + W, ... (8 per step in all)
        def train_dataloader(self) -> DataLoader:
            data, world = NoisyDataset(64, 0), self.trainer.world_size
            if world == 1:
                return DataLoader(data, batch_size=8)
            sampler = DistributedSampler(data, world, self.trainer.global_rank, shuffle=False)
            return DataLoader(data, batch_size=8 // world, sampler=sampler)

    pl.seed_everything(0)
    cb = callback_class(name)(
        max_overhead=None,
        resolution=5,
        final_resolution=5,
        line_resolution=5,
        reliability=False,  # their equivalence under DDP is tested in test_distributed.py
        num_batches=2,
        snapshot_every_n_steps=2,
        log_figures=False,
        metrics=None,
        final_metrics={"eigenvalues": {"max_iter": 4}},
        probe_dataloader=DataLoader(NoisyDataset(16, 5), batch_size=8),
    )
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        devices=1 if mode == "single" else 2,
        strategy="auto" if mode == "single" else mode,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[cb],
    )
    model = Sharded()
    trainer.fit(model)
    report = {
        "strategy": type(trainer.strategy).__module__ + "." + type(trainer.strategy).__name__,
        "records": len(cb.records),
        "written": list(cb.publisher.written),
        "global_step": trainer.global_step,
        "outs": len(model.outs),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
