"""Search spaces as data: the op set a cell may use and the cell's shape.

A space is a JSON file under `search_spaces/` (found through `nasaudit.resources.data_dir`):

    {"ops": ["none", ...], "nodes": 4, "inputs_per_node": 2, "source": "..."}

`nodes` is the number of intermediate nodes the *search* builds. Validating a genotype does not
use it: published cells such as NASNet-A have 5 nodes, so the node count is derived from the
cell's length (see `nasaudit.genotype.validate_genotype`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nasaudit.errors import InputError
from nasaudit.resources import data_dir

# Ops without weights. Kept here, with the op names, so that the analyzer does not need torch.
PARAMETER_FREE_OPS: frozenset[str] = frozenset(
    {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}
)

_MAX_SPACE_BYTES = 1 << 20


@dataclass(frozen=True)
class SearchSpace:
    """An op set and a cell shape.

    `ops` is in canonical order with "none" (the zero op) first; `nodes` is the number of
    intermediate nodes per searched cell; `inputs_per_node` the edges each node keeps.
    """

    name: str
    ops: tuple[str, ...]
    nodes: int
    inputs_per_node: int
    source: str

    def has_op(self, op: object) -> bool:
        """True when `op` is one of this space's op names."""
        return isinstance(op, str) and op in self.ops


def list_search_spaces() -> list[str]:
    """Names of the shipped search spaces (the stems of `search_spaces/*.json`), sorted."""
    return sorted(path.stem for path in data_dir("search_spaces").glob("*.json"))


def load_search_space(name_or_path: str | Path | SearchSpace = "darts") -> SearchSpace:
    """Load a shipped space by name ("darts", "paper") or a space JSON file by path.

    A `SearchSpace` passes through unchanged. Raises InputError for an unknown name or a
    malformed file.
    """
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    spec = str(name_or_path)
    shipped = data_dir("search_spaces") / f"{spec}.json"
    if "/" not in spec and "\\" not in spec and not spec.endswith(".json"):
        if not shipped.is_file():
            known = ", ".join(list_search_spaces())
            raise InputError(spec, f"unknown search space; known: {known}")
        path = shipped
    else:
        path = Path(spec)
    return _parse_space_file(path)


def _parse_space_file(path: Path) -> SearchSpace:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "search space file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read search space file ({exc.strerror})") from None
    if len(data) > _MAX_SPACE_BYTES:
        raise InputError(path, f"search space file is larger than {_MAX_SPACE_BYTES} bytes")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(path, "a search space must be a JSON object")
    ops = obj.get("ops")
    if (
        not isinstance(ops, list)
        or not ops
        or not all(isinstance(op, str) and op.strip() == op and op for op in ops)
    ):
        raise InputError(path, '"ops" must be a non-empty list of op names')
    if len(set(ops)) != len(ops):
        raise InputError(path, '"ops" lists an op twice')
    counts = {}
    for key in ("nodes", "inputs_per_node"):
        value = obj.get(key)
        # bool is an int subclass; true/false are not counts.
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
            raise InputError(path, f'"{key}" must be an integer between 1 and 64')
        counts[key] = value
    source = obj.get("source", "")
    if not isinstance(source, str):
        raise InputError(path, '"source" must be a string')
    return SearchSpace(
        name=path.stem,
        ops=tuple(ops),
        nodes=counts["nodes"],
        inputs_per_node=counts["inputs_per_node"],
        source=source,
    )
