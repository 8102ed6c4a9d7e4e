"""One way to build and check the settings dataclasses of the attacks and probes.

Each Params dataclass declares its constraints on its fields::

    @dataclass
    class Params:
        n_inputs: int = param(1000, doc="seeded test candidates", min=1)
        eps: float = param(8 / 255, doc="L-inf radius in pixel units", gt=0, max=1)
        cases: tuple[str, ...] = param(CASES, choices=CASES, unique=True)

`param(default, doc=..., **constraints)` is `dataclasses.field(default=default,
metadata={"doc": doc, **constraints})`, so the constraints can also be written by hand. Known
constraint keys:

    min, max     value >= min / value <= max
    gt, lt       value > gt / value < lt
    choices      value in choices
    odd, even    an odd / even integer
    le_field     value <= the value of that other field
    nonempty     (tuples; default True) at least one element
    unique       (tuples) no element twice

For a tuple field the scalar constraints apply to every element. A field annotated `X | None`
also accepts None, which skips its constraints.

`make_params(cls, values, source=...)` builds the dataclass from its defaults and a dict of
overrides (or checks an instance): unknown keys, values of the wrong type and values outside the
constraints raise `ParamError` (an `InputError`) with a one-line problem that names the field,
e.g. ``n_inputs must be >= 1, got -5``. Strings (what the command line passes) are converted by
the field's type: numbers and fractions ("8/255"), comma-separated lists ("0,0.1,0.2"),
true/false, none (optional fields), JSON objects for dicts. Nothing is evaluated.

This module imports no torch, so the command line can use it for --help.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

from nasaudit.infra.errors import InputError

P = TypeVar("P")

CONSTRAINT_KEYS = frozenset(
    {"min", "max", "gt", "lt", "choices", "odd", "even", "le_field", "nonempty", "unique"}
)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class ParamError(InputError):
    """A bad parameter value. `field` names the dataclass field at fault (None: several or an
    unknown key), so a command line can name its own flag for that field."""

    def __init__(self, source: Any, problem: str, field: str | None = None):
        super().__init__(source, problem)
        self.field = field


def param(default: Any, *, doc: str = "", **constraints: Any) -> Any:
    """A dataclass field with a default, a one-line description and its constraints."""
    unknown = sorted(set(constraints) - CONSTRAINT_KEYS)
    if unknown:
        raise TypeError(f"unknown constraint(s) {unknown}; known: {sorted(CONSTRAINT_KEYS)}")
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple or None")
    return dataclasses.field(default=default, metadata={"doc": doc, **constraints})


class FieldKind(NamedTuple):
    """How a field's values are parsed: base in int | float | bool | str | dict | tuple
    (item: the element kind of a tuple), optional: None is allowed."""

    base: str
    item: str | None
    optional: bool


def field_kind(field: dataclasses.Field) -> FieldKind:
    """The FieldKind of a dataclass field from its annotation (a string or a type)."""
    ann = field.type
    text = ann if isinstance(ann, str) else (ann.__name__ if isinstance(ann, type) else str(ann))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts or any(p.startswith("Optional[") for p in parts)
    main = next((p for p in parts if p != "None"), "str")
    if main.startswith("Optional["):
        main = main[len("Optional[") : -1]
    base = main.split("[", 1)[0].strip().lower()
    if base in ("list", "sequence"):
        base = "tuple"
    if base not in ("int", "float", "bool", "str", "dict", "tuple"):
        base = "any"
    item = None
    if base == "tuple":
        inner = main[main.find("[") + 1 :].split(",")[0].strip() if "[" in main else "any"
        item = inner if inner in ("int", "float", "bool", "str") else "any"
    return FieldKind(base, item, optional)


def make_params(cls: type[P], values: Mapping[str, Any] | Any = None, *, source: Any,
                typed: bool = False) -> P:
    """A validated `cls` instance from its defaults overridden by `values` (a mapping, an
    instance of `cls`, or None for the defaults). Raises ParamError(source, problem).

    typed: the values come from TOML or JSON and must already have their field's type (an
    integer may stand for a float); strings are parsed only when False (the command line)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if values is None:
        given: dict[str, Any] = {}
    elif isinstance(values, cls):
        given = {name: getattr(values, name) for name in fields}
    elif isinstance(values, Mapping):
        given = dict(values)
    else:
        raise ParamError(
            source, f"expected a table of {cls.__name__} settings, got {type(values).__name__}"
        )
    unknown = sorted(str(k) for k in set(given) - set(fields))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParamError(
            source,
            f"unknown parameter(s) {', '.join(unknown)}{hint}; known: {', '.join(fields)}",
        )
    out: dict[str, Any] = {}
    for name, f in fields.items():
        value = given[name] if name in given else _default(f)
        out[name] = check_value(name, value, f, source=source, typed=typed)
    for name, f in fields.items():
        other = f.metadata.get("le_field")
        if other and out[name] is not None and out.get(other) is not None and out[name] > out[other]:
            raise ParamError(
                source, f"{name} must be <= {other} ({_show(out[other])}), got {_show(out[name])}",
                name,
            )
    return cls(**out)


