"""The networkx cell analyzer: graphs, hand-derived metrics, `none` edges, scaling."""

from __future__ import annotations

import statistics
from pathlib import Path

import networkx as nx
import pytest

from nasaudit.analysis import analyze_cell, analyze_genotype, cell_graph
from nasaudit.genotype import (
    load_genotype_file,
    read_genotype_file,
    resolve_genotype,
    shipped_genotypes,
)

FIXTURES = Path(__file__).parent / "fixtures" / "genotypes"

# (depth, width, skips) per cell, derived by hand from the genotype lists:
# darts_v2 normal: nodes 0-2 read only c_{k-2}/c_{k-1} (width 3); node 3 reads node 0, so the
#   longest path is c_{k-2} -> 0 -> 3 -> output (3 edges); 2 skip_connects.
# darts_v2 reduce: only node 0 reads only the inputs (width 1); nodes 1-3 read node 0 (depth 3).
# nasnet normal: 5 nodes all fed by the inputs (width 5, depth 2).
# nasnet reduce: nodes 0-2 from inputs; node 3 <- nodes 1, 0; node 4 <- node 0 (depth 3, width 3).
# diy_deep normal: a chain 0 -> 1 -> 2 -> 3 (depth 5, width 1).
# random normal: 0 <- inputs; 1 <- 0; 2 <- 1; 3 <- 0 (chain 0-1-2: depth 4, width 1).
# drnas_cifar10 reduce: 0 <- in; 1 <- 0; 2 <- 1; 3 <- 2 (depth 5, width 1).
EXPECTED = {
    "darts_v2": {"normal": (3, 3, 2), "reduce": (3, 1, 3)},
    "darts_v1": {"normal": (3, 3, 3), "reduce": (3, 1, 3)},
    "nasnet": {"normal": (2, 5, 2), "reduce": (3, 3, 1)},
    "amoebanet": {"normal": (4, 3, 2), "reduce": (3, 3, 0)},
    "enas": {"normal": (2, 5, 2), "reduce": (4, 3, 0)},
    "diy_deep": {"normal": (5, 1, 2), "reduce": (3, 1, 3)},
    "diy_noskip": {"normal": (3, 3, 0), "reduce": (3, 1, 3)},
    "diy_deep_noskip": {"normal": (5, 1, 0), "reduce": (3, 1, 3)},
    "random": {"normal": (4, 1, 2), "reduce": (4, 2, 1)},
    "drnas_cifar10": {"normal": (4, 2, 1), "reduce": (5, 1, 1)},
    "pc_darts_cifar": {"normal": (2, 4, 1), "reduce": (4, 1, 0)},
    "snas_mild": {"normal": (2, 4, 4), "reduce": (3, 1, 2)},
    "robust_darts": {"normal": (3, 1, 7), "reduce": (3, 2, 2)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hand_derived_metrics(name):
    metrics = analyze_genotype(resolve_genotype(name))
    for cell, (depth, width, skips) in EXPECTED[name].items():
        m = metrics[cell]
        assert (m["depth"], m["width"], m["skip_connects"]) == (depth, width, skips), cell


def test_darts_v2_normal_details():
    m = analyze_genotype(resolve_genotype("darts_v2"))["normal"]
    assert m["longest_path"] == ["c_{k-2}", 0, 3, "output"]
    assert m["op_histogram"] == {"dil_conv_3x3": 1, "sep_conv_3x3": 5, "skip_connect": 2}
    assert m["parameter_free_ops"] == 2
    assert m["nodes"] == 4 and m["concat"] == [2, 3, 4, 5]
    reduce = analyze_genotype(resolve_genotype("darts_v2"))["reduce"]
    assert reduce["parameter_free_ops"] == 8  # 5 max pools + 3 skips


def test_study_averages_over_its_nine_nas_cells():
    names = [
        "amoebanet",
        "darts_v2",
        "drnas",
        "enas",
        "nasnet",
        "pc_darts",
        "pdarts",
        "sgas",
        "snas_mild",
    ]
    normal = [analyze_genotype(resolve_genotype(n))["normal"] for n in names]
    # The study reports width 3.3c and depth 2.8 on average: shallow and wide.
    assert statistics.mean(m["width"] for m in normal) == pytest.approx(30 / 9)
    assert statistics.mean(m["depth"] for m in normal) == pytest.approx(26 / 9)
    assert sum(m["skip_connects"] > 0 for m in normal) == 9


def test_cell_graph_structure():
    g = resolve_genotype("darts_v2")
    graph = cell_graph(g.normal, g.normal_concat)
    assert isinstance(graph, nx.DiGraph) and nx.is_directed_acyclic_graph(graph)
    assert set(graph) == {"c_{k-2}", "c_{k-1}", 0, 1, 2, 3, "output"}
    assert graph.edges["c_{k-2}", 3]["op"] == "skip_connect"
    assert graph.edges[0, 3]["op"] == "dil_conv_3x3"
    assert graph.edges[2, "output"]["op"] == "concat"
    assert graph.in_degree("output") == 4
    assert graph.nodes["c_{k-1}"]["kind"] == "input"


def test_parallel_edges_keep_both_ops():
    g = resolve_genotype("nasnet")  # node 3 of the normal cell takes c_{k-2} twice
    graph = cell_graph(g.normal, g.normal_concat)
    assert graph.edges["c_{k-2}", 3]["ops"] == ("avg_pool_3x3", "avg_pool_3x3")
    assert graph.edges["c_{k-2}", 3]["op"] == "avg_pool_3x3 + avg_pool_3x3"
    assert analyze_cell(g.normal, g.normal_concat)["op_histogram"]["avg_pool_3x3"] == 3


def test_nodes_outside_the_concat_do_not_count_for_depth():
    # Node 1 reads node 0, but only node 0 feeds the output: depth 2, width 1.
    cell = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("skip_connect", 2)]
    m = analyze_cell(cell, [2])
    assert (m["depth"], m["width"], m["skip_connects"]) == (2, 1, 2)
    assert m["longest_path"] == ["c_{k-2}", 0, "output"]


def test_every_shipped_genotype_analyzes():
    for name, entry in shipped_genotypes().items():
        for cell, m in analyze_genotype(entry["genotype"]).items():
            assert 2 <= m["depth"] <= m["nodes"] + 1, (name, cell)
            assert 1 <= m["width"] <= m["nodes"], (name, cell)
            assert m["longest_path"][-1] == "output"
            assert sum(m["op_histogram"].values()) == 2 * m["nodes"]
            assert m["none_edges"] == m["op_histogram"].get("none", 0)


def test_third_party_file_analyzes():
    found = load_genotype_file(FIXTURES / "darts_genotypes.py")
    assert analyze_genotype(found["NASNet"])["normal"]["width"] == 5
    assert analyze_genotype(found["AmoebaNet"])["normal"]["depth"] == 4


# ------------------------------------------------------------------------------------------
# `none` edges are no connections
# ------------------------------------------------------------------------------------------

WILD = FIXTURES / "wild"


def _dws(m: dict) -> tuple[int, int, int]:
    return m["depth"], m["width"], m["skip_connects"]


def test_a_none_edge_does_not_count_for_depth_width_or_path():
    one_none = read_genotype_file(WILD / "none_edges.py").genotypes["ONE_NONE"]
    m = analyze_genotype(one_none)["normal"]
    # Node 3 = ('none', 2) + ('sep_conv_3x3', 1): with the none edge it would read node 0
    # (depth 3, width 3c); really it reads only c_{k-1}, so all four nodes are input-fed.
    assert _dws(m) == (2, 4, 2)
    assert m["none_edges"] == 1 and m["op_histogram"]["none"] == 1
    assert m["longest_path"] == ["c_{k-2}", 0, "output"]
    # Oracle: the same cell with the none edge rewired to an input gives the same metrics.
    rewired = [("sep_conv_3x3", 1) if op == "none" else (op, inp) for op, inp in one_none.normal]
    assert _dws(analyze_cell(rewired, one_none.normal_concat)) == (2, 4, 2)
    with_edge = [("sep_conv_3x3", inp) if op == "none" else (op, inp) for op, inp in one_none.normal]
    assert _dws(analyze_cell(with_edge, one_none.normal_concat)) == (3, 3, 2)


def test_a_chain_of_none_edges_has_no_depth():
    chain = read_genotype_file(WILD / "none_edges.py").genotypes["NONE_CHAIN"]
    m = analyze_genotype(chain)["normal"]
    assert (m["depth"], m["width"], m["longest_path"]) == (0, 0, [])
    assert m["none_edges"] == 8
    graph = cell_graph(chain.normal, chain.normal_concat, include_none=False)
    assert [e for e in graph.edges if e[1] != "output"] == []
    # Drawn, the chain keeps its 5 distinct (none) edges and the concat edge.
    assert cell_graph(chain.normal, chain.normal_concat).number_of_edges() == 5 + 1


def test_mixed_parallel_edge_keeps_only_the_real_op():
    cell = [("sep_conv_3x3", 0), ("none", 0), ("skip_connect", 1), ("none", 2)]
    graph = cell_graph(cell, [2, 3], include_none=False)
    assert graph.edges["c_{k-2}", 0]["ops"] == ("sep_conv_3x3",)
    assert not graph.has_edge(0, 1)
    m = analyze_cell(cell, [2, 3])
    assert (m["depth"], m["width"], m["none_edges"]) == (2, 2, 2)


def test_all_edge_cells_analyze_as_their_derived_two_input_cells():
    found = read_genotype_file(WILD / "snas_edge_all.py")
    derived = analyze_genotype(found.genotypes["SNAS_mild_edge_all"])
    mild = analyze_genotype(resolve_genotype("snas_mild"))
    for cell in ("normal", "reduce"):
        assert _dws(derived[cell]) == _dws(mild[cell]) and derived[cell]["nodes"] == 4
        assert derived[cell]["none_edges"] == 0


# ------------------------------------------------------------------------------------------
# Scaling: a hostile cell must not cost super-linear time
# ------------------------------------------------------------------------------------------


def _chain_cell(nodes: int) -> list[tuple[str, int]]:
    # Node i reads node i-1 (node 0: c_{k-2}) and c_{k-1}: the longest path is the chain.
    cell = []
    for i in range(nodes):
        cell += [("sep_conv_3x3", i + 1 if i else 0), ("skip_connect", 1)]
    return cell


def test_a_40000_edge_cell_is_analyzed_exactly():
    """The hostile 40,000-edge chain: exact answers. (Its time, against a 10,000-edge chain, is
    printed by benchmarks/analysis.py; the old quadratic scan took minutes here.)"""
    big_nodes = 20_000
    m_big = analyze_cell(_chain_cell(big_nodes), [big_nodes + 1])
    # Exact answers: the chain c_{k-2} -> 0 -> 1 -> ... -> n-1 -> output.
    assert m_big["depth"] == big_nodes + 1 and m_big["width"] == 1
    assert m_big["longest_path"][:3] == ["c_{k-2}", 0, 1] and m_big["longest_path"][-2] == big_nodes - 1
    assert len(m_big["longest_path"]) == big_nodes + 2
