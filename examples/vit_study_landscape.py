"""What the landscape tools say about the two solutions of the ViT study, per seed and setting.

For each of the first ``--landscape-seeds`` seeds of a setting, the AdamW and the SAM chosen on
validation are rerun from the seed's initialization with a ``LossLandscapeCallback`` that saves their
weights (``save_weights=True``; its final surface carries the trust indicators). Then:

- :func:`lightning_landscape.compare_solutions`: the shared plane through the initialization and both
  final solutions, with both paths, and the barrier between the solutions;
- the functional API (``hessian_eigenvalues``, ``hessian_trace``, ``sam_sharpness``,
  ``average_sharpness``, ``edge_of_stability_ratio``, ``block_curvature``), with the same options, at
  AdamW's final weights, at SAM's, and at **matched training loss**: AdamW's weights (and optimizer
  state) after the first epoch whose training loss is at or below SAM's final one.

Everything goes to ``<out>/landscapes/<setting>/seed<k>/`` (``analysis.json``, the runs' records and
weights, ``shared/``). :func:`analyse` and :func:`section` turn those files into the report's section;
:func:`figures` draws the shared planes and barriers.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, TensorDataset

# Metric name -> (label, what a larger value means): the numbers compared and tried as predictors.
METRICS = {
    "lambda_max": "lambda_max",
    "trace": "trace",
    "sam_sharpness": "SAM sharpness (rho 0.05)",
    "average_sharpness": "average sharpness (sigma 0.01)",
    "eos_ratio": "edge-of-stability ratio (at the peak lr)",
}
OPTIONS: dict[str, dict[str, Any]] = {  # the same at every point
    "eigenvalues": {"which": "both", "max_iter": 40, "tol": 1e-4},
    "trace": {"samples": 16},
    "sam": {"rho": 0.05},
    "average": {"sigma": 0.01, "samples": 8},
    "eos": {"max_iter": 20},
    "blocks": {"max_iter": 10, "samples": 8},
}
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "eigenvalues": {"which": "both", "max_iter": 6, "tol": 1e-3},
    "trace": {"samples": 2},
    "sam": {"rho": 0.05},
    "average": {"sigma": 0.01, "samples": 2},
    "eos": {"max_iter": 4},
    "blocks": {"max_iter": 3, "samples": 2},
}


# ---------------------------------------------------------------------------------------- computing
def adamw_at_peak(module: Any, state: dict[str, Any] | None, lr: float, weight_decay: float) -> Any:
    """A fresh AdamW over ``module``'s parameters holding a run's AdamW ``state`` (moments) at the
    **peak** learning rate ``lr``: the cosine schedule ends at 0, where no stability threshold exists,
    so every edge-of-stability ratio here is taken against the peak rate (comparable across points)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    if state is not None:
        optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


def curvature(module: Any, batch: tuple[torch.Tensor, torch.Tensor], optimizer: Any, opts: dict) -> dict:
    """Every curvature number at the module's current weights, through the functional API."""
    from vit_adamw_vs_sam import cross_entropy

    from lightning_landscape.functional import (
        average_sharpness,
        block_curvature,
        edge_of_stability_ratio,
        hessian_eigenvalues,
        hessian_trace,
        sam_sharpness,
    )

    batches = [batch]
    eig = hessian_eigenvalues(module, cross_entropy, batches, **opts["eigenvalues"])
    trace = hessian_trace(module, cross_entropy, batches, **opts["trace"])
    sam = sam_sharpness(module, cross_entropy, batches, **opts["sam"])
    avg = average_sharpness(module, cross_entropy, batches, **opts["average"])
    eos = edge_of_stability_ratio(module, cross_entropy, batches, optimizer, **opts["eos"])
    names = ["net.embed", *(f"net.blocks.{i}" for i in range(len(module.net.blocks))), "net.norm", "net.head"]
    blocks = block_curvature(module, cross_entropy, batches, blocks=names, **opts["blocks"])
    return {
        "loss": eig.loss,
        "lambda_max": float(eig.eigenvalues[0]),
        "lambda_min": float(eig.eigenvalues[-1]),
        "lambda_max_residual": float(eig.residuals[0]),
        "lambda_converged": bool(eig.converged),
        "trace": trace.trace,
        "trace_stderr": trace.stderr,
        "sam_sharpness": sam.sharpness,
        "average_sharpness": avg.sharpness,
        "average_sharpness_stderr": avg.stderr,
        "eos_ratio": eos.ratio,
        "eos_sharpness": eos.sharpness,
        "eos_threshold": eos.threshold.threshold,
        "blocks": {
            n: {"lambda_max": float(lm), "trace": float(t)}
            for n, lm, t in zip(blocks.blocks, blocks.lambda_max, blocks.trace)
        },
    }


