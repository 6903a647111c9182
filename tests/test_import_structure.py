"""The package's import structure: no cycles, no modules that import the build by string.

Why: a module graph with cycles cannot be read bottom-up, and the build cache keys each
stage on the import closure of its module, which only sees ordinary imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hadmc_deploy.cache import project_imports

ROOT = Path(__file__).resolve().parents[1]
#: top-level folders and the package names they install as.
PACKAGES = {"hadmc_deploy": "hadmc_deploy", "backends": "hadmc_deploy.backends", "calibration": "hadmc_deploy.calibration"}
#: modules longer than this need a reason in their docstring (the word "long").
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (function-level imports included), parents not counted."""
    return {m for m in project_imports(name, str(path), parents=False) if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_dynamic_imports_on_the_build_path() -> None:
    offenders = []
    for name, path in _modules().items():
        text = path.read_text()
        if name.startswith("hadmc_deploy.build") and ("import_module(" in text or "require(" in text):
            offenders.append(name)
    assert not offenders


def test_long_modules_say_why() -> None:
    long = []
    for name, path in _modules().items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "long" not in doc.lower():
            long.append(f"{name} ({lines} lines)")
    assert not long, "modules over 300 lines without a reason in their docstring: " + ", ".join(long)


def test_tools_import_only_the_package() -> None:
    offenders = []
    for path in (ROOT / "tools").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {m}" for m in mods if m.split(".")[0] in ("tests", "conftest", "backends", "calibration")]
    assert not offenders, offenders
