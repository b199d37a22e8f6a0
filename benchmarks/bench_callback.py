"""Callback overhead: fit time with LossLandscapeCallback / fit time without, on the demo's model and data.

The demo's DigitsCNN on scikit-learn's digits (examples/sgd_vs_sam.py), SGD, TensorBoard logger, the
same seed; configurations run interleaved, ``--reps`` times, and the median of the per-repetition
ratios is reported, with the callback's counted work as a fraction of the training work (the measure
``max_overhead`` bounds). Targets: <= 1.10 with the callback at its defaults on a long run (one long
enough for the first and the final landscape, which are always computed, to fit within 10 %), <= 1.02
with surfaces off (snapshots only).

    python benchmarks/bench_callback.py [--epochs 12] [--reps 3] [--configs defaults,snapshots]
    python benchmarks/bench_callback.py --epochs 700 --reps 1 --configs defaults   # the long run
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


COUNTED: dict[str, float] = {}  # configuration -> the callback's counted work / training work


def fit(epochs: int, kwargs: dict | None, root: str, name: str = "") -> None:
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
    if callbacks:
        schedule = callbacks[0].schedule
        COUNTED[name] = schedule.spent / (3.0 * schedule.train_batches)


def run(epochs: int = 12, reps: int = 3, configs: dict = CONFIGS) -> tuple[list[list], dict]:
    root = tempfile.mkdtemp(prefix="ll-bench-")
    fns = {name: (lambda kw=kw, name=name: fit(epochs, kw, root, name)) for name, kw in configs.items()}
    times = interleaved(fns, reps, warmup=0)
    base = times["without callback"]
    rows = [
        [
            name,
            statistics.median(t),
            "" if name == "without callback" else f"{median_ratio(t, base):.3f}",
            f"{COUNTED[name]:.3f}" if name in COUNTED else "",
        ]
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
    parser.add_argument(
        "--configs", default="", help="comma-separated words picking configurations (default: all)"
    )
    args = parser.parse_args()
    words = [w for w in args.configs.split(",") if w]
    configs = {
        name: kw for name, kw in CONFIGS.items() if kw is None or not words or any(w in name for w in words)
    }
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"## (c) callback overhead, DigitsCNN on digits, {args.epochs} epochs  [{machine()}]")
    rows, _ = run(args.epochs, args.reps, configs)
    print(table(rows, ["configuration", "fit s (median)", "ratio to without", "counted work / training"]))
    print("targets: defaults <= 1.10 on a long run, snapshots only <= 1.02")


if __name__ == "__main__":
    main()
