"""Search spaces: the shipped op sets and the loader's handling of bad files."""

from __future__ import annotations

import json

import pytest

from nasaudit.infra.errors import InputError
from nasaudit.search_space import (
    PARAMETER_FREE_OPS,
    SearchSpace,
    list_search_spaces,
    load_search_space,
)

DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def test_shipped_spaces_are_listed():
    assert {"darts", "paper"} <= set(list_search_spaces())


def test_darts_space_matches_darts_primitives():
    space = load_search_space("darts")
    assert space.name == "darts"
    assert space.ops == DARTS_PRIMITIVES
    assert (space.nodes, space.inputs_per_node) == (4, 2)
    assert space.source


def test_paper_space_adds_two_ops_to_darts():
    darts, paper = load_search_space("darts"), load_search_space("paper")
    assert len(paper.ops) == 10
    assert set(paper.ops) - set(darts.ops) == {"sep_conv_7x7", "conv_7x1_1x7"}
    assert paper.ops[0] == "none"
    assert (paper.nodes, paper.inputs_per_node) == (4, 2)


def test_default_space_is_darts_and_spaces_pass_through():
    space = load_search_space()
    assert space.name == "darts"
    assert load_search_space(space) is space


def test_space_is_frozen():
    space = load_search_space("darts")
    with pytest.raises(AttributeError):
        space.nodes = 5  # type: ignore[misc]


def test_has_op():
    space = load_search_space("darts")
    assert space.has_op("skip_connect")
    assert not space.has_op("sep_conv_7x7")
    assert not space.has_op(3)


def test_parameter_free_ops_are_in_the_darts_space():
    assert PARAMETER_FREE_OPS <= set(DARTS_PRIMITIVES)
    assert "sep_conv_3x3" not in PARAMETER_FREE_OPS


def test_load_space_from_file_uses_stem_as_name(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(
        json.dumps(
            {"ops": ["none", "skip_connect"], "nodes": 2, "inputs_per_node": 1, "source": "test"}
        )
    )
    space = load_search_space(str(path))
    assert space == SearchSpace("tiny", ("none", "skip_connect"), 2, 1, "test")


def test_unknown_space_name_lists_known():
    with pytest.raises(InputError) as err:
        load_search_space("nope")
    assert err.value.source == "nope"
    assert "darts" in err.value.problem and "paper" in err.value.problem


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"ops": [], "nodes": 4, "inputs_per_node": 2}', '"ops"'),
        (b'{"ops": ["a", "a"], "nodes": 4, "inputs_per_node": 2}', "twice"),
        (b'{"ops": ["a", 3], "nodes": 4, "inputs_per_node": 2}', '"ops"'),
        (b'{"ops": ["a"], "nodes": true, "inputs_per_node": 2}', '"nodes"'),
        (b'{"ops": ["a"], "nodes": 4, "inputs_per_node": 0}', '"inputs_per_node"'),
        (b'{"ops": ["a"], "nodes": 4, "inputs_per_node": 2, "source": 1}', '"source"'),
        (b"[" * 100_000, "invalid JSON"),
    ],
)
def test_bad_space_files_raise_input_error(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_search_space(str(path))
    assert problem in err.value.problem
    assert "\n" not in str(err.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_search_space(str(tmp_path / "absent.json"))
