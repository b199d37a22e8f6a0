"""Callback overhead: fit time with LossLandscapeCallback() at its defaults / fit time without it.

The demo's DigitsCNN on scikit-learn's digits (examples/sgd_vs_sam.py, 23 batches an epoch), SGD,
TensorBoard logger, the same seed, ``--epochs`` epochs. A (without the callback) and B (with it, at
its defaults) run interleaved, in alternating order (A B, B A, A B, ...), after one warm-up pair that
is not counted (imports, matplotlib's font cache, first-call allocations); each repetition gives a
ratio B / A, and the table shows their median with the min-max over ``--reps`` (at least 5).

Beside the measured ratio, the cost model's prediction: ``(training + planned) / training``, where
training is the wall time of the training batches the callback measured, and planned is what the
schedule predicted, when it planned each landscape, that the landscape would cost (its counted
forward passes at the measured seconds per pass, plus the measured fixed cost: plane, files and
figures). "accounted" is the same ratio with what the landscapes and their figures measurably took
instead of the prediction (what is left between it and the measured ratio is outside the callback's
clocks: the figure thread slowing training, Trainer and logger overhead). Also the callback's counted
work as a fraction of the training work (3 passes a step), the final landscape's grid and probe
batches, the periodic landscapes shown, and the seconds of the landscapes and of their figures.
Targets (issue 22): ratio <= 1.5 at 5 epochs, <= 1.2 at 20, <= 1.1 from 60 on; predicted within 25 %.

    python benchmarks/bench_callback.py --epochs 5 20 60 --reps 5   # -> benchmarks/results/bench_callback.txt

Run it pinned to one CPU with one thread (``taskset -c 0 env OMP_NUM_THREADS=1 ...``) for stable times.
"""

from __future__ import annotations

import argparse
import logging
import os
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
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from sgd_vs_sam import DigitsCNN, digits_loaders  # noqa: E402

from lightning_landscape import LossLandscapeCallback  # noqa: E402

TARGETS = {5: 1.5, 20: 1.2, 60: 1.1}


def fit(epochs: int, kwargs: dict[str, Any] | None, root: str) -> tuple[float, dict[str, Any]]:
    """One fit; its wall time and, with the callback, what its schedule measured and planned."""
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
    start = time.perf_counter()
    trainer.fit(model, train, val)
    seconds = time.perf_counter() - start
    info: dict[str, Any] = {}
    if callbacks:
        cb = callbacks[0]
        s = cb.schedule
        s.figures(cb.publisher.figure_seconds)  # the final landscape's figures, drawn by now
        training = s.training_seconds()
        finals = [r for r in cb.records if r.kind == "surface" and r.meta["stage"] == "final"]
        periodic = [r for r in cb.records if r.kind == "surface" and r.meta["stage"] == "periodic"]
        final = finals[0] if finals else None
        info = {
            "predicted": (training + s.planned_seconds) / training if training > 0 else float("nan"),
            "accounted": (training + s.landscape_seconds + s.figure_seconds) / training if training else 0.0,
            "counted": s.spent / (3.0 * s.train_batches),
            "final": "none"
            if final is None
            else f"{final.losses.shape[0]}x{final.losses.shape[0]}/{final.meta.get('probe_batches', '?')}b",
            "periodic": len(periodic),
            "train_s": training,
            "landscape_s": s.landscape_seconds,
            "figure_s": s.figure_seconds,
        }
    return seconds, info


def run(epochs: int, reps: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Warm-up pair, then ``reps`` interleaved pairs in alternating order."""
    root = tempfile.mkdtemp(prefix="ll-bench-")
    fit(epochs, None, root)  # warm-up: not counted
    fit(epochs, kwargs, root)
    a_times, b_times, infos = [], [], []
    for rep in range(reps):
        order = ("A", "B") if rep % 2 == 0 else ("B", "A")
        out: dict[str, Any] = {}
        for which in order:
            out[which] = fit(epochs, None if which == "A" else kwargs, root)
        a_times.append(out["A"][0])
        b_times.append(out["B"][0])
        infos.append(out["B"][1])
        (a, _), (b, info) = out["A"], out["B"]
        print(f"  rep {rep}: order {''.join(order)}, without {a:.2f} s, with {b:.2f} s, "
              f"ratio {b / a:.3f}, predicted {info['predicted']:.3f}", flush=True)  # fmt: skip
    ratios = [b / a for a, b in zip(a_times, b_times)]
    return {"a": a_times, "b": b_times, "ratios": ratios, "infos": infos}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "bench_callback.txt"),
        help="also write the table to this file (docs/performance.md quotes the default one)",
    )
    args = parser.parse_args()
    if args.reps < 5:
        raise SystemExit("--reps must be at least 5 (median and min-max of the ratio)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    lines = [f"## (c) callback overhead, DigitsCNN on digits, defaults vs without  [{machine()}]"]
    print(lines[0], flush=True)
    rows = []
    for epochs in args.epochs:
        r = run(epochs, args.reps, {})
        ratios, infos = r["ratios"], r["infos"]
        predicted = [i["predicted"] for i in infos]
        median = statistics.median(ratios)
        rows.append([
            epochs,
            f"{statistics.median(r['a']):.2f}",
            f"{statistics.median(r['b']):.2f}",
            f"{median:.3f} [{min(ratios):.3f}-{max(ratios):.3f}]",
            f"{statistics.median(predicted):.3f}",
            f"{(statistics.median(predicted) - median) / median:+.0%}",
            f"{statistics.median(i['accounted'] for i in infos):.3f}",
            f"{statistics.median(i['counted'] for i in infos):.3f}",
            infos[-1]["final"],
            infos[-1]["periodic"],
            f"{statistics.median(i['landscape_s'] for i in infos):.2f} + "
            f"{statistics.median(i['figure_s'] for i in infos):.2f}",
            TARGETS.get(epochs, TARGETS[60] if epochs > 60 else ""),
        ])  # fmt: skip
    header = [
        "epochs", "without s", "defaults s", "ratio median [min-max]", "predicted", "pred. error",
        "accounted", "counted / training", "final (grid/probe batches)", "periodic shown",
        "landscapes + figures s", "target",
    ]  # fmt: skip
    lines.append(table(rows, header))
    lines.append(
        f"{args.reps} interleaved repetitions in alternating order after one warm-up pair (not counted); "
        f"{args.threads} thread(s), CPU affinity {sorted(os.sched_getaffinity(0))}. after: [{machine()}]"
    )
    text = "\n".join(lines)
    print("\n".join(lines[1:]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
