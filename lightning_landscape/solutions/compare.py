"""Compare two runs as solutions: one plane through both, and the barrier between them.

:func:`compare_solutions` reads two runs' saved weights (:mod:`lightning_landscape.solutions.weights`),
checks that they start from the same initialization, and computes

- the loss on the plane through the common initial weights and both final weights, with both runs'
  trajectories projected on it (:func:`~lightning_landscape.functional.shared_plane_surface`), and
- the loss along the straight line between the two final weights (linear mode connectivity), with
  BatchNorm statistics re-estimated at every point and, for comparison, the naive curve with
  interpolated statistics (:func:`~lightning_landscape.functional.solutions.barrier`).

The records are written with :func:`save_record` as ``shared_plane``, ``barrier`` and
``barrier_naive`` (``.npz`` + ``.json``), all with meta ``stage="shared"``, into ``out_dir``: by
default :func:`default_shared_dir`, a folder beside the two runs (not inside either, so each run
directory still holds one run's records).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_landscape.records.identity import is_landscape_folder
from lightning_landscape.records.record import LineRecord, SurfaceRecord, load_records, save_record
from lightning_landscape.solutions.weights import RunWeights, find_run_weights, load_run_weights

if TYPE_CHECKING:  # torch loads on first use: reading the records back (the CLI) does not need it
    from torch import Tensor, nn

    from lightning_landscape.functional.landscape.bn import BNMode
    from lightning_landscape.functional.landscape.engine import Engine
    from lightning_landscape.functional.landscape.params import LossFn

__all__ = ["SolutionComparison", "compare_solutions", "default_shared_dir", "load_solutions", "run_labels"]

SHARED_PLANE, BARRIER, NAIVE_BARRIER = "shared_plane", "barrier", "barrier_naive"
RunLike = str | os.PathLike | RunWeights


@dataclass
class SolutionComparison:
    """What :func:`compare_solutions` computed (and where it wrote it, if it did).

    Attributes:
        surface: the shared plane (meta ``points``, ``point_labels``, ``point_losses``, ``run_labels``);
            ``None`` when not asked for (``shared_plane=False``).
        barrier: the line between the final weights with statistics re-estimated (meta ``barrier``).
        naive_barrier: the same line with interpolated statistics; ``None`` without BatchNorm buffers
            (the two curves are then the same).
        directory: the folder the records were written to, or ``None``.
    """

    surface: SurfaceRecord | None
    barrier: LineRecord
    naive_barrier: LineRecord | None
    directory: Path | None

    def records(self) -> list[SurfaceRecord | LineRecord]:
        """The records, in the order written."""
        return [r for r in (self.surface, self.barrier, self.naive_barrier) if r is not None]

    def summary(self) -> dict[str, float]:
        """The figures to tabulate: barrier heights, endpoint and point losses, distances.

        Example::

            >>> line = LineRecord(np.linspace(0, 1, 3), np.array([0.1, 0.5, 0.2]),
            ...                   {"barrier": 0.35, "barrier_alpha": 0.5, "distance": 2.0})
            >>> SolutionComparison(None, line, None, None).summary()["barrier"]
            0.35
        """
        out: dict[str, float] = {}
        for key, rec in (("barrier", self.barrier), ("barrier_naive", self.naive_barrier)):
            if rec is not None:
                out[key] = float(rec.meta.get("barrier", np.nan))
                out[f"{key}_alpha"] = float(rec.meta.get("barrier_alpha", np.nan))
        out["loss_A"], out["loss_B"] = (float(x) for x in self.barrier.losses[[0, -1]])
        out["distance_A_B"] = float(self.barrier.meta.get("distance", np.nan))
        if self.surface is not None:
            meta = self.surface.meta
            points, losses = np.asarray(meta["points"], float), np.asarray(meta["point_losses"], float)
            out["loss_init"] = float(losses[0])
            out["distance_init_A"] = float(np.linalg.norm(points[1] - points[0]))
            out["distance_init_B"] = float(np.linalg.norm(points[2] - points[0]))
            far = [np.max(d) for d in meta.get("path_distances") or [] if d is not None and len(d)]
            if far:
                out["path_off_plane_max"] = float(max(far))
        return out


def load_solutions(directory: str | os.PathLike) -> SolutionComparison:
    """Read back what :func:`compare_solutions` wrote into ``directory`` (a ValueError if it holds none)."""
    found = {r.meta.get("name"): r for r in load_records(directory) if r.meta.get("stage") == "shared"}
    line = found.get(BARRIER)
    if not isinstance(line, LineRecord):
        raise ValueError(f"{directory}: no `{BARRIER}` record of compare_solutions here")
    surface, naive = found.get(SHARED_PLANE), found.get(NAIVE_BARRIER)
    return SolutionComparison(
        surface=surface if isinstance(surface, SurfaceRecord) else None,
        barrier=line,
        naive_barrier=naive if isinstance(naive, LineRecord) else None,
        directory=Path(directory),
    )


def _log_dir(folder: Path) -> Path:
    """The run's log directory: the parent of the ``landscape`` (or ``landscape-N``) folder above ``folder``
    (else its parent)."""
    for parent in folder.resolve().parents:
        if is_landscape_folder(parent.name):
            return parent.parent
    return folder.resolve().parent


def _folder(run: RunLike) -> Path:
    return run.directory if isinstance(run, RunWeights) else find_run_weights(run)


def run_labels(run_a: RunLike, run_b: RunLike) -> tuple[str, str]:
    """Short names of two runs: their log directories' paths below the common parent, without the
    trailing folders they share (``logs/sgd/version_0`` and ``logs/sam/version_0`` give ``sgd``, ``sam``).

    A label stored in the weights' meta (``meta["label"]``) wins; runs in one log directory (two named
    callbacks) are told apart by the callback's folder name.
    """
    return _labels_and_tail(run_a, run_b)[0]


def _labels_and_tail(run_a: RunLike, run_b: RunLike) -> tuple[tuple[str, str], list[str]]:
    """:func:`run_labels` and the trailing folders both runs share (``["version_0"]`` above)."""
    folders = [_folder(r) for r in (run_a, run_b)]
    logs = [_log_dir(f) for f in folders]
    common = Path(os.path.commonpath([str(p) for p in logs]))
    parts = [list(log.relative_to(common).parts) for log in logs]
    tail: list[str] = []
    while all(len(p) > 1 for p in parts) and parts[0][-1] == parts[1][-1]:  # sgd/version_0, sam/version_0
        tail.insert(0, parts[0][-1])
        parts = [p[:-1] for p in parts]
    labels = []
    for run, folder, log, rel in zip((run_a, run_b), folders, logs, parts):
        label = run.meta.get("label") if isinstance(run, RunWeights) else None
        if not label:
            label = "/".join(rel)
            callback = folder.resolve().parent.name
            if not is_landscape_folder(callback) and (not label or logs[0] == logs[1]):
                label = f"{label}/{callback}" if label else callback
        labels.append(str(label) or log.name)
    if labels[0] == labels[1]:
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]
    return (labels[0], labels[1]), tail


def default_shared_dir(run_a: RunLike, run_b: RunLike) -> Path:
    """Where :func:`compare_solutions` writes by default: ``<common parent>/shared_<A>_vs_<B>[_<tail>]/``.

    ``<common parent>`` is the deepest folder holding both runs' log directories, ``<A>``, ``<B>`` their
    :func:`run_labels` and ``<tail>`` the trailing folders they share (so that pairs of seeds or
    versions do not overwrite each other), with every character other than letters, digits, ``.``,
    ``_``, ``-`` replaced by ``-``: ``logs/sgd/seed0`` and ``logs/sam/seed0`` give
    ``logs/shared_sgd_vs_sam_seed0/``, ``logs/sgd/version_0`` and ``logs/sgd/version_1`` give
    ``logs/sgd/shared_version_0_vs_version_1/``.
    """
    logs = [_log_dir(_folder(r)) for r in (run_a, run_b)]
    common = Path(os.path.commonpath([str(p) for p in logs]))
    labels, tail = _labels_and_tail(run_a, run_b)
    a, b, end = (re.sub(r"[^A-Za-z0-9._-]", "-", name) for name in (*labels, "-".join(tail)))
    return common / (f"shared_{a}_vs_{b}" + (f"_{end}" if end else ""))


def _load(run: RunLike, model: nn.Module, which: str) -> RunWeights:
    if isinstance(run, RunWeights):
        run.check_model(model)
        return run
    if not isinstance(run, (str, os.PathLike)):
        raise ValueError(f"`{which}` must be a run directory, a weights folder or a RunWeights, got {run!r}")
    return load_run_weights(run, model)


def _same_run(a: RunWeights, b: RunWeights) -> str | None:
    """Why ``a`` and ``b`` are one run given twice (one folder, or copies of one write), else ``None``."""
    import torch

    if a.directory.resolve() == b.directory.resolve():
        return f"both are {a.directory}"
    frozen = a.final_frozen or {}, b.final_frozen or {}
    if (
        torch.equal(a.final, b.final)
        and a.final_buffers.keys() == b.final_buffers.keys()
        and all(torch.equal(t, b.final_buffers[k]) for k, t in a.final_buffers.items())
        and frozen[0].keys() == frozen[1].keys()
        and all(torch.equal(t, frozen[1][k]) for k, t in frozen[0].items())
    ):
        return f"{a.directory} and {b.directory} hold identical final weights (copies of one run?)"
    return None


def _frozen_values(
    run: RunWeights, model: nn.Module, which: str
) -> tuple[dict[str, Tensor] | None, dict[str, Tensor]]:
    """The run's (initial, final) parameters outside the landscape (frozen ones); initial ``None``: unknown.

    A folder written before they were saved (0.1) does not know them: the model's own values are used,
    with a warning naming them.
    """
    if run.final_frozen is not None:
        return run.initial_frozen, run.final_frozen
    names = set(run.names)
    own = {
        n: p.detach().clone() for n, p in model.named_parameters() if n not in names and p.is_floating_point()
    }
    if own:
        warnings.warn(
            f"`{which}`: {run.directory} was written before frozen parameters were saved: the model's own "
            f"values of {sorted(own)} are used for this run (save the run again to evaluate its own)",
            UserWarning,
            stacklevel=3,
        )
    return own, own


def _differing(x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> list[str]:
    """The names whose tensors differ (bit for bit) between ``x`` and ``y`` (same keys)."""
    import torch

    return [n for n, t in x.items() if not torch.equal(t, y[n].to(t.device, t.dtype))]


@contextlib.contextmanager
def _loaded(model: nn.Module, values: Mapping[str, Tensor]) -> Iterator[None]:
    """``values`` copied into the model's parameters of those names for the block; the model's own after."""
    import torch

    named = dict(model.named_parameters())
    targets = [named[n] for n in values]
    saved = [t.detach().clone() for t in targets]
    try:
        with torch.no_grad():
            for t, v in zip(targets, values.values()):
                t.copy_(v)
        yield
    finally:
        with torch.no_grad():
            for t, v in zip(targets, saved):
                t.copy_(v)


def compare_solutions(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    run_a: RunLike,
    run_b: RunLike,
    out_dir: str | os.PathLike | None = None,
    resolution: int = 21,
    barrier_resolution: int = 21,
    metric_fn: LossFn | None = None,
    bn: BNMode = "recompute",
    *,
    surface_bn: BNMode = "interpolate",
    metric_name: str | None = None,
    margin: float = 0.25,
    init_tolerance: float = 1e-5,
    labels: tuple[str, str] | None = None,
    shared_plane: bool = True,
    save: bool = True,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> SolutionComparison:
    """The shared plane of two runs and the barrier between them; written as records, returned.

    Args:
        model: the architecture both runs trained, with any weights: each run's own are loaded, the
            parameters outside the landscape (frozen ones) included, and the model's own are restored
            afterwards (weights, buffers, modes).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: probe batches on the model's device (the same for every point and both runs).
        run_a, run_b: each a run's log directory (holding one ``weights/`` folder), a weights folder, or
            a :class:`RunWeights`. Both must start from the same initialization.
        out_dir: where the records go; :func:`default_shared_dir` by default.
        resolution: grid points per axis of the shared plane.
        barrier_resolution: points on the line between the final weights, ends included.
        metric_fn, metric_name: a metric (accuracy, say) evaluated beside the loss everywhere.
        bn: the barrier's statistics: ``"recompute"`` (default: re-estimated at every point, the barrier
            of Frankle et al. as it should be measured). The naive curve (``"interpolate"``) is
            computed too whenever the model has floating-point buffers.
        surface_bn: the plane's statistics: ``"interpolate"`` (default: over the triangle of the three
            models, so each of them is evaluated with its own statistics), or ``"recompute"``.
        margin: the plane's box is widened by this fraction of its size on every side.
        init_tolerance: largest ``|w0_A - w0_B| / |w0_A|`` accepted as "the same initialization".
        labels: names of the two runs in the records and figures; :func:`run_labels` by default.
        shared_plane: compute the plane. ``False``: the barriers only, for runs from different
            initializations (different seeds: the usual linear-mode-connectivity question).
        save: write the records (into ``out_dir``).
        engine, chunk_size: as in :func:`~lightning_landscape.functional.loss_surface`.

    Raises:
        ValueError: a run without saved weights, weights that do not match ``model`` (naming the
            difference), the same run given twice, or, for the shared plane, runs that do not start
            from the same initialization (frozen parameters included) or whose frozen parameters
            changed during training (naming them).

    Example::

        >>> import tempfile
        >>> import torch
        >>> from torch import nn
        >>> from lightning_landscape.solutions.weights import save_run_weights
        >>> logs = Path(tempfile.mkdtemp())
        >>> batch = (torch.randn(16, 2), torch.randn(16, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> model = nn.Linear(2, 1)
        >>> init = [p.detach().clone() for p in model.parameters()]
        >>> for run, optimizer in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        ...     m = nn.Linear(2, 1)
        ...     _ = m.load_state_dict(dict(zip(["weight", "bias"], init)))
        ...     opt = optimizer(m.parameters(), lr=0.1)
        ...     for _ in range(20):
        ...         opt.zero_grad()
        ...         loss_fn(m, batch).backward()
        ...         opt.step()
        ...     _ = save_run_weights(logs / run / "landscape" / "weights", m, init)
        >>> result = compare_solutions(model, loss_fn, [batch], logs / "sgd", logs / "adam", resolution=5)
        >>> result.directory.name, result.surface.meta["point_labels"]
        ('shared_sgd_vs_adam', ['init', 'sgd', 'adam'])
    """
    import torch

    from lightning_landscape.functional.landscape.bn import check_bn, landscape_buffers
    from lightning_landscape.functional.objective import Objective, work_dtype
    from lightning_landscape.functional.solutions.barrier import barrier_of
    from lightning_landscape.functional.solutions.plane import shared_plane_surface

    check_bn(bn)
    check_bn(surface_bn, "surface_bn")
    if not (isinstance(init_tolerance, (int, float)) and init_tolerance >= 0):
        raise ValueError(f"`init_tolerance` must be a number >= 0, got {init_tolerance!r}")
    a, b = _load(run_a, model, "run_a"), _load(run_b, model, "run_b")
    if a.names != b.names or a.shapes != b.shapes:
        raise ValueError(
            f"`run_a` and `run_b` saved different parameters ({len(a.names)} and {len(b.names)} tensors): "
            "compare runs of one architecture"
        )
    same = _same_run(a, b)
    if same is not None:
        raise ValueError(f"`run_a` and `run_b` are the same run ({same}): give two different runs")
    (init_a, frozen_a), (init_b, frozen_b) = (
        _frozen_values(a, model, "run_a"),
        _frozen_values(b, model, "run_b"),
    )
    with torch.no_grad():
        w0a, w0b = a.initial.double(), b.initial.double()
        scale = float(w0a.norm()) or 1.0
        init_difference = float((w0a - w0b).norm()) / scale
    if shared_plane and not init_difference <= init_tolerance:
        raise ValueError(
            f"runs do not start from the same initialization: |w0_A - w0_B| / |w0_A| = {init_difference:.3g} "
            f"(`init_tolerance`={init_tolerance:g}); the shared plane goes through one common initial point, "
            "so train both runs from the same seed (or the same initial checkpoint), or pass "
            "`shared_plane=False` for the barrier alone"
        )
    la, lb = labels if labels is not None else run_labels(a, b)
    if shared_plane:  # the plane holds the trainable parameters; the frozen ones must be one set
        for label, initial, final in ((la, init_a, frozen_a), (lb, init_b, frozen_b)):
            changed = sorted(final) if initial is None else _differing(initial, final)
            if changed:
                raise ValueError(
                    f"the parameters outside the landscape {changed} changed during run {label!r} (or "
                    "their initial values were not saved): the shared plane cannot hold that run's initial "
                    "and final models; pass `shared_plane=False` for the barrier alone (it interpolates "
                    "them), or `initial_frozen=` to `save_run_weights`"
                )
        assert init_a is not None and init_b is not None
        differ = _differing(init_a, init_b)
        if differ:
            raise ValueError(
                f"runs do not start from the same initialization: their frozen parameters {differ} differ; "
                "the shared plane goes through one common initial model, so pass `shared_plane=False` for "
                "the barrier alone"
            )
    params = a.parameters_of(model)

    def place(flat: Tensor) -> list[Tensor]:
        work = [torch.float64 if p.dtype == torch.float64 else torch.float32 for p in params]
        return [t.to(p.device, dt) for t, p, dt in zip(a.split(flat), params, work)]

    w0, w1, w2 = place(a.initial), place(a.final), place(b.final)
    has_buffers = bool(landscape_buffers(model))
    empty = torch.empty(0, a.num_params)
    paths = [r.trajectory if r.trajectory is not None else empty for r in (a, b)]
    shared = dict(
        stage="shared",
        run_labels=[la, lb],
        runs=[str(a.directory), str(b.directory)],
        init_difference=init_difference,
    )
    objective = Objective.build(
        model, loss_fn, batches, params, engine=engine, chunk_size=chunk_size, metric_fn=metric_fn,
        metric_name=metric_name,
    )  # fmt: skip
    surface: SurfaceRecord | None = None
    if shared_plane:
        with _loaded(model, frozen_a):
            surface = shared_plane_surface(
                model, loss_fn, batches, w0, w1, w2, trajectories=paths, resolution=resolution, margin=margin,
                buffers=(a.initial_buffers, a.final_buffers, b.final_buffers) if has_buffers else None,
                bn=surface_bn if has_buffers else "keep", metric_fn=metric_fn, metric_name=metric_name,
                params=params, engine=engine, chunk_size=chunk_size,
            )  # fmt: skip
        surface.meta.update(
            shared,
            name=SHARED_PLANE,
            point_labels=["init", la, lb],
            path_steps=[np.asarray(r.steps).tolist() for r in (a, b)],
            final_steps=[r.meta.get("global_step") for r in (a, b)],
        )

    # The line between the two final models: frozen parameters equal in both are loaded, those that
    # differ (two backbones, say) are interpolated with the trainable ones, so both ends are the runs'
    # own models and every point between is the interpolation of the two full models.
    moving = _differing(frozen_a, frozen_b)
    named = dict(model.named_parameters())
    line_params = params + [named[n] for n in moving]
    v1 = w1 + [frozen_a[n].to(named[n].device, work_dtype(named[n])) for n in moving]
    v2 = w2 + [frozen_b[n].to(named[n].device, work_dtype(named[n])) for n in moving]
    fixed = {n: t for n, t in frozen_a.items() if n not in set(moving)}
    # The frozen parameters that differ between the runs join the line's parameters (resolved once more).
    line_objective = objective if not moving else objective.replace(params=line_params)

    def line(mode: BNMode, name: str) -> LineRecord:
        with _loaded(model, fixed):
            rec = barrier_of(
                line_objective.replace(bn=mode), v1, v2, a.final_buffers if has_buffers else None,
                b.final_buffers if has_buffers else None, resolution=barrier_resolution,
            )  # fmt: skip
        rec.meta.update(shared, name=name, label=f"{la} → {lb} (alpha)", frozen_interpolated=moving)
        return rec

    line_b = line(bn, BARRIER)
    naive = line("interpolate", NAIVE_BARRIER) if has_buffers and bn != "interpolate" else None
    if naive is None:
        line_b.meta["naive"] = (
            "this curve" if bn == "interpolate" else "not computed: no BatchNorm statistics to interpolate"
        )
    directory = None
    if save:
        directory = Path(out_dir) if out_dir is not None else default_shared_dir(a, b)
        for rec in (surface, line_b, naive):
            if rec is not None:
                save_record(rec, directory, rec.meta["name"])
    return SolutionComparison(surface=surface, barrier=line_b, naive_barrier=naive, directory=directory)
