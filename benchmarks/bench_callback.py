"""Callback overhead: fit time with LossLandscapeCallback / fit time without, on the demo's model and data.

The demo's DigitsCNN on scikit-learn's digits (examples/sgd_vs_sam.py), SGD, TensorBoard logger, the
same seed; configurations run interleaved, ``--reps`` times, and the median of the per-repetition
ratios is reported, with the callback's counted work as a fraction of the training work (the measure
``max_overhead`` bounds). Targets: <= 1.10 with the callback at its defaults on a long run (one long
enough for the first and the final landscape, which are always computed, to fit within 10 %), <= 1.02
with surfaces off (snapshots only).

    python benchmarks/bench_callback.py [--epochs 12] [--reps 3] [--configs defaults,snapshots]
    python benchmarks/bench_callback.py --epochs 1100 --side-by-side   # the long run, about 10 minutes

A long run is measured ``--side-by-side``: "without callback" and "defaults (max_overhead=0.1)" at
once, each in its own process pinned to its own CPU, so that both see the same load on the machine
(run one after the other, a 10-minute pair is at the mercy of whatever else starts meanwhile).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


def side_by_side(epochs: int, names: list[str], threads: int) -> list[list]:
    """Each configuration in its own process on its own CPU, all started together."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < len(names):
        raise SystemExit(f"--side-by-side needs {len(names)} CPUs, this process may use {len(cpus)}")
    procs = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--epochs", str(epochs), "--only", name, "--cpu", str(cpu),
             "--threads", str(threads)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, cpu in zip(names, cpus)
    }  # fmt: skip
    out = {name: json.loads(proc.communicate()[0].strip().splitlines()[-1]) for name, proc in procs.items()}
    base = out["without callback"]["seconds"]
    return [
        [
            name,
            r["seconds"],
            "" if name == "without callback" else f"{r['seconds'] / base:.3f}",
            "" if r["counted"] is None else f"{r['counted']:.3f}",
        ]
        for name, r in out.items()
    ]


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
    parser.add_argument("--side-by-side", action="store_true", help="without vs defaults, one CPU each")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # a child of --side-by-side: one configuration
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    words = [w for w in args.configs.split(",") if w]
    configs = {
        name: kw for name, kw in CONFIGS.items() if kw is None or not words or any(w in name for w in words)
    }
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.only is not None:
        os.sched_setaffinity(0, {args.cpu})
        t0 = time.perf_counter()
        fit(args.epochs, CONFIGS[args.only], tempfile.mkdtemp(prefix="ll-bench-"), args.only)
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "counted": COUNTED.get(args.only)}))
        return
    headers = ["configuration", "fit s (median)", "ratio to without", "counted work / training"]
    if args.side_by_side:
        print(
            f"## (c) callback overhead side by side, DigitsCNN on digits, {args.epochs} epochs  [{machine()}]"
        )
        rows = side_by_side(args.epochs, ["without callback", "defaults (max_overhead=0.1)"], args.threads)
        print(table(rows, ["configuration", "fit s", *headers[2:]]))
        print(f"after: [{machine()}]")
        return
    print(f"## (c) callback overhead, DigitsCNN on digits, {args.epochs} epochs  [{machine()}]")
    rows, _ = run(args.epochs, args.reps, configs)
    print(table(rows, headers))
    print("targets: defaults <= 1.10 on a long run, snapshots only <= 1.02")


if __name__ == "__main__":
    main()
