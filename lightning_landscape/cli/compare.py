"""``lightning-landscape compare``: runs, or named groups of runs, side by side on one protocol."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_landscape.cli.common import CLIError, check_out, format_table, save_figure
from lightning_landscape.cli.common import format_value as _fmt
from lightning_landscape.records.record import RecordError, is_diagnostic
from lightning_landscape.records.runs import (
    Group,
    Run,
    compare_groups,
    comparison_stage,
    end_values,
    group_line,
    group_series,
    load_run,
    protocol_differences,
    representative,
    run_series,
)
from lightning_landscape.solutions.compare import (
    SolutionComparison,
    default_shared_dir,
    load_solutions,
)

__all__ = ["cmd_compare"]


def _refuse_mismatch(differ: dict[str, list[Any]], owners: Sequence[str] | None, allow: bool) -> None:
    """One line naming each protocol setting the runs disagree on (per group when ``owners`` name them)."""
    if not differ or allow:
        return
    parts = []
    for key, values in differ.items():
        shown = [_fmt(v) for v in values]
        if owners is not None:
            seen = {
                o: dict.fromkeys(v for o2, v in zip(owners, shown) if o2 == o) for o in dict.fromkeys(owners)
            }
            shown = [f"{o} {'/'.join(vals)}" for o, vals in seen.items()]
        parts.append(f"{key}: {', '.join(shown)}")
    raise CLIError(
        f"the runs are not on the same protocol ({'; '.join(parts)}); pass --allow-mismatch to compare anyway"
    )


def _note_stage(runs: Sequence[Run]) -> str:
    stage = comparison_stage(runs)
    if stage == "periodic":
        unfinished = ", ".join(str(r.path) for r in runs if r.latest_surface("final") is None)
        print(
            f"note: no final surface in {unfinished} (training interrupted?); comparing the latest "
            "periodic surfaces",
            file=sys.stderr,
        )
    return stage


# --------------------------------------------------------------------------- commands


def cmd_compare(args: argparse.Namespace) -> int:
    check_out(args.out)
    if args.group:
        if args.shared is not None:
            raise CLIError("--shared goes with two runs, not with --group")
        return _compare_groups(args)
    args.runs = not_shared(args.runs)
    if args.shared is not None and len(args.runs) != 2:
        raise CLIError(f"--shared goes with two runs, got {len(args.runs)}")
    if args.shared is not None and not Path(args.shared).is_dir():
        raise CLIError(f"--shared {args.shared}: no such directory")
    if len(args.runs) < 2:
        raise CLIError("compare needs at least two run directories (or two --group NAME RUN [RUN ...])")
    resolved = [Path(r).resolve() for r in args.runs]
    if len(set(resolved)) < len(resolved):
        raise CLIError("the same run directory is given more than once")
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise CLIError(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    runs = [load_run(r, label) for r, label in zip(args.runs, args.labels or [None] * len(args.runs))]
    if len({r.label for r in runs}) < len(runs):
        runs = [dataclasses.replace(r, label=str(r.path)) for r in runs]
    missing = [str(r.path) for r in runs if r.end_surface is None]
    if missing:
        raise CLIError(f"no loss surface to compare in: {', '.join(missing)}")
    stage = _note_stage(runs)
    surfaces = [r.latest_surface(stage) or r.end_surface for r in runs]
    _refuse_mismatch(protocol_differences(runs, stage), None, args.allow_mismatch)

    lines = {
        "interpolation: initial (0) → final (1) weights": [r.end_line("interpolation") for r in runs],
        "along plane axis 1": [r.end_line("axis0") for r in runs],
        "along plane axis 2": [r.end_line("axis1") for r in runs],
    }
    lines = {k: v for k, v in lines.items() if any(x is not None for x in v)}
    per_run = [run_series(r) for r in runs]
    # Panels for the figures people compare; diagnostics stay in the printed table.
    keys = sorted({k for s in per_run for k in s if not is_diagnostic(k)})
    series = {k: [s.get(k) for s in per_run] for k in keys}

    from lightning_landscape.plots.landscape import comparison_figure

    fig = comparison_figure(
        surfaces,  # type: ignore[arg-type]
        [r.label for r in runs],
        lines=lines,
        series=series,
        levels=args.levels,
        log=not args.linear,
    )
    save_figure(fig, args.out)
    ends = [end_values(r, stage) for r in runs]
    rows: list[list[Any]] = [["", *[r.label for r in runs]]]
    for key in ("global_step", "epoch", "directions", "resolution", "probe_samples"):
        rows.append([key, *[s.meta.get(key) for s in surfaces]])  # type: ignore[union-attr]
    for key in sorted({k for f in ends for k in f}):
        rows.append([key, *[f.get(key) for f in ends]])
    print(format_table(rows))
    print(f"wrote {args.out}")
    try:  # two runs compared as solutions: their shared plane and barrier too
        report_shared(args.runs, args.shared, args.out, args.levels, not args.linear)
    except RecordError:
        raise
    except ValueError as err:
        raise CLIError(str(err)) from err
    return 0


def _groups(args: argparse.Namespace) -> list[Group]:
    if args.runs:
        raise CLIError(f"give runs either inside --group or alone, not both (got {' '.join(args.runs)})")
    if args.labels is not None:
        raise CLIError("--labels names single runs; with --group the group names are the labels")
    if len(args.group) < 2:
        raise CLIError("compare needs at least two groups (--group NAME RUN [RUN ...] --group NAME RUN ...)")
    names = [g[0] for g in args.group]
    if len(set(names)) < len(names):
        raise CLIError(f"group names must differ, got {', '.join(names)}")
    args.group = [[name, *not_shared(runs)] for name, *runs in args.group]
    seen: dict[Path, str] = {}
    for name, *runs in args.group:
        if len(runs) < 2:
            raise CLIError(
                f"--group {name}: {len(runs)} run(s); a group needs at least two (seeds) for a spread "
                "and an interval"
            )
        for run in runs:
            key = Path(run).resolve()
            if key in seen:
                raise CLIError(f"{run} is given more than once (in groups {seen[key]} and {name})")
            seen[key] = name
    return [Group(name, [load_run(r) for r in runs]) for name, *runs in args.group]


def _group_rows(groups: Sequence[Group], stage: str, confidence: float) -> list[list[Any]]:
    """The grouped table: settings, then each scalar as mean +- std per group and the differences."""
    header = ["", *[f"{g.name} ({len(g.runs)} runs)" for g in groups]]
    header += [f"{g.name} - {groups[0].name} [{100 * confidence:g}% CI, Welch]" for g in groups[1:]]
    rows: list[list[Any]] = [header]
    surfaces = [[r.latest_surface(stage) or r.end_surface for r in g.runs] for g in groups]
    for key in ("global_step", "epoch", "directions", "resolution", "probe_samples"):
        values = [sorted({_fmt(s.meta.get(key)) for s in group if s is not None}) for group in surfaces]
        rows.append([key, *["/".join(v) for v in values]])
    for row in compare_groups(groups, stage, confidence):
        cells = []
        for (n, mean, std), group in zip(row.stats, groups):
            cell = "-" if n == 0 else f"{_fmt(mean)} +- {_fmt(std)}" if n > 1 else f"{_fmt(mean)} (1 run)"
            cells.append(cell + (f" (n={n})" if 1 < n < len(group.runs) else ""))
        for d in row.differences[1:]:
            cells.append("-" if d is None else f"{d.difference:+.4g} [{_fmt(d.low)}, {_fmt(d.high)}]")
        rows.append([row.key, *cells])
    return rows


def _compare_groups(args: argparse.Namespace) -> int:
    groups = _groups(args)
    runs = [r for g in groups for r in g.runs]
    missing = [str(r.path) for r in runs if r.end_surface is None]
    if missing:
        raise CLIError(f"no loss surface to compare in: {', '.join(missing)}")
    stage = _note_stage(runs)
    owners = [g.name for g in groups for _ in g.runs]
    _refuse_mismatch(protocol_differences(runs, stage), owners, args.allow_mismatch)

    chosen = [representative(g, stage) for g in groups]
    surfaces = [r.latest_surface(stage) or r.end_surface for r in chosen]
    labels = [f"{g.name}: {r.label}" for g, r in zip(groups, chosen)]
    titles = [f"{g.name} (representative: {r.label})" for g, r in zip(groups, chosen)]
    from lightning_landscape.plots.landscape import BandPanel, group_comparison_figure

    panels = []
    interp = [group_line(g) for g in groups]
    if any(x is not None for x in interp):
        panels.append(
            BandPanel("interpolation: initial (0) → final (1)", "alpha", interp, "loss", not args.linear)
        )
    per_group = [group_series(g) for g in groups]
    for key in sorted({k for s in per_group for k in s if not is_diagnostic(k)}):
        panels.append(BandPanel(key, "global step", [s.get(key) for s in per_group]))
    names = [g.name for g in groups]
    fig = group_comparison_figure(surfaces, names, panels, args.levels, not args.linear, titles)  # type: ignore[arg-type]
    save_figure(fig, args.out)

    print(format_table(_group_rows(groups, stage, args.confidence)))
    print("representative surfaces (centre loss nearest the group median): " + ", ".join(labels))
    print(f"wrote {args.out}")
    return 0


SHARED_PREFIX = "shared_"


def is_shared_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of compared solutions (named ``shared_*``), not a run."""
    return Path(path).name.startswith(SHARED_PREFIX)


