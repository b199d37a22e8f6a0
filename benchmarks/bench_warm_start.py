"""Lanczos warm starts: how far 5 steps get from the previous landscape's Ritz vectors against from a random
vector, along a real training run (the callback's ``eigenvalues`` metric on a short run's budget).

The demo CNN (``examples/sgd_vs_sam.py``) trained with SGD (lr 0.1, momentum 0.9) on digits; after every 28
steps (a "landscape"), on one fixed probe batch: a 5-step Lanczos (``which="both"``) from the seeded
Rademacher vector (cold) and one started from the sum of the Ritz vectors of the previous landscape's
warm run (warm; the first landscape of a run starts cold), both against a converged Lanczos (300 steps,
tol 1e-9; ``torch.linalg.eigvalsh`` of the float64 Hessian is the independent check of that reference on
the first landscape). Relative error of ``lambda_max`` over ``--seeds`` runs x ``--landscapes``; written
to ``benchmarks/results/warm_start.txt``. Accuracy only (a warm start costs no extra products).

    OMP_NUM_THREADS=1 python benchmarks/bench_warm_start.py [--seeds 3] [--landscapes 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

from sgd_vs_sam import DigitsCNN, digits_loaders  # noqa: E402

from lightning_landscape.functional import hessian_eigenvalues  # noqa: E402
from lightning_landscape.functional.curvature.hessian import hessian_eigenvalues_of  # noqa: E402
from lightning_landscape.functional.objective import Objective  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "warm_start.txt"


def ce(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def float_hessian_lambda_max(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The largest eigenvalue of the dense float64 Hessian of the batch's loss (eval mode)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().double().reshape(-1) for _, p in named])
    double = DigitsCNN().double().eval()
    double.load_state_dict(model.state_dict())

    def loss(w: torch.Tensor) -> torch.Tensor:
        pieces = w.split([p.numel() for _, p in named])
        shaped = {n: t.view(p.shape) for (n, p), t in zip(named, pieces)}
        out = torch.func.functional_call(double, shaped, (batch[0].double(),))
        return F.cross_entropy(out, batch[1])

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


def run(seed: int, landscapes: int, steps: int) -> tuple[list[float], list[float], float]:
    """One training run: the cold and warm relative errors at each landscape, and the float64 check."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    train, _ = digits_loaders(seed=seed)
    it = iter(train)
    probe = [next(it)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    previous = None
    cold_err, warm_err, check = [], [], float("nan")
    for landscape in range(landscapes):
        for _ in range(steps):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(train)
                x, y = next(it)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        objective = Objective.build(model, ce, probe, require_grad=True)
        reference = hessian_eigenvalues(model, ce, probe, which="both", max_iter=300, tol=1e-9).lambda_max
        if landscape == 0:  # the reference against a dense float64 Hessian
            check = abs(reference - float_hessian_lambda_max(model, probe[0])) / reference
        cold = hessian_eigenvalues_of(objective, which="both", max_iter=5, tol=1e-3)
        start = None if previous is None else [a + b for a, b in zip(*previous)]
        warm = hessian_eigenvalues_of(
            objective, which="both", max_iter=5, tol=1e-3, start=start, return_eigenvectors=True
        )
        previous = warm.eigenvectors
        cold_err.append(abs(cold.lambda_max - reference) / reference)
        warm_err.append(abs(warm.lambda_max - reference) / reference)
    return cold_err, warm_err, check


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--landscapes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=28, help="training steps between landscapes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cold, warm, checks = [], [], []
    for seed in range(args.seeds):
        c, w, check = run(seed, args.landscapes, args.steps)
        cold += c
        warm += w
        checks.append(check)
    lines = [
        f"## Lanczos warm start, demo CNN, {args.seeds} seeds x {args.landscapes} landscapes "
        f"({args.steps} SGD steps apart), 5 steps, which='both'",
        "| start | median rel. error of lambda_max | max | landscapes above 1e-3 |",
        "|-------|---------------------------------|-----|-----------------------|",
    ]
    for name, errors in (("random (seeded Rademacher)", cold), ("warm (previous Ritz vectors)", warm)):
        e = np.array(errors)
        above = int((e > 1e-3).sum())
        lines.append(f"| {name} | {np.median(e):.1e} | {e.max():.1e} | {above} of {len(e)} |")
    lines.append(
        "reference: a converged Lanczos (300 steps, tol 1e-9); it agrees with eigvalsh of the float64 "
        f"Hessian to at most {max(checks):.1e} (first landscape of each seed). The warm column's first "
        "landscape of each run starts from the random vector too."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
