"""Benchmark: Lanczos vs power iteration for lambda_max, and the cost of each curvature metric.

A small CNN is trained briefly on scikit-learn's digits (so the Hessian is that of a trained network,
not of an initialization); the probe set is 4 batches of 64, as the callback's default. Prints:

1. Hessian-vector products (HVPs) and seconds for Lanczos (full reorthogonalization) and for plain
   power iteration, started from the same seeded vectors, to reach 1e-3 relative error on lambda_max
   (reference: a 150-step Lanczos run), for several seeds.
2. The cost of one HVP, a gradient, and each metric with the callback's periodic and final defaults,
   in forward-pass equivalents (one unit = the mean loss over the probe batches, no grad, eval mode).

Usage: ``python benchmarks/curvature.py [--threads N] [--seeds K]``. Timings are wall-clock on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

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


def timed(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall-clock seconds of ``fn`` over ``repeats`` runs (after one warm-up)."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def power_iteration(model: nn.Module, batches: list[Any], seed: int, reference: float, limit: int = 2000):
    """HVPs for plain power iteration (Rayleigh quotient) to reach TARGET relative error; and its seconds."""
    gen = torch.Generator().manual_seed(seed)
    with hessian_operator(model, ce, batches) as op:
        v0 = (torch.randint(0, 2, (op.numel,), generator=gen) * 2 - 1).to(op.dtype)
        start = time.perf_counter()
        v = v0 / v0.norm()
        for count in range(1, limit + 1):
            w = op.matvec(v)
            estimate = float(torch.dot(w.double(), v.double()))
            if abs(estimate - reference) <= TARGET * abs(reference):
                return count, time.perf_counter() - start
            v = w / w.norm()
    return None, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"1. HVPs to reach {TARGET:g} relative error on lambda_max (reference: 150-step Lanczos)")
    print("| model | seed | lambda_max | Lanczos HVPs | Lanczos s | power HVPs | power s | HVP ratio |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for label, epochs in (("at initialization", 0), ("trained 3 epochs", 3)):
        model, batches = make_model_and_data(epochs=epochs)
        ref = hessian_eigenvalues(model, ce, batches, which="both", max_iter=150, tol=1e-9)
        lam = ref.lambda_max
        for seed in range(args.seeds):
            full = hessian_eigenvalues(model, ce, batches, max_iter=100, tol=1e-12, seed=seed)
            errors = abs(full.history - lam) / abs(lam)
            hits = [i for i, e in enumerate(errors) if e <= TARGET]
            lanczos_hvps = hits[0] + 1 if hits else None
            lanczos_s = (
                timed(
                    lambda s=seed, m=lanczos_hvps, mod=model, b=batches: hessian_eigenvalues(
                        mod, ce, b, max_iter=m, tol=1e-12, seed=s
                    ),
                    1,
                )
                if lanczos_hvps
                else float("nan")
            )
            power_hvps, power_s = power_iteration(model, batches, seed, lam)
            ratio = power_hvps / lanczos_hvps if power_hvps and lanczos_hvps else float("nan")
            ratios.append(ratio)
            print(
                f"| {label} | {seed} | {lam:.4g} | {lanczos_hvps} | {lanczos_s:.3f} | {power_hvps} | "
                f"{power_s:.3f} | {ratio:.1f}x |"
            )
    print(f"median: power iteration needs {statistics.median(ratios):.1f}x the HVPs of Lanczos\n")

    params = [p for _, p in landscape_parameters(model)]
    n_params = sum(p.numel() for p in params)
    print(f"CNN on digits, {n_params} parameters, probe 4 x 64 samples, torch threads {args.threads}")
    print(f"trained model: lambda_max = {ref.lambda_max:.6g}, lambda_min = {ref.lambda_min:.6g}\n")

    unit = timed(lambda: evaluate_loss(model, ce, batches), 20)
    v = [torch.randn_like(p) for p in params]

    def hvp_no_reuse() -> None:
        with hessian_operator(model, ce, batches, reuse_graph=False) as op:
            op.matvec(torch.cat([t.reshape(-1) for t in v]))

    def hvp_reused() -> None:
        with hessian_operator(model, ce, batches) as op:
            flat = torch.cat([t.reshape(-1) for t in v])
            op.matvec(flat)
            start = time.perf_counter()
            for _ in range(10):
                op.matvec(flat)
            hvp_reused.per = (time.perf_counter() - start) / 10  # type: ignore[attr-defined]

    timed(hvp_reused, 1)
    d1, d2 = filter_normalized_directions(params, seed=0)
    costs = {
        "forward (mean probe loss), the unit": unit,
        "gradient (loss_gradient)": timed(lambda: loss_gradient(model, ce, batches)),
        "HVP, graph reused (marginal, per product)": hvp_reused.per,  # type: ignore[attr-defined]
        "HVP, hessian_vector_product (graph built once)": timed(
            lambda: hessian_vector_product(model, ce, batches, v)
        ),
        "HVP, graph rebuilt (reuse_graph=False)": timed(hvp_no_reuse),
    }
    for stage, options in (("periodic", _PERIODIC_OPTIONS), ("final", _FINAL_OPTIONS)):
        o = options
        costs[f"eigenvalues, {stage} ({o['eigenvalues']['max_iter']} Lanczos steps max)"] = timed(
            lambda o=o: hessian_eigenvalues(model, ce, batches, **o["eigenvalues"]), 1
        )
        costs[f"trace, {stage} ({o['trace']['samples']} probes)"] = timed(
            lambda o=o: hessian_trace(model, ce, batches, **o["trace"]), 1
        )
        costs[f"sam, {stage}"] = timed(lambda o=o: sam_sharpness(model, ce, batches, **o["sam"]))
        costs[f"average, {stage} ({o['average']['samples']} samples)"] = timed(
            lambda o=o: average_sharpness(model, ce, batches, **o["average"]), 1
        )
    costs["surface 11 x 11 (for comparison)"] = timed(
        lambda: loss_surface(model, ce, batches, (d1, d2), resolution=11), 1
    )
    print("2. Cost in forward-pass equivalents (one unit = mean loss over the 4 probe batches)")
    print("| computation | seconds | forward-pass equivalents |")
    print("|---|---|---|")
    for name, seconds in costs.items():
        print(f"| {name} | {seconds:.4f} | {seconds / unit:.1f} |")


if __name__ == "__main__":
    main()
