"""A small vision transformer on 8x8 digits: AdamW vs SAM (over AdamW), clean and noisy labels, many seeds.

Two settings in one study, each with the same runs:

- ``clean``: the control, 300 training images with their labels;
- ``noisy``: the same 300 images with a fixed fraction (``--noise``, 20 %) of their labels flipped to
  another class, uniformly (symmetric noise); the flipped set is drawn once from ``--noise-seed`` and
  written to ``<out>/noisy/noise.json``. Validation and test labels are never touched.

Runs per setting and seed (each from the seed's initialization, the same for every run at that seed):
AdamW at every weight decay of ``--sweep`` and SAM(AdamW) at every ``--rhos`` (weight decay
``--weight-decay``). Each optimizer's weight decay and rho are chosen on a **validation split** of the
digits held apart from the test images (highest mean final validation accuracy), never on the test set.
Every epoch records the train loss on the labels trained on and on the clean labels, validation and
test accuracy, and (noisy setting) how many flipped labels the model has memorized.

Then, for ``--landscape-seeds`` seeds of each setting, the chosen AdamW and SAM are rerun with weights
saved (``landscape.py`` in this folder): the shared plane through the initialization and both
solutions, the barrier, and curvature at each solution and at matched training loss.

Output under ``--out`` (default ``lightning_logs/vit``): ``<setting>/<group>/seed<k>/summary.json``,
``<setting>/noise.json``, ``study.json``, ``landscapes/``, ``figures/*.png`` and ``REPORT.md``
(``vit_study_report.py`` writes the last two from those files only).

    python examples/vit_adamw_vs_sam.py              # both settings, 10 seeds (see docs/vit_study.md)
    python examples/vit_adamw_vs_sam.py --setting noisy --seeds 5 --jobs 1
    python examples/vit_adamw_vs_sam.py --figures-only         # redraw figures and REPORT.md from the runs
    python examples/vit_adamw_vs_sam.py --dataset cifar10 --data-root ~/data --accelerator auto
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling vit_study_report.py

import vit_study_report

from lightning_landscape.optim import SAM


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``loss_fn(model, batch)`` of the landscapes, with attention on the math kernel: the fused CPU/GPU
    kernels have no double backward, which Hessian-vector products need (training is not affected)."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.cross_entropy(model(batch[0]), batch[1])


def accuracy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Fraction of correct predictions on a batch (a ``metric_fn(model, batch)``)."""
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


# 4x4 patches: in a pilot (AdamW, seed 0) they trained to 100 % train accuracy in a third of the epochs
# that 2x2 patches needed, at half the cost per step; the model and lr were chosen on AdamW alone.
MODEL: dict[str, int] = {"patch": 4, "dim": 32, "depth": 2, "heads": 4, "mlp": 64}
QUICK_MODEL: dict[str, int] = {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "mlp": 32}
# CIFAR-10 (32x32x3): 4x4 patches, 64 tokens; sized for a GPU (see docs/vit_study.md for its runtime).
CIFAR_MODEL: dict[str, int] = {"patch": 4, "dim": 128, "depth": 6, "heads": 4, "mlp": 256}
SETTINGS = ("clean", "noisy")


class ViT(nn.Module):
    """Patches of ``patch x patch`` pixels, a CLS token, learned position embeddings and pre-norm blocks.

    Example::

        >>> ViT(dim=16, depth=1, heads=2, mlp=32)(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        patch: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp: int = 64,
        image: int = 8,
        channels: int = 1,
    ) -> None:
        super().__init__()
        self.patch = patch
        tokens = (image // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
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
        patches = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, tokens, C patch^2)
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


# ---------------------------------------------------------------------------------------- data
@dataclass
class Split:
    """Images and clean labels of the three disjoint parts, and their indices in the source dataset."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    indices: dict[str, np.ndarray]


def _split_tensors(
    x: torch.Tensor, y: torch.Tensor, train_size: int, val_size: int, test_size: int | None
) -> Split:
    """A fixed stratified split (``random_state=0``): ``train_size`` to train on, ``val_size`` to choose
    hyperparameters on, the rest (or ``test_size`` of it) to test on; the three are disjoint."""
    from sklearn.model_selection import train_test_split

    labels = y.numpy()
    train_idx, rest = train_test_split(
        np.arange(len(y)), train_size=train_size, random_state=0, stratify=labels
    )
    val_idx, test_idx = train_test_split(rest, train_size=val_size, random_state=0, stratify=labels[rest])
    if test_size is not None:
        test_idx = test_idx[:test_size]
    parts = {"train": train_idx, "val": val_idx, "test": test_idx}
    data = {k: TensorDataset(x[torch.as_tensor(i)], y[torch.as_tensor(i)]) for k, i in parts.items()}
    return Split(data["train"], data["val"], data["test"], parts)


