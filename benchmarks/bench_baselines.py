"""Against the tool users would pick instead for surfaces: loss-landscapes 3.0.6.

Runs in benchmarks/.env (``bash benchmarks/setup_env.sh``), never in the package's environment.
Curvature against pyhessian 0.1 is benchmarks/bench_curvature_vs_pyhessian.py (an independent float64
reference, interleaved), not this script.

A user's call on each side, model + loss + data -> an R x R surface, both drawing their two
filter-normalized directions and both leaving the model as it was: ``loss_landscapes.random_plane``
(``deepcopy_model=True``, timed as documented, with autograd on, and inside ``torch.no_grad``) and our
``filter_normalized_directions`` + :func:`lightning_landscape.functional.loss_surface` (default engine).
Interleaved, order alternated, one warm-up excluded, median [min-max] of ``--reps`` (>= 5); the eager
floor (R*R plain forward passes) beside them. Ratios are per repetition, in wall time and in this
process's CPU time (one thread: the same on an idle machine, and blind to the time other jobs on a
shared machine take from it). Accuracy, on the *same* directions and grid (captured from
random_plane): the largest difference from a float64 loop that deep-copies the model at every point
(``common.naive_surface``, independent of both tools). random_plane walks the grid with in-place
``add_``/``sub_``, so its error accumulates; its odd columns are one step off its even ones, which is
accounted for here. Written to ``benchmarks/results/baselines_surface.txt``.

    OMP_NUM_THREADS=1 benchmarks/.env/bin/python benchmarks/bench_baselines.py [--resolution 11] [--reps 5]
        [--models mlp cnn transformer]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    MODELS,
    Report,
    alternating,
    machine,
    naive_surface,
    probe,
    ratio_spread,
    spread,
    table,
)

import lightning_landscape.functional as llf


def _shims() -> None:
    """Patch, at import time, what the old packages need from current numpy/torch (nothing vendored)."""
    for name, value in (("float", float), ("int", int), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)
    # loss-landscapes divides by the norm of each "filter" of the random direction; for 1-D parameters
    # a filter is one element, which orthogonal_to() can leave at exactly 0 (ZeroDivisionError).
    from loss_landscapes.model_interface.model_parameters import ModelParameters

    filter_norm = ModelParameters.filter_norm
    ModelParameters.filter_norm = lambda self, index, order=2: filter_norm(self, index, order) or 1e-12


def _surface_accuracy(name: str, resolution: int) -> tuple[float, float]:
    """Largest difference of each tool from :func:`common.naive_surface` (float64, a deep copy per
    point, independent of both tools) on the *same* directions and grid
    (captured from ``random_plane``); theirs, ours."""
    import loss_landscapes
    import loss_landscapes.main as llmain
    from loss_landscapes.metrics import Loss

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x, y = (torch.cat(t) for t in zip(*probe(name, 4, 64)))
    captured: list = []
    orig_rand, orig_orth = llmain.rand_u_like, llmain.orthogonal_to

    def rand(*a, **k):
        captured.append(orig_rand(*a, **k))
        return captured[-1]

    def orth(*a, **k):
        captured.append(orig_orth(*a, **k))
        return captured[-1]

    llmain.rand_u_like, llmain.orthogonal_to = rand, orth
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            their = loss_landscapes.random_plane(
                model, Loss(F.cross_entropy, x, y), distance=1, steps=resolution, deepcopy_model=True
            )
    finally:
        llmain.rand_u_like, llmain.orthogonal_to = orig_rand, orig_orth
    # The final step vectors (random_plane scales them in place), as our direction lists.
    params = [p for _, p in llf.landscape_parameters(model)]
    d1, d2 = ([t.detach().clone() for t in c.parameters] for c in captured[:2])
    half = resolution / 2
    xs = np.arange(resolution) - half  # column i: i steps along d1 from the shifted start
    ys = np.arange(resolution) + 1 - half  # even columns: j + 1 steps along d2
    ours = llf.loss_surface(model, _ce, [(x, y)], (d1, d2), xs=xs, ys=ys, params=params).losses
    # random_plane walks odd columns one step off the even ones: rows j - half for j in 0..R.
    ref = naive_surface(model, [(x, y)], d1, d2, xs, np.concatenate([ys - 1, ys[-1:]]))
    expected_theirs = np.stack([ref[1:, i] if i % 2 == 0 else ref[:-1, i] for i in range(resolution)])
    return float(np.abs(their - expected_theirs).max()), float(np.abs(ours - ref[1:]).max())


def _ce(m, b):
    return F.cross_entropy(m(b[0]), b[1])


def _cpu_timed(
    fns: dict[str, Callable[[], Any]], cpu: dict[str, list[float]]
) -> dict[str, Callable[[], Any]]:
    """``fns``, each also booking the CPU time of this process that its call took into ``cpu``."""

    def timed(key: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            start = time.process_time()
            out = fn()
            cpu[key].append(time.process_time() - start)
            return out

        return call

    return {key: timed(key, fn) for key, fn in fns.items()}


def _surface_case(name: str, resolution: int, reps: int) -> list:
    """A user's call on each side, timed interleaved (alternating order, warm-up excluded): model + loss
    + data -> surface, drawing the two filter-normalized directions included on both sides, the model
    left as it was on both sides (loss-landscapes: ``deepcopy_model=True``; ours: restored in place)."""
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x, y = (torch.cat(t) for t in zip(*probe(name, 4, 64)))

    def theirs(grad: bool) -> Callable[[], None]:
        def call() -> None:
            with torch.set_grad_enabled(grad):
                metric = Loss(F.cross_entropy, x, y)
                loss_landscapes.random_plane(
                    model, metric, distance=1, steps=resolution, normalization="filter", deepcopy_model=True
                )

        return call

    def ours() -> None:
        params = [p for _, p in llf.landscape_parameters(model)]
        directions = llf.filter_normalized_directions(params, seed=1)
        llf.loss_surface(model, _ce, [(x, y)], directions, resolution=resolution, span=0.5)

    @torch.no_grad()
    def floor() -> None:
        torch.stack([F.cross_entropy(model(x), y) for _ in range(resolution * resolution)]).cpu()

    fns = {"theirs_doc": theirs(True), "theirs_nograd": theirs(False), "ours": ours, "floor": floor}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    times = alternating(_cpu_timed(fns, cpu), reps)
    cpu = {k: v[-reps:] for k, v in cpu.items()}  # the timed rounds (the warm-up is not counted)
    err_theirs, err_ours = _surface_accuracy(name, resolution)
    return [
        f"{name} {resolution}x{resolution}",
        spread(times["theirs_doc"]),
        spread(times["theirs_nograd"]),
        spread(times["ours"]),
        ratio_spread(times["theirs_doc"], times["ours"]),
        ratio_spread(times["theirs_nograd"], times["ours"]),
        ratio_spread(cpu["theirs_nograd"], cpu["ours"]),
        ratio_spread(times["ours"], times["floor"]),
        f"{err_theirs:.1e}",
        f"{err_ours:.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=11)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (at least 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["mlp", "cnn", "transformer"])
    args = parser.parse_args()
    if args.reps < 5:
        parser.error(f"--reps must be at least 5 (medians with min-max), got {args.reps}")
    if args.resolution < 3 or args.resolution % 2 == 0:
        parser.error(f"--resolution must be an odd integer >= 3, got {args.resolution}")
    torch.set_num_threads(args.threads)
    _shims()
    report = Report("baselines_surface")
    report(f"## surfaces against loss-landscapes 3.0.6, a user's call on each side  [{machine()}]")
    report(
        f"{args.reps} interleaved repetitions (order alternated, one warm-up excluded): "
        "seconds median [min-max]; ratios are per repetition, median [min-max]"
    )
    rows = [_surface_case(name, args.resolution, args.reps) for name in args.models]
    report(
        table(
            rows,
            [
                "surface",
                "loss-landscapes s (as documented)",
                "loss-landscapes s (in no_grad)",
                "ours s (auto)",
                "speed-up vs documented",
                "speed-up vs no_grad",
                "speed-up vs no_grad, CPU time",
                "ours / eager floor",
                "their max err",
                "our max err",
            ],
        )
    )
    report(
        "Each call draws two filter-normalized directions and leaves the model as it was. "
        "Errors: largest difference from a float64 loop that deep-copies the model at every point "
        "(independent of both tools), on the same directions and grid."
    )
    report(f"[after: {machine()}]")
    report(f"written to {report.write()}")


if __name__ == "__main__":
    main()
