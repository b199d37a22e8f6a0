"""Benchmark: Lanczos vs power iteration for lambda_max, and the cost of each curvature metric.

A small CNN is trained briefly on scikit-learn's digits (so the Hessian is that of a trained network,
not of an initialization); the probe set is 4 batches of 64, as the callback's default. Prints:

1. Hessian-vector products (HVPs) for Lanczos (full reorthogonalization) and for plain power iteration,
   started from the same seeded vectors, to reach 1e-3 relative error on lambda_max, for several seeds.
   Reference: ``scipy.sparse.linalg.eigsh`` (ARPACK, float64) on a float64 HVP computed by plain
   ``torch.autograd`` on a float64 copy of the model (eval mode), independent of the package.
2. The cost of one HVP, a gradient, and each metric with the callback's periodic and final defaults,
   in forward-pass equivalents (one unit = the mean loss over the probe batches, no grad, eval mode):
   each computation is timed in turn with the unit, order alternated, after a warm-up; the median
   and [min-max] over ``--reps`` per-repetition ratios.

Usage: ``python benchmarks/curvature.py [--threads N] [--seeds K] [--reps R]``; wall-clock on the CPU.
The output is also written to ``benchmarks/results/curvature.txt``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_landscape.callback.metrics import _FINAL_OPTIONS, _PERIODIC_OPTIONS
from lightning_landscape.functional import (
    average_sharpness,
    evaluate_loss,
    filter_normalized_directions,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
    hessian_vector_product,
    landscape_parameters,
    loss_gradient,
    loss_surface,
    sam_sharpness,
)

TARGET = 1e-3
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def make_model_and_data(seed: int = 0, epochs: int = 3) -> tuple[nn.Module, list[Any]]:
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    batches = [(x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]) for i in range(4)]
    return model, batches


def ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def interleaved(fn: Callable[[], Any], unit: Callable[[], Any], reps: int) -> list[float]:
    """Per-repetition ratios ``time(fn) / time(unit)``: one warm-up of each, then ``reps`` rounds, the
    order alternated between rounds."""
    fn()
    unit()
    ratios = []
    for r in range(reps):
        seconds = {}
        for name, f in (("fn", fn), ("unit", unit)) if r % 2 == 0 else (("unit", unit), ("fn", fn)):
            start = time.perf_counter()
            f()
            seconds[name] = time.perf_counter() - start
        ratios.append(seconds["fn"] / seconds["unit"])
    return ratios


def arpack_lambda_max(model: nn.Module, batches: list[Any]) -> float:
    """lambda_max of the float64 Hessian of the mean probe loss (eval mode), by ARPACK on plain autograd."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    m64 = copy.deepcopy(model).double().eval()
    params = [p for p in m64.parameters() if p.requires_grad]
    loss = sum(ce(m64, (x.double(), y)) for x, y in batches) / len(batches)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]

    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
        hv = torch.autograd.grad(
            grads, params, [c.view_as(p) for c, p in zip(t.split(sizes), params)], retain_graph=True
        )
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    n = sum(sizes)
    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    return float(eigsh(op, k=1, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)[0])


