"""Writing a report: every section built from the store, rendered to markdown, HTML and CSV."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.document import (
    FILES_DIR,
    Section,
    csv_text,
    render_html,
    render_markdown,
    table_csv_path,
)
from nasaudit.audit.report.sections import SECTIONS
from nasaudit.io import atomic_write_text


def build_sections(builder: Builder) -> list[Section]:
    """Every section of the report, in order (a section without data says why)."""
    return [section(builder) for section in SECTIONS]


def data_uri(payload: bytes, mime: str) -> str:
    """`payload` as a base64 data URI (what a self-contained page embeds)."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def write_report(out_dir: str | Path, *, single_file: bool = False) -> Path:
    """Write report.md, report.html and report_files/ for the audit in `out_dir`.

    With `single_file`, report.html is self-contained: every figure is embedded and every CSV
    is a data link, so the page can be sent on its own (report.md and report_files/ are still
    written beside it). Returns the path of report.md. Reads only out_dir/results.sqlite
    (InputError if absent).
    """
    out_dir = Path(out_dir)
    data = AuditData.load(out_dir)
    files = out_dir / FILES_DIR
    if files.is_dir():  # stale figures/tables from an earlier report must not linger
        shutil.rmtree(files)
    builder = Builder(data, out_dir)
    sections = build_sections(builder)
    title = f"nasaudit report: {data.config.get('name', out_dir.name)}"
    for t in builder.tables:
        atomic_write_text(files / "tables" / f"{t.name}.csv", csv_text(t))
    link = None
    if single_file:
        embedded = {table_csv_path(t): data_uri(csv_text(t).encode(), "text/csv") for t in builder.tables}

        def link(path: str) -> str:
            if path not in embedded:  # a figure, written by the builder above
                embedded[path] = data_uri((out_dir / path).read_bytes(), "image/png")
            return embedded[path]

    atomic_write_text(out_dir / "report.html", render_html(title, sections, link=link))
    return atomic_write_text(out_dir / "report.md", render_markdown(title, sections))
