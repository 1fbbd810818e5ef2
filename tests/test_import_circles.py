"""feature_store/ and data_prep/ are layered: no two of their modules import each other,
directly or round a loop, counting the imports inside functions (a lazy import that
closes a loop is still a loop). feature_store/manifest.py is the package's bottom.

Static scans (ast) of the source; fusion/'s own layers are checked in tests/test_layers.py.
"""

from __future__ import annotations

import ast

import pytest

from tests import import_scan as scan

PACKAGES = ("feature_store", "data_prep")


def test_the_scan_sees_the_modules_and_their_imports():
    graph = scan.graph({m: t for p in PACKAGES for m, t in scan.sources(p).items()})
    assert {"feature_store.manifest", "feature_store.layout", "data_prep.pipeline"} <= set(graph)
    # Lazy imports count: pipeline imports these inside run() or at the top, either way.
    assert {"data_prep.add_sets", "data_prep.report", "data_prep.store"} <= graph[
        "data_prep.pipeline"
    ]
    assert "feature_store.manifest" in graph["feature_store.layout"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_circle_of_modules(package):
    assert scan.circles(scan.graph(scan.sources(package))) == []


def test_the_manifest_is_the_bottom_of_feature_store():
    """manifest.py (format, StoreError, StoreInfo, set entries) imports no module of the
    package but the cache and the atomic writer; every reader and writer builds on it."""
    graph = scan.graph(scan.sources("feature_store"))
    assert graph["feature_store.manifest"] <= {"feature_store.cache", "feature_store.atomic"}
    assert graph["feature_store.atomic"] == set()
    assert graph["feature_store.cache"] == set()


def test_feature_store_imports_nothing_from_the_packages_above_it():
    above = ("data_prep", "fusion", "analysis", "sketchfusion", "train", "predict", "bench")
    offences = [f"{m} imports {n}" for m, tree in scan.sources("feature_store").items()
                for n, _ in scan.imports(m, tree) if n.split(".")[0] in above]  # fmt: skip
    assert offences == []


def test_the_scan_finds_a_circle_through_a_lazy_import():
    """The checks above can fail: two modules that import each other, one inside a function."""
    a = ast.parse("def f():\n    from pkg.b import g\n")
    b = ast.parse("from pkg.a import f\n")
    c = ast.parse("from . import a\n")
    graph = scan.graph({"pkg.a": a, "pkg.b": b, "pkg.c": c})
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert scan.circles(graph) == ["pkg.a -> pkg.b -> pkg.a"]
    assert scan.circles({"pkg.a": {"pkg.b"}, "pkg.b": set()}) == []
