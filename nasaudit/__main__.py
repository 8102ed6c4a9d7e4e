"""`python -m nasaudit` runs the CLI."""

import sys

from nasaudit.cli import main

# Guarded: the processes engine's spawned workers import the parent's __main__ module.
if __name__ == "__main__":
    sys.exit(main())
