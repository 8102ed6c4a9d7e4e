"""The one exception type the CLI turns into a one-line error with exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input (a file, a name, a config value). The message is one line.

    `source` names the file or argument at fault, `problem` says what is wrong.
    """

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = " ".join(str(problem).split())  # one line, always
        super().__init__(f"{self.source}: {self.problem}" if self.source else self.problem)


# What an OSError means for the person at the keyboard, by errno name (names missing on a
# platform are skipped). One short phrase each; the path is added by `describe_os_error`.
_OS_PROBLEMS = {
    "ENOSPC": "disk full (no space left on the device)",
    "EDQUOT": "disk quota exceeded",
    "EFBIG": "file too large for the file system",
    "EROFS": "read-only file system",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EISDIR": "is a directory, not a file",
    "ENOTDIR": "a part of the path is a file, not a directory",
    "EEXIST": "already exists",
    "ENOENT": "no such file or directory",
    "ENAMETOOLONG": "file name too long",
    "ELOOP": "too many levels of symbolic links",
    "EMFILE": "too many open files",
    "ENFILE": "too many open files in the system",
    "EIO": "input/output error (failing disk or network file system?)",
    "ENXIO": "no such device",
    "ENODEV": "no such device",
    "EINVAL": "invalid argument (this file system or special file does not support the write)",
    "EBUSY": "device or resource busy",
    "ETXTBSY": "file busy",
    "EXDEV": "cannot move across file systems",
    "ENOTEMPTY": "directory not empty",
    "EPIPE": "broken pipe (the reader went away)",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: "PATH: what happened" in plain words (e.g. "disk full").

    Used at the CLI boundary (and by the audit's unit runner) so that every OS failure is one
    line naming the path, never a traceback.
    """
    import errno as errno_module

    problem = None
    for name, text in _OS_PROBLEMS.items():
        if exc.errno is not None and exc.errno == getattr(errno_module, name, None):
            problem = text
            break
    if problem is None:
        problem = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno_module.EEXIST and exc.filename is not None:
        problem = "already exists and is a file, not a directory" if Path(exc.filename).is_file() else problem
    where = exc.filename
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    text = f"{where}: {problem}" if where is not None else problem
    return " ".join(text.split())


# Control characters (C0 but tab and newline, DEL, C1): an ANSI escape in a genotype name or a
# label would recolour or rewrite the terminal, a carriage return would hide the line before.
_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}


def first_line(exc: BaseException | str | None, limit: int = 200) -> str:
    """The first line of an exception's message or of a text, at most `limit` characters, with
    "..." where it was cut: what a one-line error quotes of a library's multi-line text. An
    empty message gives the exception's type name ("no error message" for an empty text)."""
    text = ("" if exc is None else str(exc)).strip()
    empty = type(exc).__name__ if isinstance(exc, BaseException) else "no error message"
    line = text.splitlines()[0] if text else empty
    return line if len(line) <= limit else line[: max(limit - 3, 0)] + "..."


def printable(text: str) -> str:
    """`text` with control characters shown as escapes ("\\x1b[31m" stays visible, inert)."""
    return str(text).translate(_CONTROL_CHARS)
