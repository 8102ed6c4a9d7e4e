"""Atomic writes and safe reads: nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasaudit.errors import InputError


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(file)` on a temp file beside `path`, fsync it, then rename it over `path`.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write raw bytes to `path`."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text to `path`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write `obj` as indented, key-sorted JSON (stable diffs, stable hashes)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """Atomically `torch.save` a state object (tensors, numbers, strings, dicts, lists)."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with `weights_only=True`: tensors and plain containers, never code.

    Raises InputError (one line, naming the file) for a missing, corrupt or unsafe file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a loadable weights-only checkpoint ({first_line[:200]})") from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file, raising InputError with the file name on any problem."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
