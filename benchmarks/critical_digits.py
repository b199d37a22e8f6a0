"""Critical sharpness against lambda_max over full-batch gradient descent on digits.

Kalra et al. (2026) claim that the critical sharpness ``lambda_c = 2 / eta_c`` along the update, found by
a few forward passes, tracks progressive sharpening and the edge of stability as ``lambda_max`` does.
The setting of ``benchmarks/eos_digits.py`` (Cohen et al., 2021): a tanh MLP (64-32-10) on all 1,797
digits, MSE on one-hot targets, full-batch GD, float64. Every ``--every`` steps, on the full batch:
``lambda_max`` by Lanczos (:func:`hessian_eigenvalues`, 40 steps, tol 1e-6) and ``lambda_c`` along GD's
update ``-g`` (:func:`critical_sharpness`, rtol 1e-3). On any loss ``lambda_c`` is the curvature of the
loss along ``-g`` over the distance a step travels, so ``lambda_c <= lambda_max`` holds only on a
quadratic; the question is how closely one follows the other. Nothing tuned; prints a table per
learning rate and a summary, and writes them to ``--out``.

    PYTHONPATH=. python benchmarks/critical_digits.py [--steps 1500] [--every 100]   # about 2 minutes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from lightning_landscape.functional import critical_sharpness, hessian_eigenvalues

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "critical_digits.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    batch = (torch.tensor(x / 16.0, dtype=torch.float64), F.one_hot(torch.tensor(y), 10).double())

    def loss_fn(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return 0.5 * ((model(b[0]) - b[1]) ** 2).sum(1).mean()

    out = [f"# critical_digits.py: full-batch GD, tanh MLP 64-32-10, MSE, float64, {args.steps} steps", ""]
    summary = []
    for lr in args.lrs:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        rows, evals, seconds = [], [], {"lanczos": 0.0, "critical": 0.0}
        for step in range(args.steps + 1):
            opt.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            if step % args.every == 0:
                t0 = time.perf_counter()
                lam = hessian_eigenvalues(model, loss_fn, [batch], max_iter=40, tol=1e-6).eigenvalues[0]
                t1 = time.perf_counter()
                d = [-p.grad.detach().clone() for p in model.parameters()]
                res = critical_sharpness(model, loss_fn, [batch], d, rtol=1e-3, eta0=lr)
                t2 = time.perf_counter()
                seconds["lanczos"] += t1 - t0
                seconds["critical"] += t2 - t1
                evals.append(res.evaluations)
                rows.append((step, loss.item(), float(lam), res.lambda_c))
            if step < args.steps:
                opt.step()
        table = np.array(rows)
        lam_max, lam_c = table[:, 2], table[:, 3]
        out += [
            f"## lr {lr}: threshold 2 / lr = {2 / lr:.3g}",
            "",
            "| step | loss | lambda_max | lambda_c | lambda_c / lambda_max | lambda_max / (2/lr) "
            "| lambda_c / (2/lr) |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {int(s)} | {lo:.4f} | {lm:.3f} | {lc:.3f} | {lc / lm:.3f} | {lm * lr / 2:.3f} "
                f"| {lc * lr / 2:.3f} |"
                for s, lo, lm, lc in rows
            ],
            "",
        ]
        ratio = lam_c / lam_max
        corr = float(np.corrcoef(lam_max, lam_c)[0, 1])
        summary.append(
            f"| {lr} | {lam_max[0]:.2f} -> {lam_max.max():.2f} | {lam_c[0]:.2f} -> {lam_c.max():.2f} | "
            f"{np.median(ratio):.3f} ({ratio.min():.3f}-{ratio.max():.3f}) | {corr:.3f} | "
            f"{lam_max.max() * lr / 2:.3f} | {lam_c.max() * lr / 2:.3f} | "
            f"{np.median(evals):.0f} ({min(evals)}-{max(evals)}) | "
            f"{seconds['lanczos'] / len(rows) * 1e3:.1f} / {seconds['critical'] / len(rows) * 1e3:.1f} |"
        )
    out += [
        "## summary",
        "",
        "| lr | lambda_max first -> max | lambda_c first -> max | lambda_c / lambda_max median (min-max) | "
        "Pearson r | max lambda_max / (2/lr) | max lambda_c / (2/lr) | evaluations median (min-max) | "
        "ms per Lanczos / per lambda_c |",
        "|---|---|---|---|---|---|---|---|---|",
        *summary,
    ]
    text = "\n".join(out)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
