"""Figures and REPORT.md of the ViT study (``vit_adamw_vs_sam.py``), from the files its runs wrote.

Reads ``<out>/study.json``, every ``<out>/<setting>/<group>/seed<k>/summary.json``, the noise record
``<out>/noisy/noise.json`` and the landscape results ``<out>/landscapes/<setting>/seed<k>/`` (when
present); writes ``<out>/figures/vit_*.png`` and ``<out>/REPORT.md``. Every number in the report is
computed here from those files; hyperparameters are chosen on the validation accuracy, never the test.

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

from lightning_landscape.records.stats import welch_interval

SETTINGS = ("noisy", "clean")  # the order of the report: the effect first, then the control

Runs = list[dict[str, Any]]


# ---------------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan, len(a)


def difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """``mean(b) - mean(a)`` with its Welch 95 % interval
    (:func:`lightning_landscape.records.stats.welch_interval`); NaN bounds for fewer than two values
    on a side."""
    if len(a) < 2 or len(b) < 2:
        return {"difference": float(np.mean(b) - np.mean(a)), "low": math.nan, "high": math.nan}
    w = welch_interval(a, b)
    return {"difference": w.difference, "low": w.low, "high": w.high}


def spearman_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Spearman's rank correlation with a Fisher-z interval (standard error ``1.03 / sqrt(n - 3)``,
    Fieller et al. 1957); NaN bounds below six pairs (too few for the approximation).

    Example::

        >>> r = spearman_interval([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
        >>> r["rho"], r["n"]
        (1.0, 5)
    """
    from scipy import stats

    n = len(x)
    rho = float(stats.spearmanr(x, y).statistic) if n > 1 else math.nan
    if n < 6 or not math.isfinite(rho):
        return {"rho": rho, "low": math.nan, "high": math.nan, "n": n}
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), 1.03 / math.sqrt(n - 3)
    q = float(stats.norm.ppf(0.5 + level / 2))
    return {"rho": rho, "low": math.tanh(z - q * se), "high": math.tanh(z + q * se), "n": n}


# ---------------------------------------------------------------------------------------- loading
def load_study(out: Path) -> tuple[dict[str, Any], dict[str, dict[str, Runs]]]:
    """The settings (``study.json``) and :func:`load_runs`."""
    return json.loads((out / "study.json").read_text()), load_runs(out)


def load_runs(out: Path) -> dict[str, dict[str, Runs]]:
    """The summaries by setting and group (AdamW by weight decay, then SAM by rho), seeds in order."""
    runs: dict[str, dict[str, Runs]] = {}
    for path in sorted(out.glob("*/*/seed*/summary.json")):
        summary = json.loads(path.read_text())
        runs.setdefault(summary["setting"], {}).setdefault(summary["group"], []).append(summary)
    for groups in runs.values():
        for group in groups.values():
            group.sort(key=lambda s: s["seed"])
    ordered = {}
    for setting in [s for s in SETTINGS if s in runs]:
        groups = runs[setting]
        order = sorted(
            groups,
            key=lambda g: (
                groups[g][0]["optimizer"],
                groups[g][0]["weight_decay"],
                groups[g][0]["rho"] or 0.0,
            ),
        )
        ordered[setting] = {g: groups[g] for g in order}
    return ordered


def finals(runs: Runs, key: str) -> list[float]:
    """A final value of each run (``final[key]``, or ``peak_test_acc``, or ``early_stop.test_acc``)."""
    if key == "peak_test_acc":
        return [float(s["peak_test_acc"]) for s in runs]
    if key == "early_stop_test_acc":
        return [float(s["early_stop"]["test_acc"]) for s in runs]
    return [float(s["final"][key]) for s in runs]


def chosen(groups: dict[str, Runs], optimizer: str) -> str:
    """The group of ``optimizer`` with the highest mean final **validation** accuracy (the first on a tie)."""
    names = [g for g in groups if groups[g][0]["optimizer"] == optimizer]
    return max(names, key=lambda g: float(np.mean(finals(groups[g], "val_acc"))))


def paired_by_seed(a: Runs, b: Runs) -> tuple[Runs, Runs]:
    seeds = sorted({s["seed"] for s in a} & {s["seed"] for s in b})
    return [s for s in a if s["seed"] in seeds], [s for s in b if s["seed"] in seeds]


