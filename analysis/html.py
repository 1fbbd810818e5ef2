"""A self-contained HTML report: sections of notes, tables and base64-embedded PNG figures.

$ python -c "from analysis.html import Report; r = Report('t'); r.section('s').note('hi'); print(r.render())"

Figures are also written as PNG files next to the page, so they can be reused elsewhere; the
page itself needs no other file and opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402

from analysis.style import DPI  # noqa: E402

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1250px;padding:1em 2em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td.num{text-align:right}
.note{background:#fff6d6;border-left:4px solid #e0b400;padding:.4em .8em;margin:.5em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}nav a{margin-right:1em}
"""


def fig_to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (figures otherwise pile up)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Figure:
    name: str  # stable id: file stem and the <img> id the tests look for
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    anchor: str
    parts: list[tuple[str, object]] = field(default_factory=list)

    def note(self, text: str) -> Section:
        """A visible remark: why something was skipped, capped or looks odd."""
        self.parts.append(("note", text))
        return self

    def text(self, text: str) -> Section:
        self.parts.append(("text", text))
        return self

    def table(self, header: list[str], rows: list[list[object]], caption: str = "") -> Section:
        self.parts.append(("table", (header, rows, caption)))
        return self

    def figure(self, name: str, fig, caption: str) -> Section:
        """Add a matplotlib figure (rendered now, closed) under the stable id ``name``."""
        self.parts.append(("figure", Figure(name, caption, fig_to_png(fig))))
        return self


def fmt_number(value: float | int | np.number) -> str:
    """A table number: whole numbers as integers (``6``, not ``6.0000``), other floats to 4
    decimals (1 past 10, 2 significant digits below 0.001), NaN as ``n/a``."""
    if isinstance(value, int | np.integer):
        return str(int(value))
    value = float(value)
    if not np.isfinite(value):
        return "n/a" if np.isnan(value) else str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _td(value: object) -> str:
    """A table cell; numbers right-aligned and formatted by :func:`fmt_number`."""
    if isinstance(value, bool | str) or not isinstance(value, int | float | np.number):
        return f"<td>{html.escape(str(value))}</td>"
    return f"<td class='num'>{fmt_number(value)}</td>"


class Report:
    """Collects sections; ``render`` gives the page, ``write`` saves it with the PNGs."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        anchor = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
        sec = Section(title, anchor)
        self.sections.append(sec)
        return sec

    @property
    def figures(self) -> list[Figure]:
        return [p for s in self.sections for kind, p in s.parts if kind == "figure"]

    @property
    def notes(self) -> list[str]:
        return [p for s in self.sections for kind, p in s.parts if kind == "note"]

    def render(self) -> str:
        out = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1><nav>",
            *(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in self.sections),
            "</nav>",
        ]
        for sec in self.sections:
            out.append(f"<h2 id='{sec.anchor}'>{html.escape(sec.title)}</h2>")
            for kind, part in sec.parts:
                out.append(_render_part(kind, part))
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, out_dir: str | Path) -> Path:
        """Write ``report.html`` and ``figures/<name>.png``; return the page's path."""
        out_dir = Path(out_dir)
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        for fig in self.figures:
            (out_dir / "figures" / f"{fig.name}.png").write_bytes(fig.png)
        page = out_dir / "report.html"
        page.write_text(self.render(), encoding="utf-8")
        return page


def _render_part(kind: str, part) -> str:
    if kind == "note":
        return f"<p class='note'>{html.escape(part)}</p>"
    if kind == "text":
        return f"<p>{html.escape(part)}</p>"
    if kind == "table":
        header, rows, caption = part
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_td(v) for v in r) + "</tr>" for r in rows)
        return f"<table>{cap}<tr>{head}</tr>{body}</table>"
    data = base64.b64encode(part.png).decode("ascii")
    return (
        f"<figure><img id='fig-{part.name}' alt='{html.escape(part.name)}' "
        f"src='data:image/png;base64,{data}'><figcaption>{html.escape(part.caption)}"
        "</figcaption></figure>"
    )
