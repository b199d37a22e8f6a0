"""LightningCLI: the callback and every kind of option configure from YAML (issue 11.7)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.models import TinyNet, loader

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures] (the `test` extra)")

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lightning_landscape import LossLandscapeCallback

CALLBACK_ARGS: dict[str, Any] = {
    "name": "hess",
    "directions": "hessian",
    "every_n_epochs": 1,
    "resolution": 3,
    "final_resolution": 5,
    "line_resolution": 5,
    "num_batches": 1,
    "span": [-0.5, 1.0],
    "interpolation_range": [-0.25, 1.25],
    "snapshot_dtype": "bfloat16",
    "snapshot_every_n_steps": 2,
    "snapshot_storage": "memory",
    "metrics": {"eigenvalues": {"max_iter": 4}, "sam": {"rho": 0.05}},
    "final_metrics": ["eigenvalues"],
    "engine": "loop",
    "max_overhead": None,
    "loss_fn": "helpers.models.ce_loss",
    "log_figures": False,
    "save_weights_dtype": "float16",
}


class TinyData(pl.LightningDataModule):
    def train_dataloader(self) -> Any:
        return loader(32, 8)


def _config(tmp_path: Path, class_path: str) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path),
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 4,
            "limit_val_batches": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "callbacks": [{"class_path": class_path, "init_args": CALLBACK_ARGS}],
        },
        "model": {"norm": "none", "dropout": 0.0},
    }
    path = tmp_path / "in" / "landscape.yaml"  # not where LightningCLI saves the run's config.yaml
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _check_options(cb: LossLandscapeCallback) -> None:
    assert cb.name == "hess" and cb.directions == "hessian" and cb.engine == "loop"
    assert tuple(cb.span) == (-0.5, 1.0) and cb.interpolation_range == (-0.25, 1.25)
    assert cb.snapshot_dtype is torch.bfloat16 and cb.max_overhead is None
    assert cb.metrics["eigenvalues"]["max_iter"] == 4 and cb.metrics["sam"] == {"rho": 0.05}
    assert list(cb.final_metrics) == ["eigenvalues"] and cb.save_weights_dtype is torch.float16
    from helpers.models import ce_loss

    assert cb.loss_fn is ce_loss


def test_lightning_cli_fit_from_yaml(tmp_path) -> None:
    config = _config(tmp_path, "lightning_landscape.LossLandscapeCallback")
    cli = LightningCLI(TinyNet, TinyData, args=["fit", "--config", str(config)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, LossLandscapeCallback)]
    _check_options(cb)
    # It trained and drew hessian-plane landscapes with the configured span and bf16 snapshots.
    surfaces = [r for r in cb.records if r.kind == "surface"]
    assert [r.meta["stage"] for r in surfaces] == ["periodic", "final"]
    assert all(r.meta["directions"] == "hessian" and r.meta["snapshot_dtype"] == "bfloat16" for r in surfaces)
    assert tuple(surfaces[0].meta["span"]) == (-0.5, 1.0)
    assert {r.meta["stage"] for r in cb.records if r.kind == "metrics"} == {"periodic", "final"}
    # The config LightningCLI saved beside the run builds the same callback again.
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert saved["trainer"]["callbacks"][0]["init_args"]["snapshot_dtype"] == "bfloat16"
    saved = {k: saved[k] for k in ("seed_everything", "trainer", "model") if k in saved}  # no `fit` options
    again_path = tmp_path / "in" / "again.yaml"
    again_path.write_text(yaml.safe_dump(saved))
    again = LightningCLI(TinyNet, TinyData, run=False, args=["--config", str(again_path)])
    (cb2,) = [c for c in again.trainer.callbacks if isinstance(c, LossLandscapeCallback)]
    _check_options(cb2)
    assert cb2.state_key == cb.state_key


def test_pytorch_lightning_cli_takes_the_pytorch_lightning_class(tmp_path) -> None:
    import pytorch_lightning
    from pytorch_lightning.cli import LightningCLI as PLLightningCLI
    from pytorch_lightning.demos.boring_classes import BoringDataModule, BoringModel

    config = _config(tmp_path, "lightning_landscape.pytorch_lightning.LossLandscapeCallback")
    cfg = yaml.safe_load(config.read_text())
    del cfg["model"]
    config.write_text(yaml.safe_dump(cfg))
    cli = PLLightningCLI(BoringModel, BoringDataModule, run=False, args=["--config", str(config)])
    assert isinstance(cli.trainer, pytorch_lightning.Trainer)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, LossLandscapeCallback)]
    assert isinstance(cb, pytorch_lightning.Callback)
    _check_options(cb)
    # The plain class is a lightning.pytorch Callback: pytorch_lightning's CLI refuses it (hence the other).
    cfg["trainer"]["callbacks"][0]["class_path"] = "lightning_landscape.LossLandscapeCallback"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        PLLightningCLI(BoringModel, BoringDataModule, run=False, args=["--config", str(config)])


@pytest.mark.parametrize(
    ("given", "expected"),
    [("bfloat16", torch.bfloat16), ("torch.float16", torch.float16), (torch.float64, torch.float64)],
)
def test_snapshot_dtype_by_name(given: Any, expected: torch.dtype) -> None:
    cb = LossLandscapeCallback(snapshot_dtype=given)
    assert cb.snapshot_dtype is expected
    assert cb.state_key == LossLandscapeCallback(snapshot_dtype=expected).state_key


@pytest.mark.parametrize("bad", ["int8", "float", "", torch.int64])
def test_snapshot_dtype_refuses_other_names(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"`snapshot_dtype`.*bfloat16"):
        LossLandscapeCallback(snapshot_dtype=bad)


def test_the_grouped_docstring_still_gives_every_option_its_help() -> None:
    """LightningCLI's help reads the docstring (jsonargparse, docstring-parser): each option keeps its line,
    and the group titles between them are no options."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(LossLandscapeCallback, "cb")
    helps = {
        a.dest[3:]: a.help for a in parser._actions if a.dest.startswith("cb.") and a.dest.count(".") == 1
    }
    lines = re.findall(r"^ {8}(\w+) \(default .+?\): (.+)$", LossLandscapeCallback.__doc__ or "", flags=re.M)
    assert len(lines) == len(helps) == len(inspect.signature(LossLandscapeCallback).parameters)
    assert helps == dict(lines)


DOCUMENTED_LOSS = """
import torch.nn.functional as F


def cross_entropy(model, batch):  # no annotations, as a user writes it
    x, y = batch
    return F.cross_entropy(model(x), y)
"""


def test_the_documented_yaml_with_an_unannotated_loss_fn(tmp_path, monkeypatch) -> None:
    # docs/configuration.md's LightningCLI block, as it is written (issue 21.10)
    import re

    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "my_project.losses" in b]
    documented = yaml.safe_load(block)
    package = tmp_path / "src" / "my_project"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "losses.py").write_text(DOCUMENTED_LOSS)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    config = yaml.safe_load(_config(tmp_path, "unused").read_text())
    config["trainer"]["callbacks"] = documented["trainer"]["callbacks"]  # the documented callback, unchanged
    path = tmp_path / "in" / "documented.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(TinyNet, TinyData, run=False, args=["--config", str(path)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, LossLandscapeCallback)]
    from my_project.losses import cross_entropy

    assert cb.loss_fn is cross_entropy and cb.name == "hessian-plane" and cb.directions == "hessian"
    assert cb.metrics["eigenvalues"]["max_iter"] == 20 and list(cb.final_metrics) == ["eigenvalues", "trace"]
