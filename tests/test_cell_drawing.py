"""Cell drawings: the layout, checked as geometry (not pixels), and the picture it makes.

For every shipped genotype, the study's deepen/deskip rewirings of each, and random genotypes
up to the space's node bound: node centres are distinct, every label sits on its own edge and
overlaps no node and no other label, parallel edges have distinct curvatures, no edge runs
through a node it does not join, and nodes are laid out left to right by layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasaudit.analysis import INPUT_NODES, OUTPUT_NODE
from nasaudit.cell_drawing import CellLayout, draw_genotype, layout_cell, text_size
from nasaudit.genotype import (
    CELLS,
    Genotype,
    resolve_genotype,
    shipped_genotypes,
    validate_genotype,
)
from nasaudit.mitigation import deepen, deskip
from nasaudit.search_space import load_search_space

PAPER = load_search_space("paper")
PRIMARY = sorted(n for n, e in shipped_genotypes().items() if not e["alias_of"])


def _variants() -> dict[str, Genotype]:
    out = {}
    for name in PRIMARY:
        g = resolve_genotype(name)
        out[name] = g
        out[f"{name}/deepen"] = deepen(g, cells="both")
        out[f"{name}/deskip"] = deskip(g, cells="both")
        out[f"{name}/deskip_sibling"] = deskip(g, cells="both", sibling=True)
    return out


VARIANTS = _variants()


def _distance_to_polyline(point, polyline) -> float:
    best = float("inf")
    for (ax, ay), (bx, by) in zip(polyline, polyline[1:], strict=False):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((point[0] - ax) * dx + (point[1] - ay) * dy) / length2))
        best = min(best, math.dist(point, (ax + t * dx, ay + t * dy)))
    return best


def check_layout(layout: CellLayout, cell, concat) -> None:
    """Every property the drawing promises, from the layout's numbers."""
    nodes = list(layout.nodes.values())
    n_nodes = len(cell) // 2
    assert set(layout.nodes) == set(INPUT_NODES) | set(range(n_nodes)) | {OUTPUT_NODE}
    # No two node centres coincide, and node circles do not even touch.
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            assert math.dist((a.x, a.y), (b.x, b.y)) > a.radius + b.radius, (a, b)
    # Left to right by layer: every edge goes right; the output is the rightmost node.
    for edge in layout.edges:
        assert layout.nodes[edge.dst].x > layout.nodes[edge.src].x, edge
    assert all(n.x < layout.nodes[OUTPUT_NODE].x for n in nodes if n.node != OUTPUT_NODE)
    # One drawn edge per op plus one per concat state.
    ops = [edge for edge in layout.edges if edge.op != "concat"]
    assert sorted((e.op, str(e.src), e.dst) for e in ops) == sorted(
        (op, str(INPUT_NODES[inp] if inp < 2 else inp - 2), i // 2)
        for i, (op, inp) in enumerate(cell)
    ), "one edge per (op, input)"
    assert len(layout.edges) - len(ops) == len(concat)
    # Labels: on their own edge, inside the picture, clear of nodes and of each other.
    boxes = []
    for edge in ops:
        assert edge.label == edge.op and edge.label_box is not None
        assert _distance_to_polyline(edge.label_xy, edge.points) < 1e-6, edge
        box = edge.label_box
        w, h = text_size(edge.label)
        assert box.x1 - box.x0 >= w and box.y1 - box.y0 >= h
        assert 0 <= box.x0 and box.x1 <= layout.width and 0 <= box.y0 and box.y1 <= layout.height
        for node in nodes:
            assert not box.overlaps(node.box), (edge.op, edge.src, edge.dst, node.node)
        boxes.append((edge, box))
    for i, (ea, a) in enumerate(boxes):
        for eb, b in boxes[i + 1 :]:
            assert not a.overlaps(b), ((ea.op, ea.src, ea.dst), (eb.op, eb.src, eb.dst))
    # Parallel edges (a node reading one state twice) are curved apart.
    by_pair: dict[tuple, list[float]] = {}
    for edge in ops:
        by_pair.setdefault((edge.src, edge.dst), []).append(edge.rad)
    for rads in by_pair.values():
        assert len(set(rads)) == len(rads)
    # No edge runs through a node it does not join.
    for edge in layout.edges:
        for node in nodes:
            if node.node in (edge.src, edge.dst):
                continue
            assert all(math.dist(p, (node.x, node.y)) >= node.radius for p in edge.points), (
                edge.op, edge.src, edge.dst, node.node,
            )
    assert layout.labels_placed


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_layout_of_shipped_and_rewired_genotypes(name):
    g = VARIANTS[name]
    validate_genotype(g, PAPER, source="test", name=name)
    for cell in CELLS:
        pairs, concat = getattr(g, cell), getattr(g, f"{cell}_concat")
        check_layout(layout_cell(pairs, concat), pairs, concat)


@st.composite
def random_cells(draw):
    n = draw(st.integers(1, PAPER.max_nodes))
    pairs = tuple(
        (draw(st.sampled_from(PAPER.ops)), draw(st.integers(0, node + 1)))
        for node in range(n)
        for _ in range(2)
    )
    concat = tuple(sorted(draw(st.sets(st.integers(2, n + 1), min_size=1))))
    return pairs, concat


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cells())
def test_layout_of_random_cells(cell_and_concat):
    pairs, concat = cell_and_concat
    check_layout(layout_cell(pairs, concat), pairs, concat)


