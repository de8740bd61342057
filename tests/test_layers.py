"""The package's shape: layers import downward only, no cycles, no reaching into private names.

Read from the source with `ast` (function-level and `TYPE_CHECKING` imports included), so a
new module is checked without being listed anywhere.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "arithlens"

# Lower number = lower layer. A module may import its own layer or below; the two paper
# subpackages share a layer but never import each other.
RANKS = {
    "arithlens.core": 0,
    "arithlens.data": 1,
    "arithlens.testing": 1,
    "arithlens.analysis": 2,
    "arithlens.cna": 3,
    "arithlens.circuits": 3,
    "arithlens": 4,  # the package itself: the public facade over the layers below
    "arithlens.app": 5,
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    best = max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)
    return best


def _imports(module: str) -> list[tuple[str, str | None, bool]]:
    """`(target module, imported name or None, inside a function)` of every arithlens import."""
    tree = ast.parse(MODULES[module].read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "arithlens":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in MODULES else node.module
                out.append((target, None if target == full else alias.name, id(node) in inner))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "arithlens":
                    out.append((alias.name, None, id(node) in inner))
    return out


def test_every_module_has_a_layer():
    assert all(_layer(m) in RANKS for m in MODULES)


def test_layers_import_downward_only():
    wrong = []
    for module in MODULES:
        for target, _, _ in _imports(module):
            own, theirs = _layer(module), _layer(target)
            if RANKS[theirs] > RANKS[own] or (RANKS[theirs] == RANKS[own] and theirs != own):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_function_level_imports_of_arithlens():
    inner = [f"{m} imports {t}" for m in MODULES for t, _, fn in _imports(m) if fn]
    assert not inner, "\n".join(inner)


def test_no_module_imports_another_modules_private_names():
    private = [f"{m} imports {n} from {t}" for m in MODULES for t, n, _ in _imports(m)
               if n and n.startswith("_") and not n.startswith("__") and t != m]  # fmt: skip
    assert not private, "\n".join(private)


@pytest.mark.parametrize("package", ["arithlens", "arithlens.cna", "arithlens.circuits", "arithlens.data"])
def test_packages_import_eagerly_with_an_explicit_all(package):
    mod = importlib.import_module(package)
    assert not hasattr(mod, "__getattr__"), f"{package} resolves names lazily"
    missing = [name for name in mod.__all__ if name not in vars(mod)]
    assert not missing, missing
    assert not [n for n in dir(mod) if n in ("TYPE_CHECKING", "import_module", "_EXPORTS")]
