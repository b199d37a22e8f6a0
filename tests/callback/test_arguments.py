"""Every constructor argument, wrong: a ValueError at construction naming it, or a fit that completes;
and every argument documented in exactly one group, with its default (issue 20.5)."""

from __future__ import annotations

import ast
import inspect
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers.models import TinyNet, loader

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.functional.checks import grid_fits_memory

BAD_METRIC_SPECS = [
    "sam", 5, [3], {"bogus": None}, {"sam": 3}, {"sam": {"bogus": 1}},
    {"eigenvalues": {"max_iter": None}}, {"eigenvalues": {"max_iter": 0}}, {"eigenvalues": {"tol": -1}},
    {"eigenvalues": {"which": "middle"}}, {"eigenvalues": {"seed": 1.5}}, {"trace": {"samples": "many"}},
    {"sam": {"rho": "big"}}, {"average": {"sigma": 0}}, {"sam": {"adaptive": "yes"}},
]  # fmt: skip

# argument -> wrong values refused at construction (the message must name the argument).
REFUSED: dict[str, list[Any]] = {
    "every_n_epochs": [0, 1.5, "1", True],
    "resolution": [4, 1, 5.0, "11", 10001],  # None: the default size (the budget may reduce it)
    "final_resolution": [8, 20001],
    "line_resolution": [2, 4, "41"],
    "directions": ["bogus", None, "PCA"],
    "span": [-1, (1, 0), "wide", (0, 1), math.nan, True, (-1, "a")],
    "margin": [-1, 10, "0.2", None],
    "num_batches": [0, -1, 2.0, None],
    "probe_dataloader": [3, "abc"],
    "loss_fn": [3, "ce"],
    "snapshot_every_n_steps": [0, 1.5, "10"],
    "snapshot_every_n_epochs": [0, -2],
    "max_snapshots": [1, 2.5, None],
    "seed": ["a", 1.5, None, True],
    "include_1d": ["yes", 1, None],
    "interpolation_range": [(1, 0), (0, 1, 2), ("a", "b"), None, (0, math.inf)],
    "final": ["no", None, 0],
    "save_records": ["yes", None],
    "log_figures": ["false"],
    "name": ["", "..", ".", "a/b", 3],
    "snapshot_dtype": [torch.int32, "float31", 32],
    "snapshot_budget_bytes": [0, -5, 1.5, "1000"],
    "snapshot_storage": ["disk", None],
    "metrics": BAD_METRIC_SPECS,
    "final_metrics": [{"trace": {"samples": "many"}}, {"average": {"samples": 1}}, {"eigenvalues": {"k": 0}}],
    "engine": ["gpu", None],
    "max_overhead": [0, -0.1, math.nan, math.inf, "0.1", True],
    "budget_final": ["yes", None],
    "save_weights": ["yes", None, 1],
    "save_weights_dtype": [torch.int32, "int8", 16],
    "save_weights_max_bytes": [0, -1, 1.5, "10", True],
    "bn": ["bogus", None, "Keep"],
    "metric_fn": [3, "accuracy"],
    "metric_name": ["", 3, None],
    "reliability": ["yes", 3, None, {"bogus": 1}, {"directions": -1}, {"min_on_plane_share": 2.0}],
    "pca_centred": ["yes", None, 1],
    "critical_sharpness": [0, -1, 1.5, "10", True],
    "critical_probe": ["loader", (3, lambda m, b: b), ([1], "ce"), ([1],), ([1], print, 3)],
    "sharded_hessian": ["gathered", None, "Exact"],
}
CASES = [(arg, value) for arg, values in REFUSED.items() for value in values]


def test_the_table_covers_every_argument():
    assert set(REFUSED) == set(inspect.signature(LossLandscapeCallback).parameters)


IDS = [f"{a}={v!r}"[:60].split(" at 0x")[0] for a, v in CASES]  # no addresses: xdist workers must agree


@pytest.mark.parametrize(("arg", "value"), CASES, ids=IDS)
def test_wrong_values_are_refused_at_construction_naming_the_argument(arg, value):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        LossLandscapeCallback(**{arg: value})


