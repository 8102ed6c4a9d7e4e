"""Atomic writes and safe reads: nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasaudit.infra.errors import InputError, first_line


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(file)` on a temp file beside `path`, fsync it, then rename it over `path`.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name to write")
    if path.exists() and not path.is_file():
        # A device, FIFO or socket (/dev/full, /dev/null): renaming a file over it would replace
        # the special file itself, for every program on the machine when run as root.
        raise InputError(path, "is a special file (device, pipe or socket), not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _os_error_at(exc, path) from None
    try:
        # mkstemp creates the file private (0600); give it the mode a plain open() would have.
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else _default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        failure = _write_failure(exc, path)
        if failure is not None:
            raise failure from None
        raise
    return path


# atomic_write's temp files: ".NAME.XXXXXXXX.tmp" beside the target (mkstemp's 8 random
# characters). A kill between mkstemp and the rename leaves one behind; `nasaudit.infra.outdir`
# removes them when a run directory is claimed again.
TMP_SUFFIX = ".tmp"
TMP_PATTERN = r"\..+\.[A-Za-z0-9_]{8}\.tmp"


def _os_error_at(exc: OSError, path: Path) -> OSError:
    """The same OSError (errno kept) naming `path` when it named nothing or a temp file."""
    name = exc.filename
    if name is None or str(name).endswith(TMP_SUFFIX):
        name = str(path)
    return OSError(exc.errno, exc.strerror or str(exc), str(name))


def _write_failure(exc: BaseException, path: Path) -> OSError | None:
    """An OSError naming `path` for a failed write, or None when `exc` is not an I/O failure.

    torch.save hides the OSError of a full disk inside a RuntimeError ("unexpected pos"), with
    the original as its context; a serializer failing without one on a full disk is told apart
    by the free space left.
    """
    seen = exc
    for _ in range(8):  # the exception, its cause or context, a few levels deep
        if isinstance(seen, OSError):
            return _os_error_at(seen, path)
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            break
    if isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in ("unexpected pos", "file write failed", "PytorchStreamWriter")
    ):
        try:
            full = os.statvfs(path.parent).f_bavail == 0
        except OSError:
            full = False
        code = errno.ENOSPC if full else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    return None


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
        # torch warns about legacy files (source changes, storage types) before it refuses or
        # loads them: the refusal, or nothing, is what the user is told.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (JSON parsers silently keep the last one)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def loads_json(text: str, source: str | Path) -> Any:
    """Parse JSON text strictly: a key given twice in one object is an InputError, as is
    anything invalid (too deep, numbers longer than Python's digit limit)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as exc:
        raise InputError(source, f"{exc} in a JSON object (which one counts is ambiguous)") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        first = first_line(exc)
        raise InputError(source, f"invalid JSON ({first[:200]})") from None


MAX_JSON_BYTES = 64 << 20


def read_limited(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of `path`, refusing (InputError) a file larger than `max_bytes`.

    The size is checked before reading and the read itself is bounded, so a special file
    (/dev/zero, a FIFO that never ends) cannot exhaust memory.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(path, f"is a directory, not a {what}") from None
    except OSError as exc:
        raise InputError(path, f"cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise InputError(path, f"{what} is larger than {max_bytes} bytes")
    return data


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The parsed TOML of `path` (at most MAX_CONFIG_BYTES); InputError naming the file for a
    missing, oversized or non-UTF-8 file, bad TOML or nesting deep enough to overflow the parser."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from nasaudit.infra.limits import MAX_CONFIG_BYTES

    raw = read_limited(path, MAX_CONFIG_BYTES, what)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        problem = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InputError(path, f"invalid TOML ({problem})") from None


def open_lock_file(path: str | Path):
    """Open (creating) a lock file for flock without following a symlink planted in its place:
    a link would make nasaudit create or truncate a file outside its own directory."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(path, "is a symbolic link; nasaudit's lock files must be plain files") from None
        raise
    return os.fdopen(fd, "w")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: str | Path, max_bytes: int) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, read without decoding; None when the file is not a
    PNG or is larger than `max_bytes` (what a reader must check before it decodes pixels)."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > max_bytes:
                return None
            head = handle.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file strictly (`loads_json`), raising InputError with the file name on any
    problem: missing, unreadable, larger than `max_bytes`, not UTF-8, invalid, duplicate keys."""
    path = Path(path)
    data = read_limited(path, max_bytes, "file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"invalid JSON (not UTF-8: {exc})") from None
    return loads_json(text, path)
