"""Relative critical sharpness while fine-tuning: is this step about to hurt what the model already knows?

Pre-trains a small MLP on the digits 0-4 (plain PyTorch), then fine-tunes it with Lightning on the digits
5-9 with a ``LossLandscapeCallback`` that measures, every ``--every`` optimizer steps, the critical
sharpness of the fine-tuning loss along the fine-tuning update (``critical/lambda_c``) and that of the
*pre-training* loss along the same update (``critical/relative_lambda_c``, the second probe). A step of
learning rate ``lr`` raises the pre-training loss (to second order along the update) once
``lr > 2 / relative_lambda_c``; when it goes up at every small step the update is uphill for the old task
(``critical/relative_uphill`` = 1). Prints the series and the old task's loss at the end.

    python examples/critical_finetune.py [--epochs 3] [--every 5]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import LossLandscapeCallback


def ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


class FineTune(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return ce(self, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    old, new = y < 5, y >= 5
    old_data = TensorDataset(x[old], y[old])
    new_data = TensorDataset(x[new], y[new])
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(10):  # pre-training on 0-4
        for batch in DataLoader(old_data, batch_size=64, shuffle=True):
            opt.zero_grad()
            ce(net, batch).backward()
            opt.step()
    old_probe = DataLoader(old_data, batch_size=256)  # the pre-training loss: the second probe
    with torch.no_grad():
        before = float(ce(net, old_data.tensors))
    cb = LossLandscapeCallback(
        every_n_epochs=None, final=False, critical_sharpness=args.every, critical_probe=(old_probe, ce)
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs, callbacks=[cb], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tempfile.mkdtemp(),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(FineTune(net, args.lr), DataLoader(new_data, batch_size=64, shuffle=True))
    with torch.no_grad():
        after = float(ce(net, old_data.tensors))
    print(f"fine-tuning lr {args.lr}: 2 / lr = {2 / args.lr:.0f}")
    print("step  lambda_c  relative_lambda_c  relative_uphill")
    for step, _, s in cb.critical.history:
        lam = s.get("critical/lambda_c", float("nan"))
        rel = s.get("critical/relative_lambda_c", float("nan"))
        print(f"{step:4d}  {lam:8.2f}  {rel:17.2f}  {int(s['critical/relative_uphill']):15d}")
    print(f"pre-training loss (digits 0-4): {before:.4f} before fine-tuning, {after:.4f} after")


if __name__ == "__main__":
    main()