# ---------------------------------------------------------------------------------------- formatting
def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 4, spec: str = "f") -> str:
    """``mean ± std`` (std omitted for one value), scaled (100 for percentages)."""
    m, s, _ = mean_std([v * scale for v in values])
    return f"{m:.{digits}{spec}}" + ("" if math.isnan(s) else f" ± {s:.{digits}{spec}}")


def fmt_interval(r: dict[str, float], scale: float = 1.0, digits: int = 2, spec: str = "f") -> str:
    d, lo, hi = (r[k] * scale for k in ("difference", "low", "high"))
    if math.isnan(lo):
        return f"{d:+.{digits}{spec}} (no interval: fewer than 2 seeds)"
    return f"{d:+.{digits}{spec}} [{lo:+.{digits}{spec}}, {hi:+.{digits}{spec}}]"


def direction(r: dict[str, float], better: str, worse: str, same: str) -> str:
    """The word for an interval: ``better`` above 0, ``worse`` below, ``same`` across it."""
    if math.isnan(r["low"]):
        return "undecided (fewer than 2 seeds)"
    return better if r["low"] > 0 else worse if r["high"] < 0 else same


def verdict(adamw: Sequence[float], sam: Sequence[float], what: str = "AdamW") -> str:
    """One plain sentence on the test-accuracy difference SAM - AdamW, from its Welch interval."""
    r = difference(adamw, sam)
    n = f"{len(sam)} SAM and {len(adamw)} AdamW seeds"
    if math.isnan(r["low"]):
        return (
            f"**Not enough seeds to decide.** SAM - {what} test accuracy: {100 * r['difference']:+.2f} "
            f"percentage points ({n}: no interval); run with `--seeds 3` or more."
        )
    text = f"SAM - {what} test accuracy: {fmt_interval(r, 100)} percentage points (Welch 95% interval, {n})"
    if r["low"] > 0:
        return f"**SAM generalizes better than {what} here.** {text}: the interval excludes 0."
    if r["high"] < 0:
        return f"**SAM generalizes worse than {what} here.** {text}: the interval excludes 0."
    return f"**SAM does not generalize measurably better than {what} here.** {text}: the interval includes 0."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def label(runs: Runs) -> str:
    s = runs[0]
    if s["optimizer"] == "sam":
        return f"SAM rho {s['rho']:g} (wd {s['weight_decay']:g})"
    return f"AdamW wd {s['weight_decay']:g}"


ROWS = (  # the comparison table: key, label, scale, digits
    ("train_loss", "final train loss, labels trained on", 1, 4),
    ("clean_train_loss", "final train loss, clean labels", 1, 4),
    ("memorized", "flipped labels memorized (%)", 100, 2),
    ("val_acc", "validation accuracy (%)", 100, 2),
    ("test_acc", "clean test accuracy (%)", 100, 2),
    ("peak_test_acc", "peak test accuracy along training (%)", 100, 2),
    ("early_stop_test_acc", "test accuracy, early-stopped on validation (%)", 100, 2),
)


def headline(groups: dict[str, Runs]) -> dict[str, Any]:
    """The chosen AdamW and SAM of one setting and the key differences (SAM - AdamW, Welch 95 %)."""
    a_name, s_name = chosen(groups, "adamw"), chosen(groups, "sam")
    adamw, sam = paired_by_seed(groups[a_name], groups[s_name])
    best_test = max(
        (g for g in groups if groups[g][0]["optimizer"] == "adamw"),
        key=lambda g: float(np.mean(finals(groups[g], "test_acc"))),
    )
    return {
        "adamw": a_name,
        "sam": s_name,
        "adamw_runs": adamw,
        "sam_runs": sam,
        "best_test_adamw": best_test,
        "test": difference(finals(adamw, "test_acc"), finals(sam, "test_acc")),
        "train_loss": difference(finals(adamw, "train_loss"), finals(sam, "train_loss")),
        "clean_train_loss": difference(finals(adamw, "clean_train_loss"), finals(sam, "clean_train_loss")),
        "memorized": difference(finals(adamw, "memorized"), finals(sam, "memorized")),
        "vs_early_stop": difference(finals(adamw, "early_stop_test_acc"), finals(sam, "test_acc")),
        "vs_peak": difference(finals(adamw, "peak_test_acc"), finals(sam, "peak_test_acc")),
        "vs_best_test_adamw": difference(finals(groups[best_test], "test_acc"), finals(sam, "test_acc")),
        **_same_weight_decay(groups, s_name),
    }


