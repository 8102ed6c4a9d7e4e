"""The document model (sections of paragraphs, tables and figures) and its markdown, HTML and CSV renderings."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FILES_DIR = "report_files"


@dataclass
class Table:
    name: str  # CSV file stem
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: str  # relative to the output directory
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)  # str (paragraph) | Table | Figure

    def text(self, s: str) -> Section:
        self.blocks.append(s)
        return self

    no_data: str | None = None  # why the section has nothing to show (it is folded away)

    def missing(self, why: str) -> Section:
        self.blocks.append(f"_No data: {why}_")
        self.no_data = why
        return self


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.3f}"
    return str(value)


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                if b.caption:
                    out += [f"**{b.caption}** ([csv]({table_csv_path(b)}))", ""]
                out += [_md_table(b), ""]
            elif isinstance(b, Figure):
                out += [f"![{b.caption}]({b.path})", "", f"*{b.caption}*", ""]
            else:
                out += [b, ""]
    return "\n".join(out).rstrip() + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])_(.+?)_(?![\w*])", r"<em>\1</em>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return text


def table_csv_path(t: Table) -> str:
    """Where a table's CSV lives, relative to the output directory."""
    return f"{FILES_DIR}/tables/{t.name}.csv"


def render_html(title: str, sections: list[Section], *, link: Callable[[str], str] | None = None) -> str:
    """The report as one HTML page. `link` maps a file path relative to the output directory
    (a figure or a table's CSV) to the URL the page uses: the path itself by default, a data URI
    for a self-contained page."""
    link = link or (lambda path: path)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}",
        "img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555;font-size:90%}",
        "nav a{margin-right:1em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><nav>",
    ]
    parts += [f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections)]
    parts.append("</nav>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                csv_link = (f"<a href='{html.escape(link(table_csv_path(b)))}' "
                            f"download='{html.escape(b.name)}.csv'>csv</a>")
                cap = f"<caption>{_inline_html(b.caption)} ({csv_link})</caption>" if b.caption else ""
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>"
                               for row in b.rows)
                parts.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")
            elif isinstance(b, Figure):
                parts.append(f"<figure><img src='{html.escape(link(b.path))}' alt='{html.escape(b.caption)}'>"
                             f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{_inline_html(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"




def csv_text(t: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(t.header)
    for row in t.rows:
        writer.writerow(["" if c is None else c for c in row])
    return buf.getvalue()