def check_value(name: str, value: Any, field: dataclasses.Field, *, source: Any, typed: bool = False) -> Any:
    """`value` converted to the type of `field` and checked against its constraints (`typed`:
    no conversion from strings, see `make_params`)."""
    kind = field_kind(field)
    meta = field.metadata

    def fail(problem: str) -> ParamError:
        return ParamError(source, problem, name)

    if typed and not _has_type(value, kind):
        raise fail(f"{name} must be {_what(kind.base, kind.item)}, got {value!r}")

    if _is_none(value, kind):
        if kind.optional:
            return None
        raise fail(f"{name} must be {_what(kind.base, kind.item)}, got none")
    if kind.base == "tuple":
        items = _split(value)
        result = tuple(_convert(f"{name}[{i}]", v, kind.item or "any", fail) for i, v in enumerate(items))
        if meta.get("nonempty", True) and not result:
            raise fail(f"{name} must list at least one value, got none")
        if meta.get("unique") and len(set(result)) != len(result):
            raise fail(f"{name} must not repeat a value, got {', '.join(map(_show, result))}")
        for i, item in enumerate(result):
            _check_scalar(f"{name}[{i}]", item, meta, fail)
        return result
    result = _convert(name, value, kind.base, fail)
    _check_scalar(name, result, meta, fail)
    return result


def describe(field: dataclasses.Field) -> str:
    """A short text of a field's type and constraints, e.g. "int >= 1" or "float > 0, <= 1"."""
    kind = field_kind(field)
    meta = field.metadata
    text = f"list of {kind.item}" if kind.base == "tuple" else kind.base
    rules = []
    if "choices" in meta:
        rules.append("one of " + "|".join(map(str, meta["choices"])))
    for key, op in (("gt", ">"), ("min", ">="), ("lt", "<"), ("max", "<=")):
        if key in meta:
            rules.append(f"{op} {_show(meta[key])}")
    if meta.get("le_field"):
        rules.append(f"<= {meta['le_field']}")
    if meta.get("odd"):
        rules.append("odd")
    if meta.get("even"):
        rules.append("even")
    if rules:
        text += (" (each " if kind.base == "tuple" else " ") + ", ".join(rules)
        text += ")" if kind.base == "tuple" else ""
    if kind.optional:
        text += " or none"
    return text


def params_help(cls: type) -> list[str]:
    """One line per field of `cls`: name=default, type and constraints, description."""
    lines = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        shown = ",".join(map(_show, default)) if isinstance(default, tuple) else _show(default)
        doc = f.metadata.get("doc", "")
        lines.append(f"{f.name}={shown}  [{describe(f)}]" + (f"  {doc}" if doc else ""))
    return lines


# ------------------------------------------------------------------------------------ helpers


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default")


