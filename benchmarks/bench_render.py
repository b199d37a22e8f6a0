"""Figures on the training thread vs the background renderer: time the training thread loses to figures.

A demo-like run: the demo's DigitsCNN trained with SGD on the digits (examples/sgd_vs_sam.py), one
``--epochs`` between landscapes, and at each landscape the four figures of a demo landscape (loss contour,
interpolation line, lines along the directions, 3-D surface) written to a TensorBoard logger. Three
ways, interleaved, ``--reps`` times:

* no figures: the training alone;
* synchronous: each figure built and rendered on the training thread (``SinkSet.figure``), as now;
* background: ``FigureRenderer.submit`` on the training thread, built and rendered by the worker,
  delivered (``add_image``) at the next landscape and drained at the end.

Reported: the training thread's blocking time in figure calls per landscape, and the overhead of the
whole run over "no figures" (the worker shares the CPU and the GIL with training, so the background
overhead is not zero even when the blocking time is).

    python benchmarks/bench_render.py [--landscapes 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from common import machine, table  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from sgd_vs_sam import DigitsCNN, digits_loaders  # noqa: E402

from lightning_landscape.plots.landscape import contour_figure, line_figure, surface3d_figure  # noqa: E402
from lightning_landscape.plots.render import FigureRenderer  # noqa: E402
from lightning_landscape.records.record import LineRecord, SurfaceRecord  # noqa: E402
from lightning_landscape.sinks import SinkSet, TensorBoardSink  # noqa: E402


def demo_figures(step: int) -> list[tuple[str, object, tuple, dict]]:
    """The four figures of one demo landscape: (tag, builder, args, kwargs)."""
    rng = np.random.default_rng(step)
    xs = np.linspace(-1.0, 1.0, 11)
    bowl = np.add.outer(xs**2, 2 * xs**2) + 0.05 + 0.01 * rng.random((11, 11))
    meta = {"directions": "pca", "explained_variance": [0.62, 0.21], "global_step": step}
    surface = SurfaceRecord(xs, xs, bowl, meta=meta)
    alphas = np.linspace(-0.5, 1.5, 41)
    interp = LineRecord(alphas, (alphas - 1) ** 2 + 0.05, meta={"directions": "interpolation"})
    lines = [LineRecord(alphas, (k + 1) * alphas**2, meta={"directions": "pca"}) for k in range(2)]
    return [
        ("landscape/surface", contour_figure, (surface,), {}),
        ("landscape/interpolation", line_figure, ([interp],), {"xlabel": "alpha"}),
        ("landscape/lines", line_figure, (lines,), {"xlabel": "distance along direction"}),
        ("landscape/surface3d", surface3d_figure, (surface,), {}),
    ]


def run(mode: str, landscapes: int, root: str, epochs: int = 1) -> tuple[float, float, float]:
    """Seconds: the whole run, the training thread in figure calls, the final drain (end of fit)."""
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train, _ = digits_loaders(seed=0)
    logger = TensorBoardLogger(root, name=mode)
    sinks = SinkSet([TensorBoardSink(logger, root)])
    renderer = FigureRenderer()
    blocked = 0.0
    start = time.perf_counter()
    step = 0
    for _ in range(landscapes):
        for _ in range(epochs):  # training between landscapes
            for x, y in train:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                step += 1
        t0 = time.perf_counter()
        if mode == "synchronous":
            for tag, build, args, kwargs in demo_figures(step):
                sinks.figure(tag, build(*args, **kwargs), step)
        elif mode == "background":
            for tag, build, args, kwargs in demo_figures(step):
                renderer.submit(sinks, tag, step, build, *args, **kwargs)
        blocked += time.perf_counter() - t0
    t0 = time.perf_counter()
    renderer.close()  # the end of fit: drain
    drain = time.perf_counter() - t0
    wall = time.perf_counter() - start
    logger.experiment.close()
    return wall, blocked, drain


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--landscapes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of training between landscapes")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"## figures: training-thread time, {args.landscapes} landscapes x 4 figures, "
        f"{args.epochs} epoch(s) between landscapes  [{machine()}]"
    )
    modes = ["no figures", "synchronous", "background"]
    wall: dict[str, list[float]] = {m: [] for m in modes}
    blocked: dict[str, list[float]] = {m: [] for m in modes}
    drained: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as root:
        run("background", 1, root)  # warm-up: imports, fonts, the first TensorBoard writer
        for _ in range(args.reps):
            for mode in modes:
                w, b, d = run(mode, args.landscapes, root, args.epochs)
                wall[mode].append(w)
                blocked[mode].append(b)
                drained[mode].append(d)
    base = wall["no figures"]
    rows = []
    for mode in modes:
        overhead = [w - b0 for w, b0 in zip(wall[mode], base)]
        rows.append(
            [
                mode,
                statistics.median(wall[mode]),
                statistics.median(blocked[mode]) / args.landscapes,
                statistics.median(drained[mode]),
                statistics.median(overhead) / args.landscapes,
                statistics.median(w / b0 for w, b0 in zip(wall[mode], base)),
            ]
        )
    header = [
        "mode",
        "run s",
        "blocked s / landscape",
        "final drain s",
        "overhead s / landscape",
        "run / no figures",
    ]
    print(table(rows, header))
    print(f"[after: {machine()}]")


if __name__ == "__main__":
    main()
