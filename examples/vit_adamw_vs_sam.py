"""A small vision transformer on 8x8 digits: AdamW vs SAM (over AdamW), a weight-decay sweep, several seeds.

Every run trains the same ViT from the same initialization for its seed, on a few hundred training
images (so that it can overfit), tests on the rest of scikit-learn's 1,797 digits, and carries a
``LossLandscapeCallback`` (trajectory-PCA surfaces, lines, curvature and sharpness). Runs:

- ``adamw``: AdamW at the main weight decay (``--weight-decay``), one run per seed;
- ``sam``: SAM over AdamW with the same settings, one run per seed;
- ``adamw_wd<v>``: AdamW at each other value of ``--sweep`` (the weight-decay sweep), one run per seed.

Output under ``--out`` (default ``lightning_logs/vit``): ``<group>/seed<k>/`` per run (TensorBoard
events, the callback's records under ``landscape/``, and ``summary.json`` with the per-epoch train
loss, train accuracy and test accuracy), ``spans/`` (the seed-0 final solutions on random
filter-normalized directions at three spans), ``study.json`` (the settings and timings), then
``figures/*.png`` and ``REPORT.md``, written by ``vit_study_report.py`` from those files only.

    python examples/vit_adamw_vs_sam.py                  # 3 seeds: about 6 CPU-minutes (one thread)
    python examples/vit_adamw_vs_sam.py --seeds 5 --accelerator auto   # more seeds, on a GPU if present
    python examples/vit_adamw_vs_sam.py --figures-only   # redraw figures and REPORT.md from the runs
    lightning-landscape compare lightning_logs/vit/adamw/seed0 lightning_logs/vit/sam/seed0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling vit_study_report.py

import vit_study_report

from lightning_landscape import LossLandscapeCallback, load_records
from lightning_landscape.functional import (
    filter_normalized_directions,
    landscape_parameters,
    loss_surface,
)
from lightning_landscape.optim import SAM
from lightning_landscape.records import save_record


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``loss_fn(model, batch)`` of the landscapes, with attention on the math kernel: the fused CPU/GPU
    kernels have no double backward, which Hessian-vector products need (training is not affected)."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.cross_entropy(model(batch[0]), batch[1])


def accuracy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Fraction of correct predictions on a batch (a ``metric_fn(model, batch)``)."""
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


# The callback's settings for every run, in one place: switch a new option on here (one line), e.g.
# "metric_fn": accuracy once the callback takes one. The probe (set per run) is the whole training set in
# one batch, so the landscape's loss is the training loss.
LANDSCAPE: dict[str, Any] = {
    "loss_fn": cross_entropy,
    "resolution": 9,
    "final_resolution": 17,
    "line_resolution": 21,
    "snapshot_every_n_steps": 10,
    "metrics": ("eigenvalues", "sam"),  # every periodic surface
    "final_metrics": ("eigenvalues", "trace", "sam", "average"),  # at the end (the package defaults)
    "max_overhead": None,  # the runs are short: compute every scheduled landscape
}
# --quick (the test): the same protocol, coarse and cheap.
QUICK_LANDSCAPE: dict[str, Any] = {
    "log_figures": False,  # rendering TensorBoard figures is most of a tiny run's time; records suffice
    "resolution": 5,
    "final_resolution": 5,
    "line_resolution": 5,
    "snapshot_every_n_steps": 2,
    "metrics": {"eigenvalues": {"max_iter": 4}, "sam": None},
    "final_metrics": {"eigenvalues": {"max_iter": 6}, "trace": {"samples": 4}, "sam": None,
                      "average": {"samples": 4}},
}  # fmt: skip
SPANS = (0.1, 1.0, 10.0)  # figure (d): one surface, three distances
# 4x4 patches: in a pilot (AdamW, seed 0) they trained to 100 % train accuracy in a third of the epochs
# that 2x2 patches needed, at half the cost per step; the model and lr were chosen on AdamW alone.
MODEL: dict[str, int] = {"patch": 4, "dim": 32, "depth": 2, "heads": 4, "mlp": 64}
QUICK_MODEL: dict[str, int] = {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "mlp": 32}


