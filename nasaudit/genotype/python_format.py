"""DARTS-style Python (one `Genotype(...)` or a whole `genotypes.py`), parsed with `ast` and never
executed: only statements that bind a name to a genotype (or an alias of one) are read."""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nasaudit.genotype.model import (
    FIELDS,
    Genotype,
    GenotypeFile,
    SkippedStatement,
    UnreadGenotype,
    is_int,
    make_genotype,
    short_repr,
    short_text,
)
from nasaudit.infra.errors import InputError, first_line

# Bounds that keep a hostile file from costing seconds: range() arguments, nesting of literals,
# and skipped statements listed (a file of 100,000 `print()` lines must not give a 100,000-entry
# report).
_MAX_RANGE = 10_000
_MAX_LITERAL_DEPTH = 16
_MAX_SKIPPED_LISTED = 200


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
            return f"call to {short_text(ast.unparse(node.func), 40)}"
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
            raise _ReadError(node, f"unsupported constant {short_repr(node.value)}")
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(item, depth + 1, at, target) for item in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self.eval(node.operand, depth + 1, at, target)
            if is_int(value) or isinstance(value, float):
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
        raise _ReadError(node, f"unsupported call ({short_repr(ast.unparse(func))})")

    def eval_builtin(self, node: ast.Call, func: str, depth: int, at: int, target: str) -> list:
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise _ReadError(node, f"{func}() takes positional arguments only here")
        args = [self.eval(arg, depth + 1, at, target) for arg in node.args]
        if func == "range":
            if not 1 <= len(args) <= 3 or not all(is_int(arg) for arg in args):
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
                raise _ReadError(node, f"Genotype() has no field {short_repr(kw.arg)}")
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
        return short_text(", ".join(ast.unparse(target) for target in targets), 60)
    except (ValueError, RecursionError):  # pragma: no cover - unparse of a parsed tree
        return "a target"


def parse_python_text(text: str, source: str, default_name: str) -> GenotypeFile:
    try:
        tree = ast.parse(text, filename=source, mode="exec")
    except SyntaxError as exc:
        raise InputError(
            source, f"line {exc.lineno}: invalid Python ({short_text(str(exc.msg))})"
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


