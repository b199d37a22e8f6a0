"""Which curvature and sharpness scalars the callback computes, with which options (no Lightning here).

A *metrics spec* maps a metric name to the keyword options of its function in
:mod:`lightning_landscape.functional`:

- ``eigenvalues``: :func:`hessian_eigenvalues` with ``which="both"``; ``hessian/lambda_max``,
  ``hessian/lambda_min``, ``hessian/lambda_max_residual``, ``hessian/lambda_min_residual``,
  ``hessian/lanczos_iterations``.
- ``trace``: :func:`hessian_trace`; ``hessian/trace``, ``hessian/trace_stderr``.
- ``sam``: :func:`sam_sharpness`; ``sharpness/sam``, ``sharpness/sam_first_order``,
  ``sharpness/sam_curvature``, ``sharpness/grad_norm``.
- ``average``: :func:`average_sharpness`; ``sharpness/average``, ``sharpness/average_stderr``.
- ``blocks``: :func:`block_curvature`; ``blocks/<block>/lambda_max``, ``blocks/<block>/trace``,
  ``blocks/<block>/trace_stderr`` for each block (top-level child modules unless ``blocks`` is given).
  Not a default: it costs ``max_iter + samples`` restricted products per block.
- ``eos``: :func:`edge_of_stability_ratio` against the training optimizer (passed to
  :func:`compute_metrics` as ``optimizer``); ``eos/ratio``, ``eos/sharpness``, ``eos/threshold``.

Defaults keep the periodic cost modest (see the README's benchmark): every period a 10-step Lanczos
(``tol=1e-3``) and SAM sharpness; at the end of training also the trace (64 probes) and average
sharpness (32 samples), with a 50-step Lanczos. Random probes are seeded with the callback's ``seed``
unless a metric's options give their own, so two runs use the same protocol.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.callback.module_state import UnrestorableStateError
from lightning_landscape.functional import checks as check
from lightning_landscape.functional.curvature.blocks import block_curvature, block_curvature_of
from lightning_landscape.functional.curvature.hessian import (
    hessian_eigenvalues,
    hessian_eigenvalues_of,
    hessian_trace,
    hessian_trace_of,
)
from lightning_landscape.functional.curvature.sharpness import (
    average_sharpness,
    average_sharpness_of,
    sam_sharpness,
    sam_sharpness_of,
)
from lightning_landscape.functional.curvature.stability import (
    edge_of_stability_ratio,
    edge_of_stability_ratio_of,
)
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import Objective

__all__ = [
    "DEFAULT_FINAL_METRICS",
    "DEFAULT_METRICS",
    "METRICS",
    "METRIC_CORES",
    "compute_metrics",
    "compute_metrics_of",
    "resolve_metrics",
]

METRICS: dict[str, Any] = {  # name -> function(model, loss_fn, batches, params=..., **options)
    "eigenvalues": hessian_eigenvalues,
    "trace": hessian_trace,
    "sam": sam_sharpness,
    "average": average_sharpness,
    "blocks": block_curvature,
    "eos": edge_of_stability_ratio,
}
# The same functions' cores, which take an Objective (the options are the same).
METRIC_CORES: dict[str, Any] = {
    "eigenvalues": hessian_eigenvalues_of,
    "trace": hessian_trace_of,
    "sam": sam_sharpness_of,
    "average": average_sharpness_of,
    "blocks": block_curvature_of,
    "eos": edge_of_stability_ratio_of,
}
DEFAULT_METRICS = ("eigenvalues", "sam")
DEFAULT_FINAL_METRICS = ("eigenvalues", "trace", "sam", "average")

_PERIODIC_OPTIONS: dict[str, dict[str, Any]] = {
    "eigenvalues": {"which": "both", "max_iter": 10, "tol": 1e-3},
    "trace": {"samples": 16},
    "sam": {"rho": 0.05},
    "average": {"sigma": 0.01, "samples": 16},
    "blocks": {"max_iter": 10, "tol": 1e-3, "samples": 8},
    "eos": {"max_iter": 20, "tol": 1e-3},
}
_FINAL_OPTIONS: dict[str, dict[str, Any]] = {
    "eigenvalues": {"which": "both", "max_iter": 50, "tol": 1e-4},
    "trace": {"samples": 64},
    "sam": {"rho": 0.05},
    "average": {"sigma": 0.01, "samples": 32},
    "blocks": {"max_iter": 20, "tol": 1e-4, "samples": 16},
    "eos": {"max_iter": 50, "tol": 1e-4},
}
_SEEDED = ("eigenvalues", "trace", "average", "blocks", "eos")
_SHARDED = ("trace", "average")  # independent samples: shared out among data-parallel processes
_RESERVED = {"model", "loss_fn", "batches", "params", "return_eigenvectors", "shard", "optimizer"}

# How each option is checked at construction, so a bad value is refused there and not deep inside `fit`.
_OPTION_CHECKS: dict[str, Any] = {
    "k": lambda n, v: check.positive_int(n, v),
    "which": lambda n, v: check.choice(n, v, ("largest", "smallest", "both")),
    "max_iter": lambda n, v: check.positive_int(n, v),
    "tol": lambda n, v: check.positive_number(n, v),
    "seed": lambda n, v: check.integer(n, v),
    "reuse_graph": lambda n, v: check.boolean(n, v),
    "samples": lambda n, v: check.positive_int(n, v, minimum=2),
    "rho": lambda n, v: check.positive_number(n, v),
    "sigma": lambda n, v: check.positive_number(n, v),
    "adaptive": lambda n, v: check.boolean(n, v),
}


def resolve_metrics(
    spec: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None,
    final: bool,
    seed: int,
    argument: str = "metrics",
) -> dict[str, dict[str, Any]]:
    """Validate a spec (names, or names -> options) and fill in the default options and the seed.

    Raises ``ValueError`` naming ``argument`` for an unknown metric or option.

    Example::

        >>> resolve_metrics(("sam",), final=False, seed=3)
        {'sam': {'rho': 0.05}}
        >>> resolve_metrics({"trace": {"samples": 8}}, final=True, seed=3)
        {'trace': {'samples': 8, 'seed': 3}}
    """
    if spec is None:
        return {}
    if isinstance(spec, str) or not isinstance(spec, (Sequence, Mapping)):
        raise ValueError(
            f"`{argument}` must be a sequence of metric names or a mapping name -> options, got {spec!r}"
        )
    items = spec.items() if isinstance(spec, Mapping) else ((name, None) for name in spec)
    defaults = _FINAL_OPTIONS if final else _PERIODIC_OPTIONS
    out: dict[str, dict[str, Any]] = {}
    for name, options in items:
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"`{argument}`: unknown metric {name!r}; choose from {sorted(METRICS)}")
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"`{argument}`[{name!r}] must be a mapping of options, got {options!r}")
        accepted = set(inspect.signature(METRICS[name]).parameters) - _RESERVED
        unknown = sorted(set(options or {}) - accepted)
        if unknown:
            raise ValueError(
                f"`{argument}`[{name!r}]: unknown option(s) {unknown}; {name} accepts {sorted(accepted)}"
            )
        merged = {**defaults[name], **(options or {})}
        for option, value in merged.items():
            checker = _OPTION_CHECKS.get(option)
            if checker is None:  # a new option of the function, not yet known here: let it check
                continue
            try:
                checker(option, value)
            except ValueError as err:
                raise ValueError(f"`{argument}`[{name!r}]: {err}") from None
        if name in _SEEDED:
            merged.setdefault("seed", seed)
        out[name] = merged
    return out


def _finite_eigenvalues(result: Any) -> bool:
    """Whether a Lanczos result's eigenvalues are all finite (only then are its vectors a start)."""
    return bool(np.isfinite(np.asarray(result.eigenvalues, dtype=float)).all())


