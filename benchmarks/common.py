"""Shared pieces of the benchmarks: small models, probe data, surface cases against the eager floor,
interleaved timing, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def ce_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class TinyTransformer(nn.Module):
    """Token embedding + 2 encoder layers (d=64, 4 heads) + mean pooling + linear head."""

    def __init__(self, vocab: int = 100, d: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def probe(kind: str, batches: int = 4, batch_size: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Random probe batches shaped for ``kind`` (mlp, cnn, transformer)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        if kind == "mlp":
            x = torch.randn(batch_size, 64, generator=g)
        elif kind == "cnn":
            x = torch.randn(batch_size, 3, 16, 16, generator=g)
        else:
            x = torch.randint(0, 100, (batch_size, 16), generator=g)
        out.append((x, torch.randint(0, 10, (batch_size,), generator=g)))
    return out


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": mlp, "cnn": cnn, "transformer": TinyTransformer}


@dataclass
class SurfaceCase:
    """One benchmark model (seeded) with its probe batches and filter-normalized plane, for surface timings.

    :meth:`floor` is what any landscape must spend: ``ce_loss`` on every probe batch at every grid
    point, eager, under ``no_grad``, in eval mode, with nothing else; :meth:`surface` is the landscape.
    """

    name: str
    resolution: int
    batches: int
    batch_size: int
    model: nn.Module
    data: list[tuple[torch.Tensor, ...]]
    params: list[torch.Tensor]
    dirs: Any

    @classmethod
    def make(cls, name: str, resolution: int, batches: int = 4, batch_size: int = 64) -> SurfaceCase:
        from lightning_landscape.functional import filter_normalized_directions, landscape_parameters

        torch.manual_seed(0)
        model = MODELS[name]()
        data = probe(name, batches, batch_size)
        params = [p for _, p in landscape_parameters(model)]
        dirs = filter_normalized_directions(params, seed=0)
        return cls(name, resolution, batches, batch_size, model, data, params, dirs)

    @property
    def points(self) -> int:
        return self.resolution * self.resolution

    @torch.no_grad()
    def floor(self) -> None:
        self.model.eval()
        values = [ce_loss(self.model, b) for _ in range(self.points) for b in self.data]
        torch.stack(values).cpu()

    def surface(self, engine: str) -> Callable[[], Any]:
        """``loss_surface`` of this case with ``engine``, as a function of nothing (to time)."""
        from lightning_landscape.functional import loss_surface

        return lambda: loss_surface(
            self.model, ce_loss, self.data, self.dirs, resolution=self.resolution, engine=engine
        )

    def row(self, times: dict[str, list[float]]) -> list[Any]:
        """The first columns of a floor table: model, parameters, points x probe, floor s, loop/floor."""
        return [
            self.name,
            sum(p.numel() for p in self.params),
            f"{self.points} x {self.batches}x{self.batch_size}",
            min(times["floor"]),
            median_ratio(times["loop"], times["floor"]),
        ]


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each of ``fns`` once per repetition, in turn, ``reps`` times; seconds per call for each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-repetition ratios (robust to load that drifts between repetitions)."""
    return statistics.median(a / b for a, b in zip(num, den))


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {gpu}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- the standard
# Every benchmark that publishes a ratio: A and B interleaved with alternating order (ABAB.., then BA..),
# warm-up excluded, >= 5 repetitions, median with min-max printed, output written to
# benchmarks/results/<name>.txt (the file the docs quote).


def alternating(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``: ``warmup`` untimed rounds, then ``reps`` timed rounds, the
    order reversed every other round (so that no side always runs first, after the same neighbour)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for rep in range(reps):
        for k in order if rep % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``median [min-max]`` of ``values``."""
    return f"{statistics.median(values):.{digits}g} [{min(values):.{digits}g}-{max(values):.{digits}g}]"


def ratio_spread(num: Sequence[float], den: Sequence[float]) -> str:
    """Per-repetition ratios ``num/den`` (interleaved, so they share the load): median [min-max]."""
    return spread([a / b for a, b in zip(num, den)])


class Report:
    """Print lines and keep them; :meth:`write` saves them to ``benchmarks/results/<name>.txt``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def write(self) -> str:
        from pathlib import Path

        path = Path(__file__).resolve().parent / "results" / f"{self.name}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
        return str(path)


def naive_surface(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    d1: Sequence[torch.Tensor],
    d2: Sequence[torch.Tensor],
    xs: Sequence[float],
    ys: Sequence[float],
) -> Any:
    """Mean cross-entropy over ``batches`` at ``w + xs[j] d1 + ys[i] d2`` (``[i, j]``), in float64 and
    independent of the package: a deep copy of the model per point, its ``parameters()`` (aligned with
    ``d1``, ``d2``) set under ``torch.no_grad``, plain eval-mode forward passes."""
    import copy

    import numpy as np

    out = np.empty((len(ys), len(xs)))
    w0 = [p.detach().double() for p in model.parameters()]
    a1, a2 = [t.double() for t in d1], [t.double() for t in d2]
    with torch.no_grad():
        for i, b in enumerate(ys):
            for j, a in enumerate(xs):
                m = copy.deepcopy(model).double().eval()
                for p, w, t1, t2 in zip(m.parameters(), w0, a1, a2):
                    p.copy_(w + float(a) * t1 + float(b) * t2)
                losses = [
                    float(F.cross_entropy(m(x.double() if x.is_floating_point() else x), y))
                    for x, y in batches
                ]
                out[i, j] = sum(losses) / len(losses)
    return out