def _reliability(log_dir: Path) -> dict[str, Any]:
    """The trust indicators of a run's final surface (the callback's reliability record)."""
    from lightning_landscape import load_records

    recs = [r for r in load_records(log_dir / "landscape") if r.kind == "reliability"]
    if not recs:
        return {}
    rec = recs[-1]
    values = rec.as_dict()
    keep = (
        "path/on_plane_share",
        "path/loss_disagreement_max",
        "direction/curvature_spread",
        "path/structured",
        "failed_checks",
    )
    return {
        "flags": list(rec.flags),
        **{k: values[f"reliability/{k}"] for k in keep if f"reliability/{k}" in values},
    }


def run_seed(args: argparse.Namespace, setting: str, groups: dict[str, Any], seed: int, data: dict) -> dict:
    """Both chosen runs of one seed, their comparison and curvature; writes and returns ``analysis.json``."""
    from vit_adamw_vs_sam import DigitsViT, accuracy, cross_entropy, fit
    from vit_study_report import chosen

    from lightning_landscape import LossLandscapeCallback, compare_solutions

    folder = args.out / "landscapes" / setting / f"seed{seed}"
    opts = QUICK_OPTIONS if args.quick else OPTIONS
    train: TensorDataset = data["train"]
    x, y = train.tensors
    batch = (x, y)
    runs: dict[str, Any] = {}
    for opt in ("adamw", "sam"):
        s = groups[chosen(groups, opt)][0]
        callback = LossLandscapeCallback(
            loss_fn=cross_entropy,
            probe_dataloader=DataLoader(train, batch_size=len(train)),
            every_n_epochs=None,
            final_resolution=5 if args.quick else 13,
            line_resolution=5 if args.quick else 13,
            snapshot_every_n_epochs=1,
            final_metrics=("sam",),
            save_weights=True,
            log_figures=False,
            max_overhead=None,
        )
        module, evaluation, info = fit(
            args,
            opt,
            s["weight_decay"],
            s["rho"] or 0.0,
            seed,
            data,
            [callback],
            keep_states=True,
            root_dir=folder / opt,
        )
        runs[opt] = {"module": module, "evaluation": evaluation, "info": info, "summary": s}
    result: dict[str, Any] = {"setting": setting, "seed": seed}
    for opt, r in runs.items():
        h = r["evaluation"].history
        trained = r["module"].trainer.optimizers[0]
        base = getattr(trained, "base_optimizer", trained)  # SAM's AdamW, or AdamW
        optimizer = adamw_at_peak(r["module"], base.state_dict(), args.lr, r["summary"]["weight_decay"])
        result[opt] = {
            "group": chosen(groups, opt),
            "weight_decay": r["summary"]["weight_decay"],
            "rho": r["summary"]["rho"],
            "train_loss": h["train_loss"][-1],
            "test_acc": h["test_acc"][-1],
            "init_sha256": r["info"]["init_sha256"],
            "curvature": curvature(r["module"], batch, optimizer, opts),
            "reliability": _reliability(folder / opt),
        }
    # Matched training loss: the run that ends lower (usually AdamW), after the first epoch whose loss is
    # at or below the other run's final one.
    lower = "adamw" if result["adamw"]["train_loss"] <= result["sam"]["train_loss"] else "sam"
    other = "sam" if lower == "adamw" else "adamw"
    target = result[other]["train_loss"]
    ev = runs[lower]["evaluation"]
    h = ev.history
    epoch = next((i for i, v in enumerate(h["train_loss"]) if v <= target), None)
    if epoch is None:  # pragma: no cover - the lower run reaches the other's loss at its last epoch at worst
        result["matched"] = None
    else:
        s = runs[lower]["summary"]
        snapshot = DigitsViT(
            lower, args.lr, s["weight_decay"], s["rho"] or 0.0, args.epochs, model=args.model
        )
        snapshot.load_state_dict(ev.states[epoch])
        optimizer = adamw_at_peak(snapshot, ev.optimizer_states[epoch], args.lr, s["weight_decay"])
        result["matched"] = {
            "run": lower,
            "other": other,
            "epoch": h["epoch"][epoch],
            "train_loss": h["train_loss"][epoch],
            "target": target,
            "test_acc": h["test_acc"][epoch],
            "curvature": curvature(snapshot, batch, optimizer, opts),
        }
    comparison = compare_solutions(
        runs["adamw"]["module"],
        cross_entropy,
        [batch],
        folder / "adamw",
        folder / "sam",
        out_dir=folder / "shared",
        resolution=5 if args.quick else 17,
        barrier_resolution=5 if args.quick else 17,
        metric_fn=accuracy,
        metric_name="accuracy",
        labels=("adamw", "sam"),
    )
    result["comparison"] = comparison.summary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis.json").write_text(json.dumps(result, indent=1))
    return result


