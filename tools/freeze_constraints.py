"""Write constraints.txt: the exact versions installed here of our dependencies and theirs.

$ python tools/freeze_constraints.py            # after `pip install -e ".[test]"` here

``pip freeze`` narrowed to what ``pyproject.toml`` needs: its dependencies and the test
extra, followed through every installed package's own requirements. CI installs with it
(``pip install -e . -c constraints.txt``), so CI runs the tested set while pyproject's
bounds stay loose enough for a notebook's own torch and transformers.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
# The exact set the tests ran with (Python {python}), written by tools/freeze_constraints.py.
# CI and reproducible runs: pip install -e ".[test]" -c constraints.txt
# A notebook keeps its own torch/transformers: pip install -r requirements.txt (or -e .)
"""


def roots() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]] + [
        Requirement(r) for r in project["optional-dependencies"]["test"]
    ]


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """{name: installed version} of the requirements and everything they pull in here."""
    found: dict[str, str] = {}
    extras: dict[str, set[str]] = {}
    todo = list(requirements)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found and set(req.extras) <= extras[name]:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"{req.name} is not installed; run pip install -e '.[test]' first")
        found[name] = dist.version
        extras[name] = extras.get(name, set()) | set(req.extras)
        for spec in dist.requires or []:
            sub = Requirement(spec)
            env = [{"extra": e} for e in extras[name]] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(e) for e in env):
                todo.append(sub)
    return found


def main() -> None:
    pins = closure(roots())
    pins.pop("sketchfusion", None)
    python = ".".join(map(str, sys.version_info[:3]))
    text = HEADER.format(python=python) + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))
    (REPO / "constraints.txt").write_text(text)
    print(f"wrote constraints.txt ({len(pins)} packages)")


if __name__ == "__main__":
    main()
