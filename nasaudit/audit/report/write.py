"""Writing a report: every section built from the store, rendered to markdown, HTML and CSV."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
from nasaudit.audit.report.sections import METRICS, SECTIONS
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import atomic_write_json, atomic_write_text, open_lock_file

NOT_MEASURED = "Not measured in this audit"


def build_sections(builder: Builder) -> list[Section]:
    """The report's sections in order; those without data are folded into one closing section
    that says, one line each, why (an empty section is not worth a reader's scroll)."""
    built = [section(builder) for section in SECTIONS]
    shown = [s for s in built if s.no_data is None]
    folded = [s for s in built if s.no_data is not None]
    if folded:
        closing = Section(NOT_MEASURED)
        for s in folded:
            closing.text(f"**{s.title}**: {s.no_data}")
        shown.append(closing)
    return shown


def data_uri(payload: bytes, mime: str) -> str:
    """`payload` as a base64 data URI (what a self-contained page embeds)."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def write_report(out_dir: str | Path, *, single_file: bool = False, dest: str | Path | None = None) -> Path:
    """Write report.md, report.html and report_files/ for the audit in `out_dir`.

    With `single_file`, report.html is self-contained: every figure is embedded and every CSV
    is a data link, so the page can be sent on its own (report.md and report_files/ are still
    written beside it). `dest`: write the report there instead of into `out_dir` (for an audit
    on read-only storage; the caller claims the directory). Returns the path of report.md.
    Reads only out_dir/results.sqlite (InputError if absent), and never writes to it.
    """
    out_dir = Path(out_dir)
    dest = out_dir if dest is None else Path(dest)
    data = AuditData.load(out_dir)
    if not os.access(dest, os.W_OK):
        hint = "; pass --out DIR to write the report elsewhere" if dest == out_dir else ""
        raise InputError(dest, f"the folder is read-only (the results can be read, the report cannot be "
                               f"written here){hint}")
    with _report_lock(dest):
        _recover(dest)
        _refuse_foreign_files(dest)
        # Everything is built into a staging directory beside the report and swapped in only
        # when complete: a failed or killed build leaves the previous report intact and linked.
        staging = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=dest))
        try:
            _build(data, out_dir, staging, single_file)
            return _swap_in(staging, dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


BUILD_PREFIX = ".report-build-"
OLD_PREFIX = ".report-old-"
LOCK_NAME = ".report.lock"
REPORT_FILES = ("report.html", "report.md")
# The list of files a report wrote into report_files/, kept there: the next report replaces
# only those and refuses to remove anything a user put beside them.
MANIFEST = ".nasaudit-files.json"


def _written_by_us(files: Path) -> set[str] | None:
    """Relative paths listed in report_files/'s manifest (None when there is none)."""
    from nasaudit.infra.io import read_json

    if not (files / MANIFEST).is_file():
        return None
    try:
        listed = read_json(files / MANIFEST)
    except InputError:
        return set()
    return {p for p in listed if isinstance(p, str)} if isinstance(listed, list) else set()


def _refuse_foreign_files(out_dir: Path) -> None:
    """InputError naming the files in report_files/ that no report wrote (a report replaces the
    whole folder, so they would be lost). Without a manifest (a report from before it existed),
    figures/*.png and tables/*.csv count as the report's own."""
    files = out_dir / FILES_DIR
    if files.is_symlink():
        raise InputError(files, "is a symbolic link; nasaudit replaces report_files/ only when it is its own folder")
    if not files.is_dir():
        return
    ours = _written_by_us(files)
    foreign = []
    for path in sorted(files.rglob("*")):
        rel = path.relative_to(files).as_posix()
        if path.is_dir() and not path.is_symlink() or rel == MANIFEST:
            continue
        mine = (rel in ours) if ours is not None else (
            path.parent.name in ("figures", "tables") and path.parent.parent == files
            and path.suffix in (".png", ".csv") and not path.is_symlink())
        if not mine:
            foreign.append(rel)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(files, f"holds files no nasaudit report wrote ({shown}); the new report replaces "
                                "this folder, so move them out first")


@contextmanager
def _report_lock(out_dir: Path) -> Iterator[None]:
    """Serialise report writers on one directory (the audit's end and a `nasaudit report`)."""
    import fcntl

    with open_lock_file(out_dir / LOCK_NAME) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the process dies
        yield


def _recover(out_dir: Path) -> None:
    """Finish or undo a swap a kill interrupted, and drop staging directories of killed builds.

    Only directories with our own prefixes, made by `write_report` itself, are removed.
    """
    live = out_dir / FILES_DIR
    for old in sorted(out_dir.glob(OLD_PREFIX + "*")):
        if not old.is_dir() or old.is_symlink():
            continue
        if not live.exists() and (old / FILES_DIR).is_dir():
            os.replace(old / FILES_DIR, live)  # killed between the two renames: put it back
        shutil.rmtree(old, ignore_errors=True)
    for build in out_dir.glob(BUILD_PREFIX + "*"):
        if build.is_dir() and not build.is_symlink():
            shutil.rmtree(build, ignore_errors=True)


def _swap_in(staging: Path, out_dir: Path) -> Path:
    """Move the finished report from `staging` into `out_dir`: report_files/ by two renames
    (the old one aside, the new one in), then report.html and report.md by atomic replace."""
    live = out_dir / FILES_DIR
    old = None
    if live.exists() or live.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX, dir=out_dir))
        os.replace(live, old / FILES_DIR)
    os.replace(staging / FILES_DIR, live)
    for name in REPORT_FILES:
        os.replace(staging / name, out_dir / name)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir / "report.md"


def _build(data: AuditData, out_dir: Path, staging: Path, single_file: bool) -> None:
    """Write report.md, report.html and report_files/ into `staging` (probe pictures are
    still found under `out_dir`, where the audit wrote them)."""
    builder = Builder(data, staging, METRICS)
    builder.out_dir = out_dir  # figures go to staging; the audit's own files are read in place
    (staging / FILES_DIR).mkdir(exist_ok=True)
    sections = build_sections(builder)
    title = f"nasaudit report: {data.config.get('name', out_dir.name)}"
    files = staging / FILES_DIR
    for t in builder.tables:
        atomic_write_text(files / "tables" / f"{t.name}.csv", csv_text(t))
    link = None
    if single_file:
        embedded = {table_csv_path(t): data_uri(csv_text(t).encode(), "text/csv") for t in builder.tables}

        def link(path: str) -> str:
            if path not in embedded:  # a figure, written by the builder above
                embedded[path] = data_uri((staging / path).read_bytes(), "image/png")
            return embedded[path]

    atomic_write_text(staging / "report.html", render_html(title, sections, link=link))
    atomic_write_text(staging / "report.md", render_markdown(title, sections))
    written = sorted(p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file())
    atomic_write_json(files / MANIFEST, written)