class ViT(nn.Module):
    """Patches of ``patch x patch`` pixels, a CLS token, learned position embeddings and pre-norm blocks.

    Example::

        >>> ViT(dim=16, depth=1, heads=2, mlp=32)(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self, patch: int = 4, dim: int = 32, depth: int = 2, heads: int = 4, mlp: int = 64, image: int = 8
    ) -> None:
        super().__init__()
        self.patch = patch
        tokens = (image // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        # Separate layer objects (nn.TransformerEncoder would deep-copy one: identical initial blocks).
        self.blocks = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(depth)
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, tokens, patch^2)
        z = self.embed(patches)
        z = torch.cat([self.cls.expand(len(z), -1, -1), z], dim=1) + self.pos
        return self.head(self.norm(self.blocks(z))[:, 0])


class DigitsViT(pl.LightningModule):
    """The ViT trained with AdamW, or with SAM over AdamW, on a cosine learning-rate schedule."""

    def __init__(
        self,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        rho: float = 0.05,
        epochs: int = 30,
        model: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = ViT(**(model or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        kwargs = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sam":
            opt = SAM(self, torch.optim.AdamW, rho=hp.rho, **kwargs)
        else:
            opt = torch.optim.AdamW(self.parameters(), **kwargs)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, hp.epochs)}


def digits_split(train_size: int, test_size: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """A fixed stratified split of the 1,797 digits (pixels in [0, 1]): ``train_size`` images to train on,
    the rest (or ``test_size`` of them) to test on. The same split for every run and seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), train_size=train_size, random_state=0, stratify=digits.target
    )
    if test_size is not None:
        test_idx = test_idx[:test_size]
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx])


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole dataset, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    x, y = (t.to(device) for t in data.tensors)
    logits = model(x)
    loss, acc = F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()
    model.train(was_training)
    return loss, acc


class EpochEvaluation(Callback):
    """Train loss, train accuracy and test accuracy on the whole sets: before training, every
    ``every_n_epochs`` epochs and after the last one.

    Kept in ``history`` and sent to the loggers as ``eval/...``; evaluation uses no randomness and puts
    the train/eval mode back, so it does not change training.
    """

    def __init__(self, train: TensorDataset, test: TensorDataset, every_n_epochs: int = 1) -> None:
        self.train, self.test, self.every_n_epochs = train, test, every_n_epochs
        self.history: dict[str, list[float]] = {
            k: [] for k in ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")
        }

    def _record(self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int) -> None:
        train_loss, train_acc = evaluate(module, self.train, module.device)
        test_loss, test_acc = evaluate(module, self.test, module.device)
        row = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        for key, value in {"epoch": epoch, "step": trainer.global_step, **row}.items():
            self.history[key].append(value)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in row.items()}, step=trainer.global_step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs:
            self._record(trainer, pl_module, epoch)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters' bytes: equal digests mean the same initialization, bit for bit."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def group_name(optimizer: str, weight_decay: float, main_weight_decay: float) -> str:
    if optimizer == "sam" or weight_decay == main_weight_decay:
        return optimizer
    return f"{optimizer}_wd{weight_decay:g}"


def span_surfaces(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], out: Path, seed: int, resolution: int
) -> None:
    """Figure (d): the final solution on one pair of filter-normalized random directions at each span."""
    params = [p for _, p in landscape_parameters(model)]
    directions = filter_normalized_directions(params, count=2, seed=seed)
    for span in SPANS:
        rec = loss_surface(
            model, cross_entropy, [batch], directions, resolution=resolution, span=span, params=params
        )
        rec.meta.update({"span": span, "directions": "random", "seed": seed, "probe": "train set"})
        save_record(rec, out, f"span_{span:g}")


