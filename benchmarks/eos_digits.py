"""Edge of stability on digits: full-batch gradient descent, the ratio lambda_max / (2 / lr) over training.

Cohen et al. (2021): under full-batch GD the sharpness rises until it reaches 2 / lr, then hovers there.
A tanh MLP (64-32-10) on all 1,797 digits, MSE on one-hot targets (as in their experiments), two
learning rates, `edge_of_stability_ratio` every 25 steps. Prints the ratio over training; nothing tuned.

    PYTHONPATH=. python benchmarks/eos_digits.py [--steps 400]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from lightning_landscape.functional import edge_of_stability_ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    batch = (torch.tensor(x / 16.0, dtype=torch.float32), F.one_hot(torch.tensor(y), 10).float())

    def loss_fn(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return 0.5 * ((model(b[0]) - b[1]) ** 2).sum(1).mean()

    for lr in args.lrs:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        row = []
        for step in range(args.steps + 1):
            if step % args.every == 0:
                eos = edge_of_stability_ratio(model, loss_fn, [batch], opt, max_iter=30, tol=1e-4)
                row.append(f"{step}:{eos.ratio:.2f}")
            if step < args.steps:
                opt.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
                opt.step()
        print(
            f"lr {lr} (threshold 2/lr = {2 / lr:.0f}), final loss {loss.item():.4f}; step:ratio  "
            + " ".join(row)
        )


if __name__ == "__main__":
    main()
