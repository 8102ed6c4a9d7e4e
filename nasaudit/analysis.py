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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from nasaudit.genotype import CELLS, Genotype
from nasaudit.search_space import PARAMETER_FREE_OPS

INPUT_NODES = ("c_{k-2}", "c_{k-1}")
OUTPUT_NODE = "output"


def _state_node(state: int) -> str | int:
    return INPUT_NODES[state] if state < 2 else state - 2


def cell_graph(
    cell: Sequence[tuple[str, int]], concat: Sequence[int], inputs_per_node: int = 2
) -> nx.DiGraph:
    """The cell as a DAG: "c_{k-2}", "c_{k-1}", intermediate nodes 0..n-1 (ints), "output".

    `cell` is a validated list of (op, input) pairs, `inputs_per_node` per node; `concat` the
    states (2..n+1) fed to the output.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(INPUT_NODES, kind="input")
    n_nodes = len(cell) // inputs_per_node
    graph.add_nodes_from(range(n_nodes), kind="intermediate")
    graph.add_node(OUTPUT_NODE, kind="output")
    for position, (op, state) in enumerate(cell):
        src, dst = _state_node(state), position // inputs_per_node
        if graph.has_edge(src, dst):
            ops = graph.edges[src, dst]["ops"] + (op,)
        else:
            ops = (op,)
        graph.add_edge(src, dst, ops=ops, op=" + ".join(ops))
    for state in concat:
        graph.add_edge(_state_node(state), OUTPUT_NODE, ops=("concat",), op="concat")
    return graph


def _longest_path(graph: nx.DiGraph) -> list[str | int]:
    """The longest input-to-output path; ties go to the earlier input / lower node."""
    order = list(INPUT_NODES) + sorted(n for n in graph if isinstance(n, int)) + [OUTPUT_NODE]
    dist: dict[Any, int] = {node: 0 for node in INPUT_NODES}
    parent: dict[Any, Any] = {}
    for node in order[2:]:
        best = None
        for pred in order:  # scanning in `order` makes the tie-break deterministic
            if pred in dist and graph.has_edge(pred, node):
                if best is None or dist[pred] + 1 > dist[node]:
                    dist[node], parent[node], best = dist[pred] + 1, pred, pred
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

    Returns {"depth", "width" (in units of c), "skip_connects", "op_histogram" (op -> count,
    by name), "parameter_free_ops", "longest_path" (node labels), "nodes" (intermediate node
    count), "concat"}.
    """
    graph = cell_graph(cell, concat, inputs_per_node)
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


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_OP_COLOURS = {"skip_connect": "#d62728", "concat": "#7f7f7f", "none": "#bbbbbb"}
_POOL_COLOUR = "#2ca02c"
_CONV_COLOUR = "#1f77b4"


def _edge_colour(ops: tuple[str, ...]) -> str:
    op = ops[0]
    if op in _OP_COLOURS:
        return _OP_COLOURS[op]
    return _POOL_COLOUR if "pool" in op else _CONV_COLOUR


def _layered_positions(graph: nx.DiGraph) -> dict[Any, tuple[float, float]]:
    """Left-to-right layers: a node sits one layer right of its furthest predecessor."""
    layer: dict[Any, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        layer[node] = 1 + max(layer[p] for p in preds) if preds else 0
    # Nodes not feeding the output still get a layer; the output goes last on its own.
    layer[OUTPUT_NODE] = 1 + max(v for k, v in layer.items() if k != OUTPUT_NODE)
    columns: dict[int, list] = {}
    for node in graph:
        columns.setdefault(layer[node], []).append(node)
    pos = {}
    for x, nodes in columns.items():
        nodes.sort(key=lambda n: (isinstance(n, int), str(n) if not isinstance(n, int) else n))
        for i, node in enumerate(nodes):
            pos[node] = (float(x), (len(nodes) - 1) / 2.0 - i)
    return pos


def _draw_cell(ax: Any, graph: nx.DiGraph, title: str) -> None:
    pos = _layered_positions(graph)
    for src, dst, data in graph.edges(data=True):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        colour = _edge_colour(data["ops"])
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "-|>",
                "color": colour,
                "shrinkA": 14,
                "shrinkB": 14,
                "linestyle": "--" if data["ops"] == ("skip_connect",) else "-",
                "connectionstyle": "arc3,rad=0.08",
            },
        )
        if data["op"] != "concat":
            ax.text(
                x0 + 0.55 * (x1 - x0),
                y0 + 0.55 * (y1 - y0),
                data["op"].replace(" + ", "\n"),
                fontsize=6,
                color=colour,
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            )
    for node, (x, y) in pos.items():
        kind = graph.nodes[node]["kind"]
        face = {"input": "#c7e9c0", "intermediate": "#deebf7", "output": "#fdd0a2"}[kind]
        ax.text(
            x,
            y,
            str(node),
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.4", "fc": face, "ec": "black"},
        )
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def draw_genotype(g: Genotype, path: str | Path, title: str | None = None) -> Path:
    """Draw both cells of `g` as labelled left-to-right DAGs into a PNG at `path`.

    Uses matplotlib's Agg canvas directly (no pyplot), so it needs no display and changes no
    global backend. The file is written atomically. Returns the path.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nasaudit.io import atomic_write_bytes

    metrics = analyze_genotype(g)
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, cell in zip(axes, CELLS, strict=True):
        m = metrics[cell]
        graph = cell_graph(getattr(g, cell), getattr(g, f"{cell}_concat"))
        label = f"{cell} cell: depth {m['depth']}, width {m['width']}c, skips {m['skip_connects']}"
        _draw_cell(ax, graph, label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())
