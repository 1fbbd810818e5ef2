"""The install files agree: requirements.txt, pyproject's bounds, constraints.txt, .ci/run.

$ python -m pytest -q tests/test_install_files.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    return [s for line in text.splitlines() if (s := line.split("#")[0].strip())]


def test_requirements_txt_is_pyprojects_dependency_list():
    assert _lines(REPO / "requirements.txt") == PROJECT["dependencies"]


def test_every_dependency_has_a_tested_pin_inside_its_bounds():
    pins = {}
    for line in _lines(REPO / "constraints.txt"):
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
    for spec in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{spec} excludes the tested {pins[name]}"
        if not req.specifier or "==" in str(req.specifier):
            continue
        upper = [s for s in req.specifier if s.operator == "<"]
        assert upper, f"{spec}: no major-version upper bound"


def test_ci_runs_exactly_the_readme_quick_start():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    quick = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    ci = [line for line in _lines(REPO / ".ci" / "run") if line.startswith("pip install")]
    assert len(quick) == 2 and ci == quick
    assert all("-c constraints.txt" in line for line in quick)
