"""The package's layout: no import cycles between nanoseg's modules, no private names across them."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _imports(path: Path, package: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, at module level, in functions and under TYPE_CHECKING."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        for base, names in _imports(path, mod if is_pkg else mod.rpartition(".")[0]):
            for target in [f"{base}.{n}" for n in names] or [base]:
                if (found := resolve(target)) not in (None, mod):
                    graph[mod].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_private_name_is_imported_from_another_module():
    private = []
    for mod, (path, is_pkg) in _modules().items():
        for base, names in _imports(path, mod if is_pkg else mod.rpartition(".")[0]):
            if base.startswith("nanoseg"):
                private += [f"{path.relative_to(SRC)}: {base}.{n}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_a_long_module_says_why_it_is_one():
    """Modules stay under ~600 lines, or their docstring states why they are one module."""
    long = {}
    for mod, (path, _) in _modules().items():
        text = path.read_text()
        if text.count("\n") > 620:
            long[mod] = "Why one module" in (ast.get_docstring(ast.parse(text)) or "")
    assert all(long.values()), [m for m, why in long.items() if not why]
