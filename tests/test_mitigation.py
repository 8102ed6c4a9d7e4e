"""Genotype rewiring (deepen, deskip) against the analyzer and the study's DARTS-i/ii/iii."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasaudit.analysis import analyze_genotype
from nasaudit.genotype import resolve_genotype, shipped_genotypes, validate_genotype
from nasaudit.mitigation import deepen, deskip

DARTS_V2 = resolve_genotype("darts_v2")
PRIMARY = sorted(n for n, e in shipped_genotypes().items() if not e["alias_of"])


def test_deepen_darts_v2_is_darts_i():
    assert deepen(DARTS_V2) == resolve_genotype("darts_i")
    before, after = (
        analyze_genotype(DARTS_V2)["normal"],
        analyze_genotype(deepen(DARTS_V2))["normal"],
    )
    assert (before["depth"], after["depth"]) == (3, 5)
    assert (before["width"], after["width"]) == (3, 1)
    assert after["op_histogram"] == before["op_histogram"]  # ops kept
    assert after["longest_path"] == ["c_{k-2}", 0, 1, 2, 3, "output"]


def test_deskip_sibling_is_darts_ii_and_fixed_op_differs_in_one_op():
    assert deskip(DARTS_V2, sibling=True) == resolve_genotype("darts_ii")
    fixed = deskip(DARTS_V2)
    study = resolve_genotype("darts_ii")
    diffs = [
        (i, a, b) for i, (a, b) in enumerate(zip(fixed.normal, study.normal, strict=True)) if a != b
    ]
    assert diffs == [(6, ("sep_conv_3x3", 0), ("dil_conv_3x3", 0))]
    assert fixed.reduce == study.reduce == DARTS_V2.reduce


def test_deepen_and_deskip_is_darts_iii_in_either_order():
    darts_iii = resolve_genotype("darts_iii")
    assert deskip(deepen(DARTS_V2), sibling=True) == darts_iii
    assert deepen(deskip(DARTS_V2, sibling=True)) == darts_iii
    m = analyze_genotype(darts_iii)["normal"]
    assert (m["depth"], m["width"], m["skip_connects"]) == (5, 1, 0)


def test_published_variants_leave_the_reduce_cell_unchanged():
    for name in ("darts_i", "darts_ii", "darts_iii"):
        assert resolve_genotype(name).reduce == DARTS_V2.reduce
    assert analyze_genotype(resolve_genotype("darts_iii"))["reduce"]["skip_connects"] == 3


def test_both_cells():
    both = deepen(DARTS_V2, cells="both")
    assert both.normal == deepen(DARTS_V2).normal
    m = analyze_genotype(both)["reduce"]
    assert (m["depth"], m["width"]) == (5, 1)
    assert deepen(DARTS_V2, cells="reduce").normal == DARTS_V2.normal
    noskip = deskip(DARTS_V2, "sep_conv_5x5", cells="both")
    metrics = analyze_genotype(noskip)
    assert metrics["normal"]["skip_connects"] == metrics["reduce"]["skip_connects"] == 0
    assert metrics["reduce"]["op_histogram"] == {"max_pool_3x3": 5, "sep_conv_5x5": 3}


def test_bad_arguments():
    with pytest.raises(ValueError):
        deepen(DARTS_V2, cells="all")
    with pytest.raises(ValueError):
        deskip(DARTS_V2, op="skip_connect")
    with pytest.raises(ValueError, match="zero op"):
        deskip(DARTS_V2, op="none")  # would cut the edge, not replace the skip


def test_sibling_falls_back_to_op_when_both_edges_are_skips():
    robust = resolve_genotype("robust_darts")  # normal node 1: two skips
    out = deskip(robust, "avg_pool_3x3", sibling=True)
    assert out.normal[2:4] == (("avg_pool_3x3", 2), ("avg_pool_3x3", 0))
    assert analyze_genotype(out)["normal"]["skip_connects"] == 0


@pytest.mark.parametrize("name", PRIMARY)
def test_rewiring_every_shipped_genotype(name):
    g = resolve_genotype(name)
    deep = deepen(g, cells="both")
    noskip = deskip(g, cells="both")
    for out in (deep, noskip, deepen(noskip, cells="both")):
        validate_genotype(out, "paper", source="test", name=name)
    for cell in ("normal", "reduce"):
        n = len(getattr(g, cell)) // 2
        before = analyze_genotype(g)[cell]
        assert analyze_genotype(deep)[cell]["depth"] == n + 1 >= before["depth"]
        assert analyze_genotype(deep)[cell]["width"] == 1
        assert analyze_genotype(deep)[cell]["op_histogram"] == before["op_histogram"]
        assert analyze_genotype(noskip)[cell]["skip_connects"] == 0
        assert analyze_genotype(noskip)[cell]["depth"] == before["depth"]
    assert deepen(deep, cells="both") == deep  # idempotent


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(PRIMARY), st.sampled_from(["normal", "reduce", "both"]), st.booleans())
def test_deskip_commutes_with_deepen(name, cells, sibling):
    g = resolve_genotype(name)
    assert deskip(deepen(g, cells), cells=cells, sibling=sibling) == deepen(
        deskip(g, cells=cells, sibling=sibling), cells
    )
