"""Static import scans (ast) shared by the layering tests: which modules of a package import
which, counting imports inside functions (a lazy import that closes a loop is still a loop),
and the loops among them. Used by tests/test_layers.py (fusion/) and
tests/test_import_circles.py (feature_store/, data_prep/).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(package: str) -> dict[str, ast.Module]:
    """Every module of ``package`` (a folder of the repo), parsed."""
    return {
        module_name(p): ast.parse(p.read_text(), str(p))
        for p in sorted((REPO / package).rglob("*.py"))
    }


def imports(module: str, tree: ast.Module) -> list[tuple[str, int]]:
    """Every module an ``import`` or ``from ... import`` names, in functions too, with its
    line; ``from pkg import x`` names ``pkg.x`` as well (x may be a module), relative ones
    resolved against ``module``."""
    package = module.split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level], *filter(None, [base])])
            found.append((base, node.lineno))
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return found


def graph(scanned: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the modules of the same scan it imports (a package's __init__ excluded:
    it only hands names on, and importing a submodule runs it anyway)."""
    packages = {m.split(".")[0] for m in scanned}
    return {
        module: {n for n, _ in imports(module, tree)
                 if n in scanned and n != module and n not in packages}  # fmt: skip
        for module, tree in scanned.items()
    }


def circles(edges: dict[str, set[str]]) -> list[str]:
    """Each loop found by a depth-first walk, as ``a -> b -> a``."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                trail = [*path, node]
                found.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    return found
