"""Atomic writes and safe reads: nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import io
import json
import os
import pickle
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
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); give it the mode a plain open() would have.
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else _default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode open() gives a new file."""
    try:  # Linux reports the umask without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return 0o666 & ~mask


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
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            # The file asks to build objects other than tensors and plain containers: loading it
            # would run code from the file, so it is refused, never retried unsafely.
            raise InputError(
                path, "refused: it holds Python objects other than tensors and plain containers"
            ) from None
        raise InputError(path, "not a PyTorch checkpoint (corrupt or truncated)") from None
    except Exception:  # torch raises many types for corrupt or truncated files
        raise InputError(path, "not a PyTorch checkpoint (corrupt or truncated)") from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file, raising InputError with the file name on any problem."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
