"""Post-hoc genotype rewiring, the study's mitigations (i) deeper cells and (ii) fewer skips.

The rules are inferred from the study's published variants of DARTS V2 (shipped as
`diy_deep` = darts_i, `diy_noskip` = darts_ii, `diy_deep_noskip` = darts_iii):

- `deepen`: node 0 keeps its inputs; every later node takes *all* its inputs from the node
  before it, so the intermediate nodes form a chain. Ops and their order are kept.
  `deepen(darts_v2)` reproduces diy_deep's normal cell exactly (depth 3 -> 5, width 3c -> 1c).
- `deskip`: every skip_connect becomes `op`. With `sibling=True` it becomes instead the other op
  of the same node when that one is not a skip (falling back to `op`); that is the rule of the
  study's DARTS-ii: `deskip(darts_v2, sibling=True)` reproduces diy_noskip exactly, whereas the
  fixed default (sep_conv_3x3) differs from it in node 3, whose skip the study made a
  dil_conv_3x3.

The published variants change the normal cell only, hence the default `cells="normal"`.
"""

from __future__ import annotations

from nasaudit.genotype import Genotype

CELL_CHOICES = ("normal", "reduce", "both")
# Ops a skip_connect may not become, and why.
NOT_REPLACEMENTS = {
    "skip_connect": "a skip would replace a skip",
    "none": "the zero op would cut the edge instead of replacing the skip",
}


def _cells(cells: str) -> tuple[str, ...]:
    if cells not in CELL_CHOICES:
        raise ValueError(f"cells must be one of {', '.join(CELL_CHOICES)}, not {cells!r}")
    return ("normal", "reduce") if cells == "both" else (cells,)


def _nodes(pairs: tuple, inputs_per_node: int) -> list[list[tuple[str, int]]]:
    return [list(pairs[i : i + inputs_per_node]) for i in range(0, len(pairs), inputs_per_node)]


def _deepen_cell(pairs: tuple, inputs_per_node: int) -> tuple:
    out = []
    for index, node in enumerate(_nodes(pairs, inputs_per_node)):
        # Node index i is state i+2, so its predecessor node is state i+1.
        out.extend(node if index == 0 else [(op, index + 1) for op, _ in node])
    return tuple(out)


def _deskip_cell(pairs: tuple, op: str, sibling: bool, inputs_per_node: int) -> tuple:
    out = []
    for node in _nodes(pairs, inputs_per_node):
        others = [o for o, _ in node if o != "skip_connect"]
        replacement = others[0] if sibling and others else op
        out.extend((replacement if o == "skip_connect" else o, j) for o, j in node)
    return tuple(out)


def deepen(g: Genotype, cells: str = "normal", inputs_per_node: int = 2) -> Genotype:
    """Rewire `cells` ("normal", "reduce", "both") into a chain of intermediate nodes.

    Node 0 keeps its inputs; node i >= 1 takes every input from node i-1. Ops and concats
    are unchanged; the result is idempotent under `deepen`. Depth becomes n+1 for n nodes.
    """
    changes = {cell: _deepen_cell(getattr(g, cell), inputs_per_node) for cell in _cells(cells)}
    return g._replace(**changes)


def deskip(
    g: Genotype,
    op: str = "sep_conv_3x3",
    cells: str = "normal",
    *,
    sibling: bool = False,
    inputs_per_node: int = 2,
) -> Genotype:
    """Replace every skip_connect in `cells` by `op` (inputs unchanged).

    With `sibling=True` a skip takes the op of the other edge of its node when that is not a
    skip (the study's DARTS-ii rule), else `op`. The result has no skip_connect in `cells`.
    `op` may be neither skip_connect nor none (ValueError).
    """
    if op in NOT_REPLACEMENTS:
        raise ValueError(f"the replacement op cannot be {op} (it must compute something: "
                         f"{NOT_REPLACEMENTS[op]})")
    changes = {
        cell: _deskip_cell(getattr(g, cell), op, sibling, inputs_per_node) for cell in _cells(cells)
    }
    return g._replace(**changes)
