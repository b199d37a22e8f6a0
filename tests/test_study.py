"""The ViT study (examples/vit_adamw_vs_sam.py) end to end, tiny: data, noise, choices, report, landscapes."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIGURES = ("vit_training", "vit_sweep", "vit_shared_clean", "vit_shared_noisy")


def _module(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the example imports its sibling modules
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
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


def _numbers(cell: str) -> list[float]:
    return [float(m) for m in re.findall(r"[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?", cell)]


def _summaries(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/*/seed*/summary.json"))]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    out = tmp_path_factory.mktemp("vit")
    result = _module("vit_adamw_vs_sam").main(["--quick", "--out", str(out), "--threads", "1"])
    return out, result


def test_quick_study_writes_both_settings_figures_and_report(quick_study):
    out, result = quick_study
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summaries = _summaries(out)
    groups = {"adamw_wd0.05", "adamw_wd0.5", "sam_rho0.05", "sam_rho0.2"}
    assert {(s["setting"], s["group"], s["seed"]) for s in summaries} == {
        (setting, g, seed) for setting in ("clean", "noisy") for g in groups for seed in (0, 1)
    }
    for seed in (0, 1):  # one initialization per seed, whatever the optimizer or the labels
        assert len({s["init_sha256"] for s in summaries if s["seed"] == seed}) == 1
    for s in summaries:
        h = s["history"]
        assert h["epoch"] == [0, 1]
        assert s["final"]["test_acc"] == h["test_acc"][-1] and s["peak_test_acc"] == max(h["test_acc"])
        e = s["early_stop"]["epoch"]
        assert h["val_acc"][e] == max(h["val_acc"]) and s["early_stop"]["test_acc"] == h["test_acc"][e]
        if s["setting"] == "clean":  # no noise: the two training losses are one
            assert h["train_loss"] == h["clean_train_loss"] and h["memorized"] == [0.0, 0.0]
        else:
            assert h["train_loss"] != h["clean_train_loss"]
    assert result["report"] == out / "REPORT.md"


def test_noise_flips_exactly_the_recorded_training_labels_and_nothing_else(quick_study):
    out, _ = quick_study
    study = _module("vit_adamw_vs_sam")
    from sklearn.datasets import load_digits

    target = torch.as_tensor(load_digits().target)
    noise = json.loads((out / "noisy" / "noise.json").read_text())
    record = json.loads((out / "study.json").read_text())
    train_idx = record["split_indices"]["train"]
    assert noise["train_indices"] == train_idx and noise["train_size"] == len(train_idx) == 60
    assert len(noise["flipped"]) == round(0.2 * 60) == len(set(noise["flipped"]))
    clean = target[train_idx]
    assert noise["clean_labels"] == clean[noise["flipped"]].tolist()
    assert all(a != b for a, b in zip(noise["clean_labels"], noise["noisy_labels"]))
    # Rebuild the setting from the split: the same flipped set, and the held-out labels untouched.
    split = study.digits_split(60, 60, 200)
    train, rebuilt = study.setting_data(split, "noisy", noise["fraction"], noise["seed"])
    assert rebuilt == noise
    noisy = train.tensors[1]
    assert torch.nonzero(noisy != clean).flatten().tolist() == sorted(noise["flipped"])
    assert noisy[noise["flipped"]].tolist() == noise["noisy_labels"]
    for part in ("val", "test"):
        assert getattr(split, part).tensors[1].tolist() == target[record["split_indices"][part]].tolist()
    assert json.loads((out / "clean" / "noise.json").read_text())["flipped"] == []


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.45])
def test_flip_labels_exact_count_other_class_uniform(fraction):
    flip = _module("vit_adamw_vs_sam").flip_labels
    y = torch.arange(9000) % 10
    noisy = flip(y, fraction, seed=3)
    changed = noisy != y
    assert int(changed.sum()) == round(fraction * len(y))
    assert torch.equal(noisy, flip(y, fraction, seed=3))  # fixed by its seed
    if fraction >= 0.2:  # each of the 9 other classes about equally often
        offsets = torch.bincount(((noisy - y) % 10)[changed], minlength=10)
        assert offsets[0] == 0
        expected = changed.sum().item() / 9
        assert torch.all((offsets[1:] - expected).abs() < 5 * math.sqrt(expected))
    with pytest.raises(ValueError, match="fraction"):
        flip(y, 1.0, seed=0)


def test_validation_split_is_disjoint_from_test_and_train(quick_study):
    out, _ = quick_study
    parts = json.loads((out / "study.json").read_text())["split_indices"]
    sets = {k: set(v) for k, v in parts.items()}
    assert [len(sets[k]) for k in ("train", "val", "test")] == [60, 60, 200]
    assert (
        not sets["train"] & sets["val"]
        and not sets["train"] & sets["test"]
        and not sets["val"] & sets["test"]
    )


def test_choice_is_made_on_validation_never_on_test(quick_study):
    out, _ = quick_study
    report_mod = _module("vit_study_report")
    report = (out / "REPORT.md").read_text()
    summaries = _summaries(out)
    for setting in ("clean", "noisy"):
        for opt in ("adamw", "sam"):
            mine = [s for s in summaries if s["setting"] == setting and s["optimizer"] == opt]
            groups = sorted({s["group"] for s in mine})
            val = {g: np.mean([s["final"]["val_acc"] for s in mine if s["group"] == g]) for g in groups}
            best = max(groups, key=lambda g: val[g])
            runs = report_mod.load_runs(out)[setting]
            assert report_mod.chosen(runs, opt) == best
            section = report[report.index(f"## Setting: {setting}") :]
            chosen_line = next(
                line for line in section.splitlines() if line.startswith("Chosen on validation")
            )
            assert report_mod.label(runs[best]) in chosen_line
    # Where validation and test disagree, validation decides.
    fake = {
        g: [{"optimizer": "adamw", "final": {"val_acc": v, "test_acc": t}}]
        for g, v, t in (("a", 0.9, 0.5), ("b", 0.8, 0.99))
    }
    assert report_mod.chosen(fake, "adamw") == "a"


def test_report_numbers_equal_the_run_outputs(quick_study):
    out, _ = quick_study
    stats = pytest.importorskip("scipy.stats")
    report = (out / "REPORT.md").read_text()
    summaries = _summaries(out)
    rows = _table(report, "## All runs")
    assert len(rows) == len(summaries)
    for setting, group, seed, wd, _rho, train_loss, clean_loss, val_acc, test_acc, *_ in rows:
        (s,) = [s for s in summaries if (s["setting"], s["group"], s["seed"]) == (setting, group, int(seed))]
        assert float(wd) == s["weight_decay"]
        assert abs(float(train_loss) - s["final"]["train_loss"]) <= 5e-5
        assert abs(float(clean_loss) - s["final"]["clean_train_loss"]) <= 5e-5
        assert abs(float(val_acc) - 100 * s["final"]["val_acc"]) <= 5e-3
        assert abs(float(test_acc) - 100 * s["final"]["test_acc"]) <= 5e-3
    report_mod = _module("vit_study_report")
    runs = report_mod.load_runs(out)
    for setting in ("noisy", "clean"):
        section = report[report.index(f"## Setting: {setting}") :]
        comparison = {row[0]: row for row in _table(section, "Chosen on validation")}
        adamw = runs[setting][report_mod.chosen(runs[setting], "adamw")]
        sam = runs[setting][report_mod.chosen(runs[setting], "sam")]
        a = [100 * s["final"]["test_acc"] for s in adamw]
        b = [100 * s["final"]["test_acc"] for s in sam]
        row = comparison["clean test accuracy (%)"]
        assert _numbers(row[1])[0] == pytest.approx(np.mean(a), abs=5e-3)
        assert _numbers(row[2])[0] == pytest.approx(np.mean(b), abs=5e-3)
        diff, low, high = _numbers(row[3])  # Welch's interval, against scipy's
        ref = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        assert diff == pytest.approx(np.mean(b) - np.mean(a), abs=5e-3)
        assert (low, high) == pytest.approx((ref.low, ref.high), abs=5e-3)
    assert "never used to choose" in report and "Regenerate:" in report
    summary = report.split("Generated by")[0].strip().splitlines()[2:]
    assert [line[:2] for line in summary] == ["1.", "2.", "3.", "4.", "5."]  # five quotable lines


def test_report_is_regenerated_from_the_files_alone(quick_study):
    out, _ = quick_study
    report = _module("vit_study_report")
    study, runs = report.load_study(out)
    assert report.report(out, study, runs, "figures") == (out / "REPORT.md").read_text()


def test_landscape_analysis_matches_an_independent_recomputation(quick_study):
    out, _ = quick_study
    vit = _module("vit_adamw_vs_sam")
    from lightning_landscape import load_run_weights
    from lightning_landscape.functional import hessian_eigenvalues
    from lightning_landscape.solutions import load_solutions

    for setting in ("clean", "noisy"):
        folder = out / "landscapes" / setting / "seed0"
        a = json.loads((folder / "analysis.json").read_text())
        assert a["adamw"]["init_sha256"] == a["sam"]["init_sha256"]
        split = vit.digits_split(60, 60, 200)
        noise = json.loads((out / setting / "noise.json").read_text())
        train, _ = vit.setting_data(split, setting, noise.get("fraction", 0.0), noise.get("seed", 0))
        batch = train.tensors
        model = vit.DigitsViT(model=vit.QUICK_MODEL)
        weights = load_run_weights(folder / "adamw", model)
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights.split(weights.final, like=list(model.parameters()))):
                p.copy_(w)
        loss = vit.cross_entropy(model.eval(), batch).item()
        assert loss == pytest.approx(a["adamw"]["train_loss"], abs=1e-5)  # saved weights = evaluated ones
        eig = hessian_eigenvalues(model, vit.cross_entropy, [batch], which="both", max_iter=6, tol=1e-3)
        assert a["adamw"]["curvature"]["lambda_max"] == pytest.approx(float(eig.eigenvalues[0]), rel=1e-6)
        comp = load_solutions(folder / "shared")
        assert comp.summary()["loss_A"] == pytest.approx(a["adamw"]["train_loss"], abs=1e-5)
        assert comp.summary()["loss_B"] == pytest.approx(a["sam"]["train_loss"], abs=1e-5)
        m = a["matched"]
        if m is not None:
            assert m["train_loss"] <= m["target"] == a[m["other"]]["train_loss"]
            assert a[m["run"]]["train_loss"] <= a[m["other"]]["train_loss"]
    report = (out / "REPORT.md").read_text()
    assert "## What the landscape tools say" in report and "Spearman" in report
    assert "differ by at most 0.0e+00" in report  # the reruns reproduce the sweep's runs exactly


def test_spearman_interval_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    report = _module("vit_study_report")
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    r = report.spearman_interval(x, y)
    assert r["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    z, se = math.atanh(r["rho"]), 1.03 / math.sqrt(12 - 3)
    assert (r["low"], r["high"]) == pytest.approx(
        (math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se))
    )
    assert math.isnan(report.spearman_interval([1, 2, 3], [3, 2, 1])["low"])


def test_verdict_says_what_the_interval_says():
    report = _module("vit_study_report")
    adamw = [0.80, 0.81, 0.82]
    assert "SAM generalizes better" in report.verdict(adamw, [0.90, 0.91, 0.92])
    assert "SAM generalizes worse" in report.verdict(adamw, [0.70, 0.71, 0.72])
    assert "does not generalize measurably better" in report.verdict(adamw, [0.79, 0.83, 0.81])
    assert "Not enough seeds" in report.verdict([0.8], [0.9])


class FakeCIFAR10:
    """torchvision's ``CIFAR10`` interface: ``len`` and ``(32 x 32 x 3 uint8 image, label)`` items."""

    def __init__(self, n: int = 400) -> None:
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 10
        base = torch.randint(0, 256, (10, 32, 32, 3), generator=g, dtype=torch.uint8)  # one pattern a class
        self.images = base[self.labels].numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def test_cifar10_path_with_a_fake_dataset(tmp_path):
    pytest.importorskip("sklearn")
    vit = _module("vit_adamw_vs_sam")
    out = tmp_path / "cifar"
    argv = [
        "--quick",
        "--dataset",
        "cifar10",
        "--setting",
        "noisy",
        "--landscape-seeds",
        "0",
        "--out",
        str(out),
    ]
    had_torchvision = "torchvision" in sys.modules
    vit.main(argv, dataset=FakeCIFAR10())
    assert had_torchvision or "torchvision" not in sys.modules  # imported only when no dataset is given
    summaries = _summaries(out)
    assert {s["setting"] for s in summaries} == {"noisy"} and len(summaries) == 8
    study = json.loads((out / "study.json").read_text())
    assert study["dataset"] == "cifar10" and study["model"]["channels"] == 3 and study["model"]["image"] == 32
    split = vit.cifar10_split(Path("unused"), 60, 60, 200, FakeCIFAR10())
    x = split.train.tensors[0]
    assert x.shape[1:] == (3, 32, 32) and x.min() >= 0.0 and x.max() <= 1.0
    i = int(split.indices["train"][0])
    assert torch.equal(x[0], torch.as_tensor(FakeCIFAR10().images[i]).permute(2, 0, 1).float() / 255)
    assert (out / "REPORT.md").read_text().startswith("# A vision transformer on CIFAR-10")


