"""The `Genotype` type, the result of reading a genotype file, and how a genotype is built and
validated against a search space."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from nasaudit.infra.errors import InputError
from nasaudit.search_space import SearchSpace, load_search_space

CELLS = ("normal", "reduce")
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
# The superset of the shipped spaces: every published genotype validates against it.
DEFAULT_SPACE = "paper"



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


def short_repr(value: Any, limit: int = 40) -> str:
    """repr() cut to `limit` characters: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_text(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)



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
                        f"[op, input] pair, got {short_repr(pair)}",
                    )
                pairs.append((pair[0], pair[1]))
            out[key] = tuple(pairs)
        else:
            out[key] = tuple(value)
    return Genotype(**out)


def as_space(space: SearchSpace | str | None) -> SearchSpace:
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
    if not all(is_int(state) and 2 <= state <= nodes + 1 for state in concat):
        return None
    groups, start = [], 0
    for node in range(nodes):
        group = list(pairs[start : start + node + 2])
        start += node + 2
        inputs = [inp for _, inp in group]
        if not all(is_int(inp) for inp in inputs) or sorted(inputs) != list(range(node + 2)):
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
    space = as_space(space)
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
    space = as_space(space)
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
                raise InputError(source, f"{where}, node {node}: op {short_repr(op)} is not a string")
            if not space.has_op(op):
                raise InputError(
                    source,
                    f"{where}, node {node}: unknown op {short_repr(op)} (space {space.name!r} has "
                    f"the ops {_quoted_ops(space)})",
                )
            if not is_int(inp):
                raise InputError(
                    source, f"{where}, node {node}: input {short_repr(inp)} is not an integer"
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
            if not is_int(state):
                raise InputError(source, f"{ckey}: {short_repr(state)} is not an integer")
            if not 2 <= state <= n_nodes + 1:
                raise InputError(
                    source,
                    f"{ckey}: {state} names a missing node (the cell has states 2..{n_nodes + 1})",
                )
            if state in seen:
                raise InputError(source, f"{ckey}: {state} appears twice")
            seen.add(state)


def checked_against_space(parsed: GenotypeFile, space: SearchSpace) -> GenotypeFile:
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


