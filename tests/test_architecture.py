"""The package stays readable: every module says what it is for, is listed in docs/architecture.md, and
is short enough to read in one sitting (issue 9: no module over ~450 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_landscape"
MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
MAX_LINES = 450


@pytest.mark.parametrize("module", MODULES)
def test_module_says_what_it_is_for_and_is_listed(module):
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text()))
    assert docstring and len(docstring.split()) >= 4, f"{module}: no docstring saying what it is for"
    assert f"| `{module}` |" in (ROOT / "docs" / "architecture.md").read_text(), (
        f"{module} is missing from the module table of docs/architecture.md"
    )


@pytest.mark.parametrize("module", MODULES)
def test_module_is_short_enough_to_read(module):
    lines = len((PACKAGE / module).read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by purpose"


def test_the_table_lists_no_module_that_is_gone():
    table = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    listed = [line.split("`")[1] for line in table if line.startswith("| `")]
    listed = [name for name in listed if name.endswith(".py")]
    assert set(listed) <= set(MODULES), sorted(set(listed) - set(MODULES))
