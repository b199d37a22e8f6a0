"""The package's shape holds: folders name its parts, imports point down and never cycle, every module says
what it is for and is on the map in docs/architecture.md, and the tests mirror the package (issue 20).

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
TESTS = ROOT / "tests"
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


# ------------------------------------------------------------------------------------------ the tests' shape

TEST_FILES = sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py"))
# Test files at tests/ itself that exercise the whole package rather than one part (or a script using it:
# the study under examples/, the benchmark against loss-landscapes).
WHOLE_PACKAGE_TESTS = {
    "test_architecture",
    "test_bench_baselines",
    "test_demo",
    "test_demo_solutions",
    "test_packaging",
    "test_study",
    "test_tensorboard_browser",
}


def test_test_folders_mirror_the_package():
    """A test file in ``tests/<folder>/`` tests the package folder ``lightning_landscape/<folder>/``, which
    must exist (``tests/functional/landscape/`` only while ``lightning_landscape/functional/landscape/`` is
    a package). At ``tests/`` itself sit the whole-package tests and the tests of a root module
    (``test_sinks.py`` for ``sinks.py``). ``tests/helpers/`` holds no tests: it is the one place for helpers
    shared between test files (fixtures shared by all of them are in ``tests/conftest.py``)."""
    root_modules = {m[: -len(".py")] for m in MODULES if "/" not in m}
    wrong = []
    for path in TEST_FILES:
        folder, _, filename = path.rpartition("/")
        stem = filename[: -len(".py")]
        if not folder:
            subject = stem[len("test_") :]
            if stem not in WHOLE_PACKAGE_TESTS and not any(
                subject == m or subject.startswith(m + "_") for m in root_modules
            ):
                wrong.append(f"{path}: neither a whole-package test nor the test of a root module")
        elif not (PACKAGE / folder / "__init__.py").is_file():
            wrong.append(f"{path}: lightning_landscape/{folder}/ is not a package")
    assert not wrong, "test files that do not mirror the package:\n" + "\n".join(wrong)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(source: str) -> set[tuple[str, str]]:
    """``(module, name)`` for every private name of a package module that ``source`` reaches: imported
    (``from pkg.mod import _x``), read or patched through a module (``mod._x``, ``setattr(mod, "_x", ...)``,
    ``monkeypatch.setattr("pkg.mod._x", ...)``)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> package module
    found: set[tuple[str, str]] = set()

    def resolve(dotted: str) -> tuple[str, str] | None:
        """The module and the next name of ``dotted`` (``pkg.mod.name...``), if that module is ours."""
        parts = dotted.split(".")
        for i in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:i]) in NAMES:
                return ".".join(parts[:i]), parts[i]
        return None

    def dotted(node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute) and (base := dotted(node.value)):
            return f"{base}.{node.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in NAMES:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module in NAMES:
            for a in node.names:
                if f"{node.module}.{a.name}" in NAMES:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif _is_private(a.name):
                    found.add((node.module, a.name))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Attribute) and (path := dotted(node)):
            targets.append(path)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first, second = node.args[0], node.args[1] if len(node.args) > 1 else None
            if func in ("setattr", "getattr", "delattr", "hasattr"):
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    targets.append(first.value)  # monkeypatch.setattr("pkg.mod.name", value)
                elif (
                    (base := dotted(first))
                    and isinstance(second, ast.Constant)
                    and isinstance(second.value, str)
                ):
                    targets.append(f"{base}.{second.value}")
        for target in targets:
            hit = resolve(target)
            if hit and _is_private(hit[1]):
                found.add(hit)
    return found


def _subject_modules(test_path: str) -> set[str]:
    """The module a test file is about: ``tests/<folder>/test_<m>[_<aspect>].py`` tests
    ``lightning_landscape/<folder>/<m>.py`` (the longest such ``<m>``)."""
    folder, _, filename = test_path.rpartition("/")
    stem = filename[: -len(".py")]
    if folder == "helpers" or not stem.startswith("test_"):
        return set()
    subject = stem[len("test_") :]
    prefix = "lightning_landscape" + (f".{folder.replace('/', '.')}" if folder else "")
    words = subject.split("_")
    candidates = [f"{prefix}.{'_'.join(words[:i])}" for i in range(len(words), 0, -1)]
    return {next((c for c in candidates if c in NAMES), "")} - {""}


def test_tests_use_private_names_only_of_the_module_they_test():
    """A test reaches into no module's private names (``_x``, dunders aside) except those of the module it
    tests, named by its file: ``tests/<folder>/test_<m>.py`` and ``tests/<folder>/test_<m>_<aspect>.py`` test
    ``lightning_landscape/<folder>/<m>.py``. Everything else goes through public names; a private name that
    several test files need is made public where it lives. Helpers and conftest use none."""
    wrong = []
    for path in sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("*.py")):
        allowed = _subject_modules(path)
        for module, name in sorted(_private_uses((TESTS / path).read_text())):
            if module not in allowed:
                wrong.append(f"tests/{path}: {module}.{name}")
    assert not wrong, "private names used outside their module's tests:\n" + "\n".join(wrong)


def test_the_private_name_check_can_fail():
    engine = "lightning_landscape.functional.landscape.engine"
    assert _subject_modules("functional/landscape/test_engine_compile.py") == {engine}
    assert _subject_modules("test_sinks.py") == {"lightning_landscape.sinks"}
    assert _subject_modules("helpers/models.py") == set()
    source = f"""
import lightning_landscape.functional.landscape.engine
from lightning_landscape.functional.landscape import engine as eng, surface
from lightning_landscape.functional.landscape.surface import _x, evaluate_loss
eng._a, surface._b, lightning_landscape.functional.landscape.engine._c, eng.evaluate_points, eng.__all__
monkeypatch.setattr(eng, "_d", 1)
monkeypatch.setattr("{engine}._e", 1)
"""
    surface = "lightning_landscape.functional.landscape.surface"
    expected = {
        (engine, "_a"),
        (surface, "_b"),
        (engine, "_c"),
        (engine, "_d"),
        (engine, "_e"),
        (surface, "_x"),
    }
    assert _private_uses(source) == expected
