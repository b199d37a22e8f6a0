"""Drawing one landscape figure: the builders before (constrained layout) vs now (fixed margins).

Each figure the callback draws (the loss contour with the optimizer's path, the loss along lines, the
loss vs distance) is built and rendered to pixels (``figure_to_rgb``, what the TensorBoard sink logs) two
ways: A with the figure builders of commit ``--before`` (read from git: matplotlib's constrained layout,
which measures every tick label and title before drawing), B with the working tree's (fixed margins,
:func:`lightning_landscape.plots.base.framed`, about six ticks per axis). A and B alternate (A B, B A, ...)
after one warm-up pair (fonts, caches); the table shows the median seconds with min-max over ``--reps``
and the ratio B / A. Check: both give images of the same size (tests/plots/test_base.py asserts that every
label lies inside the figure).

    python benchmarks/bench_figures.py --reps 7   # -> benchmarks/results/figures.txt
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from common import machine, table  # noqa: E402

from lightning_landscape.plots import landscape  # noqa: E402
from lightning_landscape.plots.landscape import figure_to_rgb  # noqa: E402
from lightning_landscape.records.record import LineRecord, SurfaceRecord  # noqa: E402


def _builders_at(commit: str) -> object:
    """``lightning_landscape/plots/landscape.py`` as it was at ``commit``, imported beside today's package."""
    source = subprocess.run(
        ["git", "show", f"{commit}:lightning_landscape/plots/landscape.py"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "landscape_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("landscape_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(plots: object) -> dict[str, Callable[[], Figure]]:
    xs = np.linspace(-1.0, 1.0, 11)
    meta = {"directions": "pca", "explained_variance": [0.61, 0.22], "epoch": 4, "global_step": 115}
    path = np.array([[0.8, 0.7], [0.5, 0.3], [0.2, 0.1], [0.0, 0.0]])
    surface = SurfaceRecord(xs, xs, 2.0 * np.add.outer(xs**2, 0.3 * xs**2) + 0.05, path=path, meta=meta)
    lines = [
        LineRecord(xs, (k + 1) * xs**2 + 0.05, {"directions": "pca", "label": f"PC{k + 1}"}) for k in (0, 1)
    ]
    t = np.geomspace(1e-3, 10.0, 9)
    alphas = np.concatenate([-t[::-1], [0.0], t])
    distance = LineRecord(alphas, 0.05 + alphas**2, {"centre_loss": 0.05, "threshold": 0.1, "radius": 0.3})
    return {
        "contour (surface)": lambda: plots.contour_figure(surface),  # type: ignore[attr-defined]
        "lines": lambda: plots.line_figure(lines, xlabel="distance along direction"),  # type: ignore[attr-defined]
        "distance": lambda: plots.distance_figure([distance]),  # type: ignore[attr-defined]
    }


def _time(build: Callable[[], Figure]) -> tuple[float, tuple[int, ...]]:
    start = time.perf_counter()
    pixels = figure_to_rgb(build())
    return time.perf_counter() - start, pixels.shape


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--before", default="60420ff", help="the commit whose figure builders are A")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "figures.txt"))
    args = parser.parse_args()
    if args.reps < 5:
        raise SystemExit("--reps must be at least 5")
    lines = [
        f"## figure drawing: builders of {args.before} (A, constrained layout) vs now (B)  [{machine()}]"
    ]
    rows = []
    before, now = _figures(_builders_at(args.before)), _figures(landscape)
    for name in now:
        ways = {"A": before[name], "B": now[name]}
        _time(ways["A"]), _time(ways["B"])  # warm-up pair, not counted
        times: dict[str, list[float]] = {"A": [], "B": []}
        for rep in range(args.reps):
            shapes = {}
            for way in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                seconds, shapes[way] = _time(ways[way])
                times[way].append(seconds)
            if shapes["A"] != shapes["B"]:
                raise SystemExit(f"{name}: image sizes differ {shapes}")
        ratios = [b / a for a, b in zip(times["A"], times["B"])]
        rows.append([
            name,
            f"{statistics.median(times['A']):.3f} [{min(times['A']):.3f}-{max(times['A']):.3f}]",
            f"{statistics.median(times['B']):.3f} [{min(times['B']):.3f}-{max(times['B']):.3f}]",
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]",
        ])  # fmt: skip
    lines.append(table(rows, ["figure", f"{args.before} s", "now s", "ratio B / A"]))
    lines.append(
        f"{args.reps} interleaved repetitions in alternating order after a warm-up pair. after: [{machine()}]"
    )
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
