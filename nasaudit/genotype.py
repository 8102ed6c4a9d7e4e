"""The `Genotype` type, its file formats, validation, and the shipped genotypes.

A genotype describes the two cell types of a DARTS-style network. Each cell is a sequence of
`(op, input)` pairs, `inputs_per_node` (2) per intermediate node, in node order. Input 0 is the
output of cell k-2, input 1 that of cell k-1, input i >= 2 is intermediate node i-2 (state i).
`*_concat` lists the states concatenated into the cell's output.

Formats (read and write):
1. canonical JSON: `{"name", "normal", "normal_concat", "reduce", "reduce_concat", "source",
   ...}`, or many as `{"genotypes": {NAME: {...}}, "aliases": {ALIAS: NAME}}`;
2. DARTS-style Python: one `Genotype(...)` expression or a whole `genotypes.py`, parsed with
   `ast` and never executed;
3. NNI 3.0's exported architecture dict for its DARTS space (`normal/op_2_0`, ...).

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

from nasaudit.errors import InputError
from nasaudit.io import atomic_write_json, atomic_write_text
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
_NNI_KEY = re.compile(r"^(normal|reduce)/(op|input)_(\d{1,4})_(\d{1,4})$")


class Genotype(NamedTuple):
    """Both cells of a DARTS-style network; equivalent to DARTS's `Genotype` namedtuple."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]


@dataclass
class _ParsedFile:
    """What a file holds: genotypes in file order, aliases, and each genotype's extra fields."""

    genotypes: dict[str, Genotype] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def validate_genotype(
    g: Genotype, space: SearchSpace | str | None = None, *, source: str | Path, name: str
) -> None:
    """Check `g` against `space` (default: the `paper` space); raise InputError on a problem.

    Checks, per cell: not empty; a multiple of `inputs_per_node` pairs; known op names; integer
    inputs, each below its node (node i, 0-based, may use states 0..i+1); the concat non-empty,
    of integers naming existing nodes (2..n+1), without duplicates. The node count n comes from
    the cell's length, so 5-node cells (NASNet, AmoebaNet) validate in a 4-node space.
    """
    space = _as_space(space)
    per_node = space.inputs_per_node
    for cell in CELLS:
        where = f"genotype {name!r}, {cell} cell"
        pairs = getattr(g, cell)
        if not pairs:
            raise InputError(source, f"{where} is empty")
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
                    f"{', '.join(space.ops)})",
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
        n_nodes = len(pairs) // per_node
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
    """The canonical JSON object of `g`: the 4 fields, `name` when given, then `extra` fields."""
    out: dict[str, Any] = {"name": name} if name is not None else {}
    out.update(_canonical_fields(g))
    for key, value in extra.items():
        if key in FIELDS or key == "name":
            raise ValueError(f"extra field {key!r} would overwrite a genotype field")
        out[key] = value
    return out


def genotype_hash(g: Genotype) -> str:
    """Stable sha256 hex digest of the canonical JSON of the 4 fields (names and extras aside)."""
    text = json.dumps(_canonical_fields(g), sort_keys=True, separators=(",", ":"))
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


def _parse_json(text: str, source: str, default_name: str) -> _ParsedFile:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and ints longer than Python's digit limit.
        raise InputError(source, f"invalid JSON ({_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise InputError(
            source, f"expected a JSON object holding a genotype, got {type(obj).__name__}"
        )
    parsed = _ParsedFile()
    if "genotypes" in obj:
        entries = obj["genotypes"]
        if not isinstance(entries, dict) or not entries:
            raise InputError(source, '"genotypes" must be a non-empty object of name: genotype')
        for name, entry in entries.items():
            _check_name(name, source)
            g, extra = _genotype_from_mapping(entry, source=source, name=name)
            parsed.genotypes[name] = g
            parsed.extras[name] = extra
        aliases = obj.get("aliases", {})
        if not isinstance(aliases, dict):
            raise InputError(source, '"aliases" must be an object of alias: name')
        for alias, target in aliases.items():
            _check_name(alias, source)
            if not isinstance(target, str) or target not in parsed.genotypes:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _short_text(text.splitlines()[0] if text else type(exc).__name__)


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


