"""Figures and REPORT.md of the ViT study (``vit_adamw_vs_sam.py``), from the files its runs wrote.

Reads ``<out>/study.json``, every ``<out>/<group>/seed<k>/summary.json``, the callback's records
(:func:`lightning_landscape.load_records`) and ``<out>/spans/``; writes ``<out>/figures/vit_*.png``
and ``<out>/REPORT.md``. Every number in the report is computed here from those files.

    python examples/vit_study_report.py lightning_logs/vit               # figures + REPORT.md
    python examples/vit_study_report.py lightning_logs/vit --docs docs   # also docs/vit_study.md + images
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_landscape import load_records

FIGURES = ("vit_training", "vit_weight_decay", "vit_landscapes", "vit_sharpness", "vit_spans")
METRICS = {  # final metrics shown in figure (c) and the report: record name -> label
    "hessian/lambda_max": "lambda_max",
    "hessian/lambda_min": "lambda_min",
    "hessian/trace": "trace",
    "sharpness/sam": "SAM sharpness (rho 0.05)",
    "sharpness/average": "average sharpness (sigma 0.01)",
}


# ---------------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan, len(a)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``mean(a) - mean(b)`` with Welch's ``level`` confidence interval (unequal variances).

    NaN interval when either side has fewer than two values.

    Example::

        >>> r = welch_interval([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
        >>> r["difference"], round(r["low"], 3), round(r["high"], 3)
        (1.0, -1.267, 3.267)
    """
    from scipy import stats

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return {"difference": diff, "low": math.nan, "high": math.nan, "df": math.nan}
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"difference": diff, "low": diff, "high": diff, "df": math.inf}
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return {"difference": diff, "low": diff - half, "high": diff + half, "df": float(df)}


# ---------------------------------------------------------------------------------------- loading
def load_study(out: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The settings and the summaries by group (``adamw``, ``sam``, then the sweep by weight decay)."""
    study = json.loads((out / "study.json").read_text())
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/seed*/summary.json")):
        summary = json.loads(path.read_text())
        summary["path"] = str(path.parent)
        groups.setdefault(summary["group"], []).append(summary)
    for runs in groups.values():
        runs.sort(key=lambda s: s["seed"])
    order = sorted(groups, key=lambda g: (g != "adamw", g != "sam", groups[g][0]["weight_decay"]))
    return study, {g: groups[g] for g in order}


def finals(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(s["final"][key]) for s in runs]


def landscape_values(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(s["landscape"][key]) for s in runs if s["landscape"].get(key) is not None]


def final_records(run_dir: str) -> tuple[Any, list[Any]]:
    """The final surface and lines a run's callback saved."""
    recs = [r for r in load_records(Path(run_dir) / "landscape") if r.meta.get("stage") == "final"]
    surfaces = [r for r in recs if r.kind == "surface"]
    return (surfaces[-1] if surfaces else None), [r for r in recs if r.kind == "line"]


def span_records(out: Path, group: str) -> list[Any]:
    folders = sorted((out / "spans" / group).glob("seed*"))
    return sorted(load_records(folders[0]), key=lambda r: r.meta["span"]) if folders else []


# ---------------------------------------------------------------------------------------- report
def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 4, spec: str = "f") -> str:
    """``mean ± std`` (std omitted for one value), scaled (100 for percentages); ``spec`` ``"g"`` for
    ``digits`` significant digits."""
    m, s, _ = mean_std([v * scale for v in values])
    return f"{m:.{digits}{spec}}" + ("" if math.isnan(s) else f" ± {s:.{digits}{spec}}")


def fmt_interval(r: dict[str, float], scale: float = 1.0, digits: int = 2, spec: str = "f") -> str:
    d, lo, hi = (r[k] * scale for k in ("difference", "low", "high"))
    if math.isnan(lo):
        return f"{d:+.{digits}{spec}} (no interval: fewer than 2 seeds)"
    return f"{d:+.{digits}{spec}} [{lo:+.{digits}{spec}}, {hi:+.{digits}{spec}}]"