def digits_split(train_size: int, val_size: int = 300, test_size: int | None = None) -> Split:
    """scikit-learn's 1,797 digits (pixels in [0, 1]), split by :func:`_split_tensors`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return _split_tensors(x, y, train_size, val_size, test_size)


def cifar10_split(
    data_root: Path, train_size: int, val_size: int, test_size: int | None, dataset: Any = None
) -> Split:
    """CIFAR-10's training images (``torchvision.datasets.CIFAR10(data_root, train=True)``, downloaded by
    the user beforehand; torchvision is imported only here) as tensors in [0, 1], channels first, split
    by :func:`_split_tensors`. ``dataset``: any object with the same interface (``len`` and items
    ``(image, label)``, the image ``H x W x 3`` uint8 or ``3 x H x W`` float); the tests pass a fake."""
    if dataset is None:
        try:
            from torchvision.datasets import CIFAR10
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise SystemExit("--dataset cifar10 needs torchvision: pip install torchvision") from err
        dataset = CIFAR10(str(data_root), train=True, download=False)
    needed = train_size + val_size + (test_size or 0)
    count = len(dataset) if test_size is None else min(len(dataset), needed)
    images, labels = [], []
    for i in range(count):
        image, label = dataset[i]
        t = torch.as_tensor(np.asarray(image))
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        if t.shape[-1] == 3:  # H x W x C (PIL / numpy) -> C x H x W
            t = t.permute(2, 0, 1)
        images.append(t.float())
        labels.append(int(label))
    return _split_tensors(torch.stack(images), torch.tensor(labels), train_size, val_size, test_size)


def flip_labels(labels: torch.Tensor, fraction: float, seed: int, classes: int = 10) -> torch.Tensor:
    """Symmetric label noise: exactly ``round(fraction * n)`` labels, drawn without replacement with
    ``seed``, each moved to one of the other ``classes - 1`` classes uniformly. Returns new labels.

    Example::

        >>> y = torch.arange(10)
        >>> int((flip_labels(y, 0.3, seed=0) != y).sum())
        3
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    k = round(fraction * n)
    idx = torch.randperm(n, generator=g)[:k]
    noisy = labels.clone()
    noisy[idx] = (labels[idx] + torch.randint(1, classes, (k,), generator=g)) % classes
    return noisy


def setting_data(
    split: Split, setting: str, fraction: float, seed: int
) -> tuple[TensorDataset, dict[str, Any]]:
    """The training set of one setting and its noise record (``noise.json``): the clean labels for
    ``clean``; for ``noisy``, :func:`flip_labels` on the training labels only."""
    x, y = split.train.tensors
    if setting == "clean":
        return split.train, {"setting": "clean", "fraction": 0.0, "flipped": []}
    noisy = flip_labels(y, fraction, seed)
    flipped = torch.nonzero(noisy != y).flatten().tolist()
    record = {
        "setting": "noisy", "fraction": fraction, "seed": seed, "train_size": len(y),
        "flipped": flipped, "clean_labels": [int(y[i]) for i in flipped],
        "noisy_labels": [int(noisy[i]) for i in flipped],
        "train_indices": [int(i) for i in split.indices["train"]],
    }  # fmt: skip
    return TensorDataset(x, noisy), record


# ---------------------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole dataset, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    x, y = (t.to(device) for t in data.tensors)
    # In chunks of 4096 images (CIFAR-10's sets); the digits' sets are smaller: one batch.
    logits = torch.cat([model(chunk) for chunk in x.split(4096)])
    loss, acc = F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()
    model.train(was_training)
    return loss, acc


