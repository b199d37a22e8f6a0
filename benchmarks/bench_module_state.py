"""What guarding the module's Python state costs per landscape: one snapshot + one restore.

A landscape evaluates hundreds of forward passes; the guard runs once around it. Measured side by side in
one process on three models (tiny MLP, a 200-block BatchNorm MLP, a ResNet-like conv net with a
torchmetrics collection), against one forward pass of a batch of 32.

    PYTHONPATH=. python benchmarks/bench_module_state.py [--reps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lightning_landscape.callback.module_state import ModuleStateGuard


def deep_mlp(blocks: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU()]
    net = nn.Sequential(*layers)
    net.outs = [torch.zeros(()) for _ in range(100)]  # a list the size of an epoch's outputs
    return net


def conv_net() -> nn.Module:
    def block(c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = [block(32) for _ in range(16)]
            self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), *blocks, nn.AdaptiveAvgPool2d(1))
            self.metrics = MetricCollection({"acc": MulticlassAccuracy(10), "f1": MulticlassF1Score(10)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    return Net()


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = {
        "tiny mlp": (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(32, 6)),
        "mlp 200 blocks": (deep_mlp(200), torch.randn(32, 64)),
        "conv 16 blocks + metrics": (conv_net(), torch.randn(32, 3, 16, 16)),
    }
    print(f"load average {os.getloadavg()}")
    print(f"{'model':<26}{'modules':>8}{'guard ms':>10}{'forward ms':>12}{'guard/forward':>15}")
    for name, (model, x) in cases.items():

        def guard(model: nn.Module = model) -> None:
            with ModuleStateGuard(model):
                pass

        with torch.no_grad():
            fwd = timed(lambda model=model, x=x: model(x), args.reps)
        g = timed(guard, args.reps)
        n = sum(1 for _ in model.modules())
        print(f"{name:<26}{n:>8}{g * 1e3:>10.3f}{fwd * 1e3:>12.3f}{g / fwd:>15.3f}")


if __name__ == "__main__":
    main()
