"""Shared fixtures. Models, data and reference helpers live in ``tests/helpers/``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

# The test models are tiny: one intra-op thread is as fast, and immune to the oversubscription slow-downs
# (10x seen) that two threads suffer when other processes share the two cores.
torch.set_num_threads(1)


@pytest.fixture
def trainer_kwargs(tmp_path: Any) -> dict[str, Any]:
    """Quiet, small, CPU Trainer settings rooted in ``tmp_path``."""
    return {
        "default_root_dir": str(tmp_path),
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_train_batches": 4,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "deterministic": True,
        "log_every_n_steps": 1,
    }
