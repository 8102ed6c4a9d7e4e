"""Locate the data directories shipped with nasaudit, from a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # nasaudit/, above infra/


def data_dir(name: str) -> Path:
    """Return the directory `name` ("genotypes", "search_spaces" or "experiments").

    A wheel carries them under nasaudit/_data/; an editable install or a checkout has them
    beside the package, at the top of the repository.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"nasaudit data directory {name!r} not found next to {_PACKAGE_DIR}")
