"""The `lightning-landscape` command: compare, plot, summary; bad input gives a message, not a traceback."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from helpers.cli_runs import make_run, run_main
from matplotlib.colors import BoundaryNorm

from lightning_landscape import LineRecord, SurfaceRecord, load_records
from lightning_landscape.cli.main import Run, format_table, main, record_scalars, run_series
from lightning_landscape.plots.landscape import comparison_figure, shared_levels
from lightning_landscape.records.record import MetricsRecord, save_record

ROOT = Path(__file__).resolve().parents[2]


def table_row(out: str, key: str) -> list[str]:
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == key:
            return parts[1:]
    raise AssertionError(f"no row {key!r} in\n{out}")


# --------------------------------------------------------------------------- compare


def test_compare_writes_figure_and_prints_final_figures(tmp_path, capsys):
    a, b = make_run(tmp_path / "sgd" / "seed0", 1.0), make_run(tmp_path / "sam" / "seed0", 3.0)
    out = tmp_path / "cmp.png"
    rc, stdout, err = run_main(capsys, "compare", str(a), str(b), "--out", str(out))
    assert rc == 0, err
    assert out.read_bytes().startswith(b"\x89PNG")
    header = stdout.splitlines()[0].split()
    assert header == ["sgd/seed0", "sam/seed0"]
    # Final centre loss: scale * (0 + 0.1 * 8), straight from the records.
    assert [float(v) for v in table_row(stdout, "loss/centre")] == pytest.approx([0.8, 2.4])
    assert [float(v) for v in table_row(stdout, "loss/surface_max")] == pytest.approx([3.8, 11.4])
    assert [float(v) for v in table_row(stdout, "distance_from_init")] == [8.0, 24.0]
    assert table_row(stdout, "global_step") == ["8", "8"]


def test_comparison_figure_shares_one_scale_and_level_set():
    xs = np.linspace(-1, 1, 5)
    low = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1)
    high = SurfaceRecord(xs, xs, 10 * np.add.outer(xs**2, xs**2) + 1.0)
    a = np.linspace(0, 1, 3)
    fig = comparison_figure(
        [low, high],
        ["a", "b"],
        lines={"interp": [LineRecord(a, a + 1), LineRecord(a, a + 2)]},
        series={"loss/centre": [(np.array([1, 2]), np.array([1.0, 0.5])), None]},
    )
    contour_sets = [c for ax in fig.axes for c in ax.collections if hasattr(c, "levels") and c.filled]
    assert len(contour_sets) == 2
    expected = shared_levels([low, high])
    assert expected[0] == pytest.approx(0.1) and expected[-1] == pytest.approx(21.0)
    for cs in contour_sets:
        np.testing.assert_allclose(cs.levels, expected)
        assert isinstance(cs.norm, BoundaryNorm)
        np.testing.assert_allclose(cs.norm.boundaries, expected)
    line_axes = [ax for ax in fig.axes if ax.get_title() == "interp"]
    assert len(line_axes) == 1 and len(line_axes[0].lines) == 2
    metric_axes = [ax for ax in fig.axes if ax.get_title() == "loss/centre"]
    assert len(metric_axes[0].lines) == 1  # the run without the series draws nothing


@dataclasses.dataclass
class UnknownRecord:
    """A record kind this module does not know (as a curvature branch might add)."""

    lambda_max: np.ndarray
    meta: dict
    kind: ClassVar[str] = "metrics"


def test_series_take_any_numeric_scalars_of_unknown_record_kinds(tmp_path):
    make_run(tmp_path, 1.0)
    records: list[Any] = load_records(tmp_path)
    for step, value in [(4, 2.0), (8, 3.5)]:
        meta = {"stage": "periodic", "global_step": step, "values": {"hessian": {"trace": 10.0 * step}}}
        records.append(UnknownRecord(np.array([value]), meta))
    assert record_scalars(records[-1]) == {"lambda_max": 3.5, "hessian/trace": 80.0}
    series = run_series(Run("x", tmp_path, records))
    steps, values = series["lambda_max"]
    assert steps.tolist() == [4, 8] and values.tolist() == [2.0, 3.5]
    assert series["hessian/trace"][1].tolist() == [40.0, 80.0]
    assert series["loss/centre"][1] == pytest.approx([0.4, 0.8])  # periodic only
    assert series["explained_variance/pc1"][1] == pytest.approx([0.64, 0.68])


def test_compare_an_unfinished_run_uses_the_latest_periodic_surfaces(tmp_path, capsys):
    a = make_run(tmp_path / "a", 1.0, resolution=5, steps=(4, 8))
    b = make_run(tmp_path / "b", 2.0, resolution=5, steps=(4,), final=False)
    rc, out, err = run_main(capsys, "compare", str(a), str(b), "--out", str(tmp_path / "c.png"))
    assert rc == 0, err
    assert "no final surface in" in err and str(b) in err
    assert table_row(out, "global_step") == ["8", "4"]


def test_compare_refuses_mismatched_protocols_unless_asked(tmp_path, capsys):
    a, b = make_run(tmp_path / "a", 1.0, resolution=5), make_run(tmp_path / "b", 1.0, resolution=7)
    out = tmp_path / "c.png"
    rc, _, err = run_main(capsys, "compare", str(a), str(b), "--out", str(out))
    assert rc == 2 and "resolution: 5, 7" in err and "--allow-mismatch" in err and not out.exists()
    rc, _, err = run_main(capsys, "compare", str(a), str(b), "--out", str(out), "--allow-mismatch")
    assert rc == 0 and out.exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such run directory"),
        ("empty", "no lightning-landscape records"),
        ("parent", "holds the records of 2 runs"),
        ("same", "given more than once"),
        ("one", "at least two"),
        ("format", "unknown image format 'xyz'"),
    ],
)
def test_compare_bad_input_is_a_message(tmp_path, capsys, case, message):
    a, b = make_run(tmp_path / "runs" / "a", 1.0), make_run(tmp_path / "runs" / "b", 2.0)
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / ("c.xyz" if case == "format" else "c.png"))
    runs = {
        "missing": [str(a), str(tmp_path / "nope")],
        "empty": [str(a), str(tmp_path / "empty")],
        "parent": [str(a), str(tmp_path / "runs")],
        "same": [str(a), str(a / "landscape" / "..")],
        "one": [str(a)],
        "format": [str(a), str(b)],
    }[case]
    rc, _, err = run_main(capsys, "compare", *runs, "--out", out)
    assert rc == 2 and message in err and "Traceback" not in err


# --------------------------------------------------------------------------- corrupt and foreign records


def _corrupt(folder: Path, how: str) -> str:
    """Damage one record of a run in a way ``how`` names; returns the file the message must name."""
    name = "periodic_surface_8"
    if how == "truncated npz":
        data = (folder / f"{name}.npz").read_bytes()
        (folder / f"{name}.npz").write_bytes(data[: len(data) // 2])
        return f"{name}.npz"
    if how == "pickled npz":
        np.savez(folder / f"{name}.npz", xs=np.array([{"evil": 1}], dtype=object))
        return f"{name}.npz"
    if how == "foreign json":
        (folder / "foreign.json").write_text(json.dumps({"hello": "world"}))
        (folder / "foreign.npz").write_bytes(b"PK")
        return "foreign.json"
    if how == "bad json":
        (folder / f"{name}.json").write_text('{"format_version": 1, "kind": "surf')
        return f"{name}.json"
    if how == "future version":
        sidecar = json.loads((folder / f"{name}.json").read_text())
        sidecar["format_version"] = 2
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
        return f"{name}.json"
    raise AssertionError(how)


CORRUPTIONS = ["truncated npz", "pickled npz", "foreign json", "bad json", "future version"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_and_foreign_records_are_named_by_load_records(tmp_path, how):
    from lightning_landscape import RecordError

    make_run(tmp_path, 1.0)
    bad = _corrupt(tmp_path / "landscape", how)
    with pytest.raises(RecordError, match=bad.replace(".", r"\.")):
        load_records(tmp_path)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_and_foreign_records_are_a_message_in_every_command(tmp_path, capsys, how):
    good, bad_run = make_run(tmp_path / "good", 1.0), make_run(tmp_path / "bad", 1.0)
    bad = _corrupt(bad_run / "landscape", how)
    out = str(tmp_path / "c.png")
    for argv in (
        ["compare", str(good), str(bad_run), "--out", out],
        ["summary", str(bad_run)],
        ["plot", str(bad_run / "landscape" / bad), "--out", out],
    ):
        rc, _, err = run_main(capsys, *argv)
        assert rc == 2, argv
        assert bad in err and "Traceback" not in err, err
    assert not Path(out).exists()


def _stamp(folder: Path, run_id: str, names: list[str] | None = None) -> None:
    """Give records of ``folder`` (all, or ``names``) the run id ``run_id``, as the callback writes them."""
    for path in sorted(folder.glob("*.json")):
        if names is None or path.stem in names:
            sidecar = json.loads(path.read_text())
            sidecar["meta"]["run_id"] = run_id
            path.write_text(json.dumps(sidecar))


@pytest.mark.parametrize("mix", ["two runs", "a run and a legacy run"])
def test_a_folder_that_mixes_runs_is_refused_by_every_command(tmp_path, capsys, mix):
    # Issue 21 item 1: a second run's records among the first's read as one run (its stale final surface).
    good, mixed = make_run(tmp_path / "good", 1.0), make_run(tmp_path / "mixed", 1.0)
    if mix == "two runs":
        _stamp(mixed / "landscape", "20260101-000000-aaaaaa")
    _stamp(mixed / "landscape", "20260202-000000-bbbbbb", ["final_surface_8", "final_interp_8"])
    for argv in (
        ["summary", str(mixed)],
        ["compare", str(good), str(mixed), "--out", str(tmp_path / "c.png")],
    ):
        rc, _, err = run_main(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert "mixes the records of 2 runs" in err and "run 20260202-000000-bbbbbb (2 record(s)" in err
        first = "run 20260101-000000-aaaaaa (6 record(s)" if mix == "two runs" else "no run id"
        assert first in err
    assert not (tmp_path / "c.png").exists()


def test_summary_of_a_log_dir_with_two_runs_names_their_folders(tmp_path, capsys):
    make_run(tmp_path, 1.0)
    (tmp_path / "landscape").rename(tmp_path / "landscape-2")
    make_run(tmp_path, 2.0)  # a second run into the same log directory writes to landscape-2/
    rc, _, err = run_main(capsys, "summary", str(tmp_path))
    assert rc == 2 and "holds the records of 2 runs" in err and "landscape-2" in err
    rc, _, err = run_main(capsys, "summary", str(tmp_path / "landscape-2"))
    assert rc == 0, err


@pytest.mark.parametrize("module", ["lightning_landscape.cli.main", "lightning_landscape"])
def test_console_script_entry_point_exits_2_without_traceback(tmp_path, module):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module, "summary", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "no such run directory" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- plot and summary


@pytest.mark.parametrize("style", [None, "contour", "filled", "surface3d"])
def test_plot_surface_styles(tmp_path, capsys, style):
    make_run(tmp_path, 1.0)
    out = tmp_path / "s.png"
    argv = ["plot", str(tmp_path / "landscape" / "final_surface_8.npz"), "--out", str(out), "--log"]
    rc, _, err = run_main(capsys, *argv, *(["--style", style] if style else []))
    assert rc == 0, err
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plot_line_and_wrong_style(tmp_path, capsys):
    make_run(tmp_path, 1.0)
    out = tmp_path / "l.svg"
    rc, _, err = run_main(capsys, "plot", str(tmp_path / "landscape" / "final_line0_8"), "--out", str(out))
    assert rc == 0, err
    assert out.read_text().lstrip().startswith("<?xml")
    rc, _, err = run_main(
        capsys,
        "plot",
        str(tmp_path / "landscape" / "final_surface_8.json"),
        "--style",
        "line",
        "--out",
        "x.png",
    )
    assert rc == 2 and "cannot be drawn as 'line'" in err
    rc, _, err = run_main(capsys, "plot", str(tmp_path / "landscape" / "nothing.json"), "--out", "x.png")
    assert rc == 2 and "no such record" in err


def test_summary_prints_settings_and_figures(tmp_path, capsys):
    make_run(tmp_path, 2.0)
    rc, out, err = run_main(capsys, "summary", str(tmp_path))
    assert rc == 0, err
    assert "records: 3 line (final), 2 line (periodic), 1 surface (final), 2 surface (periodic)" in out
    assert table_row(out, "resolution") == ["5"]
    assert table_row(out, "probe_samples") == ["16"]
    assert table_row(out, "loss/centre") == ["1.6", "2"]  # final value, 2 periodic points
    assert table_row(out, "distance_from_init") == ["16", "2"]


def test_format_table_aligns_columns():
    text = format_table([["k", "run a", "b"], ["x", 1.23456, float("nan")], ["long name", None, 3]])
    lines = text.splitlines()
    assert lines[2].index("1.235") == lines[0].index("run a") == lines[3].index("-")
    assert lines[2].split() == ["x", "1.235", "nan"]


def test_metrics_records_feed_the_table_and_panels():
    from lightning_landscape.records.record import MetricsRecord

    rec = MetricsRecord.from_dict(
        {"hessian/lambda_max": 4.5, "hessian/lambda_max_residual": 1e-4, "sharpness/sam": float("nan")},
        {"stage": "final", "global_step": 7},
    )
    # Non-finite values are left out; everything else is a figure of the run.
    assert record_scalars(rec) == {"hessian/lambda_max": 4.5, "hessian/lambda_max_residual": 1e-4}
    from lightning_landscape.records.record import is_diagnostic

    assert is_diagnostic("hessian/lambda_max_residual") and not is_diagnostic("hessian/lambda_max")


def test_reading_records_does_not_import_torch_or_lightning():
    # The command starts in under a second: the callback and SAM load on first use.
    code = (
        "import sys, lightning_landscape as ll, lightning_landscape.cli.main; "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules); "
        "assert ll.LossLandscapeCallback.__name__ == 'LossLandscapeCallback' and 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- groups of runs


def make_group_run(root: Path, scale: float, lam: float, **protocol: Any) -> Path:
    """``make_run`` plus a final metrics record (``hessian/lambda_max`` = ``lam``) with its options."""
    make_run(root, scale, resolution=protocol.pop("resolution", 5))
    options = {"which": "both", "max_iter": 50, "tol": 1e-4, "seed": 7, "probe_samples": 16, **protocol}
    rec = MetricsRecord.from_dict(
        {"hessian/lambda_max": lam, "hessian/lambda_max_residual": 1e-3},
        {"stage": "final", "global_step": 8, "eigenvalues": options},
    )
    save_record(rec, root / "landscape", "final_metrics_8")
    return root


def cell_numbers(out: str, key: str) -> list[float]:
    """The numbers of row ``key`` of the grouped table, in order."""
    import re

    line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == key)
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", line[len(key) :])]


def test_compare_groups_means_stds_and_welch_intervals_by_hand(tmp_path, capsys):
    # Final centre loss = 0.8 * scale (see make_run): a = 0.8, 1.0, 1.2 and b = 2.0, 2.2, 2.4.
    a = [
        make_group_run(tmp_path / "a" / f"seed{i}", s, lam)
        for i, (s, lam) in enumerate([(1.0, 1), (1.25, 2), (1.5, 4)])
    ]
    b = [
        make_group_run(tmp_path / "b" / f"seed{i}", s, lam)
        for i, (s, lam) in enumerate([(2.5, 10), (2.75, 10.5), (3.0, 13)])
    ]
    out = tmp_path / "groups.png"
    rc, stdout, err = run_main(
        capsys, "compare", "--group", "a", *map(str, a), "--group", "b", *map(str, b), "--out", str(out)
    )
    assert rc == 0, err
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "a (3 runs)" in stdout and "b (3 runs)" in stdout and "b - a [95% CI, Welch]" in stdout
    # Equal spreads (0.2) and sizes: Welch's df = 2 (3 - 1) = 4, t(0.975, 4) = 2.776445 from the table.
    half = 2.776445 * math.sqrt(0.2**2 / 3 + 0.2**2 / 3)
    assert cell_numbers(stdout, "loss/centre") == pytest.approx(
        [1.0, 0.2, 2.2, 0.2, 1.2, 1.2 - half, 1.2 + half], rel=1e-3
    )
    # Distance from init = 8 * scale: the same shape, ten times larger.
    assert cell_numbers(stdout, "distance_from_init") == pytest.approx(
        [10, 2, 22, 2, 12, 12 - 10 * half, 12 + 10 * half], rel=1e-3
    )
    # Unequal spreads: the Welch-Satterthwaite df by hand.
    xa, xb = np.array([1.0, 2, 4]), np.array([10.0, 10.5, 13])
    va, vb = xa.var(ddof=1) / 3, xb.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    from lightning_landscape.records.stats import t_quantile

    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    diff = xb.mean() - xa.mean()
    expected = [xa.mean(), xa.std(ddof=1), xb.mean(), xb.std(ddof=1), diff, diff - half, diff + half]
    assert cell_numbers(stdout, "hessian/lambda_max") == pytest.approx(expected, rel=1e-3)
    # The representative surface of each group: the seed with the median centre loss.
    assert "a: a/seed1" in stdout and "b: b/seed1" in stdout


def test_compare_groups_refuses_mixed_protocols_in_one_line(tmp_path, capsys):
    a = [make_group_run(tmp_path / "a" / f"s{i}", 1.0 + i, 1.0) for i in range(2)]
    b = [
        make_group_run(tmp_path / "b" / "s0", 1.0, 1.0),
        make_group_run(tmp_path / "b" / "s1", 1.0, 1.0, resolution=7),
    ]
    c = [make_group_run(tmp_path / "c" / f"s{i}", 1.0, 1.0, max_iter=10 if i else 50) for i in range(2)]
    out = tmp_path / "g.png"
    for other, message in ((b, "resolution: a 5, b 5/7"), (c, "eigenvalues.max_iter: a 50, c 50/10")):
        argv = ["compare", "--group", "a", *map(str, a), "--group", "x", *map(str, other), "--out", str(out)]
        argv[argv.index("x")] = message.split(", ")[1].split()[0]
        rc, _, err = run_main(capsys, *argv)
        assert rc == 2 and message in err and "--allow-mismatch" in err, err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    rc, _, err = run_main(capsys, *argv, "--allow-mismatch")
    assert rc == 0 and out.exists(), err


def test_group_comparison_figure_draws_bands_and_shares_levels():
    from matplotlib.collections import PolyCollection

    from lightning_landscape.plots.landscape import BandPanel, group_comparison_figure

    xs = np.linspace(-1, 1, 5)
    low, high = (
        SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1),
        SurfaceRecord(xs, xs, 5 + np.add.outer(xs, xs)),
    )
    band = (np.array([1, 2, 3]), np.array([1.0, 0.8, 0.5]), np.array([0.1, 0.3, 0.2]))
    fig = group_comparison_figure(
        [low, high], ["a", "b"], [BandPanel("loss/centre", "global step", [band, None])]
    )
    filled = [c for ax in fig.axes for c in ax.collections if hasattr(c, "levels") and c.filled]
    for cs in filled:
        np.testing.assert_allclose(cs.levels, shared_levels([low, high]))
    (panel,) = [ax for ax in fig.axes if ax.get_title() == "loss/centre"]
    assert len(panel.lines) == 1
    (fill,) = [c for c in panel.collections if isinstance(c, PolyCollection)]
    lo, hi = fill.get_paths()[0].vertices[:, 1].min(), fill.get_paths()[0].vertices[:, 1].max()
    assert (lo, hi) == pytest.approx((0.3, 1.1))  # mean -+ std


# --------------------------------------------------------------------------- every misuse: one line, exit 2


def _misuse_dirs(tmp: Path) -> dict[str, str]:
    """Runs and files the misuse table refers to by name."""
    a, b = make_run(tmp / "a", 1.0), make_run(tmp / "b", 2.0)
    c, d = make_run(tmp / "c", 1.5), make_run(tmp / "d", 2.5)
    (tmp / "empty").mkdir()
    (tmp / "others").mkdir()
    (tmp / "others" / "hparams.yaml").write_text("lr: 0.1\n")
    (tmp / "others" / "wandb-summary.json").write_text("{}")
    (tmp / "afile").write_text("x")
    (tmp / "dir.png").mkdir()
    nonpz = make_run(tmp / "nonpz", 1.0)
    (nonpz / "landscape" / "final_surface_8.npz").unlink()
    dirnpz = make_run(tmp / "dirnpz", 1.0)
    (dirnpz / "landscape" / "final_surface_8.npz").unlink()
    (dirnpz / "landscape" / "final_surface_8.npz").mkdir()  # cannot be read as a file
    bad = make_run(tmp / "bad", 1.0)
    xs = np.linspace(-1, 1, 7)
    np.savez(bad / "landscape" / "final_surface_8.npz", xs=xs, ys=xs, losses=np.ones((3, 2)))
    save_record(MetricsRecord.from_dict({"hessian/trace": 1.0}, {"stage": "final"}), tmp / "m", "metrics")
    return {
        k: str(v)
        for k, v in dict(
            a=a,
            b=b,
            c=c,
            d=d,
            empty=tmp / "empty",
            others=tmp / "others",
            afile=tmp / "afile",
            nonpz=nonpz,
            dirnpz=dirnpz,
            bad=bad,
            metrics=tmp / "m" / "metrics.json",
            out=tmp / "o.png",
            missing=tmp / "nope",
            surface=a / "landscape" / "final_surface_8.json",
            outdir=tmp / "dir.png",
            under_file=tmp / "afile" / "x.png",
        ).items()
    }


MISUSES = [
    ("compare {a} {b} --out {out} --levels 0", "--levels: expected a whole number of contour levels"),
    ("compare {a} {b} --out {out} --levels -3", "got '-3'"),
    ("compare {a} {b} --out {out} --levels nan", "got 'nan'"),
    ("compare {a} {b} --out {out} --levels 2.5", "got '2.5'"),
    ("compare {a} {b} --out {out} --levels 100000", "from 2 to 1000"),
    ("compare {a} {b} --out {out} --confidence nan", "--confidence: expected a number between 0 and 1"),
    ("compare {a} {b} --out {out} --confidence 95", "got '95'"),
    ("compare {a} {b} --out {out} --confidence -0.5", "got '-0.5'"),
    ("compare {a} {b}", "the following arguments are required: --out"),
    ("compare --out {out}", "at least two run directories"),
    ("compare {a} --out {out}", "at least two run directories"),
    ("compare {a} {missing} --out {out}", "no such run directory"),
    ("compare {a} {empty} --out {out}", "no lightning-landscape records found"),
    ("compare {a} {others} --out {out}", "no lightning-landscape records found"),
    ("compare {a} {afile} --out {out}", "not a directory"),
    ("compare {a} {nonpz} --out {out}", "have no .npz arrays beside their .json"),
    ("compare {a} {dirnpz} --out {out}", "final_surface_8.npz"),
    ("compare {a} {bad} --out {out}", "inconsistent surface record: `losses` has shape (3, 2)"),
    ("compare {a} {b} --out {outdir}", "a directory; give a file name"),
    ("compare {a} {b} --out {under_file}", "is not a directory"),
    ("compare {a} {b} --out x.xyz", "unknown image format 'xyz'"),
    ("compare {a} {b} --out noextension", "unknown image format ''"),
    ("compare {a} {b} --labels one --out {out}", "--labels gives 1 names for 2 runs"),
    ("compare --group g {a} {b} --out {out}", "at least two groups"),
    (
        "compare --group g {a} {b} --group h {c} --out {out}",
        "--group h: 1 run(s); a group needs at least two",
    ),
    ("compare --group g {a} {b} --group h --out {out}", "--group h: 0 run(s)"),
    ("compare --group g {a} {b} --group g {c} {d} --out {out}", "group names must differ"),
    ("compare --group g {a} {b} --group h {a} {c} --out {out}", "given more than once (in groups g and h)"),
    ("compare {c} --group g {a} {b} --group h {c} {d} --out {out}", "either inside --group or alone"),
    ("compare --group g {a} {b} --group h {c} {d} --labels x y --out {out}", "--labels names single runs"),
    ("compare --group g {a} {b} --group h {c} {missing} --out {out}", "no such run directory"),
    ("compare --group --out {out}", "expected at least one argument"),
    ("compare {a} {b} --out {out} --bogus", "unrecognized arguments: --bogus"),
    ("plot {metrics} --out {out}", "a metrics record holds scalars, not a surface or a line"),
    ("plot {metrics} --style line --out {out}", "nothing to draw"),
    ("plot {surface} --style line --out {out}", "cannot be drawn as 'line'"),
    ("plot {surface} --style bogus --out {out}", "argument --style: invalid choice: 'bogus'"),
    ("plot {missing} --out {out}", "no such record"),
    ("plot {a} --out {out}", "a directory; give one record file"),
    ("plot {surface}", "the following arguments are required: --out"),
    ("plot {surface} --out x.xyz", "unknown image format"),
    ("summary {missing}", "no such run directory"),
    ("summary {afile}", "not a directory"),
    ("summary {empty}", "no lightning-landscape records found"),
    ("summary {nonpz}", "final_surface_8.json"),
    ("summary {dirnpz}", "final_surface_8.npz"),
    ("summary {bad}", "final_surface_8.npz: inconsistent surface record"),
    ("summary", "the following arguments are required: RUN_DIR"),
    ("", "the following arguments are required: COMMAND"),
    ("bogus", "invalid choice: 'bogus'"),
]


@pytest.fixture(scope="module")
def misuse_dirs(tmp_path_factory):
    return _misuse_dirs(tmp_path_factory.mktemp("misuse"))


@pytest.mark.parametrize("argv, message", MISUSES)
def test_every_misuse_is_one_line_and_exit_2(misuse_dirs, capsys, argv, message):
    rc, out, err = run_main(capsys, *argv.format(**misuse_dirs).split())
    assert rc == 2, (out, err)
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, err
    assert err.startswith("lightning-landscape"), err
    assert not Path(misuse_dirs["out"]).exists()


def test_an_unexpected_failure_is_one_line_too(tmp_path, capsys, monkeypatch):
    a, b = make_run(tmp_path / "a", 1.0), make_run(tmp_path / "b", 2.0)
    import lightning_landscape.plots.landscape as plots

    monkeypatch.setattr(plots, "comparison_figure", lambda *a, **k: 1 / 0)
    rc, _, err = run_main(capsys, "compare", str(a), str(b), "--out", str(tmp_path / "c.png"))
    assert rc == 1 and "internal error: ZeroDivisionError" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("LIGHTNING_LANDSCAPE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["compare", str(a), str(b), "--out", str(tmp_path / "c.png")])


def test_summary_names_failed_metrics(tmp_path, capsys):
    make_run(tmp_path, 1.0)
    rec = MetricsRecord.from_dict(
        {"hessian/lambda_max": 2.0, "hessian/trace": float("nan")},
        {"stage": "final", "global_step": 8, "errors": {"trace": "ValueError: not finite"}},
    )
    save_record(rec, tmp_path / "landscape", "final_metrics_8")
    rc, out, err = run_main(capsys, "summary", str(tmp_path))
    assert rc == 0, err
    assert table_row(out, "hessian/lambda_max") == ["2", "1"]
    assert "hessian/trace" not in out
    assert "failed (left out above): trace at step 8: ValueError: not finite" in out


def _add_reliability(root: Path, share: float) -> None:
    from lightning_landscape.functional import reliability_summary
    from lightning_landscape.functional.trust.path import PathPlaneFit

    for stage, step in (("periodic", 4), ("periodic", 8), ("final", 8)):
        fit = PathPlaneFit(share, np.array([0.0, 1.0]), np.array([2.0, 1.0]), "offsets")
        rec = reliability_summary(path_fit=fit, noise=0.001)
        rec.meta.update(stage=stage, global_step=step)
        save_record(rec, root / "landscape", f"{stage}_reliability_{step}")


def test_summary_and_compare_show_the_reliability_scalars_and_flags(tmp_path, capsys):
    a, b = make_run(tmp_path / "a", 1.0), make_run(tmp_path / "b", 2.0)
    _add_reliability(a, 0.6)
    _add_reliability(b, 0.9)
    rc, out, err = run_main(capsys, "summary", str(a))
    assert rc == 0, err
    assert table_row(out, "reliability/path/on_plane_share") == ["0.6", "2"]  # final value, 2 periodic
    assert "| path on the plane (share)" not in out  # a plain table, not markdown
    assert table_row(out, "path") == ["on", "the", "plane", "(share)", "0.6", ">=", "0.7", "fail"]
    assert "flags: path 40 % off-plane" in out
    rc, out, err = run_main(capsys, "compare", str(a), str(b), "--out", str(tmp_path / "c.png"))
    assert rc == 0, err
    assert [float(v) for v in table_row(out, "reliability/path/on_plane_share")] == [0.6, 0.9]
