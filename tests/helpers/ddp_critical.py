"""Two CPU processes under Lightning's ``ddp``: critical sharpness (and the relative one) in the callback.
Each rank writes ``OUT/rank<r>.json`` with its history. Run by ``tests/callback/test_critical_sharpness.py``
as ``python ddp_critical.py OUT`` (Lightning's launcher runs this script again for rank 1)."""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "callback"))
from test_critical_sharpness import LeastSquares, data, mse

from lightning_landscape import LossLandscapeCallback


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    second = DataLoader(data(1), batch_size=16)
    cb = LossLandscapeCallback(every_n_epochs=None, final=False, metrics=None, final_metrics=None,
                               reliability=False, num_batches=2, critical_sharpness=2,
                               critical_probe=(second, mse))  # fmt: skip
    trainer = pl.Trainer(
        callbacks=[cb], accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, limit_train_batches=4,
        limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tempfile.mkdtemp(),
    )  # fmt: skip
    dataset: TensorDataset = data(0)
    trainer.fit(LeastSquares("momentum"), DataLoader(dataset, batch_size=8))
    weights = [p.detach().reshape(-1).tolist() for p in trainer.lightning_module.parameters()]
    report = {"history": [[s, v] for s, _, v in cb.critical.history], "weights": weights}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
    torch.distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
