"""The package's shape: imports point one way, and modules and functions stay small enough to read.

The import graph is built from the source (``ast``), with every import a module
makes, at its top, inside functions, and under ``TYPE_CHECKING`` alike: a lazy
import is still a dependency. Importing a name from the package root counts as
importing the module that defines it (the root only re-exports).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import tensorstore_ds

PACKAGE = Path(tensorstore_ds.__file__).parent
ROOT = "tensorstore_ds"
MAX_MODULE_LINES = 440  # "about 400"
MAX_FUNCTION_LINES = 55  # "about 50"
LAYERS_APART = ("conversion", "serve")  # source -> store, and store -> PyTorch: neither imports the other


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, node: ast.ImportFrom, known: dict[str, Path]) -> str:
    """The absolute module an ``ImportFrom`` in module ``name`` reads from."""
    if node.level == 0:
        return node.module or ""
    is_package = known[name].name == "__init__.py"
    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, known: dict[str, Path]) -> Iterator[str]:
    """Every module of the package that module ``name`` imports."""
    tree = ast.parse(known[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node, known)
            targets = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known]
            if len(targets) < len(node.names):
                targets.append(source)
        else:
            continue
        for target in targets:
            if target == ROOT:  # the root re-exports: count the defining modules
                yield from (f"{ROOT}{mod}" for mod in _root_exports(node))
            elif target.startswith(ROOT) and target in known:
                yield target


def _root_exports(node: ast.AST) -> list[str]:
    names = [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else []
    return [tensorstore_ds._EXPORTS[n] for n in names if n in tensorstore_ds._EXPORTS]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports_of(name, known)) - {name} for name in known if name != ROOT}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "tensorstore_ds.conversion.run" in graph["tensorstore_ds.conversion.api"]  # module level, relative
    assert "tensorstore_ds.conversion.dask" in graph["tensorstore_ds.conversion.api"]  # inside a function
    assert "tensorstore_ds.errors" in graph["tensorstore_ds.conversion.decode.image"]  # three dots up
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("layer", LAYERS_APART)
def test_conversion_and_serving_never_import_each_other(layer: str) -> None:
    other = next(x for x in LAYERS_APART if x != layer)
    crossing = {
        (name, target)
        for name, targets in import_graph().items()
        if name.startswith(f"{ROOT}.{layer}")
        for target in targets
        if target.startswith(f"{ROOT}.{other}")
    }
    assert crossing == set()


def test_lower_layers_do_not_reach_up() -> None:
    """units and errors import nothing above them; format and store never import conversion or serve."""
    graph = import_graph()
    assert graph[f"{ROOT}.units"] == set()
    assert graph[f"{ROOT}.errors"] <= {f"{ROOT}.units"}
    for name, targets in graph.items():
        if name.startswith((f"{ROOT}.format", f"{ROOT}.store")):
            assert not {t for t in targets if t.startswith((f"{ROOT}.conversion", f"{ROOT}.serve"))}, name


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's docstring, which explain rather than add length."""
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return (first.end_lineno or first.lineno) - first.lineno + 1
    return 0


def test_modules_and_functions_stay_readable() -> None:
    """Modules of about 400 lines at most, functions of about 50 (their docstrings not counted)."""
    long_modules = {}
    long_functions = {}
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules[name] = text.count("\n")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1 - _docstring_lines(node)
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{name}.{node.name}"] = length
    assert (long_modules, long_functions) == ({}, {})
