"""Import boundaries: one place imports nio, one imports aiosqlite, and no import circles.

Read from the source with ``ast`` (function-local imports count too), so a lazy import cannot
hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import peerbot

ROOT = Path(peerbot.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = ("peerbot", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (absolute names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def _importers(top: str) -> set[str]:
    return {
        name
        for name, path in _modules().items()
        if any(m == top or m.startswith(top + ".") for m in _imports(name, path))
    }


def _within(names: set[str], owner: str) -> bool:
    return all(n == owner or n.startswith(owner + ".") for n in names)


def test_only_the_matrix_boundary_imports_nio() -> None:
    importers = _importers("nio")
    assert importers and _within(importers, "peerbot.matrix"), importers


def test_only_the_store_imports_aiosqlite() -> None:
    importers = _importers("aiosqlite")
    assert importers and _within(importers, "peerbot.store"), importers


def test_only_the_store_imports_asyncpg() -> None:
    importers = _importers("asyncpg")
    assert importers and _within(importers, "peerbot.store"), importers


def test_crosssign_and_signing_import_neither_nio_nor_aiohttp() -> None:
    modules = _modules()
    for name in ("peerbot.matrix.crosssign", "peerbot.matrix.signing"):
        third_party = {m.partition(".")[0] for m in _imports(name, modules[name])}
        assert not third_party & {"nio", "aiohttp", "aiosqlite"}, (name, third_party)


def _cycles() -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    modules = _modules()
    graph = {
        name: {m for m in _imports(name, path) if m in modules and m != name}
        for name, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_through_the_entry_points_the_boundaries_or_the_store() -> None:
    ours = ("cli", "runner", "logs", "demo", "crosssign", "signing", "matrix", "store")
    caught = [c for c in _cycles() if any(m.split(".")[1] in ours for m in c if m.count(".") >= 1)]
    assert not caught, caught


def test_no_class_over_300_lines_and_long_modules_say_why() -> None:
    import ast

    too_big: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        doc = ast.get_docstring(tree) or ""
        if len(source.splitlines()) > 410 and "long:" not in doc:
            too_big.append(f"{path.name}: {len(source.splitlines())} lines, no 'long:' reason")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > 300:
                    too_big.append(f"{path.name}: class {node.name} has {size} lines")
    assert not too_big, too_big
