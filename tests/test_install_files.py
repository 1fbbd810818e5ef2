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


def _first_bash_block_after(doc: str, heading: str) -> list[str]:
    text = (REPO / doc).read_text()
    block = re.search(rf"{re.escape(heading)}\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_quick_start():
    quick = _first_bash_block_after("README.md", "## Quick start")
    ci = [line for line in _lines(REPO / ".ci" / "run") if line.startswith("pip install")]
    assert len(quick) == 2 and ci == quick
    assert all("-c constraints.txt" in line for line in quick)
    # docs/install.md explains the same two commands, and must not drift from them.
    assert (
        _first_bash_block_after("docs/install.md", "## The Quick start, command by command")
        == quick
    )


def _pins() -> dict[str, str]:
    return dict(line.split("==") for line in _lines(REPO / "constraints.txt"))


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_the_cpu_torch_install_pins_constraints_versions(doc):
    """The CPU-wheel line installs exactly the torch and torchvision the tests ran with, so
    the project install that follows keeps them instead of pulling the CUDA build."""
    text = (REPO / doc).read_text()
    (line,) = [s for s in text.splitlines() if "download.pytorch.org/whl/cpu" in s]
    assert line.startswith("pip install ") and line.endswith(
        "--index-url https://download.pytorch.org/whl/cpu"
    )
    asked = dict(re.findall(r"\b(torch|torchvision)==(\S+)", line))
    pins = _pins()
    assert asked == {"torch": pins["torch"], "torchvision": pins["torchvision"]}
    assert f"`torch=={pins['torch']}` accepts `{pins['torch']}+cpu`" in text or doc != "README.md"


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_no_test_count_to_go_stale(doc):
    """The suite grows every week: the docs say how long it takes, not how many tests."""
    text = " ".join((REPO / doc).read_text().split())
    assert not re.search(r"\b\d[\d,]* tests\b", text), re.search(r".{40}\d+ tests.{20}", text)
