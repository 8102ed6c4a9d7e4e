"""Cell drawings that read at a glance: a layered layout computed as data, then drawn.

The layout follows the DARTS code's graphviz plots: left to right by layer (a node's layer is
its longest path from the cell inputs), the nodes of a layer spread vertically, the output
node `c_{k}` last. Each op is its own curved edge (quadratic Bezier, matplotlib's `arc3`
convention): edges between the same two nodes get distinct curvatures, and every edge's
curvature is chosen so that it passes through no other node. Each op's label sits on its own
edge, at a point where its box overlaps no node and no other label; when no such point exists
at the current spacing, the whole layout is spread out and tried again.

Units are inches throughout (the figure is drawn 1 data unit = 1 inch), so label boxes are
real text extents and a test can check the layout without looking at pixels. Only matplotlib
is used (the Agg canvas, no pyplot); graphviz is not needed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nasaudit.analysis import INPUT_NODES, OUTPUT_NODE, analyze_genotype
from nasaudit.genotype import CELLS, Genotype

OUTPUT_LABEL = "c_{k}"
LABEL_FONT_PT = 7.0
NODE_FONT_PT = 8.0
NODE_RADIUS = 0.27  # inches
_LABEL_PAD = 0.03  # inches around the text, inside the label's box
_LAYER_GAP = 1.7  # inches between layers, before any spreading
_ROW_GAP = 0.95  # inches between the nodes of a layer
_CURVE_POINTS = 48
# Curvatures tried for an edge, gentlest first; parallel edges are spread around the chosen one.
_RADS = (0.0, 0.14, -0.14, 0.28, -0.28, 0.42, -0.42, 0.56, -0.56, 0.7, -0.7)
_PARALLEL_SPREAD = 0.32
# Where along its edge a label may sit (fraction of the edge's drawn length), best first.
_LABEL_SPOTS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.35, 0.65, 0.25, 0.75, 0.2, 0.8)
# Edges leaving a busy node spread out towards their ends, edges entering one towards their
# starts: labels go where their edges are furthest apart.
_SPOTS_LATE = (0.62, 0.7, 0.55, 0.78, 0.5, 0.45, 0.4, 0.3, 0.25, 0.2, 0.8)
_SPOTS_EARLY = tuple(round(1 - spot, 2) for spot in _SPOTS_LATE)
_SPREAD_STEPS = 8  # times the layout is spread out (x1.25 each) before the best is kept

OP_COLOURS = {
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17becf",
    "sep_conv_7x7": "#393b79",
    "dil_conv_3x3": "#9467bd",
    "dil_conv_5x5": "#e377c2",
    "conv_7x1_1x7": "#8c564b",
    "max_pool_3x3": "#2ca02c",
    "avg_pool_3x3": "#bcbd22",
    "skip_connect": "#d62728",
    "none": "#b0b0b0",
    "concat": "#7f7f7f",
}
_LINESTYLES = {"skip_connect": (0, (5, 2)), "none": (0, (1, 2))}
_NODE_FACES = {"input": "#c7e9c0", "intermediate": "#deebf7", "output": "#fdd0a2"}


def op_colour(op: str) -> str:
    """The drawing colour of an op (unknown convolutions blue, unknown pools green)."""
    if op in OP_COLOURS:
        return OP_COLOURS[op]
    return OP_COLOURS["max_pool_3x3"] if "pool" in op else OP_COLOURS["sep_conv_3x3"]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in inches."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        """True when the two boxes share more than an edge."""
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


@dataclass(frozen=True)
class NodeLayout:
    """A drawn node: graph id (see `nasaudit.analysis.cell_graph`), text, kind and centre."""

    node: str | int
    text: str
    kind: str  # "input" | "intermediate" | "output"
    x: float
    y: float
    radius: float

    @property
    def box(self) -> Box:
        """The square around the node's circle."""
        r = self.radius
        return Box(self.x - r, self.y - r, self.x + r, self.y + r)


@dataclass(frozen=True)
class EdgeLayout:
    """A drawn edge: one op (or "concat") from `src` to `dst`, its curve and its label."""

    src: str | int
    dst: str | int
    op: str
    rad: float  # curvature, matplotlib's arc3 convention
    points: tuple[tuple[float, float], ...]  # the curve outside both node circles, inches
    label: str | None  # None for concat edges
    label_xy: tuple[float, float] | None  # label centre, a point of `points`' polyline
    label_box: Box | None


