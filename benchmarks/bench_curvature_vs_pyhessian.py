"""Curvature cost: a Hessian-vector product against the autograd floor, and lambda_max against PyHessian 0.1.

Models: MLPs 256 -> w -> w -> 10 (tanh) of about 1e4 .. 1e7 parameters, float32, in eval mode; one probe
batch of ``--batch`` samples, given to every method (PyHessian's ``data=`` mode builds its gradient graph
once, as ours does).

(a) HVP time / floor: the floor is a bare ``torch.autograd.grad(grads, params, v, retain_graph=True)`` on
    a gradient graph built with ``create_graph=True`` (what any double-backward HVP must do). Ours is
    ``HessianOperator.matvec`` on a flat vector (graph built once, as in Lanczos); PyHessian's is its
    ``hessian_vector_product`` on its list of tensors. The three are timed in turn, order rotated each
    repetition, after a warm-up; each timing is a loop of products of about 0.1 s (``reps x loop``).

(b) lambda_max time to a relative error of 1e-2 and 1e-4 against an independent float64 reference:
    ``scipy.sparse.linalg.eigsh`` (ARPACK, ``which="LA"``, ``tol=1e-10``) on a ``LinearOperator`` whose
    matvec is a float64 HVP by plain ``torch.autograd`` on a float64 copy of the model and batch (neither
    tool's code). Each tool gets the smallest iteration budget that reaches the target (found once from
    its own iterates: our Lanczos ``history``, PyHessian's Rayleigh quotients with ``tol=0`` so that it
    runs exactly ``maxIter`` products), then the two calls are timed in turn, order alternated, after a
    warm-up, each timing the whole user call (graph set-up included). The error of every timed run is
    checked against the reference. Both start from a seeded vector (PyHessian: ``torch.manual_seed(0)``
    then its ``randn``; ours: ``seed=0``).

Every table prints the median and [min-max] over ``--reps`` repetitions; the ratios are medians of
per-repetition ratios. The output is also written to ``--out`` (docs/performance.md quotes it).

    bash benchmarks/setup_env.sh /path/to/python        # benchmarks/.env: pyhessian, scipy
    PYTHONPATH=. benchmarks/.env/bin/python benchmarks/bench_curvature_vs_pyhessian.py [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here / ".env" / "site"))
sys.path.insert(0, str(here.parent))

import lightning_landscape.functional as llf  # noqa: E402

TARGETS = (1e-2, 1e-4)
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def mlp(params: float, device: str) -> nn.Module:
    width = max(4, int((-266 + math.sqrt(266**2 + 4 * params)) / 2))  # w^2 + 266 w + 10 ~ params
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )
    return model.to(device).eval()


def ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``: one warm-up round (not counted), then ``reps`` rounds, each
    running every function once in an order rotated from the previous round's."""
    for fn in fns.values():
        fn()
    sync(device)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def spread(values: list[float], scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    """``median [min-max]`` of ``values`` times ``scale``."""
    v = [x * scale for x in values]
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"


def ratio(num: list[float], den: list[float]) -> str:
    return spread([a / b for a, b in zip(num, den)], fmt="{:.2f}")


# --------------------------------------------------------------------------------------- (a) HVP cost


def hvp_row(size: float, batch: Any, args: argparse.Namespace) -> list[str]:
    from pyhessian import hessian as PyHessian
    from pyhessian.utils import hessian_vector_product

    model = mlp(size, args.device)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    with torch.enable_grad():
        grads = torch.autograd.grad(ce(model, batch), params, create_graph=True)
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(n, generator=g).to(args.device)
    vs = [c.view_as(p) for c, p in zip(flat.split([p.numel() for p in params]), params)]
    theirs = PyHessian(model, nn.CrossEntropyLoss(), data=batch, cuda=args.device == "cuda")
    with llf.hessian_operator(model, ce, [batch]) as op:
        once = {
            "floor": lambda: torch.autograd.grad(grads, params, vs, retain_graph=True),
            "ours": lambda: op.matvec(flat),
            "pyhessian": lambda: hessian_vector_product(theirs.gradsH, theirs.params, vs),
        }
        # Agreement (the same product three ways), then a loop length of about 50 ms per timing.
        ref = torch.cat([h.reshape(-1) for h in once["floor"]()])
        err = float((once["ours"]() - ref).norm() / ref.norm())
        t0 = time.perf_counter()
        once["floor"]()
        sync(args.device)
        loops = max(1, math.ceil(0.1 / (time.perf_counter() - t0)))

        def looped(fn: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                for _ in range(loops):
                    fn()

            return run

        reps = args.hvp_reps if n < 3e6 else args.reps  # single products of 1e7 parameters take seconds
        times = interleaved({k: looped(f) for k, f in once.items()}, reps, args.device)
    model.zero_grad(set_to_none=True)  # PyHessian leaves .grad (with its graph) on the parameters
    per = {k: [t / loops for t in v] for k, v in times.items()}
    return [
        f"{n:,}",
        spread(per["floor"], 1e3),
        spread(per["ours"], 1e3),
        ratio(per["ours"], per["floor"]),
        ratio(per["pyhessian"], per["floor"]),
        f"{err:.1e}",
        f"{reps} x {loops}",
    ]


# --------------------------------------------------------------------------------------- (b) lambda_max


def arpack_reference(model: nn.Module, batch: Any) -> tuple[float, int]:
    """lambda_max of the float64 Hessian at the model's weights (ARPACK on a plain-autograd float64 HVP)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    m64 = copy.deepcopy(model).double()
    params = list(m64.parameters())
    x, y = batch[0].double(), batch[1]
    with torch.enable_grad():
        grads = torch.autograd.grad(F.cross_entropy(m64(x), y), params, create_graph=True)
    sizes = [p.numel() for p in params]
    n, calls = sum(sizes), [0]

    def matvec(v: np.ndarray) -> np.ndarray:
        calls[0] += 1
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(x.device)
        pieces = [c.view_as(p) for c, p in zip(t.split(sizes), params)]
        hv = torch.autograd.grad(grads, params, pieces, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).cpu().numpy()

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    value = eigsh(op, k=1, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)[0]
    return float(value), calls[0]


class Enough(Exception):
    """Raised inside PyHessian's loop once its iterates reached every target (calibration only)."""


def pyhessian_run(model: nn.Module, batch: Any, k: int, device: str) -> float:
    from pyhessian import hessian as PyHessian

    torch.manual_seed(0)
    h = PyHessian(model, nn.CrossEntropyLoss(), data=batch, cuda=device == "cuda")
    value = h.eigenvalues(maxIter=k, tol=0.0, top_n=1)[0][0]  # tol=0: exactly k products
    model.zero_grad(set_to_none=True)
    return float(value)


def pyhessian_budgets(model: nn.Module, batch: Any, ref: float, args: argparse.Namespace) -> dict[float, int]:
    """The fewest power iterations that bring PyHessian within each target (absent: not within the cap)."""
    ph = sys.modules["pyhessian.hessian"]
    inner = ph.hessian_vector_product
    budgets: dict[float, int] = {}
    count = [0]

    def watching(gradsH: Any, params: Any, v: Any) -> Any:
        hv = inner(gradsH, params, v)
        count[0] += 1
        estimate = float(ph.group_product(hv, v))  # the Rayleigh quotient it computes next
        for target in TARGETS:
            if target not in budgets and abs(estimate - ref) <= target * abs(ref):
                budgets[target] = count[0]
        if len(budgets) == len(TARGETS):
            raise Enough
        return hv

    ph.hessian_vector_product = watching
    try:
        pyhessian_run(model, batch, args.power_cap, args.device)
    except Enough:
        pass
    finally:
        ph.hessian_vector_product = inner
        model.zero_grad(set_to_none=True)
    return budgets


def our_run(model: nn.Module, batch: Any, k: int) -> float:
    return llf.hessian_eigenvalues(model, ce, [batch], max_iter=k, tol=1e-12, seed=0).lambda_max


def our_budgets(model: nn.Module, batch: Any, ref: float, cap: int) -> dict[float, int]:
    """The fewest Lanczos products that bring our lambda_max within each target (from its history)."""
    budget = 8
    while True:
        res = llf.hessian_eigenvalues(model, ce, [batch], max_iter=budget, tol=1e-12, seed=0)
        errors = np.abs(res.history - ref) / abs(ref)
        found = {t: int(np.argmax(errors <= t)) + 1 for t in TARGETS if (errors <= t).any()}
        if len(found) == len(TARGETS) or budget >= cap or res.iterations < budget:
            return found
        budget = min(2 * budget, cap)


def lambda_rows(size: float, batch: Any, args: argparse.Namespace) -> list[list[str]]:
    model = mlp(size, args.device)
    n = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    ref, calls = arpack_reference(model, batch)
    say(
        f"{n:,} parameters: reference lambda_max {ref:.10g} (ARPACK, float64, {calls} products, "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    theirs = pyhessian_budgets(model, batch, ref, args)
    ours = our_budgets(model, batch, ref, args.lanczos_cap)
    rows = []
    for target in TARGETS:
        kt, ko = theirs.get(target), ours.get(target)
        if kt is None or ko is None:
            who = "PyHessian" if kt is None else "ours"
            cap = args.power_cap if kt is None else args.lanczos_cap
            rows.append([f"{n:,}", f"{target:g}", f"{who}: not within {cap} products", "", "", "", ""])
            continue
        errors: dict[str, list[float]] = {"pyhessian": [], "ours": []}

        def run_theirs(k: int = kt, errors: dict[str, list[float]] = errors) -> None:
            errors["pyhessian"].append(abs(pyhessian_run(model, batch, k, args.device) - ref) / abs(ref))

        def run_ours(k: int = ko, errors: dict[str, list[float]] = errors) -> None:
            errors["ours"].append(abs(our_run(model, batch, k) - ref) / abs(ref))

        times = interleaved({"pyhessian": run_theirs, "ours": run_ours}, args.reps, args.device)
        rows.append(
            [
                f"{n:,}",
                f"{target:g}",
                f"{spread(times['pyhessian'])} ({kt})",
                f"{spread(times['ours'])} ({ko})",
                ratio(times["pyhessian"], times["ours"]),
                f"{max(errors['pyhessian']):.1e}",
                f"{max(errors['ours']):.1e}",
            ]
        )
    return rows


# --------------------------------------------------------------------------------------- main


def table(rows: list[list[str]], header: list[str]) -> None:
    say("| " + " | ".join(header) + " |")
    say("|" + "---|" * len(header))
    for r in rows:
        say("| " + " | ".join(r) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hvp-sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6], help="for lambda_max")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--hvp-reps", type=int, default=15, help="repetitions in (a) below 3e6 parameters")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--power-cap", type=int, default=400, help="most PyHessian power iterations")
    parser.add_argument("--lanczos-cap", type=int, default=256, help="most Lanczos products")
    parser.add_argument("--out", type=Path, default=here / "results" / "curvature_vs_pyhessian.txt")
    args = parser.parse_args()
    if min(args.reps, args.hvp_reps) < 5:
        parser.error("--reps and --hvp-reps must be at least 5")
    torch.set_num_threads(args.threads)
    # PyHessian calls loss.backward(create_graph=True), which warns of a reference cycle every time.
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(args.batch, 256, generator=g).to(args.device),
        torch.randint(0, 10, (args.batch,), generator=g).to(args.device),
    )
    load = os.getloadavg()
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU only"
    say(
        f"# bench_curvature_vs_pyhessian.py: {args.reps} repetitions, batch {args.batch}, "
        f"device {args.device}"
    )
    say(
        f"{platform.machine()}, {os.cpu_count()} logical CPUs, {gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    say("\n## (a) One Hessian-vector product: time / a bare torch.autograd.grad double backward (the floor)")
    say("median [min-max] over the repetitions; ratios are medians of per-repetition ratios; the error")
    say("column is |ours - floor| / |floor| for the same vector\n")
    rows = [hvp_row(size, batch, args) for size in args.hvp_sizes]
    table(
        rows,
        [
            "parameters",
            "floor ms",
            "ours ms",
            "ours / floor",
            "PyHessian / floor",
            "ours vs floor (rel.)",
            "reps x loop",
        ],
    )
    say("\n## (b) lambda_max: seconds to a relative error of 1e-2 and 1e-4 (reference: float64 ARPACK)")
    say("(products) = the fewest iterations that reach the target; speed-up = PyHessian s / ours s\n")
    lines = []
    for size in args.sizes:
        lines += lambda_rows(size, batch, args)
    say()
    table(
        lines,
        [
            "parameters",
            "target",
            "PyHessian s (HVPs)",
            "ours s (HVPs)",
            "speed-up",
            "PyHessian error",
            "our error",
        ],
    )
    load = os.getloadavg()
    say(f"\nload average at the end {load[0]:.1f}; total {time.perf_counter() - start:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