def test_darts_i_chain_is_drawn_in_layers_with_curved_output_edges():
    g = resolve_genotype("darts_i")
    layout = layout_cell(g.normal, g.normal_concat)
    xs = [layout.nodes[i].x for i in range(4)]
    assert xs == sorted(xs) and len(set(xs)) == 4  # the chain 0 -> 1 -> 2 -> 3, one layer each
    # Node 0 reads both inputs; the two inputs share layer 0, one above the other.
    top, bottom = layout.nodes["c_{k-2}"], layout.nodes["c_{k-1}"]
    assert top.x == bottom.x and top.y > bottom.y
    # The concat edges from 0, 1 and 2 bend around the chain instead of running along it.
    for state in (2, 3, 4):
        edge = next(e for e in layout.edges if e.op == "concat" and e.src == state - 2)
        assert edge.rad != 0.0


def test_drawing_is_written_at_the_layout_size(tmp_path):
    from matplotlib.image import imread

    g = resolve_genotype("nasnet")
    out = draw_genotype(g, tmp_path / "nasnet.png", title="nasnet")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = imread(out)
    widest = max(layout_cell(getattr(g, c), getattr(g, f"{c}_concat")).width for c in CELLS)
    assert image.shape[1] >= widest * 110 - 1  # 110 dpi, 1 data unit = 1 inch
    assert not list(tmp_path.glob(".*.tmp"))
    # Not blank: the picture has ink in many colours (op colours and node faces).
    flat = (image[..., :3] * 255).astype(int).reshape(-1, 3)
    assert len({tuple(p) for p in flat[:: max(1, len(flat) // 20000)]}) > 20


def test_analysis_keeps_no_drawing_code():
    import nasaudit.analysis

    assert not hasattr(nasaudit.analysis, "draw_genotype")
    assert Path(nasaudit.analysis.__file__).read_text().count("matplotlib") == 0


def test_every_shipped_genotype_is_drawn(tmp_path):
    from matplotlib.image import imread

    for name in PRIMARY:
        g = resolve_genotype(name)
        # A low resolution keeps this fast; the layout, not the pixels, is what is checked.
        out = draw_genotype(g, tmp_path / f"{name}.png", title=name, dpi=30)
        image = imread(out)
        widest = max(layout_cell(getattr(g, c), getattr(g, f"{c}_concat")).width for c in CELLS)
        assert image.shape[1] >= widest * 30 - 1 and image.shape[0] > 60, name
