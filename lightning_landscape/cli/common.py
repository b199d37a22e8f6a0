"""What every ``lightning-landscape`` command shares: its one-line error, aligned tables, the output image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["CLIError", "check_out", "format_table", "format_value", "save_figure"]


class CLIError(Exception):
    """Bad input to the command: printed as one line (after ``prog``, if set), exit status 2."""

    prog = ""


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
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
    cells = [[format_value(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(cells[0]))]
    widths = [max(w, 3) for w in widths]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def check_out(out: str) -> None:
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


def save_figure(fig: Figure, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