@dataclass(frozen=True)
class CellLayout:
    """A whole cell: nodes, edges, the drawing's size in inches, and whether every label
    found a free place (False only if spreading `_SPREAD_STEPS` times did not suffice)."""

    nodes: dict[Any, NodeLayout]
    edges: tuple[EdgeLayout, ...]
    width: float
    height: float
    labels_placed: bool


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def text_size(text: str, size_pt: float = LABEL_FONT_PT) -> tuple[float, float]:
    """(width, height) of `text` in inches, as matplotlib lays it out (no rendering)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    width, height, _ = TextToPath().get_text_width_height_descent(
        text, FontProperties(size=size_pt), ismath=False
    )
    return width / 72.0, height / 72.0


def _bezier(p0, p2, rad: float) -> list[tuple[float, float]]:
    (x0, y0), (x2, y2) = p0, p2
    cx = (x0 + x2) / 2 + rad * (y2 - y0)
    cy = (y0 + y2) / 2 - rad * (x2 - x0)
    out = []
    for i in range(_CURVE_POINTS + 1):
        t = i / _CURVE_POINTS
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t * t
        out.append((a * x0 + b * cx + c * x2, a * y0 + b * cy + c * y2))
    return out


def _outside(points: list, centre: tuple[float, float], radius: float) -> list:
    return [p for p in points if math.dist(p, centre) > radius]


def _trimmed(p0, p2, rad: float, r0: float, r2: float) -> list[tuple[float, float]]:
    points = _bezier(p0, p2, rad)
    kept = _outside(_outside(points, p0, r0), p2, r2)
    return kept if len(kept) >= 2 else [points[0], points[-1]]


def _point_at(points: Sequence[tuple[float, float]], fraction: float) -> tuple[float, float]:
    """The point at `fraction` of the polyline's length."""
    lengths = [math.dist(a, b) for a, b in zip(points, points[1:], strict=False)]
    goal, walked = fraction * sum(lengths), 0.0
    for (a, b), length in zip(zip(points, points[1:], strict=False), lengths, strict=False):
        if walked + length >= goal and length > 0:
            f = (goal - walked) / length
            return (a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]))
        walked += length
    return points[-1]


def _hits_node(points: Sequence, nodes: Sequence[NodeLayout], ends: tuple) -> bool:
    return any(
        math.dist(p, (n.x, n.y)) < n.radius * 1.15
        for n in nodes
        if n.node not in ends
        for p in points
    )


def _label_box(centre: tuple[float, float], text: str) -> Box:
    w, h = text_size(text)
    half_w, half_h = w / 2 + _LABEL_PAD, h / 2 + _LABEL_PAD
    return Box(centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h)


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def _state_node(state: int) -> str | int:
    return INPUT_NODES[state] if state < 2 else state - 2


def _layers(cell: Sequence[tuple[str, int]], concat: Sequence[int], per_node: int) -> dict:
    """Layer of every node: inputs 0, node i one right of its furthest input, output last."""
    n_nodes = len(cell) // per_node
    layer: dict[Any, int] = {name: 0 for name in INPUT_NODES}
    for node in range(n_nodes):
        sources = [_state_node(inp) for _, inp in cell[node * per_node : (node + 1) * per_node]]
        layer[node] = 1 + max(layer[src] for src in sources)
    layer[OUTPUT_NODE] = 1 + max(layer.values())
    return layer