def _same_weight_decay(groups: dict[str, Runs], sam_name: str) -> dict[str, Any]:
    """SAM against AdamW at SAM's own weight decay (untuned AdamW), when that AdamW was run."""
    wd = groups[sam_name][0]["weight_decay"]
    same = [g for g in groups if groups[g][0]["optimizer"] == "adamw" and groups[g][0]["weight_decay"] == wd]
    if not same:
        return {"same_wd": None}
    adamw, sam = paired_by_seed(groups[same[0]], groups[sam_name])
    return {
        "same_wd": same[0],
        "same_wd_runs": adamw,
        "same_wd_test": difference(finals(adamw, "test_acc"), finals(sam, "test_acc")),
        "same_wd_memorized": difference(finals(adamw, "memorized"), finals(sam, "memorized")),
        "same_wd_early_stop": difference(finals(adamw, "early_stop_test_acc"), finals(sam, "test_acc")),
    }


def summary_lines(
    study: dict[str, Any], runs: dict[str, dict[str, Runs]], landscape: dict[str, Any]
) -> list[str]:
    """The five lines a reader can quote, each computed from the runs."""
    lines = []
    for setting in runs:
        h = headline(runs[setting])
        a, s = runs[setting][h["adamw"]][0], runs[setting][h["sam"]][0]
        choice = (
            f"SAM rho {s['rho']:g} vs AdamW weight decay {a['weight_decay']:g}, both chosen on validation"
        )
        word = direction(h["test"], "SAM higher", "SAM lower", "no measurable difference")
        n = len(h["sam_runs"])
        if setting == "noisy":
            lines.append(
                f"1. **{100 * study['noise']:g} % flipped training labels**: clean test accuracy SAM - AdamW "
                f"{fmt_interval(h['test'], 100)} points ({word}; {choice}; {n} seeds, Welch 95 %)."
            )
            pct = {  # mean % of flipped labels memorized
                k: 100 * mean_std(finals(r, "memorized"))[0]
                for k, r in (
                    ("chosen", h["adamw_runs"]),
                    ("sam", h["sam_runs"]),
                    ("same", h.get("same_wd_runs")),
                )
                if r
            }
            if h["same_wd"] is not None:
                d = h["same_wd_test"]
                word0 = direction(d, "SAM higher", "SAM lower", "no measurable difference")
                memo = direction(h["same_wd_memorized"], "more", "fewer", "not measurably more or fewer")
                about = (
                    ": there the effect is largely about memorizing the flipped labels"
                    if word0 == "SAM higher" and memo == "fewer"
                    else ""
                )
                wd0, wd1 = runs[setting][h["same_wd"]][0]["weight_decay"], a["weight_decay"]
                lines.append(
                    f"2. Against AdamW at SAM's own weight decay ({wd0:g}) SAM's test accuracy is "
                    f"{fmt_interval(d, 100)} points ({word0}); that AdamW memorizes {pct['same']:.0f} % of "
                    f"the flipped labels, SAM {pct['sam']:.0f} %{about}. AdamW's weight decay chosen on "
                    f"validation ({wd1:g}) cuts its memorization to {pct['chosen']:.0f} % and the gap to "
                    "line 1's."
                )
            else:
                lines.append(
                    f"2. AdamW (chosen) memorizes {pct['chosen']:.0f} % of the flipped labels, SAM "
                    f"{pct['sam']:.0f} % ({fmt_interval(h['memorized'], 100, 1)} points)."
                )
            lines.append(
                "3. Early stopping competes: SAM's final weights vs AdamW stopped at its best validation "
                f"epoch, SAM - AdamW {fmt_interval(h['vs_early_stop'], 100)} points (chosen weight decay)"
                + (
                    f", {fmt_interval(h['same_wd_early_stop'], 100)} (AdamW at SAM's weight decay)"
                    if h["same_wd"] is not None
                    else ""
                )
                + f"; against the AdamW weight decay best *on test* "
                f"({runs[setting][h['best_test_adamw']][0]['weight_decay']:g}, an oracle): "
                f"{fmt_interval(h['vs_best_test_adamw'], 100)}."
            )
        else:
            lines.append(
                f"4. **Clean labels (the control)**: SAM - AdamW {fmt_interval(h['test'], 100)} points "
                f"({word}; {choice}; {n} seeds)."
            )
    lines.append(
        "5. " + (landscape.get("summary") or "Landscapes: not computed in this run (`--landscape-seeds 0`).")
    )
    return lines