def test_conflicting_snapshot_cadences_are_refused():
    with pytest.raises(ValueError, match="`snapshot_every_n_steps` and `snapshot_every_n_epochs`"):
        LossLandscapeCallback(snapshot_every_n_steps=5, snapshot_every_n_epochs=1)
    cb = LossLandscapeCallback(snapshot_every_n_epochs=2)
    assert (cb.snapshot_every_n_steps, cb.snapshot_every_n_epochs) == (None, 2)
    assert LossLandscapeCallback().snapshot_every_n_steps == 10


def test_a_grid_that_cannot_fit_in_memory_says_how_much_it_needs():
    with pytest.raises(ValueError, match=r"`resolution`=10001 .* 100,020,001 points.* GiB"):
        grid_fits_memory("resolution", 10001, 4, memory=lambda: 64 * 2**30)
    assert grid_fits_memory("resolution", 101, 4, memory=lambda: 64 * 2**30) == 101


SMALL = {"resolution": 3, "final_resolution": 3, "line_resolution": 3, "num_batches": 2, "log_figures": False}

# Accepted at construction, odd at run time: the fit must complete (warnings allowed).
ODD: dict[str, dict[str, Any]] = {
    "huge span": {"span": 1e30},
    "huge max_snapshots": {"max_snapshots": 10**13},
    "empty probe loader": {"probe_dataloader": []},
    "loss_fn returning a string": {"loss_fn": lambda model, batch: "not a loss"},
    "huge rho": {"metrics": {"sam": {"rho": 1e30}}, "final_metrics": {"average": {"sigma": 1e30}}},
    "many probe batches": {"num_batches": 10**6},
    "huge cadences": {"every_n_epochs": 10**9, "snapshot_every_n_steps": 10**9},
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_but_valid_values_never_stop_training(trainer_kwargs, case):
    pl.seed_everything(0)
    kwargs = {"metrics": None, "final_metrics": None, "max_overhead": None, **SMALL, **ODD[case]}
    cb = LossLandscapeCallback(**kwargs)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyNet(), loader(32, 8))
    assert trainer.global_step == 8 and trainer.state.finished


# ---------------------------------------------------------------- the options, documented in groups (20.5)

CONFIGURATION_MD = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PARAMETERS = inspect.signature(LossLandscapeCallback).parameters
# Defaults the documentation states in words rather than as a Python literal.
IN_WORDS = {"2 GiB": 2 * 1024**3}

Groups = list[tuple[str, list[tuple[str, str]]]]  # [(title, [(option, its documented default)])]


def docstring_groups(doc: str) -> Groups:
    """The groups of the docstring's ``Args:`` section: ``**Title** (...):`` lines, then one line per option,
    ``name (default VALUE): what it does`` (deeper-indented continuation lines are allowed)."""
    lines = inspect.cleandoc(doc).split("\nArgs:\n", 1)[1].splitlines()
    groups: Groups = []
    for line in lines:
        if not line.strip():
            break  # the section ends at its first blank line
        if line.startswith("     "):
            continue  # a continuation line
        if title := re.fullmatch(r"    \*\*(.+?)\*\* \(.+\):", line):
            groups.append((title.group(1), []))
        elif option := re.match(r"    (\w+) \(default (.+?)\): \S", line):
            assert groups, f"an option before the first group: {line!r}"
            groups[-1][1].append((option.group(1), option.group(2).strip("`")))
        else:
            raise AssertionError(f"neither a group nor an option: {line!r}")
    return groups


def markdown_groups(text: str) -> Groups:
    """The groups of docs/configuration.md's "Every option": ``### Title``, then one bullet per option,
    ``- **`name`** (default `VALUE`): ...``."""
    section = text.split("\n## Every option\n", 1)[1].split("\n## ", 1)[0]
    groups: Groups = []
    for line in section.splitlines():
        if line.startswith("### "):
            groups.append((line[4:].strip(), []))
        elif line.startswith("- **`"):
            option = re.match(r"- \*\*`(\w+)`\*\* \(default (.+?)\): \S", line)
            assert option and groups, f"an option without its default or before the first group: {line!r}"
            groups[-1][1].append((option.group(1), option.group(2).strip("`")))
    return groups


