"""The `nasaudit` command line: one module per command under nasaudit.cli.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Command modules import heavy libraries (torch) inside their functions so
that `nasaudit --help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import sys
from collections.abc import Sequence

from nasaudit import __version__
from nasaudit.infra.errors import InputError, describe_os_error, printable

# (module under nasaudit.cli, what it adds); the order is the order of `nasaudit --help`.
COMMAND_MODULES = (
    "demo",
    "genotypes",
    "analyze",
    "train",
    "import_",
    "search",
    "attack",
    "probe",
    "mitigate",
    "audit",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available command registered."""
    parser = argparse.ArgumentParser(
        prog="nasaudit",
        description="Search neural architectures and audit them for security.",
    )
    parser.add_argument("--version", action="version", version=f"nasaudit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"nasaudit.cli.{module_name}").register(subparsers)
    return parser


class _ClosedStreamGuard(io.TextIOBase):
    """Wraps sys.stdout / sys.stderr so that a reader closing the pipe never ends the run.

    `nasaudit train ... | head -1` closes stdout after one line; the next print would raise
    BrokenPipeError and stop training half-way. After the first EPIPE the guard points the file
    descriptor at /dev/null, drops all further output and lets the job finish and return its
    own exit code.
    """

    def __init__(self, stream, fd: int | None, *, literal: bool):
        self._stream = stream
        self._fd = fd
        self._literal = literal  # show control characters as escapes (stdout only: the
        self.broken = False      # progress bars on stderr move the cursor on purpose)
        self.error: OSError | None = None

    def _break(self) -> None:
        self.broken = True
        if self._fd is not None:
            try:  # the interpreter's final flush must not fail on the closed pipe either
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._fd)
                os.close(devnull)
            except OSError:
                pass

    def _failed(self, exc: OSError) -> None:
        # EPIPE: the reader went away, which is no error of the job. Anything else (stdout
        # redirected to a full disk or /dev/full) is kept and reported when the job is done.
        if exc.errno != errno.EPIPE and self.error is None:
            self.error = exc
        self._break()

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(printable(text) if self._literal else text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _guard(stream, standard_fd: int):
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = None  # pytest's capture, StringIO: no descriptor to redirect
    return _ClosedStreamGuard(stream, fd if fd == standard_fd else None, literal=standard_fd == 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nasaudit` console script. Returns the process exit code.

    Bad input (InputError) and OS failures (OSError: disk full, read-only, permission denied,
    a file where a directory should be, ...) are one line on stderr and exit code 2, never a
    traceback. A closed stdout or stderr stops the printing, never the job.
    """
    saved = sys.stdout, sys.stderr
    out, err = _guard(sys.stdout, 1), _guard(sys.stderr, 2)
    sys.stdout, sys.stderr = out, err
    try:
        code = _run(argv)
        out.flush()
        if out.error is not None:
            # The job's output was lost (stdout on a full disk): that is a failure to say so.
            problem = describe_os_error(out.error).split(": ", 1)[-1]
            print(f"nasaudit: error: standard output: {problem}", file=err)
            return 2
        return code
    finally:
        err.flush()
        sys.stdout, sys.stderr = saved


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)  # a usage error: the usage goes where errors go
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"nasaudit: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasaudit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("nasaudit: error: out of memory (an input asks for more than this machine has)",
              file=sys.stderr)
        return 2
    except OSError as exc:
        # BrokenPipeError of the guarded streams never gets here; one from elsewhere (a socket)
        # is an OS failure like any other.
        print(f"nasaudit: error: {printable(describe_os_error(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