def report(
    out: Path, study: dict[str, Any], runs: dict[str, dict[str, Runs]], images: str, docs: bool = False
) -> str:
    """REPORT.md's text; ``images`` is the folder of the PNGs relative to the report."""
    import vit_study_landscape as lr

    model = study["model"]
    cmd = study["command"].strip()
    if docs:
        regenerate = (
            f"Regenerate this page: `{cmd} --docs docs` (or `make study`); from runs "
            "already on disk: `python examples/vit_adamw_vs_sam.py --figures-only --docs docs`."
        )
    else:
        regenerate = f"Regenerate: `{cmd}` (or `make study`; `--figures-only` redraws from saved runs)."
    landscape = lr.analyse(out, runs)
    any_run = next(iter(next(iter(runs.values())).values()))[0]
    data = "CIFAR-10" if study.get("dataset") == "cifar10" else "8x8 digits"
    lines = [
        f"# A vision transformer on {data}: AdamW vs SAM, clean and noisy labels",
        "",
        *summary_lines(study, runs, landscape),
        "",
        "Generated by `examples/vit_study_report.py` from the runs' files; no number here is typed by hand.",
        regenerate,
        "",
        "## Setup",
        "",
        f"{study['train_size']} training, {study['val_size']} validation and {study['test_size']} test "
        f"images, three disjoint parts of one fixed stratified split. A ViT with "
        f"{model['patch']}x{model['patch']}-pixel patches ({any_run['parameters']:,} parameters, "
        f"{json.dumps(model)}); {study['epochs']} epochs, batch {study['batch_size']}, learning rate "
        f"{study['lr']:g} on a cosine schedule. AdamW at weight decay "
        f"{', '.join(f'{w:g}' for w in study['sweep'])}; SAM over AdamW (weight decay "
        f"{study['weight_decay']:g}) at rho {', '.join(f'{r:g}' for r in study['rhos'])}. Seeds "
        f"{', '.join(map(str, study['seeds']))}: every run at a seed starts from the same initialization "
        f"(checked: {'identical' if _same_init(runs) else 'NOT identical'} SHA-256 of the initial weights) "
        "and sees the same batch order.",
        "",
        "**Choosing hyperparameters**: each optimizer's weight decay (AdamW) and rho (SAM) is the one with "
        "the highest mean final accuracy on the **validation** images, which are held apart from the test "
        "images; the test set is never used to choose. (Validation labels are clean in both settings.) "
        "Early stopping uses the same validation images: the epoch of highest validation accuracy.",
        "",
    ]
    for setting, groups in runs.items():
        lines += _setting_section(setting, groups, out, study)
    lines += [f"![training curves]({images}/vit_training.png)", "", f"![sweep]({images}/vit_sweep.png)", ""]
    lines += _where_it_disappears(runs)
    lines += lr.section(landscape, images)
    lines += _all_runs(runs, study)
    return "\n".join(lines)


