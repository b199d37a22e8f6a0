"""Peak resident memory: snapshotting a model over a long run, and a 50-step Lanczos.

Each configuration runs in a fresh subprocess: it builds the model, records a baseline resident set
(VmRSS), resets the high-water mark (``/proc/self/clear_refs``, value 5) and reads VmHWM after each
phase; the figures printed are the growth over the baseline.

1. Snapshots (``--what snapshots``): ``--events`` snapshots offered to a TrajectoryRecorder, then
   trajectory PCA on them, against the snapshot budget.
2. Lanczos (``--what lanczos``): ``hessian_eigenvalues(which="both", max_iter=--steps)`` run to the last
   step on an MLP of ``--lanczos-params`` parameters (float32, 4 probe batches of 64), as a multiple of
   the parameters' own memory: the code of commit 5087733 (a ``max_iter x P`` basis allocated up front)
   against the bounded basis, with its default budget and for several ``--max-basis``.

   Measured (2-core CPU, 8.0M parameters, float32, 4 probe batches of 64): commit 5087733 61.6x
   (1880 MiB); default (6 vectors) 9.6x; max_basis 8: 11.6x, 10: 13.6x, 16: 19.6x, 50 (no restart): 53.6x.

    PYTHONPATH=. python benchmarks/memory.py [--what all] [--params 4000000] [--events 400]
        [--budget-mib 64] [--lanczos-params 8000000] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# What both child scripts start with: the configuration, and reading and resetting the memory figures.
PRELUDE = r"""
import json, sys
from pathlib import Path

cfg = json.loads(sys.argv[1])

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

def reset_peak():
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
"""

CHILD = (
    PRELUDE
    + r"""
import torch
from lightning_landscape.callback.recorder import TrajectoryRecorder
from lightning_landscape.functional import flatten, trajectory_pca

