"""The `Genotype` type, its file formats, validation, and the shipped genotypes.

A genotype describes the two cell types of a DARTS-style network. Each cell is a sequence of
`(op, input)` pairs, `inputs_per_node` (2) per intermediate node, in node order. Input 0 is the
output of cell k-2, input 1 that of cell k-1, input i >= 2 is intermediate node i-2 (state i).
`*_concat` lists the states concatenated into the cell's output.

Formats (read and write):
1. canonical JSON: `{"name", "normal", "normal_concat", "reduce", "reduce_concat", "source",
   ...}`, or many as `{"genotypes": {NAME: {...}}, "aliases": {ALIAS: NAME}}`;
2. DARTS-style Python: one `Genotype(...)` expression or a whole `genotypes.py`, parsed with
   `ast` and never executed. Only statements that bind a name to a genotype (or to an alias
   of one) are read; every other statement (helper functions, `print`, `if __name__ ...`,
   op tables, other namedtuples) is skipped unevaluated and listed in `GenotypeFile.skipped`;
3. NNI 3.0's exported architecture dict for its DARTS space (`normal/op_2_0`, ...).

A file is read genotype by genotype: one that cannot be read (an op the space lacks, string
inputs, ...) is listed in `GenotypeFile.invalid` with its line and problem, and the others are
still read. Cells in SNAS's all-edge form (every edge of the cell listed, most of them `none`)
are turned into the 2-inputs-per-node cell when that is unambiguous, with a warning.

Every problem with a file or a name raises `InputError`, never another exception type.
"""

from __future__ import annotations

import ast
import hashlib
import json
import keyword
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from nasaudit.errors import InputError, first_line
from nasaudit.io import atomic_write_json, atomic_write_text, loads_json, read_limited
from nasaudit.resources import data_dir
from nasaudit.search_space import SearchSpace, load_search_space

CELLS = ("normal", "reduce")
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
# The superset of the shipped spaces: every published genotype validates against it.
DEFAULT_SPACE = "paper"
ALIASES_FILE = "aliases.json"

# Genotype files are a few kB; the cap keeps a hostile file from costing seconds of parsing.
MAX_FILE_BYTES = 4 << 20
_MAX_RANGE = 10_000
_MAX_LITERAL_DEPTH = 16
# A file of 100,000 `print()` lines must not give a 100,000-entry report.
_MAX_SKIPPED_LISTED = 200
_NNI_KEY = re.compile(r"^(normal|reduce)/(op|input)_(\d{1,4})_(\d{1,4})$")


class Genotype(NamedTuple):
    """Both cells of a DARTS-style network; equivalent to DARTS's `Genotype` namedtuple."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]


@dataclass(frozen=True)
class SkippedStatement:
    """A top-level statement of a Python genotype file that was not read (never evaluated)."""

    line: int
    kind: str  # what it is, e.g. "FunctionDef count_ops", "Assign ALL_PRIMITIVES (BinOp)"

    def to_dict(self) -> dict:
        """{"line", "kind"}."""
        return {"line": self.line, "kind": self.kind}


@dataclass(frozen=True)
class UnreadGenotype:
    """A genotype a file defines but that cannot be read; `problem` is one line."""

    name: str
    line: int | None  # 1-based line in a Python file; None in JSON
    problem: str  # starts with "genotype 'NAME'"

    @property
    def message(self) -> str:
        """The problem with its line, as printed after the file name."""
        return self.problem if self.line is None else f"line {self.line}: {self.problem}"

    def to_dict(self) -> dict:
        """{"name", "line", "problem"}."""
        return {"name": self.name, "line": self.line, "problem": self.problem}


@dataclass
class GenotypeFile:
    """What a genotype file holds, read without executing anything.

    `genotypes`: the readable genotypes in file order (validated, all-edge cells derived);
    `aliases`: alias -> genotype name (the target may be in `invalid`); `invalid`: name ->
    why it cannot be read; `skipped`: statements not read; `warnings`: one-line notes (a name
    bound twice, a derived all-edge cell); `lines`: name -> line of its (last) binding.
    """

    source: str
    genotypes: dict[str, Genotype] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, UnreadGenotype] = field(default_factory=dict)
    skipped: list[SkippedStatement] = field(default_factory=list)
    skipped_unlisted: int = 0  # skipped statements beyond the listed ones
    warnings: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """One line per genotype that cannot be read, prefixed with the file name."""
        return [f"{self.source}: {bad.message}" for bad in self.invalid.values()]

    def to_dict(self) -> dict:
        """A JSON-able summary: source, genotype names, aliases, invalid, skipped, warnings."""
        return {
            "source": self.source,
            "genotypes": list(self.genotypes),
            "aliases": dict(self.aliases),
            "invalid": [bad.to_dict() for bad in self.invalid.values()],
            "skipped": [item.to_dict() for item in self.skipped],
            "skipped_unlisted": self.skipped_unlisted,
            "warnings": list(self.warnings),
        }

    def no_genotype_error(self) -> InputError:
        """The error for a file none of whose genotypes can be read."""
        if len(self.invalid) == 1:
            return InputError(self.source, next(iter(self.invalid.values())).message)
        if self.invalid:
            first = next(iter(self.invalid.values()))
            return InputError(
                self.source,
                f"none of its {len(self.invalid)} genotypes can be read (first: {first.message})",
            )
        skipped = len(self.skipped) + self.skipped_unlisted
        note = f" ({skipped} other statement{'s' if skipped != 1 else ''} skipped)" if skipped else ""
        return InputError(self.source, f"no Genotype(...) found in the file{note}")


def _short(value: Any, limit: int = 40) -> str:
    """repr() cut to `limit` characters: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Building and validating
