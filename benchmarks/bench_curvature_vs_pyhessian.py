"""Curvature time to accuracy: our lambda_max and trace against PyHessian 0.1 at three model sizes.

Models: MLPs 256 -> w -> w -> 10 (tanh) of about 1e4, 1e6 and 1e7 parameters (float32, CPU), one probe
batch of 256 samples given to both tools (PyHessian's ``data=`` mode: its gradient graph is built once, as
ours is). The reference ``lambda_max`` is our Lanczos run to a residual of 1e-9 of the eigenvalue.

lambda_max: each tool is run with a sweep of stopping tolerances (PyHessian: relative change between
power iterations; ours: Lanczos residual relative to the eigenvalue); for each accuracy target (relative
error 1e-2, 1e-4) the table gives the fastest run that reached it, with its Hessian-vector products (HVPs).
"never" means no run in the sweep reached it (PyHessian's power iteration stops at ``maxIter=1000``).

Trace: both use Rademacher probes (Hutchinson), so both need the same number of probes for a given
accuracy; the table gives the seconds for ``--probes`` probes (PyHessian with ``tol=0`` so that it runs
them all) and the probes that a relative standard error of 1e-2 takes on that model.

    PYTHONPATH=. python benchmarks/bench_curvature_vs_pyhessian.py [--sizes 1e4 1e6 1e7] [--reps 1]

PyHessian is not a dependency: ``benchmarks/setup_env.sh`` installs it into benchmarks/.env, or
``pip install --no-deps --target benchmarks/.env/site pyhessian==0.1`` (this script looks there too).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here / ".env" / "site"))
sys.path.insert(0, str(here.parent))

import lightning_landscape.functional as llf  # noqa: E402

OUR_TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)
THEIR_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
TARGETS = (1e-2, 1e-4)


def mlp(params: float) -> nn.Module:
    width = max(4, int((-266 + math.sqrt(266**2 + 4 * params)) / 2))  # w^2 + 266 w + 10 ~ params
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )


def ce(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_time(runs: list[tuple[float, float, int]], target: float) -> str:
    """The fastest (seconds, HVPs) among runs whose relative error is within ``target``."""
    ok = [(s, n) for s, err, n in runs if err <= target]
    if not ok:
        return "never"
    s, n = min(ok)
    return f"{s:.3f} s ({n} HVPs)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e6, 1e7])
    parser.add_argument("--reps", type=int, default=1, help="runs per tolerance (the fastest is kept)")
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pyhessian import hessian as PyHessian

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 256, generator=g), torch.randint(0, 10, (256,), generator=g)
    batch = (x, y)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    for size in args.sizes:
        bench_size(mlp(size).eval(), batch, args, PyHessian)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def bench_size(model: nn.Module, batch, args: argparse.Namespace, PyHessian) -> None:
    if True:
        n = sum(p.numel() for p in model.parameters())
        ref = llf.hessian_eigenvalues(model, ce, [batch], max_iter=400, tol=1e-9)
        exact = ref.lambda_max
        print(
            f"\n## MLP, {n:,} parameters; reference lambda_max {exact:.8g} ({ref.iterations} Lanczos steps)"
        )
        ours, theirs = [], []
        for tol in OUR_TOLS:
            best = None
            for _ in range(args.reps):
                s, res = timed(
                    lambda tol=tol: llf.hessian_eigenvalues(model, ce, [batch], max_iter=400, tol=tol)
                )
                best = s if best is None else min(best, s)
            ours.append((best, abs(res.lambda_max - exact) / abs(exact), res.iterations))
        for tol in THEIR_TOLS:
            best, hvps = None, 0
            for _ in range(args.reps):
                torch.manual_seed(0)
                calls = [0]

                def run(tol=tol, calls=calls):
                    h = PyHessian(model, nn.CrossEntropyLoss(), data=batch, cuda=False)
                    ph = sys.modules["pyhessian.hessian"]  # the module (the package exports the class)
                    inner = ph.hessian_vector_product

                    def counting(*a, **k):
                        calls[0] += 1
                        return inner(*a, **k)

                    ph.hessian_vector_product = counting
                    try:
                        return h.eigenvalues(maxIter=1000, tol=tol, top_n=1)[0][0]
                    finally:
                        ph.hessian_vector_product = inner

                s, value = timed(run)
                best, hvps = (s if best is None else min(best, s)), calls[0]
            theirs.append((best, abs(float(value) - exact) / abs(exact), hvps))
            model.zero_grad(set_to_none=True)
        print("| target rel. error | PyHessian (power iteration) | ours (Lanczos) | speed-up |")
        print("|---|---|---|---|")
        for target in TARGETS:
            t, o = best_time(theirs, target), best_time(ours, target)
            ratio = "-"
            if t != "never" and o != "never":
                ratio = f"{float(t.split()[0]) / float(o.split()[0]):.1f}x"
            print(f"| {target:g} | {t} | {o} | {ratio} |")
        # Trace: the same estimator on both sides; seconds for the same number of probes.
        s_ours, tr = timed(lambda: llf.hessian_trace(model, ce, [batch], samples=args.probes))
        torch.manual_seed(0)
        s_theirs, _ = timed(
            lambda: PyHessian(model, nn.CrossEntropyLoss(), data=batch, cuda=False).trace(
                maxIter=args.probes, tol=0.0
            )
        )
        model.zero_grad(set_to_none=True)
        need = math.ceil((tr.stderr * math.sqrt(args.probes) / (1e-2 * abs(tr.trace))) ** 2)
        print(
            f"trace, {args.probes} probes: PyHessian {s_theirs:.3f} s, ours {s_ours:.3f} s "
            f"(speed-up {s_theirs / s_ours:.1f}x); a 1e-2 relative standard error takes about {need} probes "
            f"on this model (trace {tr.trace:.4g} +- {tr.stderr:.2g})"
        )


if __name__ == "__main__":
    main()
