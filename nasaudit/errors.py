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
