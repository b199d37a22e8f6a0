"""Every constructor argument, wrong: a ValueError at construction naming it, or a fit that completes."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers.models import TinyNet, loader

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.functional.checks import grid_fits_memory

BAD_METRIC_SPECS = [
    "sam", 5, [3], {"bogus": None}, {"sam": 3}, {"sam": {"bogus": 1}},
    {"eigenvalues": {"max_iter": None}}, {"eigenvalues": {"max_iter": 0}}, {"eigenvalues": {"tol": -1}},
    {"eigenvalues": {"which": "middle"}}, {"eigenvalues": {"seed": 1.5}}, {"trace": {"samples": "many"}},
    {"sam": {"rho": "big"}}, {"average": {"sigma": 0}}, {"sam": {"adaptive": "yes"}},
]  # fmt: skip

# argument -> wrong values refused at construction (the message must name the argument).
REFUSED: dict[str, list[Any]] = {
    "every_n_epochs": [0, 1.5, "1", True],
    "resolution": [4, 1, 5.0, "11", None, 10001],
    "final_resolution": [8, None, 20001],
    "line_resolution": [2, 4, "41"],
    "directions": ["bogus", None, "PCA"],
    "span": [-1, (1, 0), "wide", (0, 1), math.nan, True, (-1, "a")],
    "margin": [-1, 10, "0.2", None],
    "num_batches": [0, -1, 2.0, None],
    "probe_dataloader": [3, "abc"],
    "loss_fn": [3, "ce"],
    "snapshot_every_n_steps": [0, 1.5, "10"],
    "snapshot_every_n_epochs": [0, -2],
    "max_snapshots": [1, 2.5, None],
    "seed": ["a", 1.5, None, True],
    "include_1d": ["yes", 1, None],
    "interpolation_range": [(1, 0), (0, 1, 2), ("a", "b"), None, (0, math.inf)],
    "final": ["no", None, 0],
    "save_records": ["yes", None],
    "log_figures": ["false"],
    "name": ["", "..", ".", "a/b", 3],
    "snapshot_dtype": [torch.int32, "float31", 32],
    "snapshot_budget_bytes": [0, -5, 1.5, "1000"],
    "snapshot_storage": ["disk", None],
    "metrics": BAD_METRIC_SPECS,
    "final_metrics": [{"trace": {"samples": "many"}}, {"average": {"samples": 1}}, {"eigenvalues": {"k": 0}}],
    "engine": ["gpu", None],
    "max_overhead": [0, -0.1, math.nan, math.inf, "0.1", True],
    "budget_final": ["yes", None],
    "save_weights": ["yes", None, 1],
    "save_weights_dtype": [torch.int32, "int8", 16],
    "save_weights_max_bytes": [0, -1, 1.5, "10", True],
    "bn": ["bogus", None, "Keep"],
    "metric_fn": [3, "accuracy"],
    "metric_name": ["", 3, None],
    "reliability": ["yes", 3, None, {"bogus": 1}, {"directions": -1}, {"min_on_plane_share": 2.0}],
    "pca_centred": ["yes", None, 1],
    "critical_sharpness": [0, -1, 1.5, "10", True],
    "critical_probe": ["loader", (3, lambda m, b: b), ([1], "ce"), ([1],), ([1], print, 3)],
}
CASES = [(arg, value) for arg, values in REFUSED.items() for value in values]


def test_the_table_covers_every_argument():
    assert set(REFUSED) == set(inspect.signature(LossLandscapeCallback).parameters)


@pytest.mark.parametrize(("arg", "value"), CASES, ids=[f"{a}={v!r}"[:60] for a, v in CASES])
def test_wrong_values_are_refused_at_construction_naming_the_argument(arg, value):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        LossLandscapeCallback(**{arg: value})


def test_conflicting_snapshot_cadences_are_refused():
    with pytest.raises(ValueError, match="`snapshot_every_n_steps` and `snapshot_every_n_epochs`"):
        LossLandscapeCallback(snapshot_every_n_steps=5, snapshot_every_n_epochs=1)
    cb = LossLandscapeCallback(snapshot_every_n_epochs=2)
    assert (cb.snapshot_every_n_steps, cb.snapshot_every_n_epochs) == (None, 2)
    assert LossLandscapeCallback().snapshot_every_n_steps == 10


def test_a_grid_that_cannot_fit_in_memory_says_how_much_it_needs():
    with pytest.raises(ValueError, match=r"`resolution`=10001 .* 100,020,001 points.* GiB"):
        grid_fits_memory("resolution", 10001, 4, memory=lambda: 64 * 2**30)
    assert grid_fits_memory("resolution", 101, 4, memory=lambda: 64 * 2**30) == 101


SMALL = {"resolution": 3, "final_resolution": 3, "line_resolution": 3, "num_batches": 2, "log_figures": False}

# Accepted at construction, odd at run time: the fit must complete (warnings allowed).
ODD: dict[str, dict[str, Any]] = {
    "huge span": {"span": 1e30},
    "huge max_snapshots": {"max_snapshots": 10**13},
    "empty probe loader": {"probe_dataloader": []},
    "loss_fn returning a string": {"loss_fn": lambda model, batch: "not a loss"},
    "huge rho": {"metrics": {"sam": {"rho": 1e30}}, "final_metrics": {"average": {"sigma": 1e30}}},
    "many probe batches": {"num_batches": 10**6},
    "huge cadences": {"every_n_epochs": 10**9, "snapshot_every_n_steps": 10**9},
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_but_valid_values_never_stop_training(trainer_kwargs, case):
    pl.seed_everything(0)
    kwargs = {"metrics": None, "final_metrics": None, "max_overhead": None, **SMALL, **ODD[case]}
    cb = LossLandscapeCallback(**kwargs)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyNet(), loader(32, 8))
    assert trainer.global_step == 8 and trainer.state.finished