def compute_metrics(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    spec: Mapping[str, Mapping[str, Any]],
    shard: PointShard | None = None,
    optimizer: Any = None,
) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """Run each metric of ``spec``; return ``(scalars, meta, errors)``.

    With ``shard``, the metrics made of independent samples (``trace``'s probes, ``average``'s
    perturbations) are shared out among the processes; every process gets the same result. The
    others (Lanczos, SAM) are computed whole on each process. Every process must call this with the
    same ``spec``: the shared metrics use collectives.

    ``scalars`` maps names such as ``hessian/lambda_max`` to floats; ``meta[name]`` holds each
    metric's options and result metadata (seeds, iterations, probe size, seconds). A metric that
    raises is left out of ``scalars`` and reported in ``errors`` (name -> message); the others still run.
    ``optimizer`` (the training optimizer) is what ``eos`` reads its learning rate and momentum from.
    """
    return compute_metrics_of(Objective(model, loss_fn, batches, params, shard=shard), spec, optimizer)


def compute_metrics_of(
    objective: Objective,
    spec: Mapping[str, Mapping[str, Any]],
    optimizer: Any = None,
    shards: ShardLayout | None = None,
    warm: dict[str, list[Tensor]] | None = None,
) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """:func:`compute_metrics` of a landscape's ``objective``: every metric with its probe batches and
    parameters, the default engine and the current BatchNorm statistics; its ``shard`` only for the
    metrics made of independent samples. With ``shards`` (the objective's parameters are this rank's slices
    of a sharded model), every metric runs through the same core with ``layout=shards``: Hessian-vector
    products by gradient differences on the slices
    (:mod:`lightning_landscape.functional.curvature.sharded`), and every rank takes part in every
    product and forward pass (nothing is shared out).

    ``warm`` (the callback's, kept from one landscape to the next): ``eigenvalues`` starts Lanczos from the
    sum of the Ritz vectors it found last time (``warm["eigenvalues"]``, when shaped like the parameters)
    and leaves this time's there. The Hessian changes little between landscapes, so a few Lanczos steps
    go much further from there than from a random vector (docs/curvature.md, "Warm starts")."""
    plain = objective.replace(bn="keep", engine="auto", chunk_size=None, shard=None, metric_fn=None)
    scalars: dict[str, float] = {}
    meta: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, options in spec.items():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                shared = name in _SHARDED and objective.shard is not None and shards is None
                extra: dict[str, Any] = {}
                if name == "eos":
                    if optimizer is None:
                        raise ValueError("the edge-of-stability ratio needs the training optimizer")
                    extra["optimizer"] = optimizer
                if shards is not None:
                    extra["layout"] = shards
                if name == "eigenvalues" and warm is not None:
                    extra["return_eigenvectors"] = True
                    start = warm.get("eigenvalues")
                    if start is not None and [t.shape for t in start] == [p.shape for p in plain.params]:
                        extra["start"] = start
                target = plain.replace(shard=objective.shard) if shared else plain
                result = METRIC_CORES[name](target, **options, **extra)
        except UnrestorableStateError:
            raise  # not this metric's failure: the module cannot be observed any more (the caller says why)
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        if name == "eigenvalues" and warm is not None:
            vectors = result.eigenvectors or []
            if vectors and _finite_eigenvalues(result):
                warm["eigenvalues"] = [torch.stack(parts).sum(0) for parts in zip(*vectors)]
            result.eigenvectors = None  # not kept in the record
        values = result.scalars()
        scalars.update(values)
        meta[name] = {**options, **result.meta}
        notes = [str(w.message) for w in caught]
        if notes:
            meta[name]["warnings"] = notes
        if any(not math.isfinite(v) for v in values.values()):
            errors[name] = "; ".join(notes) or "a non-finite value"
    return scalars, meta, errors
