"""The `nasaudit` command line: one module per command under nasaudit.cli.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Command modules import heavy libraries (torch) inside their functions so
that `nasaudit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nasaudit import __version__
from nasaudit.errors import InputError

# (module under nasaudit.cli, what it adds); the order is the order of `nasaudit --help`.
COMMAND_MODULES = (
    "demo",
    "genotypes_cmd",
    "analyze",
    "train",
    "search_cmd",
    "attack",
    "probe",
    "mitigate",
    "audit_cmd",
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
        try:
            module = importlib.import_module(f"nasaudit.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nasaudit.cli.{module_name}":
                continue  # a command not built yet in this checkout
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nasaudit` console script. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"nasaudit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasaudit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (`nasaudit analyze f.py --json | head`): not an error.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
