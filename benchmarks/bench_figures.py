"""Drawing one landscape figure: the builders before (constrained layout) vs now (fixed margins).

Each figure the callback draws (the loss contour with the optimizer's path, the loss along lines, the
loss vs distance) is built and rendered to pixels (``figure_to_rgb``, what the TensorBoard sink logs) two
ways: A with the figure builders of commit ``--before`` (read from git: matplotlib's constrained layout,
which measures every tick label and title before drawing), B with the working tree's (fixed margins,
:func:`lightning_landscape.plots.base.framed`, about six ticks per axis). A and B alternate (A B, B A, ...)
after one warm-up pair (fonts, caches); the table shows the median seconds with min-max over ``--reps``
and the ratio B / A. Check: both give images of the same size (tests/plots/test_base.py asserts that every
label lies inside the figure).

A second table: a short run's brief figures (a reduced landscape: 5 x 5 surface with its path, two
lines), A matplotlib's ``brief=True`` builders, B the same figures drawn straight to pixels
(:mod:`lightning_landscape.plots.brief`), each to RGB pixels and to PNG (what the sinks take). Check: the
share of the surface plot's pixels of the same colour in both images, on a plane (where both
interpolations place every band boundary at the same points), and the largest distance between the
rows where the two images draw a line.

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
from lightning_landscape.plots.base import frame_layout  # noqa: E402
from lightning_landscape.plots.brief import brief_lines, brief_surface  # noqa: E402
from lightning_landscape.plots.landscape import figure_to_rgb  # noqa: E402
from lightning_landscape.plots.render import render_figure  # noqa: E402
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


def _brief_rows(reps: int) -> list[list[str]]:
    """The brief figures of a 5 x 5 landscape: matplotlib's against the pixel builders'."""
    xs = np.linspace(-1.0, 1.0, 5)
    meta = {"directions": "pca", "explained_variance": [0.61, 0.22], "epoch": 4, "global_step": 115}
    path = np.array([[0.8, 0.7], [0.5, 0.3], [0.2, 0.1], [0.0, 0.0]])
    bowl = SurfaceRecord(xs, xs, 2.0 * np.add.outer(xs**2, 0.3 * xs**2) + 0.05, path=path, meta=meta)
    plane = SurfaceRecord(xs, xs, 1.0 + np.add.outer(0.8 * xs, 0.3 * xs), meta=meta)
    pair = [
        LineRecord(xs, (k + 1) * xs**2 + 0.05, {"directions": "pca", "label": f"PC{k + 1}"}) for k in (0, 1)
    ]

    def both_ways(build: Callable[[], Figure | np.ndarray]) -> None:
        render_figure(build, {"png", "rgb"})  # what the callback's figure thread does for the sinks

    ways = {
        "surface (5 x 5, path)": (
            lambda: both_ways(lambda: landscape.contour_figure(bowl, brief=True)),
            lambda: both_ways(lambda: brief_surface(bowl)),
            _same_fill(plane),
        ),
        "lines (2)": (
            lambda: both_ways(lambda: landscape.line_figure(pair, xlabel="distance", brief=True)),
            lambda: both_ways(lambda: brief_lines(pair, xlabel="distance")),
            _line_rows(pair),
        ),
    }
    rows = []
    for name, (a, b, check) in ways.items():
        a(), b()  # warm-up pair
        times: dict[str, list[float]] = {"A": [], "B": []}
        for rep in range(reps):
            for way in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                start = time.perf_counter()
                (a if way == "A" else b)()
                times[way].append(time.perf_counter() - start)
        ratios = [t_b / t_a for t_a, t_b in zip(times["A"], times["B"])]
        rows.append([
            name,
            f"{statistics.median(times['A']):.4f} [{min(times['A']):.4f}-{max(times['A']):.4f}]",
            f"{statistics.median(times['B']):.4f} [{min(times['B']):.4f}-{max(times['B']):.4f}]",
            f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]",
            check,
        ])  # fmt: skip
    return rows


def _same_fill(plane: SurfaceRecord) -> str:
    ours, theirs = (
        brief_surface(plane, title="t"),
        figure_to_rgb(landscape.contour_figure(plane, title="t", brief=True)),
    )
    (left, bottom, width, height), _ = frame_layout((5.6, 4.6), colorbar=True, title="t")
    x0, x1, y1 = round(left * 100), round((left + width) * 100), 460 - round(bottom * 100)
    y0 = y1 - round(height * 100)
    a, b = (img[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4].astype(int) for img in (ours, theirs))
    same = np.all(np.abs(a - b) <= 2, axis=-1).mean()
    return f"plane: {100 * same:.1f} % of plot pixels as matplotlib's"


def _line_rows(pair: list[LineRecord]) -> str:
    ours, theirs = (
        brief_lines(pair, xlabel="distance"),
        figure_to_rgb(landscape.line_figure(pair, xlabel="distance", brief=True)),
    )
    blue = np.array([0x1F, 0x77, 0xB4])

    def rows(rgb: np.ndarray) -> dict[int, float]:
        near = np.abs(rgb.astype(int) - blue).sum(-1) < 60
        return {
            c: float(np.flatnonzero(near[:, c]).mean()) for c in range(100, rgb.shape[1]) if near[:, c].any()
        }

    a, b = rows(ours), rows(theirs)
    gaps = [abs(a[c] - b[c]) for c in a if c in b]
    return f"blue line: rows within {max(gaps):.1f} px of matplotlib's over {len(gaps)} columns"


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
    lines += ["", f"## brief figures: matplotlib brief=True (A) vs drawn to pixels (B)  [{machine()}]"]
    lines.append(
        table(_brief_rows(args.reps), ["figure", "matplotlib s", "pixels s", "ratio B / A", "check"])
    )
    lines.append(
        f"{args.reps} interleaved repetitions in alternating order after a warm-up pair; each to RGB pixels "
        f"and PNG (render_figure). after: [{machine()}]"
    )
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
