"""Output-directory ownership: a run writes only into a directory it made or marked as its own.

Every command that writes a directory (audit, demo, report, search, train's model dir,
probe --out, attack --work-dir) first calls `claim_output_dir(path, kind)`:

* a missing directory is created and marked: a small JSON file `MARKER` names the kind of run
  ("audit", "search", "models", ...), the nasaudit version and the time;
* an empty directory is marked and used;
* a directory already marked for the same kind is reused (a rerun, a resume), and the torn
  temp files a kill left behind in it (`nasaudit.infra.io.TMP_PATTERN`) are removed;
* anything else is refused with an InputError: a non-empty directory nasaudit did not mark, a
  directory marked for another kind of run, a file, `/`, the home directory, the checkout root
  of nasaudit itself, or a directory holding one of those.

Nothing here deletes a path it did not create: the only removals are temp files matching the
atomic writer's own name pattern, inside a directory carrying our marker.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from nasaudit import __version__
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import TMP_PATTERN, atomic_write_json, loads_json

MARKER = ".nasaudit-run.json"
# Kinds of run that share one directory: a demo is an audit, and `report` rewrites the report
# of an audit (or demo) directory.
_SAME_KIND = {"demo": "audit", "report": "audit"}
# A torn temp file younger than this may belong to a writer still running in this directory
# (two commands started at once); it is left for the next start.
TMP_MIN_AGE_SECONDS = 60.0
_TMP_RE = re.compile(TMP_PATTERN)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # nasaudit/, above infra/


def protected_dirs() -> list[Path]:
    """Directories a run must never write into: `/`, the home directory, the checkout root."""
    dirs = [Path("/").resolve(), Path.home().resolve()]
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() or (checkout / ".git").exists():
        dirs.append(checkout.resolve())
    return dirs


def _kind(kind: str) -> str:
    return _SAME_KIND.get(kind, kind)


def read_marker(path: str | Path) -> dict | None:
    """The marker of directory `path` as a dict, or None when there is none (or it is not ours)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        data = loads_json(marker.read_text(encoding="utf-8"), marker)
    except (InputError, OSError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def check_output_dir(path: str | Path, kind: str, *, source: str | None = None) -> Path:
    """Check, without writing anything, that `path` may be claimed for a run of `kind`.

    Returns the resolved path. Raises InputError(source or path, problem) when it may not.
    """
    target = Path(path).expanduser().resolve()
    who = source or str(path)
    for protected in protected_dirs():
        if target == protected or target in protected.parents:
            raise InputError(
                who, f"refusing to write a run into {target} (it is or holds / , the home "
                "directory or the nasaudit checkout); choose a new directory for the run"
            )
    if target.exists() and not target.is_dir():
        raise InputError(who, f"{target} exists and is a file, not a directory")
    if not target.is_dir():
        return target
    marker = read_marker(target)
    if marker is not None:
        if _kind(marker["kind"]) != _kind(kind):
            raise InputError(
                who, f"{target} belongs to a nasaudit {marker['kind']} run, not a {kind} run; "
                "choose another directory"
            )
        return target
    if (target / MARKER).exists():
        raise InputError(who, f"{target / MARKER} is not a nasaudit marker; choose another directory")
    try:
        entries = [entry.name for entry in os.scandir(target)]
    except OSError as exc:
        raise InputError(who, f"cannot list {target} ({exc.strerror or exc})") from None
    if not entries:
        return target
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    raise InputError(
        who, f"{target} is not empty ({shown}) and was not made by a nasaudit {_kind(kind)} run; "
        "nasaudit writes only into a new or empty directory, or one it made"
    )


def claim_output_dir(path: str | Path, kind: str, *, source: str | None = None) -> Path:
    """Make `path` a directory owned by a run of `kind` (see the module docstring).

    Creates it (and its parents) when missing, writes the marker when absent, and removes torn
    temp files from an earlier killed run. Returns the resolved path. Raises InputError when the
    directory may not be used, OSError when the file system refuses (mapped by the CLI).
    """
    target = check_output_dir(path, kind, source=source)
    target.mkdir(parents=True, exist_ok=True)
    if read_marker(target) is None:
        atomic_write_json(
            target / MARKER,
            {"kind": _kind(kind), "nasaudit": __version__, "created": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        )
    remove_torn_temp_files(target)
    return target


def remove_torn_temp_files(directory: str | Path, *, min_age: float = TMP_MIN_AGE_SECONDS) -> list[Path]:
    """Delete the atomic writer's temp files under `directory` older than `min_age` seconds.

    Only regular files whose names match `nasaudit.infra.io.TMP_PATTERN` are removed, only inside a
    directory carrying our marker; symbolic links are neither followed nor removed. Returns the
    removed paths.
    """
    root = Path(directory)
    if read_marker(root) is None:
        return []
    now = time.time()
    removed = []
    for folder, _subdirs, files in os.walk(root, followlinks=False):
        for name in files:
            if not _TMP_RE.fullmatch(name):
                continue
            path = Path(folder) / name
            try:
                info = path.lstat()
                if not _is_regular(info.st_mode) or now - info.st_mtime < min_age:
                    continue
                path.unlink()
                removed.append(path)
            except OSError:
                continue  # gone already, or not ours to remove: leave it
    return removed


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def check_output_file(path: str | Path, *, inputs: tuple[str | Path, ...] = (), force: bool = False,
                      source: str | None = None) -> Path:
    """Check that the file `path` may be written: not a directory, and not an existing file
    (the command's own input above all) unless `force`. Returns `path`. Raises InputError."""
    target = Path(path)
    who = source or str(path)
    if target.is_dir():
        raise InputError(who, f"{target} is a directory; give a file name")
    if (target.exists() or target.is_symlink()) and not force:
        for given in inputs:
            try:
                same = Path(given).exists() and os.path.samefile(target, given)
            except OSError:
                same = False
            if same:
                raise InputError(
                    who, f"{target} is the input file; writing it would replace the input "
                    "(give another file, or --force to overwrite it)"
                )
        raise InputError(who, f"{target} already exists; give another file, or --force to replace it")
    return target


__all__ = [
    "MARKER",
    "check_output_dir",
    "check_output_file",
    "claim_output_dir",
    "protected_dirs",
    "read_marker",
    "remove_torn_temp_files",
]
