"""The ``lightning-landscape`` command: compare runs or groups of runs, re-draw saved records, summarise.

    lightning-landscape compare RUN_DIR RUN_DIR ... --out compare.png [--shared DIR]
    lightning-landscape compare --group adamw runs/adamw/seed* --group sam runs/sam/seed* --out groups.png
    lightning-landscape plot RECORD [--style contour|filled|surface3d|line] [--log] --out FILE
    lightning-landscape summary RUN_DIR

A RUN_DIR is a run's log directory (``lightning_logs/sgd/seed0``) or its ``landscape/`` folder.
Two runs compared as solutions (:func:`lightning_landscape.compare_solutions`) also get the shared plane
and the barrier (``--out`` stem + ``_shared_plane`` / ``_barrier``) and their numbers; folders named
``shared_*`` are never taken for runs.
Everything is read from the records on disk (:mod:`lightning_landscape.records.record`) through
:mod:`lightning_landscape.records.runs` (runs, their protocol, group statistics); no logger is needed.
Any misuse (a bad option, a missing or mixed run, a corrupt or foreign record, runs on different
protocols) gets one line on stderr and exit status 2, never a traceback.
``compare`` is in ``_cli_compare``; the error type, tables and image output all commands share are in
``_cli_common``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning_landscape.cli.common import CLIError, check_out, format_table, save_figure
from lightning_landscape.cli.common import format_value as _fmt
from lightning_landscape.cli.compare import cmd_compare
from lightning_landscape.records.record import (
    RecordError,
    is_diagnostic,  # noqa: F401  (re-exported)
    load_record,
)
from lightning_landscape.records.runs import (
    Run,
    RunError,
    end_values,
    load_run,
    record_scalars,  # noqa: F401  (re-exported)
    run_series,
)

__all__ = ["CLIError", "build_parser", "format_table", "main"]  # Run, load_run, ...: see runs.py

PROG = "lightning-landscape"


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


def _settings_rows(rec: Any) -> list[list[Any]]:
    keys = (
        "stage", "epoch", "global_step", "directions", "resolution", "span", "probe_batches",
        "probe_samples", "snapshots", "seed", "explained_variance", "nonfinite",
    )  # fmt: skip
    return [[k, rec.meta[k]] for k in keys if k in rec.meta]


_STYLES = {"surface": ("filled", "contour", "surface3d"), "line": ("line",)}


def cmd_plot(args: argparse.Namespace) -> int:
    check_out(args.out)
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
    save_figure(fig, args.out)
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
        help="the two runs' compared solutions (compare_solutions' folder; default: "
        "shared_<A>_vs_<B>[_<tail>]/ beside the runs, when it exists): draws the shared plane and the "
        "barrier, tabulates them",
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
