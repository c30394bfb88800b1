"""The package's layers: imports go one way, the library never imports its command line, and no module imports
itself round a circle. Read from the source with ``ast`` (every ``import`` and ``from`` statement, including the
ones inside functions), so a circle hidden in a function body counts as much as one at the top of a module."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "medsynth"
CLI = "medsynth.cli"
#: Modules of the command-line layer: the only ones that may import medsynth.cli.
CLI_LAYER = ("medsynth.cli", "medsynth.__main__")


class Edge(NamedTuple):
    """``source`` imports ``target`` (both medsynth modules) at ``path:line``."""

    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.path}:{self.line})"


def module_names() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Dotted names imported anywhere in a module, except inside ``if TYPE_CHECKING:`` blocks."""

    def __init__(self, package: str) -> None:
        self.package = package  # for relative imports
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never runs: not a real import
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        # "from medsynth import cli" imports the module medsynth.cli; "from medsynth.io import load_image" the module
        self.found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        self.found.append((base, node.lineno))

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("medsynth.x") with a constant name is an import too
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self.found.append((node.args[0].value, node.lineno))
        self.generic_visit(node)


def import_edges() -> list[Edge]:
    """Every import of one medsynth module by another, module-level and function-level alike.

    A name is mapped to the longest medsynth module it starts with; importing a submodule implies its parent
    package's ``__init__``, which Python always runs first and which is not counted as an edge.
    """
    modules = module_names()
    edges: set[Edge] = set()
    for source, path in modules.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        visitor = _Imports(package)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for name, line in visitor.found:
            if name != "medsynth" and not name.startswith("medsynth."):
                continue
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            if name in modules and name != source:
                edges.add(Edge(source, name, str(path.relative_to(REPO)), line))
    return sorted(edges)


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_cli_layer(module: str) -> bool:
    return any(module == top or module.startswith(top + ".") for top in CLI_LAYER)


# ---- the checks ------------------------------------------------------------------------------------------------


def test_the_import_walker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import medsynth.cli\n"
            "def f():\n    from medsynth.io import load_image\n    from . import pictures\n"
            "    import importlib; importlib.import_module('medsynth.server')\n")
    visitor = _Imports("medsynth")
    visitor.visit(ast.parse(code))
    names = {name for name, _ in visitor.found}
    assert {"medsynth.io", "medsynth.pictures", "medsynth.server"} <= names
    assert "medsynth.cli" not in names  # TYPE_CHECKING only
    assert cycles([Edge("a", "b", "", 1), Edge("b", "c", "", 1), Edge("c", "a", "", 1), Edge("c", "d", "", 1)]) == [
        ["a", "b", "c"]]


def test_the_library_never_imports_the_command_line() -> None:
    wrong = [e for e in import_edges() if not in_cli_layer(e.source) and in_cli_layer(e.target)]
    assert not wrong, "modules below the command-line layer import it:\n" + "\n".join(map(str, wrong))


def test_no_import_cycles() -> None:
    edges = import_edges()
    found = cycles(edges)
    lines = []
    for component in found:
        members = set(component)
        lines.append(" <-> ".join(component) + ":")
        lines += [f"    {e}" for e in edges if e.source in members and e.target in members]
    assert not found, "import cycles among medsynth modules:\n" + "\n".join(lines)


def test_the_client_imports_without_fastapi_or_torch() -> None:
    code = "import sys, medsynth.client\nprint(sorted(m for m in ('fastapi', 'torch', 'starlette') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ---- console scripts -------------------------------------------------------------------------------------------


def console_scripts() -> list[tuple[str, str]]:
    """``(name, "module:attr")`` of every console script in setup.py, read with ``ast``."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entry_points = ast.literal_eval(node.value)
            return [tuple(s.replace(" ", "").split("=", 1)) for s in entry_points["console_scripts"]]  # type: ignore
    raise AssertionError("setup.py has no entry_points")


def test_setup_py_names_every_command() -> None:
    names = {name for name, _ in console_scripts()}
    assert names == {f"medsynth-{c}" for c in ("train", "convert", "eval", "enhance", "serve", "demo", "calibrate")}
    assert all(target.startswith(CLI + ".") or target.startswith(CLI + ":") for _, target in console_scripts())


@pytest.mark.parametrize("name,target", console_scripts())
def test_console_script_resolves_and_helps(name: str, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, _, attr = target.partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name}")