# --------------------------------------------------------------------------------------------


def make_genotype(
    normal: Iterable[Any],
    normal_concat: Iterable[Any],
    reduce: Iterable[Any],
    reduce_concat: Iterable[Any],
    *,
    source: str = "<genotype>",
    name: str = "?",
) -> Genotype:
    """Build a `Genotype` from lists (as read from JSON or Python), converting them to tuples.

    Checks only the container shapes (a cell is a list of 2-item pairs, a concat a list);
    `validate_genotype` checks the contents. Raises InputError naming `source` and `name`.
    """
    values = {
        "normal": normal,
        "normal_concat": normal_concat,
        "reduce": reduce,
        "reduce_concat": reduce_concat,
    }
    out: dict[str, tuple] = {}
    for key, value in values.items():
        if not isinstance(value, (list, tuple, range)):
            raise InputError(
                source, f"genotype {name!r}: {key} must be a list, not {type(value).__name__}"
            )
        if key in CELLS:
            pairs = []
            for position, pair in enumerate(value):
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise InputError(
                        source,
                        f"genotype {name!r}, {key} cell, entry {position}: expected an "
                        f"[op, input] pair, got {_short(pair)}",
                    )
                pairs.append((pair[0], pair[1]))
            out[key] = tuple(pairs)
        else:
            out[key] = tuple(value)
    return Genotype(**out)


def _as_space(space: SearchSpace | str | None) -> SearchSpace:
    return load_search_space(DEFAULT_SPACE if space is None else space)


def _quoted_ops(space: SearchSpace) -> str:
    return ", ".join(repr(op) for op in space.ops)


def _all_edge_nodes(n_pairs: int, max_nodes: int) -> int | None:
    """The node count n when `n_pairs` = 2 + 3 + ... + (n + 1), the all-edge form, else None."""
    total = 0
    for nodes in range(1, max_nodes + 1):
        total += nodes + 1
        if total == n_pairs:
            return nodes
        if total > n_pairs:
            return None
    return None


def _all_edge_groups(pairs: tuple, concat: tuple, max_nodes: int) -> list[list] | None:
    """The cell split per node when it lists every edge (node i: inputs 0..i+1, once each).

    SNAS's `*_edge_all` genotypes list the 2 + 3 + 4 + 5 edges of a 4-node cell, most of them
    `none`. Read 2 pairs per node they would be a 7-node cell, so the form is recognised by
    its layout, a concat within its n nodes and at least one `none` edge.
    """
    nodes = _all_edge_nodes(len(pairs), max_nodes)
    if nodes is None or nodes < 2 or not any(pair[0] == "none" for pair in pairs):
        return None
    if not all(_is_int(state) and 2 <= state <= nodes + 1 for state in concat):
        return None
    groups, start = [], 0
    for node in range(nodes):
        group = list(pairs[start : start + node + 2])
        start += node + 2
        inputs = [inp for _, inp in group]
        if not all(_is_int(inp) for inp in inputs) or sorted(inputs) != list(range(node + 2)):
            return None
        groups.append(group)
    return groups


def derive_two_input_genotype(
    g: Genotype, space: SearchSpace | str | None = None, *, source: str | Path, name: str
) -> tuple[Genotype, str | None]:
    """Turn cells in SNAS's all-edge form into cells of `inputs_per_node` edges per node.

    Returns (genotype, note): `g` unchanged and None when no cell is in that form; otherwise
    each such cell keeps, per node, its non-`none` edges in the listed order, and the note
    says so (one line). Raises InputError when a node of such a cell does not keep exactly
    `inputs_per_node` non-`none` edges, since which edges the network uses is then unclear.
    """
    space = _as_space(space)
    per_node = space.inputs_per_node
    derived: dict[str, tuple] = {}
    for cell in CELLS:
        pairs = tuple(getattr(g, cell))
        groups = _all_edge_groups(pairs, tuple(getattr(g, f"{cell}_concat")), space.max_nodes)
        if groups is None:
            continue
        kept = []
        for node, group in enumerate(groups):
            real = [(op, inp) for op, inp in group if op != "none"]
            if len(real) != per_node:
                raise InputError(
                    source,
                    f"genotype {name!r}, {cell} cell lists all {len(pairs)} edges of a "
                    f"{len(groups)}-node cell (SNAS all-edge form), but node {node} keeps "
                    f"{len(real)} non-none edges, not {per_node}: which {per_node} the network "
                    "uses is ambiguous",
                )
            kept.extend(real)
        derived[cell] = tuple(kept)
    if not derived:
        return g, None
    cells = " and ".join(f"{cell} cell" for cell in derived)
    note = (
        f"genotype {name!r}: the {cells} list every edge (SNAS all-edge form); read as the "
        f"{per_node}-input cell of its non-none edges"
    )
    return g._replace(**derived), note