def _rows(layer: dict, cell, per_node: int) -> dict[Any, float]:
    """Vertical order within each layer: by the mean row of a node's inputs (fewer crossings)."""
    columns: dict[int, list] = {}
    for node, x in layer.items():
        columns.setdefault(x, []).append(node)
    preds: dict[Any, list] = {}
    for position, (_, inp) in enumerate(cell):
        preds.setdefault(position // per_node, []).append(_state_node(inp))
    row: dict[Any, float] = {}
    for x in sorted(columns):
        nodes = columns[x]
        if x == 0:
            ordered = list(INPUT_NODES)
        else:
            def key(node: Any) -> tuple:
                sources = preds.get(node, [])
                mean = sum(row[s] for s in sources) / len(sources) if sources else 0.0
                return (mean, node if isinstance(node, int) else 1 << 30)

            ordered = sorted(nodes, key=key)
        for i, node in enumerate(ordered):
            # Row 0 on top; centred around the middle of the layer.
            row[node] = i - (len(ordered) - 1) / 2
    return row


def _node_text(node: Any) -> str:
    return OUTPUT_LABEL if node == OUTPUT_NODE else str(node)


def _place(
    cell: Sequence[tuple[str, int]],
    concat: Sequence[int],
    per_node: int,
    layer: dict,
    row: dict,
    gap_x: float,
    gap_y: float,
) -> tuple[dict, list, bool]:
    kinds = {name: "input" for name in INPUT_NODES} | {OUTPUT_NODE: "output"}
    nodes = {
        node: NodeLayout(
            node,
            _node_text(node),
            kinds.get(node, "intermediate"),
            layer[node] * gap_x,
            -row[node] * gap_y,
            NODE_RADIUS,
        )
        for node in layer
    }
    node_list = list(nodes.values())
    groups: dict[tuple, list[str]] = {}
    for position, (op, inp) in enumerate(cell):
        groups.setdefault((_state_node(inp), position // per_node), []).append(op)
    ordered = sorted(groups, key=lambda k: (layer[k[1]] - layer[k[0]], layer[k[1]], row[k[0]]))
    fan_out: dict[Any, int] = {}
    fan_in: dict[Any, int] = {}
    for src, dst in groups:
        fan_out[src] = fan_out.get(src, 0) + len(groups[src, dst])
        fan_in[dst] = fan_in.get(dst, 0) + len(groups[src, dst])
    edges: list[EdgeLayout] = []
    boxes: list[Box] = [n.box for n in node_list]
    all_placed = True
    for src, dst in ordered:
        ops = groups[src, dst]
        curves = [edge.points for edge in edges]
        spots = _LABEL_SPOTS
        if fan_out[src] > max(2, fan_in[dst]):
            spots = _SPOTS_LATE
        elif fan_in[dst] > max(2, fan_out[src]):
            spots = _SPOTS_EARLY
        placed = _place_group(nodes[src], nodes[dst], ops, node_list, boxes, curves, spots=spots)
        if placed is None:
            all_placed = False
            placed = _place_group(
                nodes[src], nodes[dst], ops, node_list, boxes, curves, True, spots
            )
        for edge in placed:
            edges.append(edge)
            boxes.append(edge.label_box)
    for state in concat:
        src = nodes[_state_node(state)]
        dst = nodes[OUTPUT_NODE]
        edges.append(_concat_edge(src, dst, node_list, boxes))
    return nodes, edges, all_placed


def _crossings(box: Box, curves: Sequence[Sequence[tuple[float, float]]]) -> int:
    """How many of `curves` run through `box` (a soft cost: legible, but better avoided)."""
    return sum(any(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1 for x, y in c) for c in curves)


def _place_group(
    src: NodeLayout,
    dst: NodeLayout,
    ops: list[str],
    nodes: list[NodeLayout],
    boxes: list[Box],
    curves: list,
    force: bool = False,
    spots: Sequence[float] = _LABEL_SPOTS,
) -> list[EdgeLayout] | None:
    """Curves and labels for the ops between two nodes, or None if no free placement exists.

    Hard rules: no curve through another node, no label over a node or another label. Among
    placements that keep them, the one whose labels and curves cross the fewest other curves
    and labels wins. With `force`, the placement breaking the fewest hard rules is returned
    instead of None.
    """
    ends = (src.node, dst.node)
    best: tuple[tuple[int, int], list[EdgeLayout]] | None = None
    k = len(ops)
    label_boxes = boxes[len(nodes):]
    for base in _RADS:
        rads = [base + _PARALLEL_SPREAD * (j - (k - 1) / 2) for j in range(k)]
        shapes = [_trimmed((src.x, src.y), (dst.x, dst.y), r, src.radius, dst.radius) for r in rads]
        hard = 10 * sum(_hits_node(shape, nodes, ends) for shape in shapes)
        if hard and not force:
            continue
        soft = sum(_crossings(box, shapes) for box in label_boxes)
        taken = list(boxes)
        group: list[EdgeLayout] = []
        for op, rad, shape in zip(ops, rads, shapes, strict=True):
            others = curves + [other for other in shapes if other is not shape]
            choice = None
            for spot in spots:
                centre = _point_at(shape, spot)
                box = _label_box(centre, op)
                if any(box.overlaps(other) for other in taken):
                    continue
                cost = _crossings(box, others)
                if choice is None or cost < choice[2]:
                    choice = (centre, box, cost)
                if cost == 0:
                    break
            if choice is None:
                hard += 1
                centre = _point_at(shape, 0.5)
                choice = (centre, _label_box(centre, op), 0)
            soft += choice[2]
            taken.append(choice[1])
            group.append(
                EdgeLayout(src.node, dst.node, op, rad, tuple(shape), op, choice[0], choice[1])
            )
        score = (hard, soft)
        if best is None or score < best[0]:
            best = (score, group)
        if score == (0, 0):
            break
    if best is None or (best[0][0] and not force):
        return None
    return best[1]


def _concat_edge(
    src: NodeLayout, dst: NodeLayout, nodes: list[NodeLayout], boxes: list[Box]
) -> EdgeLayout:
    """The unlabelled edge into the output: the gentlest curve through no node and no label."""
    ends = (src.node, dst.node)
    best = None
    for rad in _RADS:
        curve = _trimmed((src.x, src.y), (dst.x, dst.y), rad, src.radius, dst.radius)
        hits = 10 * _hits_node(curve, nodes, ends) + sum(
            any(b.x0 <= x <= b.x1 and b.y0 <= y <= b.y1 for x, y in curve) for b in boxes
        )
        if best is None or hits < best[0]:
            best = (hits, rad, curve)
        if hits == 0:
            break
    _, rad, curve = best
    return EdgeLayout(src.node, dst.node, "concat", rad, tuple(curve), None, None, None)


def layout_cell(
    cell: Sequence[tuple[str, int]], concat: Sequence[int], inputs_per_node: int = 2
) -> CellLayout:
    """The drawing of one validated cell as data (inches): node centres, curves, label boxes.

    Spreads the layout (x1.25 per step, up to `_SPREAD_STEPS` times) until every label has a
    place overlapping no node and no other label.
    """
    cell = [tuple(pair) for pair in cell]
    layer = _layers(cell, concat, inputs_per_node)
    row = _rows(layer, cell, inputs_per_node)
    widest = max(sum(1 for v in layer.values() if v == x) for x in set(layer.values()))
    # Layers of many nodes fan their edges out steeply; a longer gap keeps their labels apart.
    gap_x, gap_y = _LAYER_GAP * (1 + 0.12 * max(0, widest - 2)), _ROW_GAP
    for step in range(_SPREAD_STEPS + 1):
        nodes, edges, placed = _place(cell, concat, inputs_per_node, layer, row, gap_x, gap_y)
        if placed:
            break
        if step < _SPREAD_STEPS:
            gap_x, gap_y = gap_x * 1.25, gap_y * 1.25
    xs = [n.x for n in nodes.values()] + [x for e in edges for x, _ in e.points]
    ys = [n.y for n in nodes.values()] + [y for e in edges for _, y in e.points]
    for e in edges:
        if e.label_box is not None:
            xs += [e.label_box.x0, e.label_box.x1]
            ys += [e.label_box.y0, e.label_box.y1]
    margin = NODE_RADIUS + 0.1
    x0, y0 = min(xs) - margin, min(ys) - margin
    shift = lambda x, y: (x - x0, y - y0)  # noqa: E731 - a local coordinate change
    nodes = {
        k: NodeLayout(n.node, n.text, n.kind, *shift(n.x, n.y), n.radius) for k, n in nodes.items()
    }
    moved = []
    for e in edges:
        box = e.label_box
        moved.append(
            EdgeLayout(
                e.src,
                e.dst,
                e.op,
                e.rad,
                tuple(shift(x, y) for x, y in e.points),
                e.label,
                shift(*e.label_xy) if e.label_xy else None,
                Box(*shift(box.x0, box.y0), *shift(box.x1, box.y1)) if box else None,
            )
        )
    width = max(xs) + margin - x0
    height = max(ys) + margin - y0
    return CellLayout(nodes, tuple(moved), width, height, placed)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _draw_layout(fig: Any, layout: CellLayout, left: float, bottom: float) -> None:
    """Draw `layout` on `fig` with its origin `left`, `bottom` inches from the figure's corner.

    The artists go straight onto the figure in inch coordinates (no Axes: building one costs
    more than the whole drawing, and the search monitor draws every epoch).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, FancyArrowPatch
    from matplotlib.transforms import Affine2D

    inches = Affine2D().translate(left, bottom) + fig.dpi_scale_trans
    for edge in layout.edges:
        colour = op_colour(edge.op)
        xs, ys = zip(*edge.points, strict=True)
        width = 0.9 if edge.op == "concat" else 1.3
        fig.add_artist(
            Line2D(xs, ys, color=colour, lw=width, linestyle=_LINESTYLES.get(edge.op, "-"),
                   zorder=1, transform=inches)
        )
        # A solid head on the last stretch of the curve, so dashed edges keep a clear arrow.
        fig.add_artist(
            FancyArrowPatch(
                edge.points[-2] if len(edge.points) > 2 else edge.points[0],
                edge.points[-1],
                arrowstyle="-|>",
                mutation_scale=9,
                color=colour,
                lw=0,
                shrinkA=0,
                shrinkB=0,
                zorder=2,
                transform=inches,
            )
        )
        if edge.label:
            fig.text(
                *edge.label_xy,
                edge.label,
                fontsize=LABEL_FONT_PT,
                color=colour,
                ha="center",
                va="center",
                zorder=4,
                transform=inches,
                bbox={
                    "boxstyle": f"square,pad={_LABEL_PAD * 72 / LABEL_FONT_PT:.3f}",
                    "fc": "white",
                    "ec": colour,
                    "lw": 0.5,
                },
            )
    for node in layout.nodes.values():
        fig.add_artist(
            Circle(
                (node.x, node.y),
                node.radius,
                facecolor=_NODE_FACES[node.kind],
                edgecolor="black",
                lw=0.8,
                zorder=3,
                transform=inches,
            )
        )
        fig.text(
            node.x,
            node.y,
            node.text,
            fontsize=NODE_FONT_PT,
            ha="center",
            va="center",
            zorder=5,
            transform=inches,
        )


def _legend_ops(layouts: Sequence[CellLayout]) -> list[str]:
    seen = {edge.op for layout in layouts for edge in layout.edges}
    known = [op for op in OP_COLOURS if op in seen]
    return known + sorted(seen - set(known))


def draw_genotype(
    g: Genotype, path: str | Path, title: str | None = None, *, dpi: int = 110
) -> Path:
    """Draw both cells of `g` (normal above reduce) into a PNG at `path`, with an op legend.

    The picture is the layouts' size in inches (see `layout_cell`) at `dpi` pixels per inch.
    Uses matplotlib's Agg canvas directly (no pyplot), so it needs no display and changes no
    global backend. The file is written atomically. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.text import Text

    from nasaudit.infra.errors import printable
    from nasaudit.infra.io import atomic_write_bytes

    metrics = analyze_genotype(g)
    layouts = [layout_cell(getattr(g, cell), getattr(g, f"{cell}_concat")) for cell in CELLS]
    title_h, cell_title_h, legend_h, side = (0.45 if title else 0.1), 0.35, 0.7, 0.25
    width = max(max(layout.width for layout in layouts) + 2 * side, 6.0)
    height = title_h + sum(layout.height + cell_title_h for layout in layouts) + legend_h
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    top = height - title_h
    for cell, layout in zip(CELLS, layouts, strict=True):
        top -= cell_title_h
        bottom = top - layout.height
        left = (width - layout.width) / 2
        _draw_layout(fig, layout, left, bottom)  # one layout unit is one inch
        m = metrics[cell]
        label = (
            f"{cell} cell: depth {m['depth']}, width {m['width']}c, "
            f"skips {m['skip_connects']}"
            + (f", none edges {m['none_edges']}" if m["none_edges"] else "")
        )
        fig.text(0.5, (top + cell_title_h * 0.35) / height, label, ha="center", fontsize=10)
        top = bottom
    if title:
        fig.text(0.5, 1 - 0.3 / height, printable(title), ha="center", fontsize=12, weight="bold")
    for text in fig.findobj(Text):
        # Titles and op names come from files: "$...$" is drawn as typed, never as mathtext.
        text.set_parse_math(False)
    handles = [
        Line2D([], [], color=op_colour(op), lw=1.6, linestyle=_LINESTYLES.get(op, "-"), label=op)
        for op in _legend_ops(layouts)
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), max(1, int(width // 1.45))),
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())
