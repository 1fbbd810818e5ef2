"""feature_store/ and data_prep/ are layered: no two of their modules import each other,
directly or round a loop, counting the imports inside functions (a lazy import that
closes a loop is still a loop). feature_store/manifest.py is the package's bottom.

Static scans (ast) of the source; fusion/'s own layers are checked in tests/test_layers.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("feature_store", "data_prep")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(package: str) -> dict[str, ast.Module]:
    return {
        _module(p): ast.parse(p.read_text(), str(p))
        for p in sorted((REPO / package).rglob("*.py"))
    }


def _imports(module: str, tree: ast.Module) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, in functions too; ``from
    pkg import x`` names ``pkg.x`` as well (x may be a module), relative ones resolved."""
    package = module.split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level], *filter(None, [base])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph(sources: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the modules of the same scan it imports (a package's __init__ excluded:
    it only hands names on, and importing a submodule runs it anyway)."""
    packages = {m.split(".")[0] for m in sources}
    return {
        module: {n for n in _imports(module, tree)
                 if n in sources and n != module and n not in packages}  # fmt: skip
        for module, tree in sources.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[str]:
    """Each loop found by a depth-first walk, as ``a -> b -> a``."""
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                trail = [*path, node]
                circles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return circles


def test_the_scan_sees_the_modules_and_their_imports():
    graph = _graph({m: t for p in PACKAGES for m, t in _sources(p).items()})
    assert {"feature_store.manifest", "feature_store.layout", "data_prep.pipeline"} <= set(graph)
    # Lazy imports count: pipeline imports these inside run() or at the top, either way.
    assert {"data_prep.add_sets", "data_prep.report", "data_prep.store"} <= graph[
        "data_prep.pipeline"
    ]
    assert "feature_store.manifest" in graph["feature_store.layout"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_circle_of_modules(package):
    assert _circles(_graph(_sources(package))) == []


def test_the_manifest_is_the_bottom_of_feature_store():
    """manifest.py (format, StoreError, StoreInfo, set entries) imports no module of the
    package but the cache and the atomic writer; every reader and writer builds on it."""
    sources = _sources("feature_store")
    graph = _graph(sources)
    assert graph["feature_store.manifest"] <= {"feature_store.cache", "feature_store.atomic"}
    assert graph["feature_store.atomic"] == set()
    assert graph["feature_store.cache"] == set()


def test_feature_store_imports_nothing_from_the_packages_above_it():
    above = ("data_prep", "fusion", "analysis", "sketchfusion", "train", "predict", "bench")
    offences = [f"{m} imports {n}" for m, tree in _sources("feature_store").items()
                for n in _imports(m, tree) if n.split(".")[0] in above]  # fmt: skip
    assert offences == []


def test_the_scan_finds_a_circle_through_a_lazy_import():
    """The checks above can fail: two modules that import each other, one inside a function."""
    a = ast.parse("def f():\n    from pkg.b import g\n")
    b = ast.parse("from pkg.a import f\n")
    c = ast.parse("from . import a\n")
    graph = _graph({"pkg.a": a, "pkg.b": b, "pkg.c": c})
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert _circles(graph) == ["pkg.a -> pkg.b -> pkg.a"]
    assert _circles({"pkg.a": {"pkg.b"}, "pkg.b": set()}) == []
