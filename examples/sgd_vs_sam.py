"""SGD vs SAM on scikit-learn's handwritten digits, with loss landscapes in TensorBoard.

Trains the same small CNN from the same seed twice, once with SGD and once with SAM, each with a
``LossLandscapeCallback``. Both runs log to ``lightning_logs/`` (``sgd/seed0`` and ``sam/seed0``);
open them side by side with ``tensorboard --logdir lightning_logs`` (``make tensorboard``, or
``.venv/bin/tensorboard`` when the virtual environment is not activated). With ``--seeds N`` each
optimizer runs for seeds ``seed, seed + 1, ..., seed + N - 1`` (``sgd/seed<k>``, ``sam/seed<k>``),
the same initialization and batch order for both optimizers at a seed, on one fixed data split.

    python examples/sgd_vs_sam.py            # the full demo, about 30 seconds on 2 CPU cores
    python examples/sgd_vs_sam.py --seeds 3  # three seeds per optimizer: mean and spread
    python examples/sgd_vs_sam.py --epochs 2 # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.optim import SAM


class DigitsCNN(pl.LightningModule):
    """A small CNN for 8x8 digits: two conv blocks with BatchNorm, then a linear classifier."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.05, rho: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        kwargs = {"lr": self.hparams.lr, "momentum": 0.9, "weight_decay": 5e-4}
        if self.hparams.optimizer == "sam":
            return SAM(self, torch.optim.SGD, rho=self.hparams.rho, **kwargs)
        return torch.optim.SGD(self.parameters(), **kwargs)