def _has_type(value: Any, kind: FieldKind) -> bool:
    """Whether a TOML/JSON value has the field's type (None only for an optional field)."""
    if value is None:
        return kind.optional
    if kind.base == "tuple":
        return isinstance(value, (list, tuple)) and all(
            _has_type(v, FieldKind(kind.item or "any", None, False)) for v in value)
    if kind.base in ("int", "float"):
        number = (int, float) if kind.base == "float" else int
        return isinstance(value, number) and not isinstance(value, bool)
    want = {"bool": bool, "str": str, "dict": Mapping}.get(kind.base)
    return want is None or isinstance(value, want)


def _is_none(value: Any, kind: FieldKind) -> bool:
    if value is None:
        return True
    # "none" is a value of a string field unless the field is optional.
    return (
        isinstance(value, str)
        and value.strip().lower() in ("none", "null")
        and (kind.optional or kind.base != "str")
    )


def _split(value: Any) -> list[Any]:
    """A tuple field's elements: a list/tuple as is, "a,b,c" split on commas, a scalar alone."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        return [p.strip() for p in text.split(",") if p.strip()]
    return [value]


def _what(base: str, item: str | None = None) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "dict": "a table (JSON object)",
        "tuple": "a list of " + {"str": "strings", "int": "integers", "float": "numbers",
                                 "bool": "true/false values"}.get(item or "", "values"),
    }.get(base, "a value")


def _number(text: str) -> Fraction:
    return Fraction(text.strip())  # "8/255", "0.03", "1e-3"; never evaluated


def _convert(name: str, value: Any, base: str, fail) -> Any:
    """`value` as `base` (int, float, bool, str, dict or any); strings are parsed."""
    bad = fail(f"{name} must be {_what(base)}, got {value!r}")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
            return value.strip().lower() in _TRUE
        raise bad
    if base in ("int", "float"):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                number: Any = _number(value)
            except (ValueError, ZeroDivisionError):
                raise bad from None
        elif isinstance(value, (int, float)):
            number = value
        else:
            raise bad
        if isinstance(number, float) and not math.isfinite(number):
            raise fail(f"{name} must be a finite number, got {value!r}")
        if base == "int":
            if number != int(number):
                raise bad
            return int(number)
        return float(number)
    if base == "str":
        if isinstance(value, str):
            return value.strip()
        raise bad
    if base == "dict":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad from None
        if isinstance(value, Mapping):
            return dict(value)
        raise bad
    return value


BOUND_KEYS = ("gt", "min", "lt", "max")


def out_of_bounds(value: Any, *, gt: Any = None, min: Any = None, lt: Any = None,  # noqa: A002
                  max: Any = None) -> str | None:  # noqa: A002
    """Why the number `value` lies outside the bounds ("must be <= 1, got 2"), or None if inside.
    One rule for params, config tables and command-line flags."""
    for bound, op, ok in ((gt, ">", lambda v, b: v > b), (min, ">=", lambda v, b: v >= b),
                          (lt, "<", lambda v, b: v < b), (max, "<=", lambda v, b: v <= b)):
        if bound is not None and not ok(value, bound):
            return f"must be {op} {_show(bound)}, got {_show(value)}"
    return None


def _check_scalar(name: str, value: Any, meta: Mapping[str, Any], fail) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise fail(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    problem = out_of_bounds(value, **{k: meta[k] for k in BOUND_KEYS if k in meta})
    if problem:
        raise fail(f"{name} {problem}")
    if meta.get("odd") and value % 2 != 1:
        raise fail(f"{name} must be odd, got {_show(value)}")
    if meta.get("even") and value % 2 != 0:
        raise fail(f"{name} must be even, got {_show(value)}")


def _show(value: Any) -> str:
    """A value for a message: floats short, pixel fractions as such (8/255 -> "8/255")."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        k = value * 255
        if 0 < abs(k) <= 64 and len(repr(value)) > 8 and abs(k * 2 - round(k * 2)) < 1e-9:
            return f"{round(k * 2) / 2:g}/255"
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)
