"""The compiled engine against the eager floor: an R x R surface vs R*R plain eager forward passes.

For each benchmark model, in one process and side by side (interleaved repetitions, median of the
per-repetition ratios): the floor (``loss_fn`` for every probe batch at every grid point, eager, under
``no_grad``, eval mode), the loop engine and ``engine="compile"`` once compiled. The compilation is
timed separately (first compiled surface minus a steady one), and the break-even number of grid points
is ``compile time / (loop time per point - compiled time per point)``: below it, compiling costs more
than it saves. The inductor cache starts empty unless ``--warm-cache`` is given (a new machine or a
new model; with a warm on-disk cache, a second run of the same model compiles several times faster).

    python benchmarks/bench_compile.py [--resolution 11] [--reps 7] [--models mlp cnn transformer]
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
    from common import SurfaceCase, interleaved, median_ratio

    rows = []
    for name in models:
        case = SurfaceCase.make(name, resolution, batches, batch_size)
        t0 = time.perf_counter()
        compiled = case.surface("compile")().losses
        first = time.perf_counter() - t0
        fns = {"floor": case.floor, "loop": case.surface("loop"), "compile": case.surface("compile")}
        times = interleaved(fns, reps)
        loop = case.surface("loop")().losses
        steady = min(times["compile"])
        compile_s = first - steady
        saved_pp = (min(times["loop"]) - steady) / case.points  # against the engine it replaces
        break_even = f"{compile_s / saved_pp:.0f}" if saved_pp > 0 else "never"
        rows.append(
            [
                *case.row(times),
                median_ratio(times["compile"], times["floor"]),
                compile_s,
                break_even,
                f"{abs(compiled - loop).max():.1e}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=11)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer"])
    parser.add_argument("--warm-cache", action="store_true", help="keep the on-disk inductor cache")
    args = parser.parse_args()
    if not args.warm_cache:  # before torch is imported: inductor reads it once
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_")
    import torch
    from common import machine, table

    torch.set_num_threads(args.threads)
    cache = "warm on-disk cache" if args.warm_cache else "empty inductor cache"
    print(f"## compiled engine / eager floor, {args.resolution}x{args.resolution} grid, {cache}")
    print(f"[{machine()}]")
    rows = run(args.models, args.resolution, args.reps, args.batches, args.batch_size)
    header = [
        "model",
        "params",
        "points x probe",
        "floor s",
        "loop/floor",
        "compile/floor",
        "compile s",
        "break-even points",
        "max |compile-loop|",
    ]
    print(table(rows, header))
    print(f"[after: {machine()}]")
    print("target: compile/floor < 1.0; compile s is paid once per model and process")


if __name__ == "__main__":
    main()