class EpochEvaluation(Callback):
    """Before training and after every epoch: loss and accuracy on the training set with the labels
    trained on (``train_*``) and with the clean labels (``clean_train_*``), on validation and test, and
    the fraction of flipped training labels the model predicts (``memorized``: 0 without noise).

    Kept in ``history``; evaluation uses no randomness and puts the train/eval mode back, so it does not
    change training. ``keep_states``: also keep a copy of the weights after every epoch (``states``).
    """

    def __init__(
        self, train: TensorDataset, clean_train: TensorDataset, val: TensorDataset, test: TensorDataset,
        keep_states: bool = False,
    ) -> None:  # fmt: skip
        self.sets = {"train": train, "clean_train": clean_train, "val": val, "test": test}
        self.flipped = torch.nonzero(train.tensors[1] != clean_train.tensors[1]).flatten()
        self.keep_states = keep_states
        self.states: list[dict[str, torch.Tensor]] = []
        self.optimizer_states: list[dict[str, Any] | None] = []
        keys = ["epoch"] + [f"{s}_{m}" for s in self.sets for m in ("loss", "acc")] + ["memorized"]
        self.history: dict[str, list[float]] = {k: [] for k in keys}

    def _record(self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int) -> None:
        self.history["epoch"].append(epoch)
        for name, data in self.sets.items():
            loss, acc = evaluate(module, data, module.device)
            self.history[f"{name}_loss"].append(loss)
            self.history[f"{name}_acc"].append(acc)
        memorized = 0.0
        if len(self.flipped):
            x, y = (t[self.flipped] for t in self.sets["train"].tensors)
            memorized = evaluate(module, TensorDataset(x, y), module.device)[1]
        self.history["memorized"].append(memorized)
        if self.keep_states:
            self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})
            opt = trainer.optimizers[0] if trainer.optimizers else None
            base = getattr(opt, "base_optimizer", opt)  # SAM's AdamW, or AdamW
            self.optimizer_states.append(copy.deepcopy(base.state_dict()) if base is not None else None)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, trainer.current_epoch + 1)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters' bytes: equal digests mean the same initialization, bit for bit."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def group_name(optimizer: str, weight_decay: float, rho: float) -> str:
    return f"sam_rho{rho:g}" if optimizer == "sam" else f"adamw_wd{weight_decay:g}"


def fit(
    args: argparse.Namespace,
    optimizer: str,
    weight_decay: float,
    rho: float,
    seed: int,
    data: dict[str, TensorDataset],
    callbacks: Sequence[Callback] = (),
    keep_states: bool = False,
    root_dir: Path | None = None,
) -> tuple[DigitsViT, EpochEvaluation, dict[str, Any]]:
    """Train one run (seeded: the same initialization and batch order for every run at ``seed``)."""
    pl.seed_everything(seed, verbose=False)
    module = DigitsViT(optimizer, args.lr, weight_decay, rho, args.epochs, model=args.model)
    digest = weights_digest(module)
    loader = DataLoader(
        data["train"], batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    evaluation = EpochEvaluation(data["train"], data["clean_train"], data["val"], data["test"], keep_states)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=False,
        callbacks=[evaluation, *callbacks], enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, num_sanity_val_steps=0, deterministic=True,
        default_root_dir=str(root_dir) if root_dir is not None else None,
    )  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)
    timing = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}
    return module, evaluation, {"init_sha256": digest, **timing}