def check_groups(groups: Groups, where: str) -> None:
    """Seven groups; every option of the signature in exactly one, in the signature's order; no other."""
    assert len(groups) == 7 and all(options for _, options in groups), f"{where}: {[t for t, _ in groups]}"
    names = [name for _, options in groups for name, _ in options]
    counts = Counter(names)
    assert {n for n in PARAMETERS if counts[n] != 1} == set(), f"{where}: not in exactly one group"
    assert set(names) == set(PARAMETERS), f"{where}: documents options that do not exist"
    assert names == list(PARAMETERS), f"{where}: not in the order of the signature"


def check_defaults(groups: Groups, where: str) -> None:
    for _, options in groups:
        for name, text in options:
            value = IN_WORDS[text] if text in IN_WORDS else ast.literal_eval(text)
            assert value == PARAMETERS[name].default, f"{where}: `{name}` documented as {text}"


def test_every_option_is_a_keyword():
    assert {p.kind for p in PARAMETERS.values()} == {inspect.Parameter.KEYWORD_ONLY}
    with pytest.raises(TypeError):
        LossLandscapeCallback(2)  # type: ignore[misc]


def test_every_option_is_in_exactly_one_group_of_the_docstring_and_of_the_docs():
    in_docstring = docstring_groups(LossLandscapeCallback.__doc__ or "")
    in_docs = markdown_groups(CONFIGURATION_MD.read_text())
    check_groups(in_docstring, "the docstring")
    check_groups(in_docs, "docs/configuration.md")
    assert [t for t, _ in in_docstring] == [t for t, _ in in_docs]
    assert [[n for n, _ in o] for _, o in in_docstring] == [[n for n, _ in o] for _, o in in_docs]


def test_the_documented_defaults_are_the_signatures():
    check_defaults(docstring_groups(LossLandscapeCallback.__doc__ or ""), "the docstring")
    check_defaults(markdown_groups(CONFIGURATION_MD.read_text()), "docs/configuration.md")


def test_the_group_checks_catch_a_missing_a_doubled_and_a_stale_option():
    doc = LossLandscapeCallback.__doc__ or ""
    line = next(ln for ln in doc.splitlines() if ln.strip().startswith("margin (default"))
    for broken in (
        doc.replace(line + "\n", ""),  # missing
        doc.replace(line, line + "\n" + line),  # in two places
        doc.replace(line, line.replace("margin", "margins")),  # an option that does not exist
    ):
        with pytest.raises(AssertionError):
            check_groups(docstring_groups(broken), "a broken docstring")
    with pytest.raises(AssertionError):
        check_defaults(docstring_groups(doc.replace("``0.25``", "``0.5``")), "a wrong default")


def test_each_group_of_the_docs_has_one_example_of_its_options_that_constructs_the_callback():
    text = CONFIGURATION_MD.read_text()
    groups = text.split("\n## Every option\n", 1)[1].split("\n## ", 1)[0].split("\n### ")[1:]
    options = dict(markdown_groups(text))
    assert len(groups) == 7
    for group in groups:
        title = group.splitlines()[0]
        examples = re.findall(r"```python\n(.*?)```", group, flags=re.S)
        assert len(examples) == 1, title
        calls = [n for n in ast.walk(ast.parse(examples[0])) if isinstance(n, ast.Call)]
        used = {
            k.arg for c in calls if getattr(c.func, "id", "") == "LossLandscapeCallback" for k in c.keywords
        }
        assert used and used <= {name for name, _ in options[title]}, f"{title}: {used}"
        namespace: dict[str, Any] = {"torch": torch, "LossLandscapeCallback": LossLandscapeCallback}
        exec(examples[0], namespace)  # a wrong value raises ValueError here
        assert isinstance(namespace["cb"], LossLandscapeCallback), title
