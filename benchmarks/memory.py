"""Peak resident memory of snapshotting a model of a few million parameters over a long run.

Each configuration runs in a fresh subprocess: it builds the model, records a baseline resident set
(VmRSS), resets the high-water mark (``/proc/self/clear_refs``, value 5) and offers ``--events``
snapshots to a TrajectoryRecorder (then runs trajectory PCA on them), reading VmHWM after each phase.
The figures printed are the growth over the baseline, against the snapshot budget.

    PYTHONPATH=. python benchmarks/memory.py [--params 4000000] [--events 400] [--budget-mib 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, torch
from pathlib import Path
from lightning_landscape.recorder import TrajectoryRecorder
from lightning_landscape.functional import flatten, trajectory_pca

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=4_000_000)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--budget-mib", type=float, default=64.0)
    parser.add_argument("--max-snapshots", type=int, default=64)
    args = parser.parse_args()
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