def train_run(
    args: argparse.Namespace,
    setting: str,
    optimizer: str,
    weight_decay: float,
    rho: float,
    seed: int,
    data: dict[str, TensorDataset],
) -> dict[str, Any]:
    """One run of the sweep; writes ``<out>/<setting>/<group>/seed<k>/summary.json``, returns it."""
    group = group_name(optimizer, weight_decay, rho)
    module, evaluation, info = fit(args, optimizer, weight_decay, rho, seed, data)
    h = evaluation.history
    best_val_epoch = int(np.argmax(h["val_acc"]))  # early stopping on validation (first best epoch)
    final = {k: v[-1] for k, v in h.items() if k != "epoch"}
    summary = dict(
        setting=setting, group=group, optimizer=optimizer, seed=seed, weight_decay=weight_decay,
        rho=rho if optimizer == "sam" else None, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, train_size=len(data["train"]), val_size=len(data["val"]),
        test_size=len(data["test"]), parameters=sum(p.numel() for p in module.parameters()), **info,
        history=h, final=final, peak_test_acc=max(h["test_acc"]),
        early_stop={"epoch": best_val_epoch, "val_acc": h["val_acc"][best_val_epoch],
                    "test_acc": h["test_acc"][best_val_epoch]},
    )  # fmt: skip
    run_dir = args.out / setting / group / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _command(argv: list[str]) -> str:
    """The command line that reruns these runs (``--docs DIR`` left out: it only says where to publish)."""
    kept = [a for i, a in enumerate(argv) if a != "--docs" and (i == 0 or argv[i - 1] != "--docs")]
    return " ".join(["python examples/vit_adamw_vs_sam.py", *kept])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("lightning_logs/vit"), help="output folder")
    p.add_argument("--setting", choices=("clean", "noisy", "both"), default="both")
    p.add_argument("--seeds", type=int, default=None, help="seeds per run (default 10; 2 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; 1 with --quick)")
    p.add_argument("--train-size", type=int, default=None, help="training images (default 300)")
    p.add_argument("--val-size", type=int, default=None, help="validation images (default 300)")
    p.add_argument("--noise", type=float, default=0.2, help="fraction of flipped training labels (noisy)")
    p.add_argument("--noise-seed", type=int, default=1234, help="seed of the flipped set (noisy)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak learning rate (cosine schedule)")
    p.add_argument("--rhos", type=float, nargs="+", default=None, help="SAM's radii (default 0.05 0.1 0.2)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="SAM's weight decay (and AdamW's main)")
    p.add_argument("--sweep", type=float, nargs="+", default=None, help="AdamW's weight decays")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--landscape-seeds", type=int, default=None, help="seeds with landscapes (default 3; 0: none)"
    )
    p.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="where CIFAR-10 was downloaded")
    p.add_argument("--accelerator", default="cpu", help="'cpu' (default), 'auto' (a GPU if present), ...")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)")
    p.add_argument(
        "--jobs", type=int, default=None, help="runs in parallel processes (default: 2, or 1 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="a tiny run for tests")
    p.add_argument(
        "--skip-runs", action="store_true", help="reuse the sweep's runs in --out (landscapes only)"
    )
    p.add_argument("--figures-only", action="store_true", help="redraw figures and REPORT.md from --out")
    p.add_argument("--docs", type=Path, default=None, help="also write DOCS/vit_study.md and DOCS/images/")
    args = p.parse_args(argv)
    quick, cifar = args.quick, args.dataset == "cifar10"
    defaults = {
        "seeds": (2, 3 if cifar else 10),
        "epochs": (1, 50 if cifar else 30),
        "train_size": (60, 5000 if cifar else 300),
        "val_size": (60, 2000 if cifar else 300),
        "landscape_seeds": (1, 1 if cifar else 3),
    }
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if args.sweep is None:
        args.sweep = [0.05, 0.5] if quick else [0.05, 0.5, 1.0, 1.5, 2.0, 3.0]
    if args.rhos is None:
        args.rhos = [0.05, 0.2] if quick else [0.05, 0.1, 0.2]
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    if not 0.0 < args.noise < 1.0:
        p.error(f"--noise must be in (0, 1), got {args.noise}")
    if args.jobs is None:
        args.jobs = 1 if quick else 2
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    args.settings = list(SETTINGS) if args.setting == "both" else [args.setting]
    args.seeds_list = list(range(args.seeds))
    args.landscape_seeds = min(args.landscape_seeds, args.seeds)
    args.test_size = 200 if quick else (10000 if cifar else None)
    args.model = QUICK_MODEL if quick else (CIFAR_MODEL if cifar else MODEL)
    if cifar:
        args.model = {**args.model, "image": 32, "channels": 3}
    return args


def load_split(args: argparse.Namespace, dataset: Any = None) -> Split:
    if args.dataset == "cifar10":
        return cifar10_split(args.data_root, args.train_size, args.val_size, args.test_size, dataset)
    return digits_split(args.train_size, args.val_size, args.test_size)


def build_data(
    args: argparse.Namespace, split: Split, write: bool = False
) -> dict[str, dict[str, TensorDataset]]:
    """Each setting's datasets (training labels as trained on, clean training labels, validation, test);
    ``write``: also its ``<out>/<setting>/noise.json``."""
    data = {}
    for setting in args.settings:
        train, noise = setting_data(split, setting, args.noise, args.noise_seed)
        if write:
            (args.out / setting).mkdir(parents=True, exist_ok=True)
            (args.out / setting / "noise.json").write_text(json.dumps(noise))
        data[setting] = {"train": train, "clean_train": split.train, "val": split.val, "test": split.test}
    return data


def run_share(
    args: argparse.Namespace,
    items: Sequence[tuple[str, str, float, float, int]],
    total: int,
    data: dict[str, dict[str, TensorDataset]] | None = None,
) -> list[tuple[dict[str, Any], float]]:
    """Train ``items`` (``(setting, optimizer, weight decay, rho, seed)``) one after the other, printing
    progress; returns each run's summary and the load average after it. In a worker process (``data``
    None) the data are rebuilt from ``args``: the same split and noise, deterministically."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if data is None:
        data = build_data(args, load_split(args))
    out, start = [], time.perf_counter()
    for i, (setting, opt, wd, rho, seed) in enumerate(items, 1):
        s = train_run(args, setting, opt, wd, rho, seed, data[setting])
        out.append((s, os.getloadavg()[0]))
        elapsed = time.perf_counter() - start
        f = s["final"]
        print(
            f"[{i:>3}/{len(items)} of {total}] {setting:<5} {s['group']:<13} seed{seed} "
            f"{s['seconds']:5.1f} s  train loss {f['train_loss']:.4f} (clean {f['clean_train_loss']:.4f})  "
            f"val {f['val_acc']:.3f}  test {f['test_acc']:.3f}  | elapsed {_clock(elapsed)}, "
            f"ETA {_clock(elapsed / i * (len(items) - i))}",
            flush=True,
        )
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers of ``--jobs``)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None, dataset: Any = None) -> dict[str, Any]:
    """Run the study; ``dataset`` replaces torchvision's CIFAR-10 (the tests' fake)."""
    args = parse_args(argv)
    if args.figures_only:
        return vit_study_report.write_all(args.out, args.docs)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = load_split(args, dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = [("adamw", wd, 0.0) for wd in args.sweep] + [("sam", args.weight_decay, r) for r in args.rhos]
    plan = [(s, o, wd, r, seed) for s in args.settings for seed in args.seeds_list for o, wd, r in configs]
    print(
        f"{len(plan)} runs: settings {', '.join(args.settings)}; {args.seeds} seeds; AdamW at weight decay "
        f"{', '.join(f'{w:g}' for w in args.sweep)}; SAM at rho {', '.join(f'{r:g}' for r in args.rhos)}; "
        f"{args.epochs} epochs; {len(split.train)} train / {len(split.val)} validation / {len(split.test)} "
        f"test images; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    data = build_data(args, split, write=True)
    start, cpu_start, load_start = time.perf_counter(), _cpu_seconds(), os.getloadavg()[0]
    summaries: list[dict[str, Any]] = []
    loads: list[float] = []
    if not args.skip_runs:
        jobs = min(args.jobs, len(plan)) if dataset is None else 1  # a given dataset object stays here
        if jobs > 1:
            # Interleaved shares (AdamW and SAM runs in each); every process rebuilds the data itself.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                shares = [plan[i::jobs] for i in range(jobs)]
                for done in pool.map(run_share, [args] * jobs, shares, [len(plan)] * jobs):
                    summaries += [s for s, _ in done]
                    loads += [load for _, load in done]
        else:
            for s, load in run_share(args, plan, len(plan), data):
                summaries.append(s)
                loads.append(load)
    runs_seconds, runs_cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    landscape_timing: dict[str, float] = {}
    if args.landscape_seeds:
        import vit_study_landscape

        t0, c0 = time.perf_counter(), time.process_time()
        vit_study_landscape.run_all(args, data)
        landscape_timing = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    study_path = args.out / "study.json"
    previous = json.loads(study_path.read_text()) if args.skip_runs and study_path.exists() else {}
    study = dict(
        command=_command(sys.argv[1:] if argv is None else argv), dataset=args.dataset,
        settings=args.settings, seeds=args.seeds_list, epochs=args.epochs, train_size=len(split.train),
        val_size=len(split.val), test_size=len(split.test), noise=args.noise, noise_seed=args.noise_seed,
        lr=args.lr, rhos=args.rhos, batch_size=args.batch_size, weight_decay=args.weight_decay,
        sweep=args.sweep, model=args.model, quick=args.quick, landscape_seeds=args.landscape_seeds,
        split_indices={k: [int(i) for i in v] for k, v in split.indices.items()},
        runs_seconds=runs_seconds, runs_cpu_seconds=runs_cpu, landscape_timing=landscape_timing,
        load_average_start=load_start, load_average_after_each_run=loads, threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), accelerator=args.accelerator, torch=torch.__version__,
        lightning=pl.__version__, python=platform.python_version(), runs=len(plan), jobs=args.jobs,
    )  # fmt: skip
    if args.skip_runs:  # keep the sweep's own timings
        for key in ("runs_seconds", "runs_cpu_seconds", "load_average_start", "load_average_after_each_run"):
            study[key] = previous.get(key, study[key])
    (args.out / "study.json").write_text(json.dumps(study, indent=1))
    print(f"runs: {_clock(runs_seconds)} wall, {_clock(runs_cpu)} CPU; writing figures ...", flush=True)
    result = vit_study_report.write_all(args.out, args.docs)
    print(f"figures in {args.out / 'figures'}, report in {args.out / 'REPORT.md'}")
    return result


if __name__ == "__main__":
    main()