def validate_genotype(
    g: Genotype, space: SearchSpace | str | None = None, *, source: str | Path, name: str
) -> None:
    """Check `g` against `space` (default: the `paper` space); raise InputError on a problem.

    Checks, per cell: not empty; at most `space.max_nodes` nodes (checked first, so a huge
    cell costs nothing); a multiple of `inputs_per_node` pairs; not SNAS's all-edge form (see
    `derive_two_input_genotype`); known op names; integer inputs, each below its node (node i,
    0-based, may use states 0..i+1); the concat non-empty, of integers naming existing nodes
    (2..n+1), without duplicates. The node count n comes from the cell's length, so 5-node
    cells (NASNet, AmoebaNet) validate in a 4-node space.
    """
    space = _as_space(space)
    per_node = space.inputs_per_node
    for cell in CELLS:
        where = f"genotype {name!r}, {cell} cell"
        pairs = getattr(g, cell)
        if not pairs:
            raise InputError(source, f"{where} is empty")
        n_nodes = -(-len(pairs) // per_node)
        if n_nodes > space.max_nodes:
            raise InputError(
                source,
                f"{where} has {n_nodes} nodes; space {space.name!r} allows at most "
                f"{space.max_nodes}",
            )
        if _all_edge_groups(tuple(pairs), tuple(getattr(g, f"{cell}_concat")), space.max_nodes):
            raise InputError(
                source,
                f"{where} lists every edge of the cell (SNAS all-edge form); derive its "
                f"{per_node}-input cell first (derive_two_input_genotype)",
            )
        if len(pairs) % per_node:
            raise InputError(
                source,
                f"{where} has {len(pairs)} (op, input) pairs, not a multiple of "
                f"{per_node} inputs per node",
            )
        for position, (op, inp) in enumerate(pairs):
            node = position // per_node
            if not isinstance(op, str):
                raise InputError(source, f"{where}, node {node}: op {_short(op)} is not a string")
            if not space.has_op(op):
                raise InputError(
                    source,
                    f"{where}, node {node}: unknown op {_short(op)} (space {space.name!r} has "
                    f"the ops {_quoted_ops(space)})",
                )
            if not _is_int(inp):
                raise InputError(
                    source, f"{where}, node {node}: input {_short(inp)} is not an integer"
                )
            if not 0 <= inp <= node + 1:
                raise InputError(
                    source,
                    f"{where}, node {node}: input {inp} is not below the node "
                    f"(allowed 0..{node + 1})",
                )
        concat = getattr(g, f"{cell}_concat")
        ckey = f"genotype {name!r}, {cell}_concat"
        if not concat:
            raise InputError(source, f"{ckey} is empty")
        seen: set[int] = set()
        for state in concat:
            if not _is_int(state):
                raise InputError(source, f"{ckey}: {_short(state)} is not an integer")
            if not 2 <= state <= n_nodes + 1:
                raise InputError(
                    source,
                    f"{ckey}: {state} names a missing node (the cell has states 2..{n_nodes + 1})",
                )
            if state in seen:
                raise InputError(source, f"{ckey}: {state} appears twice")
            seen.add(state)


def _checked(parsed: GenotypeFile, space: SearchSpace) -> GenotypeFile:
    """Derive all-edge cells and validate every parsed genotype; a bad one moves to `invalid`.

    The result keeps file order among the readable genotypes and among the unreadable ones.
    """
    out = GenotypeFile(
        source=parsed.source,
        aliases=dict(parsed.aliases),
        lines=dict(parsed.lines),
        skipped=list(parsed.skipped),
        skipped_unlisted=parsed.skipped_unlisted,
        warnings=list(parsed.warnings),
    )
    invalid = dict(parsed.invalid)
    for name, g in parsed.genotypes.items():
        line = parsed.lines.get(name)
        try:
            g, note = derive_two_input_genotype(g, space, source=parsed.source, name=name)
            validate_genotype(g, space, source=parsed.source, name=name)
        except InputError as exc:
            invalid[name] = UnreadGenotype(name, line, exc.problem)
            continue
        out.genotypes[name] = g
        out.extras[name] = parsed.extras.get(name, {})
        if note:
            out.warnings.append(note if line is None else f"line {line}: {note}")
    # File order: by line in Python files; JSON entries (no line) keep their order.
    out.invalid = dict(sorted(invalid.items(), key=lambda item: item[1].line or 0))
    return out


# --------------------------------------------------------------------------------------------
# Canonical JSON
# --------------------------------------------------------------------------------------------


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


def _parse_json(text: str, source: str, default_name: str) -> GenotypeFile:
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
                    source, f"alias {alias!r} points to unknown genotype {_short(target)}"
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
        raise InputError(source, f"genotype name {_short(name)} is not a usable name")


def _short_text(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# NNI 3.0 DARTS architecture dict
# --------------------------------------------------------------------------------------------


def genotype_to_nni(g: Genotype, inputs_per_node: int = 2) -> dict:
    """NNI 3.0's exported architecture dict for its DARTS space (`nni.nas.hub.pytorch.DARTS`).

    Keys are `{cell}/op_{i}_{k}` (the op on input k of node i) and `{cell}/input_{i}_{k}`
    (its input, written as `[j]`, the form NNI exports); nodes are numbered from 2. NNI's DARTS
    cells concatenate every intermediate node, so any other concat raises InputError.
    """
    out: dict[str, Any] = {}
    for cell in CELLS:
        pairs = getattr(g, cell)
        n_nodes = len(pairs) // inputs_per_node
        concat = tuple(getattr(g, f"{cell}_concat"))
        if concat != tuple(range(2, n_nodes + 2)) or len(pairs) % inputs_per_node:
            raise InputError(
                "genotype",
                f"NNI's DARTS space concatenates all intermediate nodes; {cell}_concat "
                f"{list(concat)} of a {n_nodes}-node cell cannot be expressed",
            )
        for position, (op, inp) in enumerate(pairs):
            node, k = divmod(position, inputs_per_node)
            out[f"{cell}/op_{node + 2}_{k}"] = op
            out[f"{cell}/input_{node + 2}_{k}"] = [inp]
    return out


def genotype_from_nni(d: Mapping[str, Any], source: str = "<nni>", name: str = "nni") -> Genotype:
    """Read NNI 3.0's exported DARTS architecture dict (see `genotype_to_nni`).

    Inputs may be `j` or `[j]`. Keys that are not cell choices (e.g. NNI's "width"/"depth"
    hyperparameters) are ignored. The concat is every intermediate node, as in NNI's space.
    """
    if not isinstance(d, Mapping):
        raise InputError(source, "an NNI architecture must be a JSON object")
    choices: dict[str, dict[tuple[int, int], dict[str, Any]]] = {cell: {} for cell in CELLS}
    for key, value in d.items():
        if not isinstance(key, str) or not key.startswith(("normal/", "reduce/")):
            continue
        match = _NNI_KEY.match(key)
        if not match:
            raise InputError(source, f"genotype {name!r}: unexpected NNI key {_short(key)}")
        cell, kind, node, k = (
            match.group(1),
            match.group(2),
            int(match.group(3)),
            int(match.group(4)),
        )
        if kind == "input" and isinstance(value, list):
            if len(value) != 1:
                raise InputError(
                    source, f"genotype {name!r}: {key} must choose one input, got {_short(value)}"
                )
            value = value[0]
        choices[cell].setdefault((node, k), {})[kind] = value
    cells: dict[str, list] = {}
    for cell in CELLS:
        found = choices[cell]
        if not found:
            raise InputError(source, f"genotype {name!r}: no {cell}/op_* keys in the NNI dict")
        nodes = sorted({node for node, _ in found})
        per_node = 1 + max(k for _, k in found)
        if nodes != list(range(2, 2 + len(nodes))):
            raise InputError(
                source, f"genotype {name!r}: {cell} nodes must be numbered 2, 3, ...; got {nodes}"
            )
        pairs = []
        for node in nodes:
            for k in range(per_node):
                entry = found.get((node, k), {})
                for kind in ("op", "input"):
                    if kind not in entry:
                        raise InputError(
                            source, f"genotype {name!r}: missing NNI key {cell}/{kind}_{node}_{k}"
                        )
                pairs.append((entry["op"], entry["input"]))
        cells[cell] = pairs
        cells[f"{cell}_concat"] = list(range(2, 2 + len(nodes)))
    return make_genotype(*(cells[key] for key in FIELDS), source=source, name=name)


# --------------------------------------------------------------------------------------------
# DARTS-style Python, parsed with ast and never executed
# --------------------------------------------------------------------------------------------


class _Ctor:
    """Marker value: a name bound to the Genotype namedtuple (a constructor, not data)."""


_CTOR = _Ctor()
_NAMEDTUPLE = object()  # marker value: the `namedtuple` function itself
_MISSING = object()  # marker value: a name no earlier statement binds


@dataclass(frozen=True)
class _ForeignTuple:
    """A namedtuple with other fields than DARTS's Genotype (e.g. `Genotype_multi`)."""

    binding: str
    typename: str
    fields: tuple[str, ...]

    @property
    def genotype_like(self) -> bool:
        # Only records that claim to be genotypes are reported as unreadable genotypes.
        names = (self.binding + " " + self.typename).lower()
        return "genotype" in names or {"normal", "reduce"} <= set(self.fields)


@dataclass(frozen=True)
class _Unbound:
    """Marker value: a name bound by a statement that is skipped (a def, a loop, ...)."""

    line: int
    kind: str


@dataclass(frozen=True)
class _Unreadable:
    """Marker value: a name bound to a genotype that cannot be read."""

    name: str
    problem: str


@dataclass
class _Lazy:
    """An assignment that is not a genotype: read only if a genotype refers to its name."""

    node: ast.AST
    index: int  # the statement's position: names inside resolve to bindings before it
    line: int
    kind: str
    used: bool = False
    done: bool = False
    value: Any = None
    problem: str | None = None


class _ReadError(Exception):
    """A problem with one statement; `_PyReader` turns it into a skipped or invalid entry."""

    def __init__(self, node: ast.AST, problem: str):
        super().__init__(problem)
        self.line = getattr(node, "lineno", None)
        self.problem = problem


def _describe(node: ast.AST) -> str:
    """A short name for a statement or expression: "FunctionDef count_ops", "call to print"."""
    if isinstance(node, ast.Call):
        try:
            return f"call to {_short_text(ast.unparse(node.func), 40)}"
        except (ValueError, RecursionError):  # pragma: no cover - unparse of a parsed tree
            return "call"
    name = getattr(node, "name", None)
    return type(node).__name__ + (f" {name}" if isinstance(name, str) else "")


def _target_names(target: ast.AST) -> list[str]:
    """The plain names an assignment target binds (`a`, `a, b`, `[a, *b]`)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for elt in target.elts for name in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []  # attributes and subscripts bind no name


def _bound_names(stmt: ast.stmt) -> list[str]:
    """Names a skipped top-level statement binds unconditionally (def, class, loop targets)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        return _target_names(stmt.target)
    if isinstance(stmt, ast.Assign):
        return [name for target in stmt.targets for name in _target_names(target)]
    if isinstance(stmt, ast.Delete):
        return [name for target in stmt.targets for name in _target_names(target)]
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return _target_names(stmt.target)
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return [n for item in stmt.items if item.optional_vars for n in _target_names(item.optional_vars)]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).split(".")[0] for alias in stmt.names]
    return []