torch.manual_seed(0)
n = cfg["params"]
model = torch.nn.Sequential(torch.nn.Linear(1000, n // 1000, bias=False))
params = list(model.parameters())
dtype = getattr(torch, cfg["dtype"])
rec = TrajectoryRecorder(cfg["max_snapshots"], dtype=dtype, budget_bytes=cfg["budget"],
                         path=cfg["path"])
base = status("VmRSS")
exact = reset_peak()
with torch.no_grad():
    for e in range(cfg["events"]):
        params[0].add_(0.001)  # training moves the weights
        rec.offer(e, params, step=e)
snap_peak = status("VmHWM") - base
_w = torch.ones(3, 3, dtype=torch.float64)
_ = torch.linalg.eigh(_w @ _w.T + torch.eye(3, dtype=torch.float64))  # load LAPACK/BLAS code first
reset_peak()
before = status("VmRSS")
centre = flatten(params, dtype=torch.float32, device="cpu")
pca = trajectory_pca(rec.stacked(), centre, release=rec.release)
pca_peak = status("VmHWM") - before
out = {"snap_peak": snap_peak, "pca_peak": pca_peak, "kept": len(rec), "capacity": rec.capacity}
out.update(stride=rec.stride, nbytes=rec.nbytes, exact=exact, P=sum(p.numel() for p in params))
out["components"] = pca.components.numel() * pca.components.element_size()
print(json.dumps(out))
"""
)


LANCZOS_CHILD = (
    PRELUDE
    + r"""
import importlib.util, subprocess, tempfile, torch
from torch import nn
torch.set_num_threads(1)

if cfg["code"] == "old":
    src = subprocess.run(["git", "show", cfg["commit"] + ":lightning_landscape/functional/curvature.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_curvature.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_curvature", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_curvature"] = module
    spec.loader.exec_module(module)
    run = module.hessian_eigenvalues
    extra = {}
else:
    from lightning_landscape.functional import hessian_eigenvalues as run
    extra = {"max_basis": cfg["max_basis"]}

torch.manual_seed(0)
width = cfg["width"]
layers = [nn.Linear(1000, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)]
model = nn.Sequential(*layers)
P = sum(p.numel() for p in model.parameters())
batches = [(torch.randn(64, 1000), torch.randint(0, 10, (64,))) for _ in range(4)]
loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
small = [(b[0][:2], b[1][:2]) for b in batches[:1]]
run(model, loss, small, max_iter=2, **extra)  # load kernels and code once, outside the measurement
base = status("VmRSS")
exact = reset_peak()
res = run(model, loss, batches, which="both", max_iter=cfg["steps"], tol=1e-300, **extra)
peak = status("VmHWM") - base
print(json.dumps({"P": P, "peak": peak, "exact": exact, "iterations": res.iterations,
                  "lambda_max": res.lambda_max, "lambda_min": res.lambda_min}))
"""
)


def lanczos_table(args: argparse.Namespace) -> None:
    """Peak extra memory of a Lanczos run as a multiple of the parameters' memory, old code and new."""
    # An MLP 1000 -> w -> w -> 10 has about w^2 + 1011 w parameters.
    width = int((-1011 + (1011**2 + 4 * args.lanczos_params) ** 0.5) / 2)
    print(
        f"\nLanczos: MLP 1000-{width}-{width}-10, which='both', {args.steps} steps run to the end, "
        f"float32; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'code':34} {'P':>10} {'peak extra MiB':>14} {'x parameters':>12} {'steps':>5} {'lambda_max':>11}"
    )
    configs = [("commit 5087733 (max_iter x P basis)", {"code": "old"})]
    configs.append(("bounded, default max_basis", {"code": "new", "max_basis": None}))
    configs += [(f"bounded, max_basis={m}", {"code": "new", "max_basis": m}) for m in args.max_basis]
    for label, extra in configs:
        cfg = {"width": width, "steps": args.steps, "commit": "5087733", **extra}
        out = subprocess.run(
            [sys.executable, "-c", LANCZOS_CHILD, json.dumps(cfg)],
            capture_output=True,
            text=True,
            # Every large buffer in its own mapping, returned on free: RSS follows what is allocated.
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        if out.returncode:
            print(f"{label:34} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = r["peak"] / (4 * r["P"])
        print(
            f"{label:34} {r['P']:>10,} {r['peak'] / 2**20:>14.1f} {ratio:>12.1f} {r['iterations']:>5} "
            f"{r['lambda_max']:>11.5g}"
        )
        if not r["exact"]:
            print("  (could not reset the high-water mark: peaks include the set-up)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=4_000_000)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--budget-mib", type=float, default=64.0)
    parser.add_argument("--max-snapshots", type=int, default=64)
    parser.add_argument("--what", choices=("all", "snapshots", "lanczos"), default="all")
    parser.add_argument("--lanczos-params", type=int, default=8_000_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max-basis", type=int, nargs="*", default=[16, 10])
    args = parser.parse_args()
    if args.what in ("all", "lanczos"):
        lanczos_table(args)
    if args.what == "lanczos":
        return
    budget = int(args.budget_mib * 2**20)
    tmp = Path(tempfile.mkdtemp())
    configs = [
        ("memory float32, no budget", {"dtype": "float32", "budget": None, "path": None}),
        ("memory float32, budget", {"dtype": "float32", "budget": budget, "path": None}),
        ("memory bfloat16, budget", {"dtype": "bfloat16", "budget": budget, "path": None}),
        ("memmap float32", {"dtype": "float32", "budget": None, "path": str(tmp / "snaps.bin")}),
    ]
    snapshot_mib = args.params * 4 / 2**20
    print(
        f"model: {args.params:,} parameters ({snapshot_mib:.1f} MiB per float32 snapshot), "
        f"{args.events} snapshot events, max_snapshots={args.max_snapshots}, budget {args.budget_mib:.0f} MiB"
    )
    print(
        f"{'configuration':28} {'kept':>4} {'cap':>4} {'buffer MiB':>10} {'snapshot peak MiB':>17} "
        f"{'peak/budget':>11} {'PCA peak MiB':>12} {'PCA work / snapshot':>20}"
    )
    for label, extra in configs:
        cfg = {"params": args.params, "events": args.events, "max_snapshots": args.max_snapshots, **extra}
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
        if out.returncode:
            print(f"{label:28} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mib = 2**20
        ratio = f"{r['snap_peak'] / budget:.2f}" if extra["budget"] or extra["path"] else "-"
        # PCA: beyond its result (the (2, P) components) and its input centre (one float32 snapshot),
        # how many float32-snapshot-sized buffers it needed (the 8 MiB work buffer included).
        pca_extra = (r["pca_peak"] - r["components"]) / (args.params * 4) - 1.0
        print(
            f"{label:28} {r['kept']:>4} {r['capacity']:>4} {r['nbytes'] / mib:>10.1f} "
            f"{r['snap_peak'] / mib:>17.1f} {ratio:>11} {r['pca_peak'] / mib:>12.1f} {pca_extra:>20.2f}"
        )
        if not r["exact"]:
            print("  (could not reset the high-water mark: peaks include the model's set-up)")


if __name__ == "__main__":
    main()
