"""The ViT study (examples/vit_adamw_vs_sam.py) end to end, tiny: figures, REPORT.md, and its numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_landscape import load_records

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIGURES = ("vit_training", "vit_weight_decay", "vit_landscapes", "vit_sharpness", "vit_spans")


def _module(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the example imports its sibling modules
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(report: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first table after ``heading``."""
    section = report[report.index(heading) :]
    rows, started = [], False
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return rows[2:]


def _first_number(cell: str) -> float:
    return float(re.match(r"[+-]?\d+(\.\d+)?(e[+-]?\d+)?", cell).group(0))


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    out = tmp_path_factory.mktemp("vit")
    result = _module("vit_adamw_vs_sam").main(["--quick", "--out", str(out), "--threads", "1"])
    return out, result


def test_quick_study_writes_runs_figures_and_report(quick_study):
    out, result = quick_study
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summaries = {
        (s["group"], s["seed"]): s
        for s in (json.loads(p.read_text()) for p in out.glob("*/seed*/summary.json"))
    }
    assert set(summaries) == {("adamw", 0), ("sam", 0)}
    adamw, sam = summaries["adamw", 0], summaries["sam", 0]
    assert adamw["init_sha256"] == sam["init_sha256"]  # the same initialization per seed
    assert adamw["weight_decay"] == sam["weight_decay"] and sam["rho"] > 0
    for s in (adamw, sam):
        h = s["history"]
        assert h["epoch"] == [0, 1] and len(h["test_acc"]) == 2  # before training and after the epoch
        assert s["final"]["test_acc"] == h["test_acc"][-1]
        assert math.isclose(s["final"]["gap"], h["train_acc"][-1] - h["test_acc"][-1])
        # The probe is the whole training set: the callback's final surface centre is the training loss
        # that the example measured on its own.
        assert abs(s["final_surface_centre"] - s["final"]["train_loss"]) < 1e-5
        run_dir = out / s["group"] / f"seed{s['seed']}"
        (final_metrics,) = [
            r
            for r in load_records(run_dir / "landscape")
            if r.kind == "metrics" and r.meta["stage"] == "final"
        ]
        assert s["landscape"] == final_metrics.as_dict()
    spans = load_records(out / "spans" / "adamw" / "seed0")
    assert sorted(r.meta["span"] for r in spans) == [0.1, 1.0, 10.0]
    assert all(r.centre_loss == pytest.approx(adamw["final"]["train_loss"], abs=1e-5) for r in spans)
    assert result["report"] == out / "REPORT.md"


def test_report_numbers_equal_the_run_outputs(quick_study):
    out, _ = quick_study
    report = (out / "REPORT.md").read_text()
    summaries = [json.loads(p.read_text()) for p in out.glob("*/seed*/summary.json")]
    rows = _table(report, "## All runs")
    assert len(rows) == len(summaries)
    for group, seed, wd, train_loss, train_acc, test_acc, *_ in rows:
        (s,) = [s for s in summaries if s["group"] == group and s["seed"] == int(seed)]
        assert float(wd) == s["weight_decay"]
        assert abs(float(train_loss) - s["final"]["train_loss"]) <= 5e-5
        assert abs(float(train_acc) - 100 * s["final"]["train_acc"]) <= 5e-3
        assert abs(float(test_acc) - 100 * s["final"]["test_acc"]) <= 5e-3
    comparison = {row[0]: row for row in _table(report, "## AdamW vs SAM")}
    for column, group in ((1, "adamw"), (2, "sam")):
        accs = [100 * s["final"]["test_acc"] for s in summaries if s["group"] == group]
        assert abs(_first_number(comparison["test accuracy (%)"][column]) - np.mean(accs)) <= 5e-3
    # Curvature numbers against the callback's records on disk (not the summaries).
    metrics = {row[0]: row for row in _table(report, "## Landscapes")}
    for column, group in ((1, "adamw"), (2, "sam")):
        recs = [
            r
            for r in load_records(out / group / "seed0")
            if r.kind == "metrics" and r.meta["stage"] == "final"
        ]
        lam = recs[-1].as_dict()["hessian/lambda_max"]
        assert abs(_first_number(metrics["lambda_max"][column]) - lam) <= 5e-4 * abs(lam)  # 4 digits
    assert "Not enough seeds to decide" in report  # one seed: no interval, and the report says so
    assert "vit_study_report.py" in report and "Regenerate:" in report


def test_report_is_regenerated_from_the_files_alone(quick_study):
    out, _ = quick_study
    report = _module("vit_study_report")
    study, groups = report.load_study(out)
    assert report.report(out, study, groups, "figures") == (out / "REPORT.md").read_text()


def test_welch_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    report = _module("vit_study_report")
    rng = np.random.default_rng(0)
    for na, nb in ((3, 3), (3, 5), (8, 2)):
        a, b = rng.normal(0.9, 0.02, na), rng.normal(0.88, 0.05, nb)
        ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        r = report.welch_interval(a, b)
        assert r["difference"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
        assert (r["low"], r["high"]) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert math.isnan(report.welch_interval([0.9], [0.8, 0.85])["low"])


def test_verdict_says_what_the_interval_says():
    report = _module("vit_study_report")
    adamw = [0.80, 0.81, 0.82]
    assert "SAM generalizes better" in report.verdict(adamw, [0.90, 0.91, 0.92])
    assert "SAM generalizes worse" in report.verdict(adamw, [0.70, 0.71, 0.72])
    assert "does not generalize measurably better" in report.verdict(adamw, [0.79, 0.83, 0.81])
    assert "Not enough seeds" in report.verdict([0.8], [0.9])