def flatness(adamw: Sequence[dict[str, Any]], sam: Sequence[dict[str, Any]]) -> str:
    """Which final solution is flatter by each curvature measure, from the Welch intervals."""
    parts = []
    for key in ("hessian/lambda_max", "hessian/trace", "sharpness/sam", "sharpness/average"):
        a, s = landscape_values(adamw, key), landscape_values(sam, key)
        if not (a and s):
            continue
        r = welch_interval(s, a)
        if math.isnan(r["low"]):
            word = "undecided (fewer than 2 seeds)"
        elif r["low"] > 0:
            word = "SAM's is sharper"
        elif r["high"] < 0:
            word = "SAM's is flatter"
        else:
            word = "no measurable difference"
        parts.append(f"{METRICS[key]}: {word}")
    return "By " + "; by ".join(parts) + " (95% Welch intervals above)." if parts else ""


def verdict(adamw: Sequence[float], sam: Sequence[float]) -> str:
    """One plain sentence on the test-accuracy difference SAM - AdamW, from its Welch interval."""
    r = welch_interval(sam, adamw)
    n = f"{len(sam)} SAM and {len(adamw)} AdamW seeds"
    if math.isnan(r["low"]):
        diff = 100 * r["difference"]
        return (
            f"**Not enough seeds to decide.** SAM - AdamW test accuracy: {diff:+.2f} percentage points "
            f"({n}: no interval); run with `--seeds 3` or more."
        )
    text = f"SAM - AdamW test accuracy: {fmt_interval(r, 100)} percentage points (Welch 95% interval, {n})"
    if r["low"] > 0:
        return f"**SAM generalizes better than AdamW on this data.** {text}: the interval excludes 0."
    if r["high"] < 0:
        return f"**SAM generalizes worse than AdamW on this data.** {text}: the interval excludes 0."
    return (
        f"**SAM does not generalize measurably better than AdamW on this data.** {text}: "
        "the interval includes 0."
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def report(
    out: Path, study: dict[str, Any], groups: dict[str, list[dict[str, Any]]], images: str, docs: bool = False
) -> str:
    """REPORT.md's text; ``images`` is the folder of the PNGs relative to the report; ``docs``: the
    docs page's wording of how to regenerate it."""
    first = next(iter(groups.values()))[0]
    model, epochs = study["model"], study["epochs"]
    same = "identical" if _same_init(groups) else "NOT identical"
    adamw, sam = groups.get("adamw", []), groups.get("sam", [])
    cmd = study["command"].strip()
    if docs:
        regenerate = (
            f'Regenerate this page: `{cmd} --docs docs` (or `make study ARGS="--docs docs"`); from runs '
            "already on disk: `python examples/vit_adamw_vs_sam.py --figures-only --docs docs`."
        )
    else:
        regenerate = f"Regenerate: `{cmd}` (or `make study`; `--figures-only` redraws from saved runs)."
    lines = [
        "# A vision transformer on 8x8 digits: AdamW vs SAM",
        "",
        "Generated by `examples/vit_study_report.py` from the runs' files; no number here is typed by hand.",
        regenerate,
        "",
        f"Setup: {study['train_size']} training and {study['test_size']} test images (a fixed stratified "
        f"split of scikit-learn's digits); a ViT with {model['patch']}x{model['patch']}-pixel patches "
        f"({first['parameters']:,} parameters, {json.dumps(model)}); {epochs} epoch{'s' * (epochs > 1)}, "
        f"batch {study['batch_size']}, learning rate {study['lr']:g} on a cosine schedule; SAM over "
        f"AdamW with rho {study['rho']:g}; weight decay {study['weight_decay']:g} for the main comparison; "
        f"seeds {', '.join(map(str, study['seeds']))}, the same initialization for every group at a seed "
        f"(checked: {same} SHA-256 of the initial weights). "
        "Losses and accuracies are on the whole sets, in eval mode; curvature and sharpness on the whole "
        "training set (the callback's probe).",
        "",
        "## AdamW vs SAM",
        "",
    ]
    if adamw and sam:
        lines += [verdict(finals(adamw, "test_acc"), finals(sam, "test_acc")), ""]
        rows = []
        for key, label, scale, digits in (
            ("train_loss", "final train loss", 1, 4),
            ("train_acc", "train accuracy (%)", 100, 2),
            ("test_acc", "test accuracy (%)", 100, 2),
            ("gap", "train - test accuracy (%)", 100, 2),
            ("test_loss", "test loss", 1, 4),
        ):
            a, s = finals(adamw, key), finals(sam, key)
            rows.append(
                [
                    label,
                    fmt(a, scale, digits),
                    fmt(s, scale, digits),
                    fmt_interval(welch_interval(s, a), scale, digits),
                ]
            )
        lines += _table(["mean ± std over seeds", "adamw", "sam", "SAM - AdamW [Welch 95%]"], rows)
        lines += ["", f"![training curves]({images}/vit_training.png)", ""]
    lines += ["## Weight decay", ""]
    sweep = [g for g in groups if groups[g][0]["optimizer"] == "adamw"]
    rows = []
    for g in sorted(sweep, key=lambda g: groups[g][0]["weight_decay"]):
        runs = groups[g]
        vs_sam = (
            fmt_interval(welch_interval(finals(sam, "test_acc"), finals(runs, "test_acc")), 100)
            if sam
            else "-"
        )
        rows.append(
            [
                f"{runs[0]['weight_decay']:g}",
                g,
                str(len(runs)),
                fmt(finals(runs, "train_loss")),
                fmt(finals(runs, "test_acc"), 100, 2),
                fmt(finals(runs, "gap"), 100, 2),
                vs_sam,
            ]
        )
    lines += _table(
        [
            "AdamW weight decay",
            "group",
            "seeds",
            "train loss",
            "test accuracy (%)",
            "train - test (%)",
            "SAM - this, test acc. [Welch 95%]",
        ],
        rows,
    )
    if sam and sweep:
        best = max(sweep, key=lambda g: mean_std(finals(groups[g], "test_acc"))[0])
        best_acc, sam_acc = (
            fmt(finals(groups[best], "test_acc"), 100, 2),
            fmt(finals(sam, "test_acc"), 100, 2),
        )
        lines += [
            "",
            f"Best AdamW weight decay by mean test accuracy: {groups[best][0]['weight_decay']:g} "
            f"({best_acc} %); SAM: {sam_acc} %.",
        ]
    lines += ["", f"![weight-decay sweep]({images}/vit_weight_decay.png)", "", "## Landscapes", ""]
    if adamw and sam:
        rows = []
        for key, label in METRICS.items():
            a, s = landscape_values(adamw, key), landscape_values(sam, key)
            if a and s:
                interval = fmt_interval(welch_interval(s, a), 1, 4, "g")
                rows.append([label, fmt(a, 1, 4, "g"), fmt(s, 1, 4, "g"), interval])
        lines += _table(["final, on the training set", "adamw", "sam", "SAM - AdamW [Welch 95%]"], rows)
        train_losses = fmt(finals(adamw, "train_loss")), fmt(finals(sam, "train_loss"))
        lines += [
            "",
            flatness(adamw, sam),
            _residuals(adamw + sam),
            "These are measured where each optimizer ended, at different training losses "
            f"(AdamW {train_losses[0]}, SAM {train_losses[1]}); on cross-entropy the Hessian shrinks as the "
            "predictions saturate, so a lower loss alone makes a solution look flatter.",
        ]
        gaps = [
            abs(s["final_surface_centre"] - s["final"]["train_loss"])
            for s in adamw + sam
            if s.get("final_surface_centre") is not None
        ]
        if gaps:
            lines += [
                "",
                f"Check: the final surfaces' centre loss equals the train loss within {max(gaps):.1e} "
                "(the probe is the whole training set).",
            ]
        lines += [
            "",
            f"![final landscapes]({images}/vit_landscapes.png)",
            "",
            f"![curvature and sharpness]({images}/vit_sharpness.png)",
            "",
        ]
    spans = {g: span_records(out, g) for g in ("adamw", "sam")}
    if any(spans.values()):
        lines += [
            "### The same surface at three distances",
            "",
            "One seed's final weights on one pair of random filter-normalized directions, "
            "drawn at three spans (loss range on each grid):",
            "",
        ]
        rows = [
            [g, f"{r.meta['span']:g}", f"{np.nanmin(r.losses):.4g}", f"{np.nanmax(r.losses):.4g}"]
            for g, recs in spans.items()
            for r in recs
        ]
        lines += _table(["run", "span", "min loss", "max loss"], rows)
        lines += ["", f"![three spans]({images}/vit_spans.png)", ""]
    lines += ["## All runs", ""]
    rows = [
        [
            g,
            str(s["seed"]),
            f"{s['weight_decay']:g}",
            f"{s['final']['train_loss']:.4f}",
            f"{100 * s['final']['train_acc']:.2f}",
            f"{100 * s['final']['test_acc']:.2f}",
            f"{s['seconds']:.1f}",
            f"{s['cpu_seconds']:.1f}",
        ]
        for g, runs in groups.items()
        for s in runs
    ]
    lines += _table(
        [
            "group",
            "seed",
            "weight decay",
            "train loss",
            "train acc. (%)",
            "test acc. (%)",
            "fit s",
            "fit CPU s",
        ],
        rows,
    )
    loads = study["load_average_after_each_run"]
    lines += [
        "",
        f"Runtime: {study['total_seconds'] / 60:.1f} min wall, {study['cpu_seconds'] / 60:.1f} min of CPU "
        f"time for {len(study['runs'])} runs on {study['accelerator']} ({study['cpu_count']} CPU cores, "
        f"{study['threads']} torch thread(s); 1-minute load average {study['load_average_start']:.2f} at the "
        f"start, {min(loads):.2f} to {max(loads):.2f} after the runs: other processes shared the cores). "
        f"torch {study['torch']}, lightning {study['lightning']}, Python {study['python']}.",
        "",
    ]
    return "\n".join(lines)


def _residuals(runs: Sequence[dict[str, Any]]) -> str:
    """How far the Lanczos eigenpairs are from converged: the largest residual ``|H y - theta y|``."""
    out = []
    for name in ("lambda_max", "lambda_min"):
        values = landscape_values(runs, f"hessian/{name}_residual")
        if values:
            out.append(f"{name} up to {max(values):.1e}")
    return f"Lanczos residuals |H y - theta y| over these runs: {', '.join(out)}." if out else ""


def _same_init(groups: dict[str, list[dict[str, Any]]]) -> bool:
    by_seed: dict[int, set[str]] = {}
    for runs in groups.values():
        for s in runs:
            by_seed.setdefault(s["seed"], set()).add(s["init_sha256"])
    return all(len(v) == 1 for v in by_seed.values())


def write_all(out: Path, docs: Path | None = None) -> dict[str, Any]:
    """Figures and ``REPORT.md`` under ``out``; with ``docs``, also ``docs/vit_study.md`` and its images."""
    out = Path(out)
    from vit_study_figures import write_figures  # matplotlib is only needed here

    study, groups = load_study(out)
    paths = write_figures(out, groups)
    text = report(out, study, groups, "figures")
    (out / "REPORT.md").write_text(text)
    if docs is not None:
        (docs / "images").mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, docs / "images" / p.name)
        (docs / "vit_study.md").write_text(report(out, study, groups, "images", docs=True))
    return {"study": study, "groups": groups, "figures": paths, "report": out / "REPORT.md"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", default=Path("lightning_logs/vit"))
    p.add_argument("--docs", type=Path, default=None, help="also write DOCS/vit_study.md and DOCS/images/")
    args = p.parse_args(argv)
    result = write_all(args.out, args.docs)
    print(f"{len(result['figures'])} figures in {args.out / 'figures'}, report {result['report']}")


if __name__ == "__main__":
    main()