def run_all(args: argparse.Namespace, data: dict[str, dict[str, TensorDataset]]) -> list[dict]:
    """:func:`run_seed` for the first ``args.landscape_seeds`` seeds of every setting."""
    from vit_study_report import load_runs

    runs = load_runs(args.out)
    results = []
    for setting in args.settings:
        for seed in args.seeds_list[: args.landscape_seeds]:
            r = run_seed(args, setting, runs[setting], seed, data[setting])
            m = r["matched"]
            print(
                f"landscapes {setting} seed{seed}: barrier {r['comparison']['barrier']:.4f}, lambda_max "
                f"AdamW "
                f"{r['adamw']['curvature']['lambda_max']:.4g} SAM {r['sam']['curvature']['lambda_max']:.4g}"
                + (
                    f", {m['run']} at matched loss (epoch {m['epoch']}) {m['curvature']['lambda_max']:.4g}"
                    if m
                    else ""
                ),
                flush=True,
            )
            results.append(r)
    return results


# ---------------------------------------------------------------------------------------- reading
def load_analyses(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "landscapes").glob("*/seed*/analysis.json"))]


def analyse(out: Path, runs: dict[str, Any]) -> dict[str, Any]:
    """Tables and the predictor analysis from the ``analysis.json`` files (empty without them)."""
    from vit_study_report import difference, direction, spearman_interval

    analyses = load_analyses(out)
    if not analyses:
        return {}
    by_setting: dict[str, list[dict]] = {}
    for a in analyses:
        by_setting.setdefault(a["setting"], []).append(a)
    tables: dict[str, Any] = {}
    for setting, items in by_setting.items():
        matched = [a for a in items if a["matched"]]
        rows = {}
        for key in METRICS:
            ad = [a["adamw"]["curvature"][key] for a in items]
            sa = [a["sam"]["curvature"][key] for a in items]
            # SAM - AdamW at matched loss: the snapshot stands in for the run that ended lower.
            am = [
                a[("matched" if a["matched"]["run"] == "adamw" else "adamw")]["curvature"][key]
                for a in matched
            ]
            sm = [
                a[("matched" if a["matched"]["run"] == "sam" else "sam")]["curvature"][key] for a in matched
            ]
            snap = [a["matched"]["curvature"][key] for a in matched]
            rows[key] = {
                "adamw": ad,
                "sam": sa,
                "matched": snap,
                "final_diff": difference(ad, sa),
                "matched_diff": difference(am, sm),
            }
        tables[setting] = {"items": items, "matched": len(matched), "rows": rows}
    # Predictors: does SAM - AdamW in a number rank the SAM - AdamW test-accuracy difference (pairs), and
    # does the number rank test accuracy over all final solutions (runs)?
    predictors = {}
    for key in METRICS:
        dx = [a["sam"]["curvature"][key] - a["adamw"]["curvature"][key] for a in analyses]
        dy = [a["sam"]["test_acc"] - a["adamw"]["test_acc"] for a in analyses]
        xs = [a[o]["curvature"][key] for a in analyses for o in ("adamw", "sam")]
        ys = [a[o]["test_acc"] for a in analyses for o in ("adamw", "sam")]
        predictors[key] = {"pairs": spearman_interval(dx, dy), "runs": spearman_interval(xs, ys)}
    barrier = [a["comparison"]["barrier"] for a in analyses]
    # The reruns must reproduce the sweep's runs (same seed, same settings, deterministic training).
    rerun_gaps = [
        abs(a[o]["test_acc"] - s["final"]["test_acc"])
        for a in analyses
        for o in ("adamw", "sam")
        for s in runs.get(a["setting"], {}).get(a[o]["group"], [])
        if s["seed"] == a["seed"]
    ]
    # The summary line: lambda_max at the final solutions and at matched loss, and the best predictor.
    parts = []
    for setting, t in tables.items():
        row = t["rows"]["lambda_max"]
        final = direction(row["final_diff"], "sharper", "flatter", "not measurably different")
        matched = (
            direction(row["matched_diff"], "sharper", "flatter", "not measurably different")
            if t["matched"] > 1
            else "not measured (fewer than 2 matched snapshots)"
        )
        parts.append(
            f"{setting}: SAM's solution is {final} by lambda_max at the end, {matched} at matched loss"
        )
    n = len(analyses)
    preds = []
    for which, what, count in (
        ("pairs", "the SAM - AdamW test-accuracy difference across {n} seed-setting pairs", n),
        ("runs", "test accuracy across {n} final solutions (both settings pooled)", 2 * n),
    ):
        decided = {k: p[which] for k, p in predictors.items() if math.isfinite(p[which]["low"])}
        clear = [k for k, r in decided.items() if r["low"] > 0 or r["high"] < 0]
        if not decided:
            preds.append(
                f"too few points ({count}) for a rank-correlation interval on {what.format(n=count)}"
            )
        elif clear:
            best = max(clear, key=lambda k: abs(decided[k]["rho"]))
            r = decided[best]
            preds.append(
                f"{METRICS[best]} ranks {what.format(n=count)} (Spearman {r['rho']:+.2f} "
                f"[{r['low']:+.2f}, {r['high']:+.2f}])"
            )
        else:
            preds.append(f"no number ranks {what.format(n=count)} with an interval excluding 0")
    pred = "; ".join(preds)
    summary = (
        f"Landscapes ({n} seed-setting pairs): " + "; ".join(parts) + f"; {pred}. Median barrier between the "
        f"two solutions {np.median(barrier):.3g}."
    )
    return {
        "tables": tables,
        "predictors": predictors,
        "summary": summary,
        "analyses": analyses,
        "rerun_gap": max(rerun_gaps) if rerun_gaps else math.nan,
        "reruns": len(rerun_gaps),
    }