class _PyReader:
    """Reads the genotypes of a Python file: the literal subset genotype files use, per statement.

    A statement binding a name to `Genotype(...)` (or to a name that is one) is read at once;
    one that fails becomes an unreadable genotype. Any other assignment is kept unevaluated and
    read only if a later genotype uses its name (`CONCAT = range(2, 6)`); names resolve to the
    binding before the statement that uses them, as in Python. Every other statement is skipped
    without evaluation. Nothing is imported, called or executed.
    """

    def __init__(self, source: str):
        self.source = source
        self.parsed = GenotypeFile(source=source)
        self.bindings: dict[str, list[tuple[int, Any]]] = {}
        self.lazy: list[_Lazy] = []
        self.skips: list[SkippedStatement] = []
        self.index = 0

    # ---- names -------------------------------------------------------------------------

    def lookup(self, name: str, before: int) -> Any:
        """The value `name` is bound to just before statement `before`, or _MISSING."""
        history = self.bindings.get(name)
        if not history:
            return _MISSING
        for index, value in reversed(history):
            if index < before:
                return value
        return _MISSING

    def bind(self, name: str, line: int, value: Any, alias_of: str | None = None) -> None:
        """Bind `name` at the current statement; record genotypes, aliases and rebindings."""
        parsed = self.parsed
        previous = parsed.lines.get(name)
        if previous is not None:
            self.forget_genotype(name)
            if isinstance(value, (Genotype, _Unreadable)):
                parsed.warnings.append(
                    f"line {line}: genotype {name!r} is defined twice (lines {previous} and "
                    f"{line}); the last definition is read, as in Python"
                )
            else:
                parsed.warnings.append(
                    f"line {line}: genotype {name!r} (line {previous}) is bound again to "
                    "something that is not a genotype; as in Python the last binding wins, so "
                    "it is not read"
                )
        self.bindings.setdefault(name, []).append((self.index, value))
        if isinstance(value, Genotype):
            if alias_of is not None:
                parsed.aliases[name] = parsed.aliases.get(alias_of, alias_of)
            else:
                parsed.genotypes[name] = value
            parsed.lines[name] = line
        elif isinstance(value, _Unreadable):
            if alias_of is not None:
                parsed.aliases[name] = parsed.aliases.get(alias_of, alias_of)
            else:
                parsed.invalid[name] = UnreadGenotype(name, line, value.problem)
            parsed.lines[name] = line

    def forget_genotype(self, name: str) -> None:
        """Drop genotype `name` before it is rebound; aliases to it keep the old value."""
        parsed = self.parsed
        parsed.lines.pop(name, None)
        parsed.aliases.pop(name, None)
        old_genotype = parsed.genotypes.pop(name, None)
        old_invalid = parsed.invalid.pop(name, None)
        for alias, target in list(parsed.aliases.items()):
            if target != name:
                continue
            # `DARTS = DARTS_V2` keeps the object even when DARTS_V2 is rebound later.
            del parsed.aliases[alias]
            if old_genotype is not None:
                parsed.genotypes[alias] = old_genotype
            elif old_invalid is not None:
                parsed.invalid[alias] = UnreadGenotype(
                    alias, parsed.lines.get(alias), old_invalid.problem
                )

    def skip(self, stmt: ast.stmt, kind: str, names: Iterable[str] = ()) -> None:
        """Record `stmt` as skipped; names it binds become unusable for later genotypes."""
        line = getattr(stmt, "lineno", 0)
        self.skips.append(SkippedStatement(line, kind))
        for name in names:
            self.bind(name, line, _Unbound(line, kind))

    # ---- statements --------------------------------------------------------------------

    def read_module(self, tree: ast.Module, default_name: str) -> GenotypeFile:
        bare = 0
        for self.index, stmt in enumerate(tree.body):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.read_import(stmt)
            elif isinstance(stmt, ast.Expr):
                value = stmt.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    continue  # a docstring
                if self.is_genotype_call(value):
                    bare += 1
                    name = default_name if bare == 1 else f"{default_name}_{bare}"
                    self.read_genotype([name], stmt, value)
                else:
                    self.skip(stmt, f"Expr ({_describe(value)})")
            elif isinstance(stmt, ast.Assign):
                self.read_assign(stmt, stmt.targets, stmt.value)
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                self.read_assign(stmt, [stmt.target], stmt.value)
            else:
                self.skip(stmt, _describe(stmt), _bound_names(stmt))
        for lazy in self.lazy:
            if not lazy.used:
                self.skips.append(SkippedStatement(lazy.line, lazy.kind))
        self.skips.sort(key=lambda item: item.line)
        self.parsed.skipped = self.skips[:_MAX_SKIPPED_LISTED]
        self.parsed.skipped_unlisted = max(0, len(self.skips) - _MAX_SKIPPED_LISTED)
        for name in self.parsed.genotypes:
            self.parsed.extras[name] = {}
        return self.parsed

    def read_import(self, stmt: ast.Import | ast.ImportFrom) -> None:
        # Imports are never run; they only tell which local name means namedtuple.
        module = stmt.module if isinstance(stmt, ast.ImportFrom) else None
        what = ", ".join(alias.name for alias in stmt.names)
        self.skip(stmt, f"{type(stmt).__name__} {module + ': ' if module else ''}{what}")
        for alias in stmt.names:
            local = (alias.asname or alias.name).split(".")[0]
            if isinstance(stmt, ast.ImportFrom) and alias.name == "namedtuple":
                self.bind(local, stmt.lineno, _NAMEDTUPLE)
            elif self.parsed.lines.get(local) is not None:
                self.bind(local, stmt.lineno, _Unbound(stmt.lineno, "import"))

    def read_assign(self, stmt: ast.stmt, targets: list[ast.expr], value: ast.expr) -> None:
        if len(targets) == 1 and isinstance(targets[0], (ast.Tuple, ast.List)):
            elts = targets[0].elts
            if (
                isinstance(value, (ast.Tuple, ast.List))
                and len(value.elts) == len(elts)
                and all(isinstance(elt, ast.Name) for elt in elts)
            ):
                # `A, B = Genotype(...), Genotype(...)`: one binding per name.
                for target, item in zip(elts, value.elts, strict=True):
                    self.read_assign(stmt, [target], item)
                return
        if not all(isinstance(target, ast.Name) for target in targets):
            names = [name for target in targets for name in _target_names(target)]
            self.skip(stmt, f"{type(stmt).__name__} to {_describe_targets(targets)}", names)
            return
        names = [target.id for target in targets]
        if self.is_genotype_call(value) or self.is_namedtuple_call(value):
            self.read_genotype(names, stmt, value)
            return
        if isinstance(value, ast.Name):
            target = self.lookup(value.id, self.index)
            if isinstance(target, (Genotype, _Unreadable)):
                for name in names:
                    self.bind(name, stmt.lineno, target, alias_of=value.id)
                return
        kind = f"{type(stmt).__name__} {', '.join(names)} ({_describe(value)})"
        lazy = _Lazy(value, self.index, stmt.lineno, kind)
        self.lazy.append(lazy)
        for name in names:
            self.bind(name, stmt.lineno, lazy)

    def read_genotype(self, names: list[str], stmt: ast.stmt, node: ast.expr) -> None:
        """Read a `Genotype(...)` or `namedtuple(...)` value into every name of `names`."""
        try:
            value = self.eval(node, 0, self.index, names[0])
        except _ReadError as exc:
            if self.is_namedtuple_call(node):
                self.skip(stmt, f"namedtuple {', '.join(names)}: {exc.problem}", names)
                return
            problem = f"genotype {names[0]!r}: {exc.problem}"
            for name in names:
                self.bind(name, stmt.lineno, _Unreadable(name, problem))
            return
        if isinstance(value, _ForeignTuple):
            self.skip(
                stmt,
                f"namedtuple {', '.join(names)} = {value.typename!r} with fields "
                f"{' '.join(value.fields)}, not DARTS's Genotype",
            )
            for name in names:
                self.bind(name, stmt.lineno, _ForeignTuple(name, value.typename, value.fields))
            return
        for name in names:
            self.bind(name, stmt.lineno, value)

    # ---- expressions -------------------------------------------------------------------

    def is_namedtuple_call(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if isinstance(func, ast.Attribute):
            return func.attr == "namedtuple"
        if isinstance(func, ast.Name):
            value = self.lookup(func.id, self.index)
            return value is _NAMEDTUPLE or (value is _MISSING and func.id == "namedtuple")
        return False

    def is_genotype_call(self, node: ast.AST) -> bool:
        """True for a call of DARTS's Genotype, or of another namedtuple claiming to be one."""
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if isinstance(func, ast.Attribute):
            return func.attr == "Genotype"
        if not isinstance(func, ast.Name):
            return False
        value = self.lookup(func.id, self.index)
        if value is _MISSING:
            return func.id == "Genotype"  # imported or left undefined: DARTS's namedtuple
        return value is _CTOR or (isinstance(value, _ForeignTuple) and value.genotype_like)

    def eval(self, node: ast.AST, depth: int, at: int, target: str) -> Any:
        """The value of a literal expression; names resolve to bindings before statement `at`."""
        if depth > _MAX_LITERAL_DEPTH:
            raise _ReadError(node, "expression nested too deeply")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (str, int, float)) or node.value is None:
                return node.value
            raise _ReadError(node, f"unsupported constant {_short(node.value)}")
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(item, depth + 1, at, target) for item in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self.eval(node.operand, depth + 1, at, target)
            if _is_int(value) or isinstance(value, float):
                return -value
            raise _ReadError(node, "unary minus applies to numbers only")
        if isinstance(node, ast.Name):
            return self.eval_name(node, depth, at, target)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            # `collections.namedtuple` or `genotypes.Genotype`: the module is never imported.
            if node.attr == "namedtuple":
                return _NAMEDTUPLE
            if node.attr == "Genotype":
                return _CTOR
            raise _ReadError(node, f"unsupported attribute access .{node.attr}")
        if isinstance(node, ast.Call):
            return self.eval_call(node, depth, at, target)
        raise _ReadError(node, f"unsupported expression ({type(node).__name__})")

    def eval_name(self, node: ast.Name, depth: int, at: int, target: str) -> Any:
        value = self.lookup(node.id, at)
        if value is _MISSING:
            # A lone `Genotype(...)` needs no header, and namedtuple no import.
            if node.id == "Genotype":
                return _CTOR
            if node.id == "namedtuple":
                return _NAMEDTUPLE
            raise _ReadError(node, f"name {node.id!r} is not assigned earlier in the file")
        if isinstance(value, _Lazy):
            return self.eval_lazy(node, value, depth, target)
        if isinstance(value, _Unbound):
            raise _ReadError(
                node, f"name {node.id!r} comes from line {value.line} ({value.kind}), which is "
                "not read",
            )
        if isinstance(value, _Unreadable):
            raise _ReadError(node, f"name {node.id!r} is a genotype that cannot be read")
        return value

    def eval_lazy(self, node: ast.Name, lazy: _Lazy, depth: int, target: str) -> Any:
        lazy.used = True
        if not lazy.done:
            lazy.done = True  # set first: a self-reference fails instead of looping
            lazy.problem = f"name {node.id!r} (line {lazy.line}) is still being read"
            try:
                lazy.value = self.eval(lazy.node, depth + 1, lazy.index, target)
                lazy.problem = None
            except _ReadError as exc:
                lazy.problem = f"name {node.id!r} (line {lazy.line}): {exc.problem}"
        if lazy.problem is not None:
            raise _ReadError(node, lazy.problem)
        return lazy.value

    def eval_call(self, node: ast.Call, depth: int, at: int, target: str) -> Any:
        func = node.func
        if isinstance(func, ast.Name) and self.lookup(func.id, at) is _MISSING:
            if func.id in ("range", "list", "tuple"):
                return self.eval_builtin(node, func.id, depth, at, target)
            known = func.id in ("Genotype", "namedtuple")
        else:
            known = isinstance(func, ast.Name) or (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.attr in ("Genotype", "namedtuple")
            )
        value = self.eval(func, depth + 1, at, target) if known else None
        if value is _NAMEDTUPLE:
            return self.eval_namedtuple(node, depth, at, target)
        if value is _CTOR:
            return self.eval_genotype(node, depth, at, target)
        if isinstance(value, _ForeignTuple):
            raise _ReadError(
                node,
                f"built with namedtuple {value.binding!r} (fields {' '.join(value.fields)}), "
                f"not DARTS's Genotype ({' '.join(FIELDS)})",
            )
        raise _ReadError(node, f"unsupported call ({_short(ast.unparse(func))})")

    def eval_builtin(self, node: ast.Call, func: str, depth: int, at: int, target: str) -> list:
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise _ReadError(node, f"{func}() takes positional arguments only here")
        args = [self.eval(arg, depth + 1, at, target) for arg in node.args]
        if func == "range":
            if not 1 <= len(args) <= 3 or not all(_is_int(arg) for arg in args):
                raise _ReadError(node, "range() needs 1 to 3 integer arguments")
            if any(abs(arg) > _MAX_RANGE for arg in args) or (len(args) == 3 and args[2] == 0):
                raise _ReadError(node, "range() arguments out of bounds")
            return list(range(*args))
        if len(args) != 1 or not isinstance(args[0], list):
            raise _ReadError(node, f"{func}() needs one list or range argument")
        return list(args[0])

    def eval_namedtuple(self, node: ast.Call, depth: int, at: int, target: str) -> Any:
        if any(isinstance(arg, ast.Starred) for arg in node.args) or len(node.args) != 2:
            raise _ReadError(node, "namedtuple() needs a type name and its fields")
        typename, fields = (self.eval(arg, depth + 1, at, target) for arg in node.args)
        if isinstance(fields, str):
            fields = fields.replace(",", " ").split()
        if not isinstance(typename, str) or not (
            isinstance(fields, list) and all(isinstance(f, str) for f in fields)
        ):
            raise _ReadError(node, "namedtuple() needs a type name and a list of field names")
        if fields == list(FIELDS) and not node.keywords:
            return _CTOR
        return _ForeignTuple(target, typename, tuple(fields))

    def eval_genotype(self, node: ast.Call, depth: int, at: int, target: str) -> Genotype:
        if len(node.args) > len(FIELDS) or any(isinstance(a, ast.Starred) for a in node.args):
            raise _ReadError(node, f"Genotype() takes at most {len(FIELDS)} positional arguments")
        values: dict[str, Any] = {}
        for key, arg in zip(FIELDS, node.args, strict=False):
            values[key] = self.eval(arg, depth + 1, at, target)
        for kw in node.keywords:
            if kw.arg not in FIELDS:
                raise _ReadError(node, f"Genotype() has no field {_short(kw.arg)}")
            if kw.arg in values:
                raise _ReadError(node, f"Genotype() field {kw.arg} given twice")
            values[kw.arg] = self.eval(kw.value, depth + 1, at, target)
        missing = [key for key in FIELDS if key not in values]
        if missing:
            raise _ReadError(node, f"Genotype() lacks {', '.join(missing)}")
        try:
            g = make_genotype(*(values[key] for key in FIELDS), source="", name=target)
        except InputError as exc:
            # make_genotype names the genotype; the reader adds the name itself.
            problem = exc.problem.removeprefix(f"genotype {target!r}").lstrip(":, ")
            raise _ReadError(node, problem) from None
        return g


