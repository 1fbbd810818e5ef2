"""The README is the front door (short, nothing outside the repository), and every relative
link in it and in docs/ reaches a file, and a heading where it names one.

$ python -m pytest -q tests/test_docs_links.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text a reader sees as prose: no fenced blocks, no code spans."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_``
    kept), spaces to hyphens, ``-1``, ``-2``... for repeats in one file."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    return slug if n == 0 else f"{slug}-{n}"


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    return {_slug(h, seen) for h in HEADING.findall(FENCE.sub("", path.read_text()))}


def broken_links(doc: Path, root: Path) -> list[str]:
    """One line per relative link of ``doc`` whose file (inside ``root``) or anchor is missing."""
    bad = []
    for target in LINK.findall(_prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.is_relative_to(root.resolve()) or not dest.exists():
            bad.append(f"{doc.name}: {target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{doc.name}: {target}: no heading #{anchor} in {dest.name}")
    return bad


def _cells(row: str) -> int:
    """Cells of a Markdown table row (pipes inside code spans and escaped pipes are text)."""
    return len(re.sub(r"\\\|", "", CODE_SPAN.sub("", row)).strip().strip("|").split("|"))


def ragged_rows(doc: Path) -> list[str]:
    """One line per table row of ``doc`` whose cell count is not its header's: GitHub drops
    the extra cells (or pads the row) and the table reads wrong."""
    bad, header = [], None
    for n, line in enumerate(FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())
                             .splitlines(), 1):  # fmt: skip
        if not line.lstrip().startswith("|"):
            header = None
        elif header is None:
            header = _cells(line)
        elif _cells(line) != header:
            bad.append(f"{doc.name}:{n}: {_cells(line)} cells, the header has {header}")
    return bad


def test_readme_is_a_front_door_under_200_lines():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 200
    assert "../shared" not in text and "/work/" not in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc):
    assert broken_links(doc, REPO) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_table_row_has_its_header_cells(doc):
    assert ragged_rows(doc) == []


def test_the_table_checker_finds_a_ragged_row(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("| a | b |\n|---|---|\n| `x|y` | z |\n| 1 | 2 | 3 |\n\n| c |\n|---|\n| 4 |\n")
    assert ragged_rows(doc) == ["a.md:4: 3 cells, the header has 2"]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {t.partition("#")[0] for t in LINK.findall(_prose((REPO / "README.md").read_text()))}
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert pages - linked == set()


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_skips_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Top\n\n## When W&B fails, `it` goes on\n## Top\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#when-wb-fails-it-goes-on) [ok](docs/a.md#top-1)\n"
        "[self](#here) [web](https://example.org/x.md) ![img](docs/missing.png)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nowhere) [out](../outside.md)\n"
        "`[code](docs/c.md)`\n\n```\n[fenced](docs/d.md)\n```\n\n# Here\n"
    )
    assert broken_links(doc, tmp_path) == [
        "README.md: docs/missing.png: no such file in the repository",
        "README.md: docs/b.md: no such file in the repository",
        "README.md: docs/a.md#nowhere: no heading #nowhere in a.md",
        "README.md: ../outside.md: no such file in the repository",
    ]
