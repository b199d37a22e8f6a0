"""Against the tools users would pick instead: loss-landscapes 3.0.6 (surfaces), pyhessian 0.1 (curvature).

Runs in benchmarks/.env (``bash benchmarks/setup_env.sh``), never in the package's environment.

Surfaces: ``loss_landscapes.random_plane`` on a model and one probe batch, R x R points, timed
against :func:`lightning_landscape.functional.loss_surface` on the *same* directions and grid
(captured from random_plane) and data, interleaved. Accuracy: the largest difference from a float64
evaluation at the same points. (random_plane walks the grid with in-place ``add_``/``sub_``, so its
error accumulates; its odd columns are also one step off its even ones, which is accounted for here.)

Curvature: pyhessian's top eigenvalue (power iteration) and trace (Hutchinson) against our
``hessian_eigenvalues`` / ``hessian_trace`` when the installed package has them, and both against the
exact Hessian (``torch.autograd.functional.hessian``) of a small MLP.

    benchmarks/.env/bin/python benchmarks/bench_baselines.py [--resolution 11] [--reps 3]
"""

from __future__ import annotations

import argparse
import copy
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

from common import MODELS, interleaved, machine, median_ratio, probe, table

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


def _surface_case(name: str, resolution: int, reps: int) -> list:
    import loss_landscapes
    import loss_landscapes.main as llmain
    from loss_landscapes.metrics import Loss

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x, y = (torch.cat(t) for t in zip(*probe(name, 4, 64)))
    metric = Loss(F.cross_entropy, x, y)

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

        def theirs():
            captured.clear()
            torch.manual_seed(1)
            with torch.no_grad():
                return loss_landscapes.random_plane(
                    model, metric, distance=1, steps=resolution, deepcopy_model=True
                )

        their = theirs()
    finally:
        llmain.rand_u_like, llmain.orthogonal_to = orig_rand, orig_orth
    # The final step vectors (random_plane scales them in place), as our direction lists.
    params = [p for _, p in llf.landscape_parameters(model)]
    d1, d2 = ([t.detach().clone() for t in c.parameters] for c in captured[:2])
    half = resolution / 2
    xs = np.arange(resolution) - half  # column i: i steps along d1 from the shifted start
    ys = np.arange(resolution) + 1 - half  # even columns: j + 1 steps along d2
    batch = [(x, y)]

    def ce(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    ours = llf.loss_surface(model, ce, batch, (d1, d2), xs=xs, ys=ys, params=params)
    # float64 reference at the points each tool meant to evaluate
    ref64 = copy.deepcopy(model).double()
    p64 = [p for _, p in llf.landscape_parameters(ref64)]
    b64 = [(x.double() if x.is_floating_point() else x, y)]
    ref = llf.loss_surface(
        ref64,
        ce,
        b64,
        ([t.double() for t in d1], [t.double() for t in d2]),
        xs=xs,
        ys=np.concatenate([ys - 1, ys[-1:]]),
        params=p64,
        engine="loop",
    ).losses  # rows: j - half for j in 0..R (odd columns use j, even ones j + 1)
    # their[i, j]: column i along d1, entry j along d2
    expected_theirs = np.stack([ref[1:, i] if i % 2 == 0 else ref[:-1, i] for i in range(resolution)])
    err_theirs = float(np.abs(their - expected_theirs).max())
    err_ours = float(np.abs(ours.losses - ref[1:]).max())

    def ours_fn(engine):
        return lambda: llf.loss_surface(
            model, ce, batch, (d1, d2), xs=xs, ys=ys, params=params, engine=engine
        )

    times = interleaved(
        {
            "theirs": theirs_timed(loss_landscapes, model, metric, resolution),
            "ours_loop": ours_fn("loop"),
            "ours_auto": ours_fn("auto"),
        },
        reps,
    )
    return [
        f"{name} surface {resolution}x{resolution}",
        statistics.median(times["theirs"]),
        statistics.median(times["ours_loop"]),
        statistics.median(times["ours_auto"]),
        median_ratio(times["theirs"], times["ours_auto"]),
        f"{err_theirs:.1e}",
        f"{err_ours:.1e}",
    ]


def theirs_timed(loss_landscapes, model, metric, resolution):
    def run():
        with torch.no_grad():
            loss_landscapes.random_plane(model, metric, distance=1, steps=resolution, deepcopy_model=True)

    return run


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
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _shims()
    print(f"## (b) against loss-landscapes 3.0.6 and pyhessian 0.1  [{machine()}]")
    rows = [_surface_case(name, args.resolution, args.reps) for name in ("mlp", "cnn")]
    print(
        table(
            rows,
            [
                "case",
                "loss-landscapes s",
                "ours loop s",
                "ours auto s",
                "speed-up (auto)",
                "their max err",
                "our max err",
            ],
        )
    )
    t0 = time.perf_counter()
    rows = _curvature(args.reps)
    print(table(rows, ["case", "pyhessian s", "pyhessian accuracy", "ours s", "our accuracy", "speed-up"]))
    print(f"(curvature section {time.perf_counter() - t0:.1f} s)")
    print("target: faster than both at equal or better accuracy")


if __name__ == "__main__":
    main()