def find_shared(
    run_a: str | os.PathLike, run_b: str | os.PathLike, explicit: str | None = None
) -> Path | None:
    """The folder of ``run_a`` and ``run_b``'s compared solutions: ``explicit`` (a ValueError if it is not
    a directory), else :func:`default_shared_dir` if it exists; ``None`` when there is none (a run
    without saved weights, or runs never compared)."""
    if explicit is not None:
        folder = Path(explicit)
        if not folder.is_dir():
            raise ValueError(f"--shared {explicit}: no such directory")
        return folder
    try:
        folder = default_shared_dir(run_a, run_b)
    except ValueError:  # a run without (or with several) saved weights: nothing shared to look for
        return None
    return folder if folder.is_dir() else None


def shared_outputs(out: str | os.PathLike) -> tuple[Path, Path]:
    """The shared plane's and the barrier's image paths beside ``out``.

    Example::

        >>> [p.name for p in shared_outputs("figs/compare.png")]
        ['compare_shared_plane.png', 'compare_barrier.png']
    """
    path = Path(out)
    return (
        path.with_name(f"{path.stem}_shared_plane{path.suffix}"),
        path.with_name(f"{path.stem}_barrier{path.suffix}"),
    )


def draw_shared(
    comparison: SolutionComparison, out: str | os.PathLike, levels: int = 20, log: bool = True
) -> list[Path]:
    """Write the shared plane (if computed) and the barrier figures beside ``out``; return their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lightning_landscape.plots.solutions import barrier_figure, shared_plane_figure

    plane_path, barrier_path = shared_outputs(out)
    figures = []
    if comparison.surface is not None:
        figures.append((shared_plane_figure(comparison.surface, levels=levels, log=log), plane_path))
    lines = [r for r in (comparison.barrier, comparison.naive_barrier) if r is not None]
    figures.append((barrier_figure(lines), barrier_path))
    written = []
    for fig, path in figures:
        path.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def summary_rows(comparison: SolutionComparison) -> list[list[Any]]:
    """The table of :meth:`SolutionComparison.summary`, with which run is A and which is B, and on which probe
    set its losses were measured (compare_solutions' batches, not the runs' landscape probe set)."""
    meta = comparison.barrier.meta
    labels = meta.get("run_labels") or ["A", "B"]
    rows: list[list[Any]] = [["shared solutions", f"A = {labels[0]}, B = {labels[1]}"]]
    # These losses come from compare_solutions' batches, the table above from each run's landscape probe
    # set: the same weights give other numbers (loss_A beside loss/centre), so say which is which.
    size = f"{_fmt(meta.get('probe_batches'))} batch(es), {_fmt(meta.get('probe_samples'))} samples"
    rows.append(
        ["probe set", f"compare_solutions' batches ({size}), not the runs' landscape probe set above"]
    )
    rows.append(["statistics of the barrier", str(meta.get("bn", "-"))])
    rows += [[key, value] for key, value in comparison.summary().items()]
    return rows


def not_shared(paths: Sequence[str]) -> list[str]:
    """``paths`` without folders of compared solutions (``shared_*``: not runs), with a note on stderr."""
    skipped = [p for p in paths if is_shared_folder(p)]
    if skipped:
        print(f"note: skipping {', '.join(skipped)} (compared solutions, not runs)", file=sys.stderr)
    return [p for p in paths if not is_shared_folder(p)]


def report_shared(
    runs: Sequence[str], explicit: str | None, out: str | os.PathLike, levels: int = 20, log: bool = True
) -> SolutionComparison | None:
    """For two runs compared as solutions (or ``explicit``, their folder): draw the figures beside ``out``
    and print the table. Nothing for other runs; a ValueError for a folder that holds no comparison."""
    folder = find_shared(runs[0], runs[1], explicit) if len(runs) == 2 else None
    if folder is None:
        return None
    comparison = load_solutions(folder)
    written = draw_shared(comparison, out, levels, log)
    print(format_table(summary_rows(comparison)))
    print(f"wrote {', '.join(map(str, written))} (from {folder})")
    return comparison