def power_iteration(model: nn.Module, batches: list[Any], seed: int, reference: float, limit: int = 2000):
    """HVPs for plain power iteration (Rayleigh quotient) to reach TARGET relative error."""
    gen = torch.Generator().manual_seed(seed)
    with hessian_operator(model, ce, batches) as op:
        v0 = (torch.randint(0, 2, (op.numel,), generator=gen) * 2 - 1).to(op.dtype)
        v = v0 / v0.norm()
        for count in range(1, limit + 1):
            w = op.matvec(v)
            estimate = float(torch.dot(w.double(), v.double()))
            if abs(estimate - reference) <= TARGET * abs(reference):
                return count
            v = w / w.norm()
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "curvature.txt")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be at least 5")
    torch.set_num_threads(args.threads)

    say(f"# benchmarks/curvature.py: torch {torch.__version__}, {args.threads} thread(s), {args.reps} reps\n")
    say(f"1. HVPs to reach {TARGET:g} relative error on lambda_max (reference: float64 ARPACK)")
    say("| model | seed | lambda_max (ARPACK) | Lanczos HVPs | power-iteration HVPs | ratio |")
    say("|---|---|---|---|---|---|")
    ratios = []
    for label, epochs in (("at initialization", 0), ("trained 3 epochs", 3)):
        model, batches = make_model_and_data(epochs=epochs)
        lam = arpack_lambda_max(model, batches)
        for seed in range(args.seeds):
            full = hessian_eigenvalues(model, ce, batches, max_iter=100, tol=1e-12, seed=seed)
            errors = abs(full.history - lam) / abs(lam)
            hits = [i for i, e in enumerate(errors) if e <= TARGET]
            lanczos_hvps = hits[0] + 1 if hits else None
            power_hvps = power_iteration(model, batches, seed, lam)
            ratio = power_hvps / lanczos_hvps if power_hvps and lanczos_hvps else float("nan")
            ratios.append(ratio)
            say(f"| {label} | {seed} | {lam:.4g} | {lanczos_hvps} | {power_hvps} | {ratio:.1f}x |")
    say(f"median: power iteration needs {statistics.median(ratios):.1f}x the HVPs of Lanczos\n")

    params = [p for _, p in landscape_parameters(model)]
    n_params = sum(p.numel() for p in params)
    say(f"CNN on digits (trained), {n_params} parameters, probe 4 x 64 samples, lambda_max {lam:.6g}\n")

    def unit() -> None:
        evaluate_loss(model, ce, batches)

    v = [torch.randn_like(p) for p in params]
    flat = torch.cat([t.reshape(-1) for t in v])

    def hvp_no_reuse() -> None:
        with hessian_operator(model, ce, batches, reuse_graph=False) as op:
            op.matvec(flat)

    def ten_hvps() -> None:  # 10 products on a kept graph, its set-up included
        with hessian_operator(model, ce, batches) as op:
            for _ in range(10):
                op.matvec(flat)

    def one_hvp() -> None:
        with hessian_operator(model, ce, batches) as op:
            op.matvec(flat)

    d1, d2 = filter_normalized_directions(params, seed=0)
    costs: dict[str, Callable[[], Any]] = {
        "gradient (loss_gradient)": lambda: loss_gradient(model, ce, batches),
        "HVP, hessian_vector_product (graph built for it)": lambda: hessian_vector_product(
            model, ce, batches, v
        ),
        "HVP, graph rebuilt (reuse_graph=False)": hvp_no_reuse,
        "operator set-up + 1 HVP on the kept graph": one_hvp,
        "operator set-up + 10 HVPs on the kept graph": ten_hvps,
    }
    for stage, options in (("periodic", _PERIODIC_OPTIONS), ("final", _FINAL_OPTIONS)):
        o = options
        costs[f"eigenvalues, {stage} ({o['eigenvalues']['max_iter']} Lanczos steps max)"] = lambda o=o: (
            hessian_eigenvalues(model, ce, batches, **o["eigenvalues"])
        )
        costs[f"trace, {stage} ({o['trace']['samples']} probes)"] = lambda o=o: hessian_trace(
            model, ce, batches, **o["trace"]
        )
        costs[f"sam, {stage}"] = lambda o=o: sam_sharpness(model, ce, batches, **o["sam"])
        costs[f"average, {stage} ({o['average']['samples']} samples)"] = lambda o=o: average_sharpness(
            model, ce, batches, **o["average"]
        )
    costs["surface 11 x 11 (for comparison)"] = lambda: loss_surface(
        model, ce, batches, (d1, d2), resolution=11
    )
    say("2. Cost in forward-pass equivalents (one unit = mean loss over the 4 probe batches, no grad)")
    say("median [min-max] of per-repetition ratios, each computation timed in turn with the unit")
    say("| computation | forward-pass equivalents |")
    say("|---|---|")
    per_hvp: list[float] = []
    for name, fn in costs.items():
        r = interleaved(fn, unit, args.reps)
        if name.startswith("operator set-up + 1 "):
            per_hvp = r
        if name.startswith("operator set-up + 10 "):
            marginal = [(ten - one) / 9 for ten, one in zip(r, per_hvp)]
            say(f"| HVP on a kept graph, per product (from the two rows above) | {_spread(marginal)} |")
        say(f"| {name} | {_spread(r)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(LINES) + "\n")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


if __name__ == "__main__":
    main()
