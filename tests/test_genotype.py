"""The Genotype type, validation, shipped genotypes and name resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasaudit.genotype import (
    Genotype,
    genotype_hash,
    genotype_to_json,
    load_genotype_file,
    make_genotype,
    resolve_genotype,
    resolve_genotypes,
    resolve_named_genotype,
    shipped_genotypes,
    validate_genotype,
    write_genotype,
)
from nasaudit.infra.errors import InputError
from nasaudit.infra.resources import data_dir
from nasaudit.search_space import load_search_space

FIXTURES = Path(__file__).parent / "fixtures" / "genotypes"
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared/reference/published_genotypes.json"
REQUIRED = (
    "nasnet amoebanet darts_v1 darts_v2 enas snas_mild pdarts pc_darts drnas sgas random "
    "darts_i darts_ii darts_iii"
).split()

DARTS_V2 = Genotype(
    normal=(
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)


def test_genotype_is_a_darts_style_namedtuple():
    assert Genotype._fields == ("normal", "normal_concat", "reduce", "reduce_concat")
    g = make_genotype(
        *([list(p) for p in cell] if i % 2 == 0 else list(cell) for i, cell in enumerate(DARTS_V2))
    )
    assert g == DARTS_V2
    assert isinstance(g.normal, tuple) and isinstance(g.normal[0], tuple)
    assert g.normal[7] == ("dil_conv_3x3", 2)


@pytest.mark.parametrize("name", REQUIRED)
def test_required_names_resolve_and_validate(name):
    g = resolve_genotype(name)
    validate_genotype(g, "paper", source="test", name=name)


def test_aliases_point_to_their_targets():
    assert resolve_genotype("darts") == resolve_genotype("darts_v2") == DARTS_V2
    pairs = {
        "pc_darts": "pc_darts_cifar",
        "drnas": "drnas_cifar10",
        "darts_i": "diy_deep",
        "darts_ii": "diy_noskip",
        "darts_iii": "diy_deep_noskip",
    }
    shipped = shipped_genotypes()
    for alias, target in pairs.items():
        assert shipped[alias]["alias_of"] == target
        assert resolve_genotype(alias) == resolve_genotype(target)
    assert resolve_genotype("DARTS-V2") == DARTS_V2  # case and dash are forgiven


def test_shipped_genotypes_have_sources_and_one_file_each():
    shipped = shipped_genotypes()
    primary = {name for name, e in shipped.items() if e["alias_of"] is None}
    assert len(primary) == 17
    files = {p.stem for p in data_dir("genotypes").glob("*.json")} - {"aliases"}
    assert files == primary
    for name in primary:
        assert shipped[name]["source"], name
        validate_genotype(shipped[name]["genotype"], "paper", source="shipped", name=name)


def test_shipped_genotypes_equal_the_reference_file():
    # The suite runs with ../shared beside the checkout (the README's test command says so): a
    # missing reference is a broken setup, not a reason to pass silently.
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: put shared/ beside the checkout"
    ref = json.loads(REFERENCE.read_text())
    shipped = shipped_genotypes()
    for name, entry in ref["genotypes"].items():
        assert genotype_to_json(shipped[name]["genotype"]) == {
            key: entry[key] for key in Genotype._fields
        }, name
        assert shipped[name]["source"] == entry["source"]
    for alias, target in ref["aliases"].items():
        assert shipped[alias]["alias_of"] == target
    # The reference file itself is a supported multi-genotype format.
    assert load_genotype_file(REFERENCE)["darts_v2"] == DARTS_V2
    assert resolve_genotype(f"{REFERENCE}:darts") == DARTS_V2


def test_darts_space_rejects_7x7_ops_and_paper_space_accepts_them():
    nasnet = resolve_genotype("nasnet")
    with pytest.raises(InputError, match="unknown op 'sep_conv_7x7'"):
        validate_genotype(nasnet, "darts", source="x", name="nasnet")
    validate_genotype(nasnet, "paper", source="x", name="nasnet")
    with pytest.raises(InputError):
        resolve_genotype("nasnet", space=load_search_space("darts"))
    assert resolve_genotype("darts_v2", space="darts") == DARTS_V2


def _bad(**changes) -> Genotype:
    return DARTS_V2._replace(**changes)


@pytest.mark.parametrize(
    "genotype, message",
    [
        (
            _bad(normal=DARTS_V2.normal[:6] + (("sep_conv_3x3", 5), ("sep_conv_3x3", 0))),
            "genotype 'FOO', normal cell, node 3: input 5 is not below the node (allowed 0..4)",
        ),
        (
            _bad(reduce=(("max_pool_3x3", 2), ("max_pool_3x3", 0))),
            "genotype 'FOO', reduce cell, node 0: input 2 is not below the node (allowed 0..1)",
        ),
        (
            _bad(normal=DARTS_V2.normal[:7]),
            "genotype 'FOO', normal cell has 7 (op, input) pairs, not a multiple of 2 inputs per node",
        ),
        (_bad(normal=()), "genotype 'FOO', normal cell is empty"),
        (
            _bad(reduce=(("conv_9x9", 0), ("max_pool_3x3", 1))),
            "genotype 'FOO', reduce cell, node 0: unknown op 'conv_9x9'",
        ),
        (
            _bad(normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1.0))),
            "genotype 'FOO', normal cell, node 0: input 1.0 is not an integer",
        ),
        (
            _bad(normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", True))),
            "input True is not an integer",
        ),
        (
            _bad(normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", -1))),
            "node 0: input -1 is not below the node",
        ),
        (_bad(normal=(("sep_conv_3x3", 0), (3, 1))), "node 0: op 3 is not a string"),
        (
            _bad(normal_concat=(2, 3, 4, 6)),
            "genotype 'FOO', normal_concat: 6 names a missing node (the cell has states 2..5)",
        ),
        (_bad(reduce_concat=(1, 2)), "reduce_concat: 1 names a missing node"),
        (_bad(normal_concat=(2, 3, 3)), "normal_concat: 3 appears twice"),
        (_bad(reduce_concat=()), "genotype 'FOO', reduce_concat is empty"),
        (_bad(normal_concat=(2, "3")), "normal_concat: '3' is not an integer"),
    ],
)
def test_validation_errors_are_one_clear_line(genotype, message):
    with pytest.raises(InputError) as err:
        validate_genotype(genotype, "paper", source="genotypes.py", name="FOO")
    assert err.value.source == "genotypes.py"
    assert message in str(err.value)
    assert str(err.value).startswith("genotypes.py: genotype 'FOO'")
    assert "\n" not in str(err.value)


def test_five_node_cells_validate_in_a_four_node_space():
    nasnet = resolve_genotype("nasnet")
    assert len(nasnet.normal) == 10 and nasnet.normal_concat == (2, 3, 4, 5, 6)
    validate_genotype(nasnet, "paper", source="x", name="nasnet")


def test_unknown_name_error_contract_for_the_model_registry():
    with pytest.raises(InputError) as err:
        resolve_genotype("resnet18")
    assert err.value.source == "resnet18"
    assert "unknown genotype" in err.value.problem
    assert "darts_v2" in err.value.problem and "darts_iii" in err.value.problem


def test_missing_file_spec_is_not_an_unknown_name(tmp_path):
    spec = str(tmp_path / "absent.json")
    with pytest.raises(InputError, match="not found") as err:
        resolve_genotype(spec)
    assert "unknown genotype" not in err.value.problem


def test_resolve_file_and_file_colon_name():
    path = FIXTURES / "darts_genotypes.py"
    everything = resolve_genotypes(path)
    assert list(everything) == ["NASNet", "AmoebaNet", "DARTS_V1", "DARTS_V2"]
    assert resolve_genotype(f"{path}:DARTS_V2") == DARTS_V2
    assert resolve_genotype(f"{path}:DARTS") == DARTS_V2  # an alias inside the file
    assert resolve_named_genotype(f"{path}:DARTS") == ("DARTS", DARTS_V2)
    assert resolve_genotypes(f"{path}:NASNet") == {"NASNet": resolve_genotype("nasnet")}
    assert resolve_genotypes("darts") == {"darts": DARTS_V2}


def test_file_colon_unknown_name_lists_the_file_names():
    spec = f"{FIXTURES / 'darts_genotypes.py'}:ENAS"
    with pytest.raises(InputError) as err:
        resolve_genotype(spec)
    assert err.value.source == spec
    assert "unknown genotype 'ENAS'" in err.value.problem
    assert "DARTS_V2" in err.value.problem and "DARTS" in err.value.problem


def test_a_file_with_many_genotypes_needs_a_name():
    with pytest.raises(InputError, match=r"holds 4 genotypes .*FILE|pick one"):
        resolve_genotype(FIXTURES / "darts_genotypes.py")


def test_a_directory_is_not_a_genotype(tmp_path):
    with pytest.raises(InputError, match="directory"):
        resolve_genotype(str(tmp_path))


def test_genotype_hash_is_stable_and_ignores_containers():
    assert genotype_hash(DARTS_V2) == genotype_hash(resolve_genotype("darts"))
    assert len(genotype_hash(DARTS_V2)) == 64
    assert genotype_hash(DARTS_V2) != genotype_hash(resolve_genotype("darts_v1"))
    as_lists = Genotype(
        *(list(map(list, c)) if i % 2 == 0 else list(c) for i, c in enumerate(DARTS_V2))
    )
    assert genotype_hash(as_lists) == genotype_hash(DARTS_V2)
    # Pinned: a change here would silently re-key every stored result. (It changed once, when
    # the canonical form started sorting the edges within each node; see test_genotype_wild.)
    assert genotype_hash(DARTS_V2).startswith("7ea48cd53473")


def test_genotype_to_json_carries_name_and_extras():
    obj = genotype_to_json(DARTS_V2, "darts_v2", source="somewhere")
    assert obj["name"] == "darts_v2" and obj["source"] == "somewhere"
    assert obj["normal"][7] == ["dil_conv_3x3", 2]
    assert "name" not in genotype_to_json(DARTS_V2)
    with pytest.raises(ValueError):
        genotype_to_json(DARTS_V2, normal=[])


@pytest.mark.parametrize("suffix", [".json", ".py"])
def test_write_genotype_round_trips(tmp_path, suffix):
    path = write_genotype(tmp_path / f"out{suffix}", DARTS_V2, "my_geno", source="test")
    assert load_genotype_file(path) == {"my_geno": DARTS_V2}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temp file left behind


def test_write_genotype_rejects_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        write_genotype(tmp_path / "out.yaml", DARTS_V2)
