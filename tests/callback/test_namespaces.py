"""Both Lightning namespaces work end to end: ``lightning.pytorch`` and ``pytorch_lightning`` (issue 11.3).

A ``pytorch_lightning`` run must produce the same records as a ``lightning.pytorch`` one, array for
array; SAM must find the LightningModule in either namespace's closure; DDP works under both.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.models import loader
from helpers.namespaces import NAMESPACES, callback_class, namespace, tiny_net_class
from lightning.fabric.utilities.exceptions import MisconfigurationException

import lightning_landscape
from lightning_landscape import load_records
from lightning_landscape.callback.distributed import check_strategy

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}
# (namespace of the Trainer, class of the callback): the plain class is a lightning.pytorch Callback,
# which a pytorch_lightning Trainer runs as well; the pytorch_lightning one is also that namespace's Callback.
CASES = [
    ("lightning.pytorch", "lightning.pytorch"),
    ("pytorch_lightning", "lightning.pytorch"),
    ("pytorch_lightning", "pytorch_lightning"),
]


@pytest.mark.parametrize("name", NAMESPACES)
def test_strategy_check_knows_both_namespaces(name: str) -> None:
    strategies = namespace(name).strategies
    check_strategy(strategies.SingleDeviceStrategy(device=torch.device("cpu")))
    check_strategy(strategies.DDPStrategy())
    for cls in (strategies.FSDPStrategy, strategies.DeepSpeedStrategy):
        with pytest.raises(MisconfigurationException, match=cls.__name__):
            check_strategy(cls.__new__(cls))
    other = type("OtherParallel", (strategies.ParallelStrategy,), {})  # neither single-device nor DDP
    other.__abstractmethods__ = frozenset()
    with pytest.raises(MisconfigurationException, match="Supported"):
        check_strategy(other.__new__(other))


def test_the_pytorch_lightning_class_is_both_callbacks() -> None:
    import lightning.pytorch
    import pytorch_lightning

    from lightning_landscape.pytorch_lightning import LossLandscapeCallback as PLCallback

    cb = PLCallback(name="x")
    assert isinstance(cb, pytorch_lightning.Callback) and isinstance(cb, lightning.pytorch.Callback)
    assert isinstance(cb, lightning_landscape.LossLandscapeCallback)
    # The same state key in both namespaces: a checkpoint written under one resumes under the other.
    assert cb.state_key == lightning_landscape.LossLandscapeCallback(name="x").state_key


def _fit(tmp_path: Path, trainer_ns: str, callback_ns: str, sam: bool = False, **cb_kwargs: Any):
    pl = namespace(trainer_ns)
    pl.seed_everything(0)
    model = tiny_net_class(trainer_ns)(sam=sam)
    callbacks = [callback_class(callback_ns)(max_overhead=None, **SMALL, **cb_kwargs)] if not sam else []
    root = tmp_path / f"{trainer_ns}-{callback_ns}-{sam}"
    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=pl.loggers.CSVLogger(str(root), name="csv", version=0),
        log_every_n_steps=1,
        deterministic=True,
        callbacks=callbacks,
    )
    trainer.fit(model, loader(48, 8, shuffle=True, generator=torch.Generator().manual_seed(1)))
    return trainer, model, callbacks


def _csv(trainer: Any) -> dict[tuple[str, str], str]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as fh:
        return {(r["step"], k): v for r in csv.DictReader(fh) for k, v in r.items() if v}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: Any) -> tuple[Any, Any, list]:
    return _fit(tmp_path_factory.mktemp("reference"), "lightning.pytorch", "lightning.pytorch")


@pytest.mark.parametrize(("trainer_ns", "callback_ns"), CASES[1:], ids=["base-class", "pl-class"])
def test_pytorch_lightning_run_gives_the_same_records(tmp_path, reference, trainer_ns, callback_ns) -> None:
    ref_trainer, ref_model, (ref_cb,) = reference
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no landscape may fail or be skipped
        trainer, model, (cb,) = _fit(tmp_path, trainer_ns, callback_ns)
    assert type(trainer).__module__.startswith(trainer_ns)
    names = [r.meta["name"] for r in cb.records]
    assert names == [r.meta["name"] for r in ref_cb.records] and len(names) == 11 + 3 * 3  # + reliability
    for ours, theirs in zip(cb.records, ref_cb.records):
        assert ours.arrays().keys() == theirs.arrays().keys()
        for key, arr in theirs.arrays().items():
            np.testing.assert_array_equal(ours.arrays()[key], arr, err_msg=f"{ours.meta['name']}: {key}")
    # Saved records and every logged value (the user's and the landscape scalars) agree as well.
    saved = load_records(Path(trainer.log_dir))
    assert sorted(r.meta["name"] for r in saved) == sorted(names)
    assert _csv(trainer) == _csv(ref_trainer)
    assert any(k.startswith("landscape/") for _, k in _csv(trainer))
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMESPACES)
def test_sam_finds_the_module_in_either_namespace(tmp_path, name) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not find the model.*")
        _, model, _ = _fit(tmp_path, name, name, sam=True)
    # BatchNorm statistics come from the first pass only, so 8 steps count 8 batches (not 16).
    assert int(model.net[1].num_batches_tracked) == 8
    if name != "lightning.pytorch":
        _, ref, _ = _fit(tmp_path / "ref", "lightning.pytorch", "lightning.pytorch", sam=True)
        for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
            assert torch.equal(a, b)


def _ddp(out: Path, name: str, mode: str) -> dict[int, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "helpers" / "ddp_namespace_run.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(out), name, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


@pytest.mark.slow
def test_ddp_gives_the_same_records_under_both_namespaces(tmp_path) -> None:
    """Two-process DDP (sharded grid, broadcast probe, all-gathers) under each namespace, array for array.

    That DDP equals one process is tests/callback/test_distributed.py's business (for lightning.pytorch).
    """
    runs = {}
    for name in NAMESPACES:
        ranks = _ddp(tmp_path / name, name, "ddp")
        assert sorted(ranks) == [0, 1] and all(r["global_step"] == 16 for r in ranks.values())
        assert ranks[0]["strategy"] == f"{name}.strategies.ddp.DDPStrategy"
        assert ranks[0]["records"] == ranks[1]["records"] == 9 and ranks[1]["written"] == []
        assert all(r["outs"] == 0 for r in ranks.values())  # the module's own list, emptied by its epoch end
        runs[name] = load_records(tmp_path / name)
        assert sorted(r.meta["name"] for r in runs[name]) == sorted(ranks[0]["written"])
    ours, theirs = runs["pytorch_lightning"], runs["lightning.pytorch"]
    assert [r.meta["name"] for r in ours] == [r.meta["name"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a.meta.get("world_size", 2) == b.meta.get("world_size", 2) == 2  # metrics: no world_size
        for key, arr in b.arrays().items():
            np.testing.assert_array_equal(a.arrays()[key], arr, err_msg=f"{a.meta['name']}: {key}")