def _f(v: float) -> str:
    return f"{v:.4g}"


def section(landscape: dict[str, Any], images: str) -> list[str]:
    """The report's section on the landscapes."""
    from vit_study_report import _table, fmt, fmt_interval

    if not landscape:
        return []
    lines = [
        "## What the landscape tools say",
        "",
        "Per seed and setting, the chosen AdamW and SAM rerun from the same initialization with weights "
        "saved; curvature by the functional API with the same options at three points: each final "
        "solution, and **at matched training loss**: the run that ends at the lower training loss (on the "
        "labels trained on; usually AdamW), snapshotted after the first epoch whose loss is at or below the "
        "other run's final one, with its optimizer state. On cross-entropy a lower loss "
        "alone makes a solution look flatter, so the matched column is the fair comparison. Curvature is "
        "of the loss on the whole training set with the labels trained on. The reruns reproduce the "
        f"sweep's runs: their final test accuracies differ by at most {landscape['rerun_gap']:.1e} over "
        f"{landscape['reruns']} reruns.",
        "",
    ]
    for setting, t in landscape["tables"].items():
        items = t["items"]
        lines += [f"### {setting}: {len(items)} seeds, {t['matched']} with a matched-loss snapshot", ""]
        rows = []
        for key, name in METRICS.items():
            r = t["rows"][key]
            rows.append(
                [
                    name,
                    fmt(r["adamw"], 1, 4, "g"),
                    fmt(r["sam"], 1, 4, "g"),
                    fmt(r["matched"], 1, 4, "g") if r["matched"] else "-",
                    fmt_interval(r["final_diff"], 1, 3, "g"),
                    fmt_interval(r["matched_diff"], 1, 3, "g") if r["matched"] else "-",
                ]
            )
        lines += _table(
            [
                "mean ± std",
                "AdamW final",
                "SAM final",
                "lower-loss run at matched loss",
                "SAM - AdamW final [Welch 95%]",
                "SAM - AdamW matched [Welch 95%]",
            ],
            rows,
        )
        snaps = [
            f"seed {a['seed']}: {a['matched']['run']} at epoch {a['matched']['epoch']}, loss "
            f"{_f(a['matched']['train_loss'])} (the other's final {_f(a['matched']['target'])})"
            for a in items
            if a["matched"]
        ]
        lines += ["", "Matched snapshots: " + ("; ".join(snaps) or "none") + ".", ""]
        blocks = list(items[0]["adamw"]["curvature"]["blocks"])
        brows = []
        for b in blocks:
            cells = [b]
            for where in ("adamw", "sam", "matched"):
                vals = [a[where]["curvature"]["blocks"][b]["lambda_max"] for a in items if a.get(where)]
                cells.append(fmt(vals, 1, 3, "g") if vals else "-")
            brows.append(cells)
        lines += ["Per-block lambda_max (the Hessian restricted to each block):", ""]
        lines += _table(["block", "AdamW final", "SAM final", "lower-loss run at matched loss"], brows)
        crows = []
        for a in items:
            c = a["comparison"]
            flags = {o: "; ".join(a[o]["reliability"].get("flags", [])) or "none" for o in ("adamw", "sam")}
            crows.append(
                [
                    str(a["seed"]),
                    _f(c["barrier"]),
                    _f(c["distance_A_B"]),
                    _f(c["loss_A"]),
                    _f(c["loss_B"]),
                    _f(c.get("path_off_plane_max", math.nan)),
                    flags["adamw"],
                    flags["sam"],
                ]
            )
        lines += ["", "Shared plane, barrier and trust indicators per seed:", ""]
        lines += _table(
            [
                "seed",
                "barrier",
                "distance AdamW-SAM",
                "loss AdamW",
                "loss SAM",
                "paths off the plane (max, relative)",
                "AdamW final surface: failed checks",
                "SAM final surface: failed checks",
            ],
            crows,
        )
        lines += ["", f"![shared plane, {setting}]({images}/vit_shared_{setting}.png)", ""]
        lines += [
            f"The picture is seed {items[0]['seed']}'s; its trust indicators are in the row for that seed: "
            "the paths' largest distance off the plane (relative to their length) says how much of each "
            "trajectory the plane shows, and the failed checks are those of each run's own final surface "
            "(docs/reliability.md).",
            "",
        ]
    lines += [
        "### Does any number predict the test-accuracy difference?",
        "",
        "Spearman rank correlation with a Fisher-z 95 % interval, over the seed-setting pairs (SAM - AdamW "
        "in the number against SAM - AdamW in test accuracy) and over all final solutions (the number "
        "against test accuracy). Reported whichever way it comes out; few points make wide intervals.",
        "",
    ]
    rows = []
    for key, p in landscape["predictors"].items():
        cells = [METRICS[key]]
        for which in ("pairs", "runs"):
            r = p[which]
            cells.append(
                f"{r['rho']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] (n={r['n']})"
                if math.isfinite(r["low"])
                else f"{r['rho']:+.2f} (n={r['n']}: no interval)"
            )
        rows.append(cells)
    lines += _table(["number", "differences (pairs)", "values (all final solutions)"], rows)
    lines += [
        "",
        "Across both settings the values mix two regimes (clean and noisy), so a correlation over all final "
        "solutions can come from the setting alone; the pairs column compares within a seed and setting.",
        "",
    ]
    return lines