def _describe_targets(targets: list[ast.expr]) -> str:
    try:
        return _short_text(", ".join(ast.unparse(target) for target in targets), 60)
    except (ValueError, RecursionError):  # pragma: no cover - unparse of a parsed tree
        return "a target"


def _parse_python(text: str, source: str, default_name: str) -> GenotypeFile:
    try:
        tree = ast.parse(text, filename=source, mode="exec")
    except SyntaxError as exc:
        raise InputError(
            source, f"line {exc.lineno}: invalid Python ({_short_text(str(exc.msg))})"
        ) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise InputError(source, f"invalid Python ({first_line(exc, limit=120)})") from None
    try:
        return _PyReader(source).read_module(tree, default_name)
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise InputError(source, "expression nested too deeply") from None


def _py_identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "GENOTYPE"
    if ident[0].isdigit() or keyword.iskeyword(ident) or ident in ("Genotype", "namedtuple"):
        ident = f"G_{ident}"
    return ident


def genotype_to_python(g: Genotype, name: str) -> str:
    """A DARTS-style `genotypes.py` defining `NAME = Genotype(...)`, importable by DARTS code.

    `name` becomes a Python identifier (characters outside [A-Za-z0-9_] turn into "_").
    """
    ident = _py_identifier(name)

    def cell(pairs: tuple) -> str:
        return "[" + ", ".join(f"({op!r}, {inp!r})" for op, inp in pairs) + "]"

    return (
        "from collections import namedtuple\n\n"
        "Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')\n\n"
        f"{ident} = Genotype(\n"
        f"    normal={cell(g.normal)},\n"
        f"    normal_concat={list(g.normal_concat)!r},\n"
        f"    reduce={cell(g.reduce)},\n"
        f"    reduce_concat={list(g.reduce_concat)!r},\n"
        ")\n"
    )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


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
    return _checked(parsed, _as_space(space))


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
        return _parse_json(text, source, default_name)
    return _parse_python(text, source, default_name)


def _read_file(path: str | Path) -> GenotypeFile:
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
    return _checked(_read_file(path), _as_space(space))


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


# --------------------------------------------------------------------------------------------
# Shipped genotypes and name resolution
# --------------------------------------------------------------------------------------------


def _shipped() -> GenotypeFile:
    directory = data_dir("genotypes")
    parsed = GenotypeFile(source=str(directory))
    for path in sorted(directory.glob("*.json")):
        if path.name == ALIASES_FILE:
            continue
        one = _read_file(path)
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
    space = _as_space(space)
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
