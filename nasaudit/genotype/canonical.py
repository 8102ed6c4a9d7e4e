"""Canonical JSON: the one written form of a genotype, its hash, and the JSON reader."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nasaudit.genotype.model import (
    CELLS,
    FIELDS,
    Genotype,
    GenotypeFile,
    UnreadGenotype,
    make_genotype,
    short_repr,
)
from nasaudit.genotype.nni import genotype_from_nni
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import loads_json


def _canonical_fields(g: Genotype) -> dict[str, list]:
    return {
        "normal": [[op, inp] for op, inp in g.normal],
        "normal_concat": list(g.normal_concat),
        "reduce": [[op, inp] for op, inp in g.reduce],
        "reduce_concat": list(g.reduce_concat),
    }


def genotype_to_json(g: Genotype, name: str | None = None, **extra: Any) -> dict:
    """The canonical JSON object of `g`: the 4 fields, `name` when given, then `extra` fields.

    Edges keep their listed order (a network built from the genotype numbers its ops in that
    order); only `genotype_hash` sorts them.
    """
    out: dict[str, Any] = {"name": name} if name is not None else {}
    out.update(_canonical_fields(g))
    for key, value in extra.items():
        if key in FIELDS or key == "name":
            raise ValueError(f"extra field {key!r} would overwrite a genotype field")
        out[key] = value
    return out


def _edge_key(pair: list) -> str:
    # JSON text orders any mix of values totally and deterministically, valid or not.
    return json.dumps(pair, sort_keys=True)


def genotype_hash(g: Genotype, inputs_per_node: int = 2) -> str:
    """Stable sha256 hex digest of the canonical form of the 4 fields (names and extras aside).

    The canonical form sorts the edges within each node, so two listings of one cell that
    differ only in the order of a node's edges (which computes the same sum) hash alike.
    """
    fields = _canonical_fields(g)
    for cell in CELLS:
        pairs = fields[cell]
        fields[cell] = [
            edge
            for start in range(0, len(pairs), inputs_per_node)
            for edge in sorted(pairs[start : start + inputs_per_node], key=_edge_key)
        ]
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _genotype_from_mapping(obj: Any, *, source: str, name: str) -> tuple[Genotype, dict]:
    if not isinstance(obj, dict):
        raise InputError(source, f"genotype {name!r} must be a JSON object")
    missing = [key for key in FIELDS if key not in obj]
    if missing:
        raise InputError(source, f"genotype {name!r} lacks {', '.join(missing)}")
    g = make_genotype(*(obj[key] for key in FIELDS), source=source, name=name)
    extra = {key: value for key, value in obj.items() if key not in FIELDS and key != "name"}
    if "source" in extra and not isinstance(extra["source"], str):
        raise InputError(source, f'genotype {name!r}: "source" must be a string')
    return g, extra


def parse_json_text(text: str, source: str, default_name: str) -> GenotypeFile:
    obj = loads_json(text, source)  # strict: a key given twice is an error
    if not isinstance(obj, dict):
        raise InputError(
            source, f"expected a JSON object holding a genotype, got {type(obj).__name__}"
        )
    parsed = GenotypeFile(source=source)
    if "genotypes" in obj:
        entries = obj["genotypes"]
        if not isinstance(entries, dict) or not entries:
            raise InputError(source, '"genotypes" must be a non-empty object of name: genotype')
        for name, entry in entries.items():
            _check_name(name, source)
            try:
                g, extra = _genotype_from_mapping(entry, source=source, name=name)
            except InputError as exc:
                # One bad entry does not sink the file: it is reported by name.
                parsed.invalid[name] = UnreadGenotype(name, None, exc.problem)
                continue
            parsed.genotypes[name] = g
            parsed.extras[name] = extra
        aliases = obj.get("aliases", {})
        if not isinstance(aliases, dict):
            raise InputError(source, '"aliases" must be an object of alias: name')
        for alias, target in aliases.items():
            _check_name(alias, source)
            if not isinstance(target, str) or (
                target not in parsed.genotypes and target not in parsed.invalid
            ):
                raise InputError(
                    source, f"alias {alias!r} points to unknown genotype {short_repr(target)}"
                )
            parsed.aliases[alias] = target
    elif any(key in obj for key in FIELDS):
        name = obj.get("name", default_name)
        if not isinstance(name, str) or not name:
            raise InputError(source, '"name" must be a non-empty string')
        g, extra = _genotype_from_mapping(obj, source=source, name=name)
        parsed.genotypes[name] = g
        parsed.extras[name] = extra
    elif any(isinstance(key, str) and key.startswith(("normal/", "reduce/")) for key in obj):
        parsed.genotypes[default_name] = genotype_from_nni(obj, source=source, name=default_name)
        parsed.extras[default_name] = {}
    else:
        raise InputError(
            source,
            'not a genotype file: expected {"normal": ..., "reduce": ...}, '
            '{"genotypes": {...}} or an NNI DARTS architecture dict',
        )
    return parsed


def _check_name(name: Any, source: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InputError(source, f"genotype name {short_repr(name)} is not a usable name")