def figures(out: Path, runs: dict[str, Any]) -> dict[str, Figure]:
    """The shared plane and the barrier of the first analysed seed of each setting."""
    import matplotlib.image as mpimg

    from lightning_landscape.plots import figure_to_png
    from lightning_landscape.plots.solutions import barrier_figure, shared_plane_figure
    from lightning_landscape.solutions import load_solutions

    figs: dict[str, Figure] = {}
    for setting in ("noisy", "clean"):
        folders = sorted((out / "landscapes" / setting).glob("seed*/shared"))
        if not folders:
            continue
        comp = load_solutions(folders[0])
        fig = Figure(figsize=(13, 5.2), layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])
        for sub, src in (
            (left, shared_plane_figure(comp.surface)),
            (right, barrier_figure([r for r in (comp.barrier, comp.naive_barrier) if r is not None])),
        ):
            # The package's figures drawn into this one: each rendered to an image and shown.
            ax = sub.subplots()
            ax.imshow(mpimg.imread(io.BytesIO(figure_to_png(src)), format="png"))
            ax.set_axis_off()
        fig.suptitle(
            f"{setting}: the plane through the initialization and both solutions, and the barrier "
            f"({folders[0].parent.name})"
        )
        figs[f"vit_shared_{setting}"] = fig
    return figs
