"""The package's shape holds: folders name its parts, imports point down and never cycle, every module says
what it is for and is on the map in docs/architecture.md (issue 20).

The import graph is read from the source (every ``import``, at module level or inside a function or an
``if TYPE_CHECKING`` block): what a module *may* need is what a reader must follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_landscape"
MAP = ROOT / "docs" / "architecture.md"
MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
MAX_LINES = 600  # a sanity bound, not a quota: a module is as long as its one idea needs

# Which part each module belongs to (the first folder, or the root module's own name), and which parts each
# part may import. Data flows down: callback -> functional -> records; plots and cli read records.
ALLOWED: dict[str, set[str]] = {
    "records": set(),
    "functional": {"records"},
    "plots": {"records"},
    "optim": {"functional"},
    "solutions": {"records", "functional"},
    "sinks": {"records", "plots"},
    "callback": {"records", "functional", "plots", "optim", "solutions", "sinks", "_version"},
    "cli": {"records", "plots", "solutions"},
    "_version": set(),
}
# Entry points a user imports by path: they may import any part (they are the top).
ENTRY = {"__init__", "__main__", "pytorch_lightning", "runs", "run_weights", "stats"}
# Inside functional/, the same rule one level down.
FUNCTIONAL_ALLOWED: dict[str, set[str]] = {
    "checks": set(),
    "landscape": {"checks", "objective"},
    "objective": {"checks", "landscape"},
    "curvature": {"checks", "objective", "landscape"},
    "trust": {"checks", "objective", "landscape"},
    "solutions": {"checks", "objective", "landscape"},
    "__init__": {"checks", "objective", "landscape", "curvature", "trust", "solutions"},
}


def _module_name(path: str) -> str:
    dotted = path[: -len(".py")].replace("/", ".")
    dotted = dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted
    return "lightning_landscape" if dotted == "__init__" else f"lightning_landscape.{dotted}"


NAMES = {_module_name(m): m for m in MODULES}


def _imports(path: str) -> set[str]:
    """The package modules ``path`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    name = _module_name(path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / path).read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in NAMES else target)
    return {m for m in found if m in NAMES and m != name}


GRAPH = {name: _imports(path) for name, path in NAMES.items()}


def _part(name: str) -> str:
    parts = name.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_the_root_holds_only_entry_points_and_the_parts_are_folders():
    root_modules = sorted(m for m in MODULES if "/" not in m and m not in ("__init__.py", "__main__.py"))
    assert len(root_modules) <= 8, root_modules
    folders = sorted({m.split("/")[0] for m in MODULES if "/" in m})
    assert len(folders) >= 4, folders
    for folder in [*folders, "functional/landscape", "functional/curvature", "functional/trust"]:
        init = PACKAGE / folder / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring.split()) >= 8, f"{folder}/__init__.py: say what the part is"


def test_no_import_cycle():
    # Tarjan-free: a depth-first search that reports the first cycle it meets, as a readable chain.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_cycle_check_can_fail():
    # The graph reader must see function-level and TYPE_CHECKING imports, or the check above proves nothing.
    assert "lightning_landscape.callback.callback" in GRAPH["lightning_landscape.pytorch_lightning"]
    assert "lightning_landscape.solutions.compare" in GRAPH["lightning_landscape"]  # under TYPE_CHECKING
    compare = GRAPH["lightning_landscape.solutions.compare"]
    assert "lightning_landscape.functional.solutions.barrier" in compare  # inside a function


def test_imports_point_down():
    upward = []
    for name, targets in GRAPH.items():
        part = _part(name)
        if part in ENTRY:
            continue
        for target in targets:
            other = _part(target)
            if other != part and other not in ALLOWED[part]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_functional_subpackages_import_down():
    wrong = []
    for name, targets in GRAPH.items():
        if not name.startswith("lightning_landscape.functional."):
            continue
        part = name.split(".")[2]
        for target in targets:
            if target.startswith("lightning_landscape.functional."):
                other = target.split(".")[2]
                if other != part and other not in FUNCTIONAL_ALLOWED[part]:
                    wrong.append(f"{name} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("folder", ["functional", "records", "plots", "cli", "solutions", "optim"])
def test_only_the_callback_and_sinks_import_lightning(folder):
    for module in (m for m in MODULES if m.startswith(folder + "/")):
        for node in ast.walk(ast.parse((PACKAGE / module).read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for n in names:
                assert not n.startswith(("lightning.", "pytorch_lightning")) and n not in (
                    "lightning",
                    "pytorch_lightning",
                ), f"{module} imports {n}"


@pytest.mark.parametrize("module", MODULES)
def test_module_says_what_it_is_for_and_is_on_the_map(module):
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text()))
    assert docstring and len(docstring.split()) >= 4, f"{module}: no docstring saying what it is for"
    assert f"`{module}`" in MAP.read_text(), f"{module} is missing from docs/architecture.md"
    lines = len((PACKAGE / module).read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: does it hold more than one idea?"


def test_the_map_lists_no_module_that_is_gone():
    rows = [line.split("|")[1] for line in MAP.read_text().splitlines() if line.startswith("| `")]
    listed = {name.strip(" `") for row in rows for name in row.split(",") if name.strip(" `").endswith(".py")}
    assert listed <= set(MODULES), sorted(listed - set(MODULES))
