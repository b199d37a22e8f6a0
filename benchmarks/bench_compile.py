"""The compiled engine against the eager floor: an R x R surface vs R*R plain eager forward passes.

For each benchmark model, in one process and side by side (interleaved repetitions, median of the
per-repetition ratios): the floor (``loss_fn`` for every probe batch at every grid point, eager, under
``no_grad``, eval mode), the loop engine and ``engine="compile"`` once compiled. The compilation is
timed separately (first compiled surface minus a steady one), and the break-even number of grid points
is ``compile time / (loop time per point - compiled time per point)``: below it, compiling costs more
than it saves. The inductor cache starts empty unless ``--warm-cache`` is given (a new machine or a
new model; with a warm on-disk cache, a second run of the same model compiles several times faster).

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py [--resolution 11] [--reps 5]
        [--models mlp cnn transformer] [--warm-cache]

Accuracy of both engines against a float64 loop that deep-copies the model at every point
(``common.naive_surface``); the choice ``engine="auto"`` would make from these measured costs
(:func:`~lightning_landscape.functional.landscape.engine.compile_pays`), cold and with the graph cached.
Written to ``benchmarks/results/compile.txt`` (``compile_warm_cache.txt`` with ``--warm-cache``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(models: list[str], resolution: int, reps: int, batches: int, batch_size: int) -> list[list]:
    import statistics

    import numpy as np
    from common import SurfaceCase, alternating, naive_surface, ratio_spread, spread

    from lightning_landscape.functional.landscape.engine import EngineCosts, compile_pays

    rows = []
    for name in models:
        case = SurfaceCase.make(name, resolution, batches, batch_size)
        t0 = time.perf_counter()
        compiled = case.surface("compile")().losses  # cold: the first graph of this model is compiled
        first = time.perf_counter() - t0
        fns = {"floor": case.floor, "loop": case.surface("loop"), "compile": case.surface("compile")}
        times = alternating(fns, reps)
        grid = np.linspace(-1.0, 1.0, resolution)
        grid[resolution // 2] = 0.0
        reference = naive_surface(case.model, case.data, case.dirs[0], case.dirs[1], grid, grid)
        loop = case.surface("loop")().losses
        warm, loop_s = statistics.median(times["compile"]), statistics.median(times["loop"])
        compile_s = max(first - warm, 0.0)
        saved_pp = (loop_s - warm) / case.points  # against the engine it replaces
        break_even = f"{compile_s / saved_pp:.0f}" if saved_pp > 0 else "never"
        per_point = EngineCosts(loop_s / case.points, warm / case.points, compile_s)
        cold_pick = "compile" if compile_pays(case.points, per_point)[0] else "loop"
        cached = EngineCosts(per_point.eager_per_point, per_point.compiled_per_point, 0.0)
        warm_pick = "compile" if compile_pays(case.points, cached)[0] else "loop"
        rows.append(
            [
                case.name,
                sum(p.numel() for p in case.params),
                f"{case.points} x {case.batches}x{case.batch_size}",
                spread(times["floor"]),
                ratio_spread(times["loop"], times["floor"]),
                ratio_spread(times["compile"], times["floor"]),
                f"{first:.1f}",
                f"{compile_s:.1f}",
                break_even,
                f"{cold_pick} / {warm_pick}",
                f"{np.abs(loop - reference).max():.1e}",
                f"{np.abs(compiled - reference).max():.1e}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=11)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer"])
    parser.add_argument("--warm-cache", action="store_true", help="keep the on-disk inductor cache")
    parser.add_argument(
        "--cache-dir",
        help="inductor's on-disk cache here: a first run into a new folder is cold, a second one warm "
        "(across processes, as across a user's runs)",
    )
    args = parser.parse_args()
    if args.cache_dir:  # before torch is imported: inductor reads it once
        warm = os.path.isdir(args.cache_dir) and bool(os.listdir(args.cache_dir))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir
        args.warm_cache = warm
    elif not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_")
    import torch
    from common import Report, machine, table

    torch.set_num_threads(args.threads)
    cache = "warm on-disk cache" if args.warm_cache else "empty inductor cache"
    report = Report("compile_warm_cache" if args.warm_cache else "compile")
    report(f"## compiled engine / eager floor, {args.resolution}x{args.resolution} grid, {cache}")
    report(f"[{machine()}]")
    report(
        f"warm: {args.reps} interleaved repetitions (order alternated, one warm-up excluded), "
        "median [min-max] of the per-repetition ratios; cold: one first compiled surface per model"
    )
    rows = run(args.models, args.resolution, args.reps, args.batches, args.batch_size)
    header = [
        "model",
        "params",
        "points x probe",
        "floor s",
        "loop/floor",
        "compile/floor (warm)",
        "first compiled surface s (cold)",
        "compile s",
        "break-even points",
        "auto picks (cold / graph cached)",
        "loop max err",
        "compile max err",
    ]
    report(table(rows, header))
    report(
        "max err: largest difference from a float64 loop that deep-copies the model at every point "
        "(independent of the package). auto picks: compile_pays on these measured costs for one such surface."
    )
    report(f"[after: {machine()}]")
    report(f"written to {report.write()}")


if __name__ == "__main__":
    main()
