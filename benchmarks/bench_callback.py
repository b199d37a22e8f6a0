"""Callback overhead: fit time with LossLandscapeCallback / fit time without, on the demo's model and data.

The demo's DigitsCNN on scikit-learn's digits (examples/sgd_vs_sam.py), SGD, TensorBoard logger, the
same seed; configurations run interleaved, ``--reps`` times, and the median of the per-repetition
ratios is reported. Targets: <= 1.10 with the callback at its defaults, <= 1.02 with surfaces off
(snapshots only).

    python benchmarks/bench_callback.py [--epochs 12] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lightning.pytorch as pl  # noqa: E402
from common import interleaved, machine, median_ratio, table  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from sgd_vs_sam import DigitsCNN, digits_loaders  # noqa: E402

from lightning_landscape import LossLandscapeCallback  # noqa: E402

CONFIGS = {
    "without callback": None,
    "defaults (max_overhead=0.1)": {},
    "defaults, engine=vmap": {"engine": "vmap"},
    "everything as scheduled (max_overhead=None)": {"max_overhead": None},
    "snapshots only": {"every_n_epochs": None, "final": False},
}


def fit(epochs: int, kwargs: dict | None, root: str) -> None:
    pl.seed_everything(0, verbose=False)
    model = DigitsCNN()
    train, val = digits_loaders(seed=0)
    callbacks = [] if kwargs is None else [LossLandscapeCallback(**kwargs)]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(root, name="bench"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
        deterministic=True,
    )
    trainer.fit(model, train, val)


def run(epochs: int = 12, reps: int = 3, configs: dict = CONFIGS) -> tuple[list[list], dict]:
    root = tempfile.mkdtemp(prefix="ll-bench-")
    fns = {name: (lambda kw=kw: fit(epochs, kw, root)) for name, kw in configs.items()}
    times = interleaved(fns, reps, warmup=0)
    base = times["without callback"]
    rows = [
        [name, statistics.median(t), "" if name == "without callback" else f"{median_ratio(t, base):.3f}"]
        for name, t in times.items()
    ]
    return rows, times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"## (c) callback overhead, DigitsCNN on digits, {args.epochs} epochs  [{machine()}]")
    rows, _ = run(args.epochs, args.reps)
    print(table(rows, ["configuration", "fit s (median)", "ratio to without"]))
    print("targets: defaults <= 1.10, snapshots only <= 1.02")


if __name__ == "__main__":
    main()