def _setting_section(setting: str, groups: dict[str, Runs], out: Path, study: dict[str, Any]) -> list[str]:
    h = headline(groups)
    lines = [f"## Setting: {setting}", ""]
    if setting == "noisy":
        noise = json.loads((out / "noisy" / "noise.json").read_text())
        lines += [
            f"{len(noise['flipped'])} of {noise['train_size']} training labels "
            f"({100 * len(noise['flipped']) / noise['train_size']:.1f} %) flipped to another class, "
            "uniformly "
            f"(symmetric noise), the set drawn once with seed {noise['seed']} and the same for every run; "
            "the list is in `noisy/noise.json`. Validation and test labels are clean.",
            "",
        ]
    else:
        lines += ["The control: the training labels as they are.", ""]
    rows = []
    for g, r in groups.items():
        mark = " **(chosen)**" if g in (h["adamw"], h["sam"]) else ""
        rows.append(
            [
                label(r) + mark,
                str(len(r)),
                fmt(finals(r, "val_acc"), 100, 2),
                fmt(finals(r, "test_acc"), 100, 2),
                fmt(finals(r, "peak_test_acc"), 100, 2),
                fmt(finals(r, "early_stop_test_acc"), 100, 2),
                fmt(finals(r, "train_loss"), 1, 4),
                fmt(finals(r, "clean_train_loss"), 1, 4),
                fmt(finals(r, "memorized"), 100, 1),
            ]
        )
    lines += _table(
        [
            "run",
            "seeds",
            "val. acc. (%)",
            "test acc. (%)",
            "peak test acc. (%)",
            "early-stopped test acc. (%)",
            "train loss (labels trained on)",
            "train loss (clean labels)",
            "flipped memorized (%)",
        ],
        rows,
    )
    adamw, sam = h["adamw_runs"], h["sam_runs"]
    rows = []
    for key, name, scale, digits in ROWS:
        a, s = finals(adamw, key), finals(sam, key)
        rows.append(
            [
                name,
                fmt(a, scale, digits),
                fmt(s, scale, digits),
                fmt_interval(difference(a, s), scale, digits),
            ]
        )
    lines += [
        "",
        f"Chosen on validation: {label(groups[h['adamw']])} and {label(groups[h['sam']])}.",
        "",
        verdict(finals(adamw, "test_acc"), finals(sam, "test_acc")),
        "",
    ]
    lines += _table(
        ["mean ± std over seeds", "AdamW (chosen)", "SAM (chosen)", "SAM - AdamW [Welch 95%]"], rows
    )
    best = groups[h["best_test_adamw"]]
    lines += [
        "",
        "SAM's final weights against AdamW early-stopped on validation: "
        f"{fmt_interval(h['vs_early_stop'], 100)} "
        f"points; peak test accuracy along training (an upper bound no one can select without the test set), "
        f"SAM - AdamW: {fmt_interval(h['vs_peak'], 100)}. The AdamW weight decay best on test "
        f"({best[0]['weight_decay']:g}, not used for any choice): SAM - it "
        f"{fmt_interval(h['vs_best_test_adamw'], 100)} points.",
        "",
    ]
    if h["same_wd"] is not None:
        wd0 = groups[h["same_wd"]][0]["weight_decay"]
        lines += [
            f"Against AdamW at SAM's own weight decay ({wd0:g}, not tuned), SAM - AdamW: clean test accuracy "
            f"{fmt_interval(h['same_wd_test'], 100)} points, flipped labels memorized "
            f"{fmt_interval(h['same_wd_memorized'], 100)} points, SAM's final weights against that AdamW "
            f"early-stopped on validation {fmt_interval(h['same_wd_early_stop'], 100)} points.",
            "",
        ]
    return lines


def _where_it_disappears(runs: dict[str, dict[str, Runs]]) -> list[str]:
    """Every SAM against the chosen AdamW, and every AdamW against the chosen SAM, per setting: where the
    effect holds, where it disappears, and whether any weight decay closes the gap."""
    lines = ["## Where the effect holds and where it disappears", ""]
    rows = []
    for setting, groups in runs.items():
        best = {opt: groups[chosen(groups, opt)] for opt in ("adamw", "sam")}
        for r in groups.values():
            other = best["adamw" if r[0]["optimizer"] == "sam" else "sam"]
            a, s = paired_by_seed(r, other) if r[0]["optimizer"] == "adamw" else paired_by_seed(other, r)
            d = difference(finals(a, "test_acc"), finals(s, "test_acc"))
            against = f"{label(a)} vs {label(s)}"
            if any(row[:2] == [setting, against] for row in rows):
                continue  # the chosen pair, met from both sides
            reading = direction(d, "SAM higher", "SAM lower", "no measurable difference")
            rows.append([setting, against, fmt_interval(d, 100), reading])
    lines += _table(
        ["setting", "AdamW vs SAM", "SAM - AdamW, test acc. (points) [Welch 95%]", "reading"], rows
    )
    lines += [
        "",
        "Each SAM against the AdamW chosen on validation, and each AdamW weight decay against the SAM chosen "
        "on validation: the rows with the AdamW weight decays show whether any of them closes the gap. Only "
        "the settings, radii and weight decays above were measured. The issue's probe also reported the "
        "effect shrinking or reversing with fewer images, a much smaller model or a lower learning rate; "
        "this study does not measure those and makes no claim about them.",
        "",
    ]
    return lines