def digits_loaders(batch_size: int = 64, seed: int = 0, split_seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """1,797 8x8 digits (shipped with scikit-learn), 80/20 split (fixed by ``split_seed``), pixels scaled
    to [0, 1]; ``seed`` sets the order of the training batches."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        range(len(y)), test_size=0.2, random_state=split_seed, stratify=digits.target
    )
    train = TensorDataset(x[train_idx], y[train_idx])
    val = TensorDataset(x[val_idx], y[val_idx])
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        DataLoader(val, batch_size=256),
    )


@torch.no_grad()
def evaluate(model: DigitsCNN, loader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy over a loader, model in eval mode."""
    model.eval()
    losses, correct, total = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        losses += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
        total += len(y)
    return losses / total, correct / total


def train(optimizer: str, epochs: int, log_dir: Path, seed: int, landscape: dict) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    model = DigitsCNN(optimizer=optimizer)
    # Equal digests: the same initial weights, bit for bit (every optimizer gets the same at a seed).
    init_sha256 = hashlib.sha256(
        b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    ).hexdigest()
    train_loader, val_loader = digits_loaders(seed=seed)
    callback = LossLandscapeCallback(**landscape)
    # Running the demo again replaces this run (into the same folder, the callback would keep both runs
    # apart, the new one in landscape-2/, and the printed commands would then refuse the mixed folder).
    shutil.rmtree(log_dir / optimizer / f"seed{seed}", ignore_errors=True)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=TensorBoardLogger(str(log_dir), name=optimizer, version=f"seed{seed}"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, train_loader, val_loader)
    elapsed = time.perf_counter() - start
    model.cpu()
    full_train = DataLoader(train_loader.dataset, batch_size=512)
    train_loss, _ = evaluate(model, full_train)
    val_loss, val_acc = evaluate(model, val_loader)
    final = [r for r in callback.records if r.meta.get("stage") == "final" and r.kind == "surface"]
    return {
        "train_loss": train_loss,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "seconds": elapsed,
        "surface_centre": final[0].centre_loss if final else float("nan"),
        "log_dir": trainer.log_dir or "",
        "init_sha256": init_sha256,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--log-dir", type=Path, default=Path("lightning_logs"))
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per optimizer: seed, seed + 1, ...")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "sam"], choices=["sgd", "sam"])
    parser.add_argument("--resolution", type=int, default=11, help="points per axis of periodic surfaces")
    parser.add_argument(
        "--final-resolution", type=int, default=31, help="points per axis of the final surface"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(args.seed, args.seed + args.seeds))

    landscape = {
        "resolution": args.resolution,
        "final_resolution": args.final_resolution,
        "num_batches": 4,
        "snapshot_every_n_steps": 5,
        "every_n_epochs": max(1, args.epochs // 6),
        "max_overhead": None,  # this 10-second training is far shorter than the landscapes: show them all
        "save_weights": True,  # for the shared plane and the barrier between the two solutions (below)
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.optimizers}
    for seed in seeds:
        for name in args.optimizers:
            print(f"\n=== training with {name.upper()}, seed {seed} ===", flush=True)
            runs[name].append({"seed": seed, **train(name, args.epochs, args.log_dir, seed, landscape)})

    print("\nrun          final train loss   val accuracy   loss at centre (probe)   fit time")
    for name, per_seed in runs.items():
        for r in per_seed:
            print(
                f"{name + '/seed' + str(r['seed']):<12} {r['train_loss']:>16.4f}   {r['val_acc']:>12.2%}"
                f"   {r['surface_centre']:>22.4f}   {r['seconds']:>7.1f} s"
            )
    results = {name: _summary(per_seed) for name, per_seed in runs.items()}
    if len(seeds) > 1:
        print(f"\nmean ± std over {len(seeds)} seeds (sample std)")
        for name, r in results.items():
            print(
                f"{name:<12} {r['train_loss']:>9.4f} ± {r['train_loss_std']:.4f}"
                f"   val accuracy {r['val_acc']:.2%} ± {r['val_acc_std']:.2%}"
            )
    if {"sgd", "sam"} <= set(runs):
        _compare_solutions(runs, resolution=min(21, args.final_resolution))
    print(f"\nLoss landscapes, paths and metrics are in {args.log_dir}/ (records under */landscape/).")
    print(f"Open them side by side with:\n\n    {command('tensorboard')} --logdir {args.log_dir}\n")
    if {"sgd", "sam"} <= set(runs):
        sgd, sam = runs["sgd"][0]["log_dir"], runs["sam"][0]["log_dir"]
        cli = command("lightning-landscape")
        print("Compare them on one colour scale:\n")
        print(f"    {cli} compare {sgd} {sam} --out compare.png")
        if len(seeds) > 1:
            print(
                f"    {cli} compare --group sgd {args.log_dir}/sgd/seed* "
                f"--group sam {args.log_dir}/sam/seed* --out groups.png"
            )
        print()
    return results


def command(name: str) -> str:
    """How to run the console script ``name`` installed beside this Python from a fresh shell: the bare name
    when the shell's PATH finds that very script, else its path (``.venv/bin/tensorboard`` after
    ``make demo``: the virtual environment is not activated there)."""
    here = Path(sys.executable).parent / name
    if not here.is_file():
        return name  # installed elsewhere: the shell's PATH is the best guess
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == here.resolve():
        return name
    try:
        return os.path.relpath(here)
    except ValueError:  # another drive (Windows)
        return str(here)


def _compare_solutions(runs: dict[str, list[dict[str, Any]]], resolution: int = 21) -> None:
    """The SGD and SAM solutions of each seed on one plane through their common initialization, and the
    loss barrier between them (BatchNorm statistics re-estimated along it); written beside the runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_solutions import compare  # the sibling example; it imports this module's model

    print("\nrun pair                 barrier (re-estimated BN)   barrier (naive BN)   distance SGD-SAM")
    for sgd, sam in zip(runs["sgd"], runs["sam"]):
        summary = compare(
            sgd["log_dir"], sam["log_dir"], resolution=resolution, barrier_resolution=resolution
        ).summary()
        print(
            f"{'seed' + str(sgd['seed']):<24} {summary['barrier']:>25.4f}   {summary['barrier_naive']:>18.4f}"
            f"   {summary['distance_A_B']:>16.3f}"
        )


def _summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of each number (the value itself for one seed), ``<key>_std`` (sample standard
    deviation, NaN for one seed) and the per-seed results under ``"runs"``."""
    out: dict[str, Any] = {"runs": per_seed, "seeds": [r["seed"] for r in per_seed]}
    for key in ("train_loss", "val_acc", "val_loss", "seconds", "surface_centre"):
        values = [float(r[key]) for r in per_seed]
        mean = sum(values) / len(values)
        out[key] = mean
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else float("nan")
        out[f"{key}_std"] = var**0.5
    out["log_dir"] = (
        per_seed[0]["log_dir"] if len(per_seed) == 1 else str(Path(per_seed[0]["log_dir"]).parent)
    )
    return out


if __name__ == "__main__":
    main()
