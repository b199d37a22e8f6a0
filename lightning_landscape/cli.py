"""The ``lightning-landscape`` command: compare runs or groups of runs, re-draw saved records, summarise.

    lightning-landscape compare RUN_DIR RUN_DIR ... --out compare.png [--shared DIR]
    lightning-landscape compare --group adamw runs/adamw/seed* --group sam runs/sam/seed* --out groups.png
    lightning-landscape plot RECORD [--style contour|filled|surface3d|line] [--log] --out FILE
    lightning-landscape summary RUN_DIR

A RUN_DIR is a run's log directory (``lightning_logs/sgd/seed0``) or its ``landscape/`` folder.
Two runs compared as solutions (:func:`lightning_landscape.compare_solutions`) also get the shared plane
and the barrier (``--out`` stem + ``_shared_plane`` / ``_barrier``) and their numbers; folders named
``shared_*`` are never taken for runs.
Everything is read from the records on disk (:mod:`lightning_landscape.records`) through
:mod:`lightning_landscape.runs` (runs, their protocol, group statistics); no logger is needed.
Any misuse (a bad option, a missing or mixed run, a corrupt or foreign record, runs on different
protocols) gets one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_landscape._shared_report import not_shared, report_shared
from lightning_landscape.records import RecordError, is_diagnostic, load_record
from lightning_landscape.runs import (
    Group,
    Run,
    RunError,
    compare_groups,
    comparison_stage,
    end_values,
    group_line,
    group_series,
    load_run,
    protocol_differences,
    record_scalars,  # noqa: F401  (re-exported)
    representative,
    run_series,
)

__all__ = ["CLIError", "build_parser", "format_table", "main"]  # Run, load_run, ...: see runs.py

PROG = "lightning-landscape"


class CLIError(Exception):
    """Bad input to the command: printed as one line (after ``prog``, if set), exit status 2."""

    prog = ""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and reach :func:`main`."""

    def error(self, message: str) -> NoReturn:
        err = CLIError(f"{message} (see `{self.prog} --help`)")
        err.prog = self.prog
        raise err


def _levels(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else 0
    if not 2 <= value <= 1000:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of contour levels from 2 to 1000, got {text!r}"
        )
    return value


def _confidence(text: str) -> float:
    value = float(text) if text.replace(".", "", 1).isdigit() else math.nan  # no signs, exponents, nan, inf
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (0.95 for 95 %), got {text!r}")
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "nan"
    return f"{int(x)}" if x.is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def format_table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned text columns (first row is the header, underlined).

    Example::

        >>> print(format_table([["metric", "a"], ["loss", 0.5]]))
        metric  a
        ------  ---
        loss    0.5
    """
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(cells[0]))]
    widths = [max(w, 3) for w in widths]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def _check_out(out: str) -> None:
    """Refuse an output path that cannot be written, before any work."""
    path = Path(out)
    fmt = path.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise CLIError(
            f"--out {out}: unknown image format {fmt!r}; use one of {', '.join(sorted(supported))}"
        )
    if path.is_dir():
        raise CLIError(f"--out {out}: a directory; give a file name")
    parent = next((p for p in path.resolve().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"--out {out}: {parent} is not a directory")


def _save(fig: Figure, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _settings_rows(rec: Any) -> list[list[Any]]:
    keys = (
        "stage", "epoch", "global_step", "directions", "resolution", "span", "probe_batches",
        "probe_samples", "snapshots", "seed", "explained_variance", "nonfinite",
    )  # fmt: skip
    return [[k, rec.meta[k]] for k in keys if k in rec.meta]


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
    _check_out(args.out)
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

    from lightning_landscape.plots import comparison_figure

    fig = comparison_figure(
        surfaces,  # type: ignore[arg-type]
        [r.label for r in runs],
        lines=lines,
        series=series,
        levels=args.levels,
        log=not args.linear,
    )
    _save(fig, args.out)
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
    from lightning_landscape.plots import BandPanel, group_comparison_figure

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
    _save(fig, args.out)

    print(format_table(_group_rows(groups, stage, args.confidence)))
    print("representative surfaces (centre loss nearest the group median): " + ", ".join(labels))
    print(f"wrote {args.out}")
    return 0


_STYLES = {"surface": ("filled", "contour", "surface3d"), "line": ("line",)}


def cmd_plot(args: argparse.Namespace) -> int:
    _check_out(args.out)
    path = Path(args.record)
    if path.is_dir():
        raise CLIError(f"{path}: a directory; give one record file (NAME.json or NAME.npz)")
    if path.suffix not in (".json", ".npz"):
        path = path.with_name(path.name + ".json")
    if not path.with_suffix(".json").exists():
        raise CLIError(f"{path.with_suffix('.json')}: no such record")
    rec = load_record(path)
    styles = _STYLES.get(rec.kind)
    if styles is None:
        raise CLIError(
            f"{path}: a {rec.kind} record holds scalars, not a surface or a line; nothing to draw "
            f"(see `{PROG} summary` for its values)"
        )
    style = args.style or styles[0]
    if style not in styles:
        raise CLIError(
            f"{path}: a {rec.kind} record cannot be drawn as {style!r}; use --style {' or '.join(styles)}"
        )
    from lightning_landscape import plots

    if style == "line":
        fig = plots.line_figure([rec], log=args.log)  # type: ignore[list-item]
    elif style == "surface3d":
        fig = plots.surface3d_figure(rec, log=args.log)  # type: ignore[arg-type]
    else:
        fig = plots.contour_figure(rec, log=args.log, filled=style == "filled")  # type: ignore[arg-type]
    _save(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def _print_reliability(run: Run) -> None:
    """The latest reliability record's checks (the final one if any) and its flags."""
    found = [r for r in run.records if r.kind == "reliability"]
    final = [r for r in found if r.meta.get("stage") == "final"] or found
    if not final:
        return
    rec = final[-1]
    print(f"\nreliability ({rec.meta.get('stage', '?')}, step {_fmt(rec.meta.get('global_step'))}):")
    if rec.meta.get("random_walk"):
        print(f"trajectory PCA: {rec.meta['random_walk']} ({rec.meta.get('convention')} convention)")
    rows = [["check", "value", "threshold", "status"]]
    rows += [
        [c.get("check"), c.get("value"), c.get("threshold"), c.get("status")] for c in rec.meta["checks"]
    ]
    print(format_table(rows))
    print("flags: " + ("; ".join(rec.flags) if rec.flags else "none (every check passed)"))