class _PyReader:
    """Evaluates the literal subset of Python that genotype files use."""

    def __init__(self, source: str):
        self.source = source
        self.env: dict[str, Any] = {}
        self.parsed = _ParsedFile()
        self._target: str | None = None

    def fail(self, node: ast.AST, problem: str) -> InputError:
        where = f"line {getattr(node, 'lineno', '?')}"
        if self._target is not None:
            where += f", {self._target!r}"
        return InputError(self.source, f"{where}: {problem}")

    def read_module(self, tree: ast.Module, default_name: str) -> _ParsedFile:
        bare = 0
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.bind_imports(stmt)
            elif isinstance(stmt, ast.Expr):
                if isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                    continue  # a docstring
                bare += 1
                name = default_name if bare == 1 else f"{default_name}_{bare}"
                self._target = name
                value = self.eval(stmt.value, 0)
                if not isinstance(value, Genotype):
                    raise self.fail(stmt, "a bare expression must be a Genotype(...)")
                self.parsed.genotypes[name] = value
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                self.read_assign(stmt)
            else:
                self._target = None
                raise self.fail(stmt, f"unsupported statement ({type(stmt).__name__})")
        if not self.parsed.genotypes:
            raise InputError(self.source, "no Genotype(...) found in the file")
        for name in self.parsed.genotypes:
            self.parsed.extras[name] = {}
        return self.parsed

    def bind_imports(self, stmt: ast.Import | ast.ImportFrom) -> None:
        # Imports are never run; they only tell which local name means namedtuple.
        for alias in stmt.names:
            if isinstance(stmt, ast.ImportFrom) and alias.name == "namedtuple":
                self.env[alias.asname or alias.name] = _NAMEDTUPLE

    def read_assign(self, stmt: ast.Assign | ast.AnnAssign) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = []
        for target in targets:
            if not isinstance(target, ast.Name):
                self._target = None
                raise self.fail(stmt, "only plain `NAME = value` assignments are supported")
            names.append(target.id)
        if stmt.value is None:  # `X: Genotype` without a value
            return
        self._target = names[0]
        value = self.eval(stmt.value, 0)
        for name in names:
            # A later binding replaces an earlier one, as it would in Python.
            self.parsed.genotypes.pop(name, None)
            self.parsed.aliases.pop(name, None)
            if isinstance(stmt.value, ast.Name) and isinstance(value, Genotype):
                self.parsed.aliases[name] = self.canonical(stmt.value.id)
            elif isinstance(value, Genotype):
                self.parsed.genotypes[name] = value
            self.env[name] = value

    def canonical(self, name: str) -> str:
        return self.parsed.aliases.get(name, name)

    def eval(self, node: ast.AST, depth: int) -> Any:
        if depth > _MAX_LITERAL_DEPTH:
            raise self.fail(node, "expression nested too deeply")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (str, int, float)) or node.value is None:
                return node.value
            raise self.fail(node, f"unsupported constant {_short(node.value)}")
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(item, depth + 1) for item in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self.eval(node.operand, depth + 1)
            if _is_int(value) or isinstance(value, float):
                return -value
            raise self.fail(node, "unary minus applies to numbers only")
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            # A lone `Genotype(...)` needs no header, and namedtuple no import.
            if node.id == "Genotype":
                return _CTOR
            if node.id == "namedtuple":
                return _NAMEDTUPLE
            raise self.fail(node, f"name {node.id!r} is not assigned earlier in the file")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            # `collections.namedtuple` or `genotypes.Genotype`: the module is never imported.
            if node.attr == "namedtuple":
                return _NAMEDTUPLE
            if node.attr == "Genotype":
                return _CTOR
            raise self.fail(node, f"unsupported attribute access .{node.attr}")
        if isinstance(node, ast.Call):
            return self.eval_call(node, depth)
        raise self.fail(node, f"unsupported expression ({type(node).__name__})")

    def eval_call(self, node: ast.Call, depth: int) -> Any:
        func = node.func
        if isinstance(func, ast.Name) and func.id not in self.env:
            if func.id in ("range", "list", "tuple"):
                return self.eval_builtin(node, func.id, depth)
            known = func.id in ("Genotype", "namedtuple")
        else:
            known = isinstance(func, ast.Name) or (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.attr in ("Genotype", "namedtuple")
            )
        value = self.eval(func, depth + 1) if known else None
        if value is _NAMEDTUPLE:
            return self.eval_namedtuple(node, depth)
        if value is _CTOR:
            return self.eval_genotype(node, depth)
        raise self.fail(node, f"unsupported call ({_short(ast.unparse(func))})")

    def eval_builtin(self, node: ast.Call, func: str, depth: int) -> list:
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(node, f"{func}() takes positional arguments only here")
        args = [self.eval(arg, depth + 1) for arg in node.args]
        if func == "range":
            if not 1 <= len(args) <= 3 or not all(_is_int(arg) for arg in args):
                raise self.fail(node, "range() needs 1 to 3 integer arguments")
            if any(abs(arg) > _MAX_RANGE for arg in args) or (len(args) == 3 and args[2] == 0):
                raise self.fail(node, "range() arguments out of bounds")
            return list(range(*args))
        if len(args) != 1 or not isinstance(args[0], list):
            raise self.fail(node, f"{func}() needs one list or range argument")
        return list(args[0])

    def eval_namedtuple(self, node: ast.Call, depth: int) -> _Ctor:
        args = [self.eval(arg, depth + 1) for arg in node.args]
        fields = args[1] if len(args) >= 2 else None
        if isinstance(fields, str):
            fields = fields.replace(",", " ").split()
        if len(args) != 2 or node.keywords or fields != list(FIELDS):
            raise self.fail(
                node, f"namedtuple must be namedtuple('Genotype', '{' '.join(FIELDS)}')"
            )
        return _CTOR

    def eval_genotype(self, node: ast.Call, depth: int) -> Genotype:
        if len(node.args) > len(FIELDS) or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, f"Genotype() takes at most {len(FIELDS)} positional arguments")
        values: dict[str, Any] = {}
        for key, arg in zip(FIELDS, node.args, strict=False):
            values[key] = self.eval(arg, depth + 1)
        for kw in node.keywords:
            if kw.arg not in FIELDS:
                raise self.fail(node, f"Genotype() has no field {_short(kw.arg)}")
            if kw.arg in values:
                raise self.fail(node, f"Genotype() field {kw.arg} given twice")
            values[kw.arg] = self.eval(kw.value, depth + 1)
        missing = [key for key in FIELDS if key not in values]
        if missing:
            raise self.fail(node, f"Genotype() lacks {', '.join(missing)}")
        try:
            return make_genotype(
                *(values[key] for key in FIELDS), source="", name=self._target or "?"
            )
        except InputError as exc:
            raise self.fail(node, exc.problem) from None


