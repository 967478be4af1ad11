"""Imports point down (issue 36): the package's import graph, read from the source with `ast` (imports
inside functions included, and `importlib.import_module("adarank...")` calls), has no circle and no
import from a lower layer to a higher one, against the table of layers below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "adarank"

LAYERS = [
    # 0: leaves: what ships in packages, hub ids, the run directory's files, the version, the old names
    ["adarank._version", "adarank._moved", "adarank.io", "adarank.io.assets", "adarank.io.hub", "adarank.io.rundir"],
    ["adarank.config"],  # 1: the schema: frozen dataclasses, defaults, field docs, rules on values alone
    ["adarank.core"],  # 2: the method: adapters, scores, schedule, allocator, shrink, penalty, exports
    ["adarank.data", "adarank.io.models", "adarank.io.sharded", "adarank.reporting"],  # 3: data, base models, reports
    ["adarank.training"],  # 4: the engine, checkpoints, set-up, evaluation, the Trainer integration
    ["adarank.checks", "adarank.analysis"],  # 5: validation that reads files and models; research commands
    ["adarank.run"],  # 6: the recipe
    ["adarank.cli", "adarank.__main__", "adarank"],  # 7: the command line and the public API
]
"""Layers from the bottom up; a module is in the layer of the longest prefix listed (a package's entry
covers its submodules). A module may import its own layer or any below, never one above."""

ALIASES = {
    ("adarank", "*"): "the public API loads its names lazily (PEP 562) so that `import adarank` stays light",
    ("adarank.config", "adarank.checks"): "the thin alias of the names that moved to adarank.checks in 0.2",
    ("adarank._moved", "*"): "the alias finder binds adarank 0.1's module names to their new homes",
}
"""Imports by name (`importlib.import_module`) that are allowed to point up, and why: the aliases
issue 36 asks for, which resolve at first use only."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best, layer = -1, None
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best:
                best, layer = len(member), index
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def _imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, by name) for every import of the package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("adarank"):
            module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("adarank")]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("adarank")
        ):
            found.append((str(node.args[0].value), node.lineno, True))
        found += [(t, node.lineno, False) for t in targets]
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    files = {_module_name(p): p for p in package.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def problems(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Every upward import and every circle of ``graph``."""
    found = []
    edges: dict[str, set[str]] = {m: set() for m in graph}
    for module, imports in graph.items():
        for target, line, by_name in imports:
            if target == module:
                continue
            if by_name and ((module, "*") in ALIASES or (module, target) in ALIASES):
                continue
            if _layer(target) > _layer(module):
                found.append(f"{module}:{line} imports {target}, a higher layer ({_layer(module)} -> {_layer(target)})")
            if target in edges and not by_name:
                edges[module].add(target)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append("circle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_imports_point_down_without_circles() -> None:
    graph = import_graph()
    assert len(graph) > 30 and all(_layer(m) >= 0 for m in graph)
    assert problems(graph) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ("adarank.core.layers", "adarank.core.allocator"),
            "circle: adarank.core.allocator -> adarank.core.importance"
            " -> adarank.core.layers -> adarank.core.allocator",
        ),
        (("adarank.core.schedule", "adarank.training.engine"), "adarank.core.schedule:0 imports adarank.training"),
        (("adarank.config", "adarank.run"), "adarank.config:0 imports adarank.run, a higher layer (1 -> 6)"),
    ],
)
def test_an_added_circle_or_upward_import_is_caught(extra: tuple[str, str], expected: str) -> None:
    graph = import_graph()
    module, target = extra
    graph[module] = [*graph[module], (target, 0, False)]
    assert any(p.startswith(expected) for p in problems(graph)), problems(graph)


def test_the_0_1_module_names_still_import_with_one_warning_naming_the_new_home() -> None:
    """`import adarank.loop` (and every other moved name) gives the new module itself, warning once."""
    import subprocess
    import sys

    script = (
        "import warnings, importlib\n"
        "warnings.simplefilter('always')\n"
        "from adarank._moved import MOVED\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "        again = importlib.import_module(old)\n"
        "    homes = new if isinstance(new, tuple) else (new,)\n"
        "    assert module is again, old\n"
        "    if isinstance(new, str):\n"
        "        assert module is importlib.import_module(new) and module.__spec__.name == new, old\n"
        "    for home in homes:\n"
        "        public = [k for k in vars(importlib.import_module(home)) if not k.startswith('_')]\n"
        "        assert all(hasattr(module, k) for k in public), (old, home)\n"
        "    notes = [str(w.message) for w in seen if w.category is DeprecationWarning and old in str(w.message)]\n"
        "    home_text = '`, `'.join(homes)\n"
        "    assert notes == [f'`{old}` moved to `{home_text}` in adarank 0.2; import it from there.'], (old, notes)\n"
        "from adarank.loop import classify_split, train_loop\n"
        "from adarank.tasks import exact_match, only_scored_logits\n"
        "from adarank.training.engine import train_loop as engine_loop\n"
        "assert train_loop is engine_loop\n"
        "print(len(MOVED))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "26"
