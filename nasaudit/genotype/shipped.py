"""The shipped genotypes and name resolution: a shipped name, an alias, a file or `file.py:NAME`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from nasaudit.genotype.files import read_any_file, read_genotype_file
from nasaudit.genotype.model import (
    Genotype,
    GenotypeFile,
    as_space,
    validate_genotype,
)
from nasaudit.infra.errors import InputError, first_line
from nasaudit.infra.resources import data_dir
from nasaudit.search_space import SearchSpace

ALIASES_FILE = "aliases.json"


def _shipped() -> GenotypeFile:
    directory = data_dir("genotypes")
    parsed = GenotypeFile(source=str(directory))
    for path in sorted(directory.glob("*.json")):
        if path.name == ALIASES_FILE:
            continue
        one = read_any_file(path)
        for name, g in one.genotypes.items():
            parsed.genotypes[name] = g
            parsed.extras[name] = one.extras[name]
    alias_path = directory / ALIASES_FILE
    if alias_path.is_file():
        try:
            aliases = json.loads(alias_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:
            raise InputError(alias_path, f"invalid JSON ({first_line(exc, limit=120)})") from None
        if not isinstance(aliases, dict) or not all(
            isinstance(target, str) and target in parsed.genotypes for target in aliases.values()
        ):
            raise InputError(alias_path, "expected an object of alias: shipped genotype name")
        parsed.aliases.update(aliases)
    return parsed


def shipped_genotypes() -> dict[str, dict]:
    """Every shipped genotype and alias, sorted by name.

    name -> {"genotype": Genotype, "source": str, "alias_of": str | None}.
    """
    parsed = _shipped()
    out: dict[str, dict] = {}
    for name, g in parsed.genotypes.items():
        out[name] = {
            "genotype": g,
            "source": parsed.extras[name].get("source", ""),
            "alias_of": None,
        }
    for alias, target in parsed.aliases.items():
        out[alias] = {**out[target], "alias_of": target}
    return dict(sorted(out.items()))


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _unknown(spec: str, known: Iterable[str], where: str = "") -> InputError:
    return InputError(spec, f"unknown genotype{where}; known: {', '.join(sorted(known))}")


def _is_file(path: str | Path) -> bool:
    # Path.is_file raises for names the OS rejects (too long); those are simply not files.
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _is_dir(path: str | Path) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.lower().endswith((".json", ".py", ".txt"))


def resolve_genotype_file(spec: str | Path, space: SearchSpace | str | None = None) -> GenotypeFile:
    """What `spec` names, as a `GenotypeFile` (validated against `space`, default `paper`).

    A shipped name or alias gives {spec: genotype}; a file everything it holds, readable or
    not; "FILE:NAME" the one genotype NAME (an alias in the file works) with the file's
    skipped statements and warnings. Raises InputError for an unknown name, a missing file, a
    problem with the whole file, and for "FILE:NAME" naming a genotype that cannot be read.
    """
    spec = str(spec)
    space = as_space(space)
    shipped = _shipped()
    key = _normalise(spec)
    target = shipped.aliases.get(key, key)
    if target in shipped.genotypes:
        g = shipped.genotypes[target]
        validate_genotype(g, space, source=spec, name=target)
        return GenotypeFile(source=spec, genotypes={key: g}, extras={key: {}})
    if _is_file(spec):
        return read_genotype_file(spec, space)
    file_part, sep, name = spec.rpartition(":")
    if sep and file_part and _is_file(file_part):
        found = read_genotype_file(file_part, space)
        picked = found.aliases.get(name, name)
        if picked in found.invalid:
            raise InputError(file_part, found.invalid[picked].message)
        if picked not in found.genotypes:
            known = list(found.genotypes) + list(found.aliases)
            raise _unknown(spec, known, f" {name!r} in {file_part}")
        return GenotypeFile(
            source=file_part,
            genotypes={name: found.genotypes[picked]},
            extras={name: found.extras.get(picked, {})},
            lines={name: found.lines[picked]} if picked in found.lines else {},
            skipped=found.skipped,
            skipped_unlisted=found.skipped_unlisted,
            warnings=found.warnings,
        )
    if _is_dir(spec):
        raise InputError(spec, "is a directory, not a genotype file")
    if _looks_like_path(spec) or (sep and _looks_like_path(file_part)):
        raise InputError(spec, "genotype file not found")
    raise _unknown(spec, list(shipped.genotypes) + list(shipped.aliases))


def resolve_genotypes(
    spec: str | Path, space: SearchSpace | str | None = None
) -> dict[str, Genotype]:
    """Every readable genotype `spec` names, validated against `space` (default: `paper`).

    `spec` is a shipped name or alias ({spec: genotype}), a file (its readable genotypes, in
    file order; InputError when there is none) or "FILE:NAME" (one genotype, NAME may be an
    alias in the file). `resolve_genotype_file` also says what could not be read.
    """
    found = resolve_genotype_file(spec, space)
    if not found.genotypes:
        raise found.no_genotype_error()
    return dict(found.genotypes)


def resolve_named_genotype(
    spec: str | Path, space: SearchSpace | str | None = None
) -> tuple[str, Genotype]:
    """Like `resolve_genotype`, also returning the genotype's name (the spec's name part)."""
    spec = str(spec)
    found = resolve_genotype_file(spec, space)
    total = len(found.genotypes) + len(found.invalid)
    if not found.genotypes or (total == 1 and found.invalid):
        raise found.no_genotype_error()
    if total != 1:
        names = list(found.genotypes) + [f"{name} (unreadable)" for name in found.invalid]
        raise InputError(
            spec,
            f"the file holds {total} genotypes ({', '.join(names)}); pick one as {spec}:NAME",
        )
    return next(iter(found.genotypes.items()))


def resolve_genotype(spec: str | Path, space: SearchSpace | str | None = None) -> Genotype:
    """The one genotype `spec` names: a shipped name or alias ("darts" -> "darts_v2"), a file
    holding one genotype (canonical JSON, NNI dict JSON, Python), or "FILE:NAME".

    Raises InputError(spec, "unknown genotype ...; known: ...") for an unknown name.
    """
    return resolve_named_genotype(spec, space)[1]
