"""Search spaces as data: the op set a cell may use and the cell's shape.

A space is a JSON file under `search_spaces/` (found through `nasaudit.infra.resources.data_dir`):

    {"ops": ["none", ...], "nodes": 4, "inputs_per_node": 2, "source": "..."}

`nodes` is the number of intermediate nodes the *search* builds. Validating a genotype does not
use it: published cells such as NASNet-A have 5 nodes, so the node count is derived from the
cell's length (see `nasaudit.genotype.validate_genotype`). That count is bounded by
`max_nodes` (optional in the file; default `max(8, 2 * nodes)`), so that an untrusted genotype
cannot size a network or an analysis beyond what the space is meant for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from nasaudit.infra.errors import InputError
from nasaudit.infra.io import read_limited
from nasaudit.infra.resources import data_dir


class OpShape(NamedTuple):
    """What an op is, without torch: `family` picks the module `nasaudit.ops` builds ("zero",
    "max_pool", "avg_pool", "skip", "sep_conv", "dil_conv", "conv_7x1_1x7"); `kernel` is its
    kernel size in pixels and `dilation` its dilation (1 for families that have none)."""

    family: str
    kernel: int = 1
    dilation: int = 1


# Every op nasaudit knows, by name: the one list of op names. `nasaudit.ops.OPS` builds its
# modules from it, and the analyzer reads it without importing torch.
OP_SHAPES: dict[str, OpShape] = {
    "none": OpShape("zero"),
    "max_pool_3x3": OpShape("max_pool", 3),
    "avg_pool_3x3": OpShape("avg_pool", 3),
    "skip_connect": OpShape("skip"),
    "sep_conv_3x3": OpShape("sep_conv", 3),
    "sep_conv_5x5": OpShape("sep_conv", 5),
    "sep_conv_7x7": OpShape("sep_conv", 7),
    "dil_conv_3x3": OpShape("dil_conv", 3, 2),
    "dil_conv_5x5": OpShape("dil_conv", 5, 2),
    "conv_7x1_1x7": OpShape("conv_7x1_1x7", 7),
}
KNOWN_OPS: tuple[str, ...] = tuple(OP_SHAPES)
# Ops without weights (pools, skips and the zero op), which the analyzer counts.
PARAMETER_FREE_OPS: frozenset[str] = frozenset(
    name for name, shape in OP_SHAPES.items() if shape.family in ("zero", "max_pool", "avg_pool", "skip")
)
_MAX_SPACE_BYTES = 1 << 20
# The most intermediate nodes a genotype cell may have unless the space file says otherwise:
# twice the searched count, and at least 8, covers every published cell (NASNet, AmoebaNet and
# ENAS have 5) while a 1,250-node cell is refused before it allocates a network.
_MIN_DEFAULT_MAX_NODES = 8


@dataclass(frozen=True)
class SearchSpace:
    """An op set and a cell shape.

    `ops` is in canonical order with "none" (the zero op) first; `nodes` is the number of
    intermediate nodes per searched cell; `inputs_per_node` the edges each node keeps;
    `max_nodes` the most intermediate nodes a genotype cell may have in this space.
    """

    name: str
    ops: tuple[str, ...]
    nodes: int
    inputs_per_node: int
    source: str
    max_nodes: int = _MIN_DEFAULT_MAX_NODES

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
    # Bounded read: `--space /dev/zero` or a FIFO must not be read without limit.
    data = read_limited(path, _MAX_SPACE_BYTES, "search space file")
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
    unknown = [op for op in ops if op not in KNOWN_OPS]
    if unknown:  # fail here, not as a KeyError when the search builds its supernet
        raise InputError(path, f'"ops" names {unknown[0]!r}, which nasaudit does not have; '
                               f"known ops: {', '.join(KNOWN_OPS)}")
    max_nodes = obj.get("max_nodes", max(_MIN_DEFAULT_MAX_NODES, 2 * counts["nodes"]))
    if (
        not isinstance(max_nodes, int)
        or isinstance(max_nodes, bool)
        or not counts["nodes"] <= max_nodes <= 64
    ):
        raise InputError(
            path, f'"max_nodes" must be an integer between "nodes" ({counts["nodes"]}) and 64'
        )
    return SearchSpace(
        name=path.stem,
        ops=tuple(ops),
        nodes=counts["nodes"],
        inputs_per_node=counts["inputs_per_node"],
        source=source,
        max_nodes=max_nodes,
    )
