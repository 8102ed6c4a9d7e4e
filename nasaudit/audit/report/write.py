"""Writing a report: every section built from the store, rendered to markdown, HTML and CSV."""

from __future__ import annotations

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
)
from nasaudit.audit.report.sections import SECTIONS
from nasaudit.io import atomic_write_text


def build_sections(builder: Builder) -> list[Section]:
    """Every section of the report, in order (a section without data says why)."""
    return [section(builder) for section in SECTIONS]


def write_report(out_dir: str | Path) -> Path:
    """Write report.md, report.html and report_files/ for the audit in `out_dir`.

    Returns the path of report.md. Reads only out_dir/results.sqlite (InputError if absent).
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
    atomic_write_text(out_dir / "report.html", render_html(title, sections))
    return atomic_write_text(out_dir / "report.md", render_markdown(title, sections))