def cmd_summary(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    kinds: dict[str, int] = {}
    for r in run.records:
        key = f"{r.kind} ({r.meta.get('stage', '?')})"
        kinds[key] = kinds.get(key, 0) + 1
    print(f"run: {run.path}")
    print("records: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    latest = run.end_surface
    if latest is not None:
        print()
        print(format_table([["setting", "value"], *_settings_rows(latest)]))
    print()
    series = run_series(run)
    stage = "final" if any(r.meta.get("stage") == "final" for r in run.records) else "periodic"
    rows: list[list[Any]] = [["figure", stage, "points"]]
    for key, value in sorted(end_values(run, stage).items()):
        rows.append([key, value, len(series[key][0]) if key in series else 1])
    print(format_table(rows))
    _print_reliability(run)
    errors = [
        (r.meta.get("global_step"), k, v)
        for r in run.records
        for k, v in (r.meta.get("errors") or {}).items()
    ]
    if errors:
        print("\nfailed (left out above): " + "; ".join(f"{k} at step {_fmt(s)}: {v}" for s, k, v in errors))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Compare runs, re-draw saved records and summarise runs of LossLandscapeCallback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compare", help="runs (or groups of runs) side by side on one colour scale")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run log directories (or their landscape/)")
    p.add_argument(
        "--group",
        nargs="+",
        action="append",
        metavar=("NAME", "RUN"),
        help="a named group of runs (seeds): --group NAME RUN RUN ...; repeat for each group. Prints each "
        "scalar's mean +- std per group and each group's difference from the first with a Welch interval",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="image to write (.png, .pdf, .svg, ...)")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="one name per run (default: the path)")
    p.add_argument("--levels", type=_levels, default=20, help="number of shared contour levels (default 20)")
    p.add_argument("--linear", action="store_true", help="linear contour levels and line axes (default log)")
    p.add_argument(
        "--confidence", type=_confidence, default=0.95, help="of the group intervals (default 0.95)"
    )
    p.add_argument("--allow-mismatch", action="store_true", help="compare runs on different protocols")
    p.add_argument(
        "--shared",
        metavar="DIR",
        help="the two runs' compared solutions (compare_solutions' folder; default: shared_<A>_vs_<B>/ "
        "beside the runs, when it exists): draws the shared plane and the barrier, tabulates them",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot", help="re-draw one saved record")
    p.add_argument("record", metavar="RECORD", help="NAME.json or NAME.npz under a run's landscape/")
    p.add_argument("--style", choices=["contour", "filled", "surface3d", "line"], default=None)
    p.add_argument("--log", action="store_true", help="log scale for the loss")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("summary", help="a run's settings and figures as a table")
    p.add_argument("run", metavar="RUN_DIR")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-landscape`` console script; returns the exit status.

    Misuse gives one line on stderr and status 2; an unexpected failure one line and status 1 (set
    ``LIGHTNING_LANDSCAPE_DEBUG=1`` for its traceback).
    """
    command = PROG
    try:
        args = build_parser().parse_args(argv)
        command = f"{PROG} {args.command}"
        return int(args.func(args))
    except BrokenPipeError:  # `lightning-landscape summary RUN | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0
    except (CLIError, RunError, RecordError, OSError) as err:
        print(f"{getattr(err, 'prog', '') or command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("LIGHTNING_LANDSCAPE_DEBUG"):
            raise
        message = " ".join(str(err).split())
        print(
            f"{command}: internal error: {type(err).__name__}: {message} "
            "(please report it; LIGHTNING_LANDSCAPE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
