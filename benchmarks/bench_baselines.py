"""Against the tools users would pick instead: loss-landscapes 3.0.6 (surfaces), pyhessian 0.1 (curvature).

Runs in benchmarks/.env (``bash benchmarks/setup_env.sh``), never in the package's environment.

Surfaces: a user's call on each side, model + loss + data -> an R x R surface, both drawing their two
filter-normalized directions and both leaving the model as it was: ``loss_landscapes.random_plane``
(``deepcopy_model=True``, timed as documented, with autograd on, and inside ``torch.no_grad``) and our
``filter_normalized_directions`` + :func:`lightning_landscape.functional.loss_surface` (default engine).
Interleaved, order alternated, one warm-up excluded, median [min-max] of ``--reps`` (>= 5); the eager
floor (R*R plain forward passes) beside them. Accuracy, on the *same* directions and grid (captured
from random_plane): the largest difference from a float64 loop that deep-copies the model at every
point (``common.naive_surface``, independent of both tools). random_plane walks the grid with in-place
``add_``/``sub_``, so its error accumulates; its odd columns are one step off its even ones, which is
accounted for here. Written to ``benchmarks/results/baselines_surface.txt``.

Curvature: pyhessian's top eigenvalue (power iteration) and trace (Hutchinson) against our
``hessian_eigenvalues`` / ``hessian_trace`` when the installed package has them, and both against the
exact Hessian (``torch.autograd.functional.hessian``) of a small MLP.

    OMP_NUM_THREADS=1 benchmarks/.env/bin/python benchmarks/bench_baselines.py [--resolution 11] [--reps 5]
        [--only surfaces|curvature]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    MODELS,
    Report,
    alternating,
    interleaved,
    machine,
    median_ratio,
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


def _surface_case(name: str, resolution: int, reps: int) -> list:
    """A user's call on each side, timed interleaved (alternating order, warm-up excluded): model + loss
    + data -> surface, drawing the two filter-normalized directions included on both sides, the model
    left as it was on both sides (loss-landscapes: ``deepcopy_model=True``; ours: restored in place)."""
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x, y = (torch.cat(t) for t in zip(*probe(name, 4, 64)))

    def theirs(grad: bool):
        def call():
            with torch.set_grad_enabled(grad):
                metric = Loss(F.cross_entropy, x, y)
                loss_landscapes.random_plane(
                    model, metric, distance=1, steps=resolution, normalization="filter", deepcopy_model=True
                )

        return call

    def ours():
        params = [p for _, p in llf.landscape_parameters(model)]
        directions = llf.filter_normalized_directions(params, seed=1)
        llf.loss_surface(model, _ce, [(x, y)], directions, resolution=resolution, span=0.5)

    @torch.no_grad()
    def floor():
        torch.stack([F.cross_entropy(model(x), y) for _ in range(resolution * resolution)]).cpu()

    fns = {"theirs_doc": theirs(True), "theirs_nograd": theirs(False), "ours": ours, "floor": floor}
    times = alternating(fns, reps)
    err_theirs, err_ours = _surface_accuracy(name, resolution)
    return [
        f"{name} {resolution}x{resolution}",
        spread(times["theirs_doc"]),
        spread(times["theirs_nograd"]),
        spread(times["ours"]),
        ratio_spread(times["theirs_doc"], times["ours"]),
        ratio_spread(times["theirs_nograd"], times["ours"]),
        ratio_spread(times["ours"], times["floor"]),
        f"{err_theirs:.1e}",
        f"{err_ours:.1e}",
    ]


class SmallMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 24), nn.Tanh(), nn.Linear(24, 5))

    def forward(self, x):
        return self.net(x)


def _exact_hessian(model, x, y):
    params = [p for _, p in llf.landscape_parameters(model)]
    names = [n for n, _ in llf.landscape_parameters(model)]
    flat = llf.flatten(params)

    def f(v):
        ps = llf.unflatten(v, params)
        return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, ps)), (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


def _curvature(reps: int) -> list[list]:
    from pyhessian import hessian as PyHessian

    torch.manual_seed(0)
    model = SmallMLP().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 20, generator=g), torch.randint(0, 5, (256,), generator=g)
    H = _exact_hessian(model, x, y).double()
    evals = torch.linalg.eigvalsh(H)
    exact_top, exact_trace = float(evals.max()), float(H.trace())

    def theirs_eig():
        torch.manual_seed(0)
        return PyHessian(model, F.cross_entropy, data=(x, y), cuda=False).eigenvalues(top_n=1)[0][0]

    def theirs_trace():
        torch.manual_seed(0)
        return float(np.mean(PyHessian(model, F.cross_entropy, data=(x, y), cuda=False).trace()))

    rows = []
    have_ours = hasattr(llf, "hessian_eigenvalues") and hasattr(llf, "hessian_trace")

    def ce(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    def scalar(result, attr):
        value = getattr(result, attr, result)
        if isinstance(value, (list, tuple)):
            value = value[0]
        value = torch.as_tensor(np.asarray(value, dtype=np.float64) if not torch.is_tensor(value) else value)
        return float(value.reshape(-1).max() if attr == "eigenvalues" else value.reshape(-1)[0])

    n_probes = len(PyHessian(model, F.cross_entropy, data=(x, y), cuda=False).trace())  # its early stop
    cases = (
        ("top eigenvalue", theirs_eig, exact_top, "eigenvalues", {"k": 1}),
        # pyhessian stops at 1e-3 relative change; the same stopping tolerance for Lanczos:
        ("top eigenvalue, tol=1e-3", theirs_eig, exact_top, "eigenvalues", {"k": 1, "tol": 1e-3}),
        ("trace", theirs_trace, exact_trace, "trace", {}),
        (f"trace, {n_probes} probes as pyhessian", theirs_trace, exact_trace, "trace", {"samples": n_probes}),
    )
    for what, theirs, exact, attr, kwargs in cases:
        fns = {"theirs": theirs}
        if have_ours:
            fn = llf.hessian_eigenvalues if attr == "eigenvalues" else llf.hessian_trace
            fns["ours"] = lambda fn=fn, kwargs=kwargs, attr=attr: scalar(
                fn(model, ce, [(x, y)], **kwargs), attr
            )
        times = interleaved(fns, reps)
        their_value = float(theirs())
        row = [
            f"small MLP {what} (exact {exact:.4g})",
            statistics.median(times["theirs"]),
            f"rel err {abs(their_value - exact) / abs(exact):.1e}",
        ]
        if have_ours:
            our_value = fns["ours"]()
            row += [
                statistics.median(times["ours"]),
                f"rel err {abs(our_value - exact) / abs(exact):.1e}",
                median_ratio(times["theirs"], times["ours"]),
            ]
        else:
            row += ["skipped: curvature functions not available", "", ""]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=11)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--only", choices=["all", "surfaces", "curvature"], default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _shims()
    if args.only in ("all", "surfaces"):
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
    if args.only in ("all", "curvature"):
        print(f"## (b) against pyhessian 0.1  [{machine()}]")
        t0 = time.perf_counter()
        rows = _curvature(args.reps)
        header = ["case", "pyhessian s", "pyhessian accuracy", "ours s", "our accuracy", "speed-up"]
        print(table(rows, header))
        print(f"(curvature section {time.perf_counter() - t0:.1f} s)")
        print("target: faster than both at equal or better accuracy")


if __name__ == "__main__":
    main()
