"""The cell analyzer: a genotype's cells as networkx DAGs, their depth, width and skip connects.

Graph nodes: the cell inputs "c_{k-2}" (state 0) and "c_{k-1}" (state 1), the intermediate
nodes as ints 0..n-1 (node i is state i+2), and "output", fed by the concat nodes. Each edge
carries `ops`, the tuple of ops on it (a node may take the same input twice, as NASNet-A does,
and a DiGraph has one edge per pair), and `op`, those ops joined by " + ". Output edges carry
op "concat".

Metrics follow the security study (Pang et al. 2022, Table 3):
- depth: edges on the longest path from a cell input to the output node (the concat edge
  counts), so a cell whose nodes all read the cell inputs has depth 2;
- width: the number of intermediate nodes fed only by cell inputs, in units of c (channels);
- skip_connects: the number of skip_connect ops.

A `none` edge (the zero op) adds nothing to its node, so it is no connection: depth, width and
the longest path are computed on the graph without `none` edges (`cell_graph(...,
include_none=False)`), and `none_edges` counts them. A cell whose output no input reaches
through real edges has depth 0 and an empty longest path. Every metric takes time linear in
the number of edges (sorting aside), so a hostile 40,000-edge cell costs well under a second.

Drawing lives in `nasaudit.cell_drawing`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import networkx as nx

from nasaudit.genotype import CELLS, Genotype
from nasaudit.search_space import PARAMETER_FREE_OPS

INPUT_NODES = ("c_{k-2}", "c_{k-1}")
OUTPUT_NODE = "output"


def _state_node(state: int) -> str | int:
    return INPUT_NODES[state] if state < 2 else state - 2


def cell_graph(
    cell: Sequence[tuple[str, int]],
    concat: Sequence[int],
    inputs_per_node: int = 2,
    *,
    include_none: bool = True,
) -> nx.DiGraph:
    """The cell as a DAG: "c_{k-2}", "c_{k-1}", intermediate nodes 0..n-1 (ints), "output".

    `cell` is a validated list of (op, input) pairs, `inputs_per_node` per node; `concat` the
    states (2..n+1) fed to the output. With `include_none=False` the `none` ops are left out
    (an edge whose ops are all `none` is absent): the graph of real connections.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(INPUT_NODES, kind="input")
    n_nodes = len(cell) // inputs_per_node
    graph.add_nodes_from(range(n_nodes), kind="intermediate")
    graph.add_node(OUTPUT_NODE, kind="output")
    for position, (op, state) in enumerate(cell):
        if op == "none" and not include_none:
            continue
        src, dst = _state_node(state), position // inputs_per_node
        if graph.has_edge(src, dst):
            ops = graph.edges[src, dst]["ops"] + (op,)
        else:
            ops = (op,)
        graph.add_edge(src, dst, ops=ops, op=" + ".join(ops))
    for state in concat:
        graph.add_edge(_state_node(state), OUTPUT_NODE, ops=("concat",), op="concat")
    return graph


def _rank(node: str | int) -> int:
    """Topological rank: inputs first, then intermediate nodes by index, the output last."""
    if isinstance(node, int):
        return node + len(INPUT_NODES)
    if node == OUTPUT_NODE:
        return 1 << 62
    return INPUT_NODES.index(node)


def _longest_path(graph: nx.DiGraph) -> list[str | int]:
    """The longest input-to-output path; ties go to the earlier input / lower node.

    One pass in topological order (node i reads only states below it), each node looking at
    its own predecessors: linear in the edges, where scanning every node per node was
    quadratic (minutes for a 40,000-edge cell).
    """
    order = sorted(graph, key=_rank)
    dist: dict[Any, int] = {node: 0 for node in INPUT_NODES}
    parent: dict[Any, Any] = {}
    for node in order:
        if node in INPUT_NODES:
            continue
        for pred in sorted(graph.predecessors(node), key=_rank):
            if pred in dist and (node not in dist or dist[pred] + 1 > dist[node]):
                dist[node], parent[node] = dist[pred] + 1, pred
    if OUTPUT_NODE not in dist:
        return []
    path = [OUTPUT_NODE]
    while path[-1] in parent:
        path.append(parent[path[-1]])
    return path[::-1]


def analyze_cell(
    cell: Sequence[tuple[str, int]], concat: Sequence[int], inputs_per_node: int = 2
) -> dict:
    """Metrics of one cell (see the module docstring for the definitions).

    Returns {"depth", "width" (in units of c), "skip_connects", "none_edges", "op_histogram"
    (op -> count, by name, `none` included), "parameter_free_ops", "longest_path" (node
    labels), "nodes" (intermediate node count), "concat"}. Depth, width and the longest path
    ignore `none` edges.
    """
    graph = cell_graph(cell, concat, inputs_per_node, include_none=False)
    intermediate = [node for node in graph if isinstance(node, int)]
    width = sum(
        1
        for node in intermediate
        if graph.in_degree(node) and all(pred in INPUT_NODES for pred in graph.predecessors(node))
    )
    ops = [op for op, _ in cell]
    path = _longest_path(graph)
    return {
        "depth": len(path) - 1 if path else 0,
        "width": width,
        "skip_connects": ops.count("skip_connect"),
        "none_edges": ops.count("none"),
        "op_histogram": dict(sorted(Counter(ops).items())),
        "parameter_free_ops": sum(op in PARAMETER_FREE_OPS for op in ops),
        "longest_path": path,
        "nodes": len(intermediate),
        "concat": list(concat),
    }


def analyze_genotype(g: Genotype, inputs_per_node: int = 2) -> dict:
    """{"normal": analyze_cell(...), "reduce": analyze_cell(...)} for a validated genotype."""
    return {
        cell: analyze_cell(getattr(g, cell), getattr(g, f"{cell}_concat"), inputs_per_node)
        for cell in CELLS
    }
