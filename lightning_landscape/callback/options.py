"""The callback's options: each constructor argument checked and normalised, and the one list of settings.

:class:`CallbackOptions` is a base of :class:`~lightning_landscape.LossLandscapeCallback`: it declares
the options as typed attributes and checks them in one place (a ``ValueError`` naming the argument, see
:mod:`._validation`). :data:`SETTINGS` says which options make the ``state_key``; the loggers' settings
text shows them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import torch

from lightning_landscape.callback.indicators import Indicators
from lightning_landscape.callback.metrics import DEFAULT_FINAL_METRICS, DEFAULT_METRICS, resolve_metrics
from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.landscape.surface import Engine

__all__ = ["SETTINGS", "CallbackOptions", "MetricSpec", "UserFn"]

_SNAPSHOT_DTYPES = (None, torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in _SNAPSHOT_DTYPES if d is not None}  # from YAML
MetricSpec = Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None
# ``loss_fn`` / ``metric_fn`` as the constructor types them: ``f(model, batch) -> scalar tensor``, typed as
# any callable so that LightningCLI (jsonargparse) takes a function without annotations from a config file.
UserFn = Callable[..., Any]

# The one list of settings: (attribute, part of state_key). The state_key takes those that shape the
# checkpointed state or the records (not the output switches); the loggers' settings text shows them all.
# Its order is not the constructor's groups: the state_key is built in this order, and checkpoints carry it.
# New settings go at the end and out of the state_key (a new key would orphan every checkpoint's state).
SETTINGS = (
    *[(n, True) for n in ("name", "every_n_epochs", "directions", "seed", "include_1d", "resolution")],
    *[(n, True) for n in ("final_resolution", "line_resolution", "span", "margin", "num_batches")],
    *[(n, True) for n in ("interpolation_range", "snapshot_every_n_steps", "snapshot_every_n_epochs")],
    *[(n, True) for n in ("max_snapshots", "snapshot_dtype", "snapshot_budget_bytes", "snapshot_storage")],
    ("max_overhead", True), ("budget_final", False), ("final", False), ("probe_dataloader", False),
    ("loss_fn", False), ("metrics", False), ("final_metrics", False), ("engine", False),
    ("save_weights", False),
    ("bn", False), ("metric_name", False), ("reliability", False), ("pca_centred", False),
    ("critical_sharpness", False), ("critical_probe", False), ("sharded_hessian", False),
)  # fmt: skip


def _dtype(name: str, value: Any) -> torch.dtype | None:
    """A storage dtype: a ``torch.dtype`` or its name, as a config file gives it (``"bfloat16"``)."""
    if isinstance(value, str):
        value = _DTYPE_NAMES.get(value.removeprefix("torch."), value)
    return check.choice(name, value, _SNAPSHOT_DTYPES)


class CallbackOptions:
    """The options of :class:`~lightning_landscape.LossLandscapeCallback`, checked (see its docstring).

    Example::

        >>> from lightning_landscape import LossLandscapeCallback
        >>> cb = LossLandscapeCallback(snapshot_dtype="bfloat16", resolution=5)
        >>> cb.snapshot_dtype, cb.resolution, cb.snapshot_every_n_steps
        (torch.bfloat16, 5, 10)
        >>> LossLandscapeCallback(resolution=4)
        Traceback (most recent call last):
        ...
        ValueError: `resolution` must be an odd integer >= 3 (so the grid contains its centre), got 4
    """

    # what to draw
    directions: str
    span: float | tuple[float, float] | None
    margin: float
    resolution: int
    final_resolution: int
    line_resolution: int
    interpolation_range: tuple[float, float]
    include_1d: bool
    pca_centred: bool
    bn: str
    seed: int
    # when
    every_n_epochs: int | None
    final: bool
    # on what data
    num_batches: int
    probe_dataloader: Iterable[Any] | None
    loss_fn: LossFn | None
    metric_fn: LossFn | None
    metric_name: str
    engine: Engine
    # which metrics
    metrics: dict[str, dict[str, Any]]
    final_metrics: dict[str, dict[str, Any]]
    reliability: bool | Mapping[str, Any]
    critical_sharpness: int | None
    critical_probe: tuple[Iterable[Any], LossFn] | None
    sharded_hessian: Literal["exact", "difference"]
    # the budget
    max_overhead: float | None
    budget_final: bool | Literal["auto"]
    _explicit_sizes: frozenset[str]  # the size options given (the budget keeps them as they are)
    # snapshots and storage
    snapshot_every_n_steps: int | None
    snapshot_every_n_epochs: int | None
    max_snapshots: int
    snapshot_dtype: torch.dtype | None
    snapshot_budget_bytes: int | None
    snapshot_storage: str
    name: str | None
    save_records: bool
    log_figures: bool
    # saving weights
    save_weights: bool
    save_weights_dtype: torch.dtype | None
    save_weights_max_bytes: int | None

    def _set_options(self, arguments: Mapping[str, Any]) -> Indicators:
        """Check the constructor's ``arguments`` (every one, by name) group by group, in the order of the
        signature, and keep them as attributes; returns the reliability indicators."""
        a = arguments
        # what to draw
        self.directions = check.choice("directions", a["directions"], ("pca", "random", "hessian"))
        check.span_pair("span", a["span"])
        self.span = a["span"]
        self.margin = check.number("margin", a["margin"], 0, 10)
        # None: the default size, which the budget may reduce on a short run (a size given is kept)
        self.resolution = check.odd_int("resolution", 11 if a["resolution"] is None else a["resolution"])
        final_resolution = 31 if a["final_resolution"] is None else a["final_resolution"]
        self.final_resolution = check.odd_int("final_resolution", final_resolution)
        given = {
            "resolution": a["resolution"] is not None,
            "final_resolution": a["final_resolution"] is not None,
            "metrics": a["metrics"] is not DEFAULT_METRICS,
            "final_metrics": a["final_metrics"] is not DEFAULT_FINAL_METRICS,
        }
        self._explicit_sizes = frozenset(k for k, v in given.items() if v)
        self.line_resolution = check.odd_int("line_resolution", a["line_resolution"])
        self.interpolation_range = check.value_range("interpolation_range", a["interpolation_range"])
        self.include_1d = check.boolean("include_1d", a["include_1d"])
        self.pca_centred = check.boolean("pca_centred", a["pca_centred"])
        self.bn = check.choice("bn", a["bn"], ("interpolate", "keep", "recompute"))
        self.seed = check.integer("seed", a["seed"])
        # when
        self.every_n_epochs = check.positive_int("every_n_epochs", a["every_n_epochs"], allow_none=True)
        self.final = check.boolean("final", a["final"])
        # on what data
        self.num_batches = check.positive_int("num_batches", a["num_batches"])
        for arg in ("resolution", "final_resolution"):
            check.grid_fits_memory(arg, getattr(self, arg), self.num_batches)
        self.probe_dataloader = check.iterable_arg("probe_dataloader", a["probe_dataloader"])
        self.loss_fn = check.callable_arg("loss_fn", a["loss_fn"], "loss_fn(model, batch)")
        self.metric_fn = check.callable_arg("metric_fn", a["metric_fn"], "metric_fn(model, batch)")
        if not isinstance(a["metric_name"], str) or not a["metric_name"]:
            raise ValueError(f"`metric_name` must be a non-empty string, got {a['metric_name']!r}")
        self.metric_name = a["metric_name"]
        self.engine = cast(Engine, check.choice("engine", a["engine"], ("auto", "loop", "vmap", "compile")))
        # which metrics
        self.metrics = resolve_metrics(a["metrics"], final=False, seed=self.seed, argument="metrics")
        self.final_metrics = resolve_metrics(
            a["final_metrics"], final=True, seed=self.seed, argument="final_metrics"
        )
        self.reliability = a["reliability"]
        indicators = Indicators(a["reliability"])
        every = a["critical_sharpness"]  # the pair is checked with it by CriticalSharpnessMonitor
        self.critical_sharpness = check.positive_int("critical_sharpness", every, allow_none=True)
        self.critical_probe = a["critical_probe"]
        self.sharded_hessian = check.choice("sharded_hessian", a["sharded_hessian"], ("exact", "difference"))
        # the budget
        self.max_overhead = check.positive_number("max_overhead", a["max_overhead"], allow_none=True)
        budget_final = a["budget_final"]
        if not isinstance(budget_final, bool):  # True, False or "auto" (not 1, not "yes")
            budget_final = check.choice("budget_final", budget_final, ("auto",))
        self.budget_final = budget_final
        # snapshots and storage
        self._set_cadence(a["snapshot_every_n_steps"], a["snapshot_every_n_epochs"], a["max_snapshots"])
        self.snapshot_dtype = _dtype("snapshot_dtype", a["snapshot_dtype"])
        budget = a["snapshot_budget_bytes"]
        self.snapshot_budget_bytes = check.positive_int("snapshot_budget_bytes", budget, allow_none=True)
        storage = a["snapshot_storage"]
        self.snapshot_storage = check.choice("snapshot_storage", storage, ("auto", "memory", "memmap"))
        self.name = check.name_arg("name", a["name"])
        self.save_records = check.boolean("save_records", a["save_records"])
        self.log_figures = check.boolean("log_figures", a["log_figures"])
        # saving weights
        self.save_weights = check.boolean("save_weights", a["save_weights"])
        self.save_weights_dtype = _dtype("save_weights_dtype", a["save_weights_dtype"])
        limit = a["save_weights_max_bytes"]
        self.save_weights_max_bytes = check.positive_int("save_weights_max_bytes", limit, allow_none=True)
        return indicators

    def _set_cadence(self, every_n_steps: Any, every_n_epochs: Any, max_snapshots: Any) -> None:
        """The snapshot cadence: in steps (10 by default) or in epochs, not both."""
        check.positive_int("snapshot_every_n_steps", every_n_steps, allow_none=True)
        check.positive_int("snapshot_every_n_epochs", every_n_epochs, allow_none=True)
        if every_n_steps is not None and every_n_epochs is not None:
            raise ValueError(
                "`snapshot_every_n_steps` and `snapshot_every_n_epochs` are both set "
                f"({every_n_steps} and {every_n_epochs}); choose one cadence"
            )
        self.snapshot_every_n_steps = (
            10 if every_n_steps is None and every_n_epochs is None else every_n_steps
        )
        self.snapshot_every_n_epochs = every_n_epochs
        self.max_snapshots = check.positive_int("max_snapshots", max_snapshots, minimum=2)

    def _setting_values(self, keyed: bool = False) -> dict[str, Any]:
        """The settings from the one list: all of them, or those in ``state_key`` (``keyed``)."""
        if keyed:
            raw = {n: getattr(self, n) for n, in_key in SETTINGS if in_key}
            return {**raw, "snapshot_dtype": str(self.snapshot_dtype)}
        return {n: getattr(self, n) for n, _ in SETTINGS}
