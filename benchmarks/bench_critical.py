"""Critical sharpness in the callback: forward passes and time per measurement, overhead of a cadence.

The demo's DigitsCNN on digits (examples/sgd_vs_sam.py), SGD, 2 epochs (46 optimizer steps), 1 thread,
no logger. The callback runs with snapshots only (``every_n_epochs=None, final=False``), so that the
only difference between configurations is ``critical_sharpness=N`` (with its two figures an epoch, drawn
on the callback's background thread, unless ``log_figures=False``); "without callback" for reference.
Configurations run interleaved, the order reversed every other repetition, after one warm-up round that
is not counted; the median and the min-max of the per-repetition ratios to "snapshots only" are given.
Then one run with ``critical_sharpness=1`` times every measurement (the search, the probe, the weight
copies and the module-state guard) and counts its loss evaluations.

    PYTHONPATH=. python benchmarks/bench_critical.py [--reps 5] [--out benchmarks/results/critical.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lightning.pytorch as pl  # noqa: E402
from common import machine, table  # noqa: E402
from sgd_vs_sam import DigitsCNN, digits_loaders  # noqa: E402

from lightning_landscape import LossLandscapeCallback  # noqa: E402

SNAPSHOTS = {"every_n_epochs": None, "final": False}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "without callback": None,
    "snapshots only": SNAPSHOTS,
    "critical_sharpness=50": {**SNAPSHOTS, "critical_sharpness": 50},
    "critical_sharpness=10": {**SNAPSHOTS, "critical_sharpness": 10},
    "critical_sharpness=10, log_figures=False": {**SNAPSHOTS, "critical_sharpness": 10, "log_figures": False},
}


def fit(epochs: int, kwargs: dict[str, Any] | None, timed: list[float] | None = None) -> Any:
    pl.seed_everything(0, verbose=False)
    model = DigitsCNN()
    train, _ = digits_loaders(seed=0)
    callbacks = [] if kwargs is None else [LossLandscapeCallback(**kwargs)]
    if callbacks and timed is not None:
        cb = callbacks[0]
        measure = cb._critical_sharpness

        def timing(*args: Any) -> None:
            t0 = time.perf_counter()
            measure(*args)
            timed.append(time.perf_counter() - t0)

        cb._critical_sharpness = timing  # type: ignore[method-assign]
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        limit_val_batches=0, deterministic=True, default_root_dir=tempfile.mkdtemp(prefix="ll-crit-"),
    )  # fmt: skip
    trainer.fit(model, train)
    return callbacks[0] if callbacks else None


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "critical.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    names = list(CONFIGS)
    for name in names:  # warm-up round, not counted
        fit(args.epochs, CONFIGS[name])
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fit(args.epochs, CONFIGS[name])
            times[name].append(time.perf_counter() - t0)
    base = times["snapshots only"]
    rows = [
        [name, spread(t), "" if name == "snapshots only" else spread([a / b for a, b in zip(t, base)])]
        for name, t in times.items()
    ]
    timed: list[float] = []
    cb = fit(args.epochs, {**SNAPSHOTS, "critical_sharpness": 1}, timed)
    evaluations = [
        s["critical/evaluations"] for _, _, s in cb.critical.history if "critical/evaluations" in s
    ]
    uphill = sum(s["critical/uphill"] for _, _, s in cb.critical.history)
    steps = 23 * args.epochs
    step_s = statistics.median(times["snapshots only"]) / steps
    lines = [
        f"# bench_critical.py: {args.epochs} epochs ({steps} steps) of the demo's DigitsCNN, SGD, "
        f"{args.reps} interleaved reps",
        "",
        machine(),
        "",
        table(
            rows, ["configuration", "fit s, median (min-max)", "ratio to snapshots only, median (min-max)"]
        ),
        "",
        f"per measurement (critical_sharpness=1, {len(timed)} measurements, {int(uphill)} uphill on the "
        f"probe): seconds {spread(timed)}; loss evaluations {spread(evaluations)} "
        f"(each = {cb.probe.size} probe batches of 64: forward passes x{cb.probe.size}); "
        f"a training step with snapshots only: {step_s:.4f} s",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