def train_run(
    args: argparse.Namespace,
    optimizer: str,
    weight_decay: float,
    seed: int,
    data: tuple[TensorDataset, TensorDataset],
    landscape: dict[str, Any],
) -> dict[str, Any]:
    """One run; writes ``<out>/<group>/seed<k>/summary.json`` and returns the summary."""
    train, test = data
    group = group_name(optimizer, weight_decay, args.weight_decay)
    pl.seed_everything(seed, verbose=False)  # the same initialization and batch order for every group
    module = DigitsViT(optimizer, args.lr, weight_decay, args.rho, args.epochs, model=args.model)
    digest = weights_digest(module)
    loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    probe = DataLoader(train, batch_size=len(train))  # the whole training set, one batch
    evaluation = EpochEvaluation(train, test, every_n_epochs=max(1, args.epochs // 15))
    callback = LossLandscapeCallback(
        every_n_epochs=max(1, args.epochs // 3), probe_dataloader=probe, **landscape
    )
    shutil.rmtree(args.out / group / f"seed{seed}", ignore_errors=True)  # this run's folder only
    logger = TensorBoardLogger(str(args.out), name=group, version=f"seed{seed}", default_hp_metric=False)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=logger,
        callbacks=[evaluation, callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, len(loader)),
        deterministic=True,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    run_dir = Path(logger.log_dir)
    if args.span_resolution and seed == args.seeds_list[0] and weight_decay == args.weight_decay:
        x, y = (t.to(module.device) for t in train.tensors)
        where = args.out / "spans" / group / f"seed{seed}"
        span_surfaces(module.eval(), (x, y), where, seed, args.span_resolution)
    records = load_records(run_dir / "landscape")
    final_metrics = [r for r in records if r.kind == "metrics" and r.meta.get("stage") == "final"]
    final_surface = [r for r in records if r.kind == "surface" and r.meta.get("stage") == "final"]
    h = evaluation.history
    final = {k: h[k][-1] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    summary = dict(
        group=group, optimizer=optimizer, seed=seed, weight_decay=weight_decay, lr=args.lr,
        epochs=args.epochs, rho=args.rho if optimizer == "sam" else None, batch_size=args.batch_size,
        train_size=len(train), test_size=len(test), parameters=sum(p.numel() for p in module.parameters()),
        init_sha256=digest, seconds=seconds, cpu_seconds=cpu_seconds, history=h,
        final={**final, "gap": final["train_acc"] - final["test_acc"]},
        landscape=final_metrics[-1].as_dict() if final_metrics else {},
        final_surface_centre=final_surface[-1].centre_loss if final_surface else None, run_dir=str(run_dir),
    )  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _expected_seconds(done: list[tuple[str, float]], optimizer: str) -> float:
    """A run's expected wall time from the finished ``(optimizer, seconds)``: the mean of those with this
    optimizer, else of all (x 1.3 for SAM: two gradients per training step, same landscape work)."""
    same = [t for o, t in done if o == optimizer]
    if same:
        return sum(same) / len(same)
    return sum(t for _, t in done) / len(done) * (1.3 if optimizer == "sam" else 1.0)


def _command(argv: list[str]) -> str:
    """The command line that reruns these runs (``--docs DIR`` left out: it only says where to publish)."""
    kept = [a for i, a in enumerate(argv) if a != "--docs" and (i == 0 or argv[i - 1] != "--docs")]
    return " ".join(["python examples/vit_adamw_vs_sam.py", *kept])


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("lightning_logs/vit"), help="output folder")
    p.add_argument("--seeds", type=int, default=None, help="seeds per group (default 3; 1 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; 2 with --quick)")
    p.add_argument("--train-size", type=int, default=None, help="training images (default 300)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak learning rate (cosine schedule)")
    p.add_argument("--rho", type=float, default=0.05, help="SAM's neighbourhood radius")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's (and SAM's) weight decay")
    p.add_argument(
        "--sweep", type=float, nargs="*", default=None, help="other AdamW weight decays (default 0.5 5)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--span-resolution", type=int, default=None, help="points per axis of figure (d); 0: off")
    p.add_argument("--accelerator", default="cpu", help="'cpu' (default), 'auto' (a GPU if present), ...")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these models are tiny; 0: torch's choice)",
    )
    p.add_argument("--callback-kwargs", type=json.loads, default={}, help="JSON, overrides LANDSCAPE")
    p.add_argument(
        "--quick", action="store_true", help="a tiny run for tests: 1 seed, 1 epoch, 60 images, no sweep"
    )
    p.add_argument("--figures-only", action="store_true", help="redraw figures and REPORT.md from --out")
    p.add_argument("--docs", type=Path, default=None, help="also write DOCS/vit_study.md and DOCS/images/")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"seeds": (1, 3), "epochs": (1, 30), "train_size": (60, 300), "span_resolution": (3, 13)}
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if args.sweep is None:
        args.sweep = [] if quick else [0.5, 5.0]
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    args.seeds_list = list(range(args.seeds))
    args.test_size = 200 if quick else None
    args.model = QUICK_MODEL if quick else MODEL
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.figures_only:
        return vit_study_report.write_all(args.out, args.docs)
    if args.threads:
        torch.set_num_threads(args.threads)
    landscape = {**LANDSCAPE, **(QUICK_LANDSCAPE if args.quick else {}), **args.callback_kwargs}
    data = digits_split(args.train_size, args.test_size)
    weight_decays = [args.weight_decay] + [w for w in args.sweep if w != args.weight_decay]
    plan = [
        (opt, wd, seed)
        for seed in args.seeds_list
        for opt, wd in [("adamw", args.weight_decay), ("sam", args.weight_decay)]
        + [("adamw", w) for w in weight_decays[1:]]
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"{len(plan)} runs ({args.seeds} seeds; AdamW and SAM at weight decay {args.weight_decay:g}, AdamW "
        f"at {', '.join(f'{w:g}' for w in weight_decays[1:]) or 'no other value'}), {args.epochs} epochs, "
        f"{len(data[0])} training / {len(data[1])} test images, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    summaries, loads, durations = [], [], []
    for i, (opt, wd, seed) in enumerate(plan, 1):
        run_start = time.perf_counter()
        s = train_run(args, opt, wd, seed, data, landscape)
        summaries.append(s)
        loads.append(os.getloadavg()[0])
        durations.append((opt, time.perf_counter() - run_start))
        elapsed = time.perf_counter() - start
        eta = sum(_expected_seconds(durations, o) for o, _, _ in plan[i:])
        f = s["final"]
        print(
            f"[{i:>2}/{len(plan)}] {s['group']:<12} seed{seed}  {s['seconds']:6.1f} s  "
            f"train loss {f['train_loss']:.4f}  train acc {f['train_acc']:.3f}  test acc {f['test_acc']:.3f}"
            f"  | elapsed {_clock(elapsed)}, ETA {_clock(eta)}",
            flush=True,
        )
    total_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    study = dict(
        command=_command(sys.argv[1:] if argv is None else argv),
        seeds=args.seeds_list, epochs=args.epochs, train_size=len(data[0]), test_size=len(data[1]),
        lr=args.lr, rho=args.rho, batch_size=args.batch_size, weight_decay=args.weight_decay,
        weight_decays=weight_decays,
        model=args.model, parameters=summaries[0]["parameters"], spans=list(SPANS), quick=args.quick,
        landscape={k: getattr(v, "__name__", v) for k, v in landscape.items()},
        total_seconds=total_seconds, cpu_seconds=cpu_seconds, load_average_start=load_start,
        load_average_after_each_run=loads, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
        accelerator=args.accelerator, torch=torch.__version__, lightning=pl.__version__,
        python=platform.python_version(),
        runs=[str(Path(s["run_dir"]).relative_to(args.out)) for s in summaries],
    )  # fmt: skip
    (args.out / "study.json").write_text(json.dumps(study, indent=1))
    print(
        f"all runs: {_clock(total_seconds)} wall, {_clock(cpu_seconds)} CPU (load average "
        f"{load_start:.2f} at the start, {loads[-1]:.2f} at the end); writing figures ...",
        flush=True,
    )
    result = vit_study_report.write_all(args.out, args.docs)
    print(f"figures in {args.out / 'figures'}, report in {args.out / 'REPORT.md'}")
    print(
        "compare seeds with error bars: lightning-landscape compare "
        f"{args.out}/adamw/seed0 {args.out}/sam/seed0   |   tensorboard --logdir {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