def test_parallel_jobs_reproduce_the_serial_runs(quick_study, tmp_path):
    out, _ = quick_study
    vit = _module("vit_adamw_vs_sam")
    argv = ["--quick", "--setting", "clean", "--jobs", "2", "--landscape-seeds", "0", "--out", str(tmp_path)]
    vit.main(argv)
    serial = {(s["group"], s["seed"]): s for s in _summaries(out) if s["setting"] == "clean"}
    parallel = {(s["group"], s["seed"]): s for s in _summaries(tmp_path)}
    assert set(parallel) == set(serial)
    for key, s in parallel.items():  # two worker processes, bit-identical results
        assert s["history"] == serial[key]["history"] and s["init_sha256"] == serial[key]["init_sha256"]
    assert json.loads((tmp_path / "study.json").read_text())["jobs"] == 2


def test_command_line_rejects_bad_settings():
    vit = _module("vit_adamw_vs_sam")
    with pytest.raises(SystemExit):
        vit.parse_args(["--setting", "dirty"])
    with pytest.raises(SystemExit):
        vit.parse_args(["--noise", "1.5"])
    with pytest.raises(SystemExit):
        vit.parse_args(["--jobs", "0"])
    assert vit.parse_args(["--setting", "clean", "--seeds", "4"]).settings == ["clean"]
    assert vit.parse_args([]).seeds == 10