def _parse_python(text: str, source: str, default_name: str) -> _ParsedFile:
    try:
        tree = ast.parse(text, filename=source, mode="exec")
    except SyntaxError as exc:
        raise InputError(
            source, f"line {exc.lineno}: invalid Python ({_short_text(str(exc.msg))})"
        ) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise InputError(source, f"invalid Python ({_first_line(exc)})") from None
    reader = _PyReader(source)
    try:
        return reader.read_module(tree, default_name)
    except RecursionError:
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
    and anything else Python. Raises InputError for anything that is not a genotype file.
    """
    return _parse_bytes(data, source=source, suffix=suffix, default_name=default_name).genotypes


def _parse_bytes(data: bytes | str, *, source: str, suffix: str, default_name: str) -> _ParsedFile:
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise InputError(source, f"file is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(source, "not a UTF-8 text file") from None
    else:
        text = data
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise InputError(source, "binary data (NUL bytes) in a genotype file")
    suffix = suffix.lower()
    if suffix == ".json" or (suffix != ".py" and text.lstrip().startswith("{")):
        return _parse_json(text, source, default_name)
    return _parse_python(text, source, default_name)


def _read_file(path: str | Path) -> _ParsedFile:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(path, f"file is larger than {MAX_FILE_BYTES} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a genotype file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror or exc})") from None
    return _parse_bytes(data, source=str(path), suffix=path.suffix, default_name=path.stem)


def load_genotype_file(
    path: str | Path, space: SearchSpace | str | None = None
) -> dict[str, Genotype]:
    """All genotypes in a file of any supported format, in file order, validated against
    `space` (default: `paper`). Aliases (`DARTS = DARTS_V2`, `"aliases"`) are not repeated.
    """
    parsed = _read_file(path)
    space = _as_space(space)
    for name, g in parsed.genotypes.items():
        validate_genotype(g, space, source=str(path), name=name)
    return dict(parsed.genotypes)


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


def _shipped() -> _ParsedFile:
    directory = data_dir("genotypes")
    parsed = _ParsedFile()
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
            raise InputError(alias_path, f"invalid JSON ({_first_line(exc)})") from None
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


def _resolve_all(spec: str, space: SearchSpace | str | None) -> dict[str, Genotype]:
    space = _as_space(space)
    shipped = _shipped()
    key = _normalise(spec)
    target = shipped.aliases.get(key, key)
    if target in shipped.genotypes:
        g = shipped.genotypes[target]
        validate_genotype(g, space, source=spec, name=target)
        return {key: g}
    if _is_file(spec):
        return load_genotype_file(spec, space)
    file_part, sep, name = spec.rpartition(":")
    if sep and file_part and _is_file(file_part):
        parsed = _read_file(file_part)
        picked = parsed.aliases.get(name, name)
        if picked not in parsed.genotypes:
            known = list(parsed.genotypes) + list(parsed.aliases)
            raise _unknown(spec, known, f" {name!r} in {file_part}")
        g = parsed.genotypes[picked]
        validate_genotype(g, space, source=file_part, name=picked)
        return {name: g}
    if _is_dir(spec):
        raise InputError(spec, "is a directory, not a genotype file")
    if _looks_like_path(spec) or (sep and _looks_like_path(file_part)):
        raise InputError(spec, "genotype file not found")
    raise _unknown(spec, list(shipped.genotypes) + list(shipped.aliases))


def resolve_genotypes(
    spec: str | Path, space: SearchSpace | str | None = None
) -> dict[str, Genotype]:
    """Every genotype `spec` names, validated against `space` (default: `paper`).

    `spec` is a shipped name or alias ({spec: genotype}), a file (all its genotypes, in file
    order) or "FILE:NAME" (one genotype, NAME may be an alias in the file).
    """
    return _resolve_all(str(spec), space)


def resolve_named_genotype(
    spec: str | Path, space: SearchSpace | str | None = None
) -> tuple[str, Genotype]:
    """Like `resolve_genotype`, also returning the genotype's name (the spec's name part)."""
    spec = str(spec)
    found = _resolve_all(spec, space)
    if len(found) != 1:
        raise InputError(
            spec,
            f"the file holds {len(found)} genotypes ({', '.join(found)}); pick one as {spec}:NAME",
        )
    return next(iter(found.items()))


def resolve_genotype(spec: str | Path, space: SearchSpace | str | None = None) -> Genotype:
    """The one genotype `spec` names: a shipped name or alias ("darts" -> "darts_v2"), a file
    holding one genotype (canonical JSON, NNI dict JSON, Python), or "FILE:NAME".

    Raises InputError(spec, "unknown genotype ...; known: ...") for an unknown name.
    """
    return resolve_named_genotype(spec, space)[1]