def _all_runs(runs: dict[str, dict[str, Runs]], study: dict[str, Any]) -> list[str]:
    lines = ["## All runs", ""]
    rows = [
        [
            setting,
            g,
            str(s["seed"]),
            f"{s['weight_decay']:g}",
            "-" if s["rho"] is None else f"{s['rho']:g}",
            f"{s['final']['train_loss']:.4f}",
            f"{s['final']['clean_train_loss']:.4f}",
            f"{100 * s['final']['val_acc']:.2f}",
            f"{100 * s['final']['test_acc']:.2f}",
            f"{s['seconds']:.1f}",
            f"{s['cpu_seconds']:.1f}",
        ]
        for setting, groups in runs.items()
        for g, r in groups.items()
        for s in r
    ]
    lines += _table(
        [
            "setting",
            "group",
            "seed",
            "weight decay",
            "rho",
            "train loss",
            "clean train loss",
            "val. acc. (%)",
            "test acc. (%)",
            "fit s",
            "fit CPU s",
        ],
        rows,
    )
    loads = study["load_average_after_each_run"] or [math.nan]
    n = sum(len(r) for groups in runs.values() for r in groups.values())
    cpu = sum(s["cpu_seconds"] for groups in runs.values() for r in groups.values() for s in r)
    land = study.get("landscape_timing") or {}
    land_text = (
        f" The landscape reruns and analyses took {land['seconds'] / 60:.1f} min wall, "
        f"{land['cpu_seconds'] / 60:.1f} min CPU."
        if land
        else ""
    )
    lone = study["runs_cpu_seconds"] / 2 + (land.get("cpu_seconds", 0.0) if land else 0.0)
    land_text += (
        f" On two idle cores with `--jobs 2` (the default) the whole study would take about {lone / 60:.1f} "
        "min: the runs' CPU time over two processes plus the landscapes' (one process)."
    )
    lines += [
        "",
        f"Runtime: the {n} runs took {study['runs_seconds'] / 60:.1f} min wall and "
        f"{study['runs_cpu_seconds'] / 60:.1f} min of CPU time ({cpu / 60:.1f} min of it inside `fit`) on "
        f"{study['accelerator']} ({study['cpu_count']} CPU cores, {study.get('jobs', 1)} process(es) with "
        f"{study['threads']} torch thread(s) each; "
        "1-minute "
        f"load average {study['load_average_start']:.2f} at the start, {min(loads):.2f} to {max(loads):.2f} "
        f"after the runs: other processes shared the cores, so wall time overstates a lone run; CPU time is "
        f"the better estimate of single-user time).{land_text} torch {study['torch']}, lightning "
        f"{study['lightning']}, Python {study['python']}.",
        "",
    ]
    return lines


def _same_init(runs: dict[str, dict[str, Runs]]) -> bool:
    by_seed: dict[int, set[str]] = {}
    for groups in runs.values():
        for r in groups.values():
            for s in r:
                by_seed.setdefault(s["seed"], set()).add(s["init_sha256"])
    return all(len(v) == 1 for v in by_seed.values())


def write_all(out: Path, docs: Path | None = None) -> dict[str, Any]:
    """Figures and ``REPORT.md`` under ``out``; with ``docs``, also ``docs/vit_study.md`` and its images."""
    out = Path(out)
    from vit_study_figures import write_figures  # matplotlib is only needed here

    study, runs = load_study(out)
    paths = write_figures(out, runs)
    text = report(out, study, runs, "figures")
    (out / "REPORT.md").write_text(text)
    if docs is not None:
        (docs / "images").mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, docs / "images" / p.name)
        (docs / "vit_study.md").write_text(report(out, study, runs, "images", docs=True))
    return {"study": study, "runs": runs, "figures": paths, "report": out / "REPORT.md"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", default=Path("lightning_logs/vit"))
    p.add_argument("--docs", type=Path, default=None, help="also write DOCS/vit_study.md and DOCS/images/")
    args = p.parse_args(argv)
    result = write_all(args.out, args.docs)
    print(f"{len(result['figures'])} figures in {args.out / 'figures'}, report {result['report']}")


if __name__ == "__main__":
    main()
