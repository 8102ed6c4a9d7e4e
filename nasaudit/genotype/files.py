"""Genotype files: parse any of the three formats, read a file, write one atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nasaudit.genotype.canonical import genotype_to_json, parse_json_text
from nasaudit.genotype.model import Genotype, GenotypeFile, as_space, checked_against_space
from nasaudit.genotype.nni import genotype_to_nni
from nasaudit.genotype.python_format import genotype_to_python, parse_python_text
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import atomic_write_json, atomic_write_text, read_limited
from nasaudit.search_space import SearchSpace

# Genotype files are a few kB; the cap keeps a hostile file from costing seconds of parsing.
MAX_FILE_BYTES = 4 << 20


def parse_genotypes(
    data: bytes | str, *, source: str = "<input>", suffix: str = "", default_name: str = "genotype"
) -> dict[str, Genotype]:
    """Parse genotype file contents (any supported format) without validating ops.

    The format follows `suffix` (".json" or ".py"); otherwise text starting with "{" is JSON
    and anything else Python. Strict: raises InputError when any genotype cannot be parsed or
    none is found (`read_genotype_text` reads the rest of such a file instead).
    """
    parsed = _parse_bytes(data, source=source, suffix=suffix, default_name=default_name)
    if parsed.invalid:
        raise InputError(source, next(iter(parsed.invalid.values())).message)
    if not parsed.genotypes:
        raise parsed.no_genotype_error()
    return dict(parsed.genotypes)


def read_genotype_text(
    data: bytes | str,
    space: SearchSpace | str | None = None,
    *,
    source: str = "<input>",
    suffix: str = "",
    default_name: str = "genotype",
) -> GenotypeFile:
    """Read genotype file contents genotype by genotype, validated against `space`.

    Raises InputError only for a problem with the whole file (not text, invalid syntax, not a
    genotype format); problems of single genotypes land in `GenotypeFile.invalid`.
    """
    parsed = _parse_bytes(data, source=source, suffix=suffix, default_name=default_name)
    return checked_against_space(parsed, as_space(space))


def _parse_bytes(
    data: bytes | str, *, source: str, suffix: str, default_name: str
) -> GenotypeFile:
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise InputError(source, f"file is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(source, "not a UTF-8 text file") from None
    else:
        if len(data) > MAX_FILE_BYTES:
            raise InputError(source, f"text is longer than {MAX_FILE_BYTES} characters")
        text = data
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise InputError(source, "binary data (NUL bytes) in a genotype file")
    suffix = suffix.lower()
    if suffix == ".json" or (suffix != ".py" and text.lstrip().startswith("{")):
        return parse_json_text(text, source, default_name)
    return parse_python_text(text, source, default_name)


def read_any_file(path: str | Path) -> GenotypeFile:
    path = Path(path)
    # Bounded read: the size is checked before and during the read, so /dev/zero or a FIFO
    # cannot exhaust memory.
    data = read_limited(path, MAX_FILE_BYTES, "genotype file")
    return _parse_bytes(data, source=str(path), suffix=path.suffix, default_name=path.stem)


def read_genotype_file(path: str | Path, space: SearchSpace | str | None = None) -> GenotypeFile:
    """Everything a genotype file holds (see `GenotypeFile`), validated against `space`.

    Nothing in the file is executed. Raises InputError for a problem with the whole file
    (missing, too large, not text, invalid syntax); a genotype that cannot be read is listed
    in `invalid` with its line and problem, and the others are still read.
    """
    return checked_against_space(read_any_file(path), as_space(space))


def load_genotype_file(
    path: str | Path, space: SearchSpace | str | None = None
) -> dict[str, Genotype]:
    """The readable genotypes in a file of any supported format, in file order, validated
    against `space` (default: `paper`). Aliases (`DARTS = DARTS_V2`, `"aliases"`) are not
    repeated. Raises InputError when none can be read; `read_genotype_file` says which
    genotypes could not be read and why.
    """
    found = read_genotype_file(path, space)
    if not found.genotypes:
        raise found.no_genotype_error()
    return dict(found.genotypes)


def _format_json(obj: dict) -> str:
    # One line per field keeps a cell readable and diffs small; a plain indent would give
    # every pair four lines.
    lines = [
        f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}" for key, value in obj.items()
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_genotype(
    path: str | Path, g: Genotype, name: str | None = None, *, fmt: str | None = None, **extra: Any
) -> Path:
    """Write `g` atomically: canonical JSON (".json"), Python (".py") or NNI dict (`fmt="nni"`).

    `fmt` ("json", "python", "nni") overrides the suffix. Returns the path written.
    """
    path = Path(path)
    fmt = fmt or {".json": "json", ".py": "python"}.get(path.suffix.lower())
    if fmt == "json":
        return atomic_write_text(path, _format_json(genotype_to_json(g, name, **extra)))
    if fmt == "python":
        return atomic_write_text(path, genotype_to_python(g, name or path.stem))
    if fmt == "nni":
        return atomic_write_json(path, genotype_to_nni(g))
    raise InputError(path, "unsupported genotype file type; use a .json or .py suffix")


