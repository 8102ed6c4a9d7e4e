"""Genotype files as public NAS repositories ship them: read every genotype, execute nothing.

The corpus under fixtures/genotypes/wild has one small file per construct that made whole
files fail (helper functions, op tables, list concatenation, OrderedDict, a second namedtuple,
`__main__` blocks, ops outside our space, string inputs, SNAS's all-edge cells), plus a
mixture. Each is checked for its genotypes, skipped statements, warnings and exit code, both
through the library and through `nasaudit analyze`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasaudit.cli import main
from nasaudit.genotype import (
    Genotype,
    genotype_hash,
    genotype_to_python,
    load_genotype_file,
    read_genotype_file,
    read_genotype_text,
    resolve_genotype,
    resolve_genotypes,
    shipped_genotypes,
)
from nasaudit.infra.errors import InputError

WILD = Path(__file__).parent / "fixtures" / "genotypes" / "wild"
# What each file must give: readable genotypes (name -> shipped genotype it equals, or None when
# it has no shipped twin), aliases, unreadable genotypes (name -> (line, words of the problem)),
# the kinds of skipped statements (prefixes, by line), warnings (words) and the exit code.
CORPUS = {
    "helper_function.py": {
        "genotypes": {"DARTS_V2": "darts_v2"},
        "skipped": {2: "ImportFrom", 15: "FunctionDef count_ops"},
        "exit": 0,
    },
    "arch_dict.py": {
        "genotypes": {"DARTS_V2": "darts_v2"},
        "aliases": {"DARTS": "DARTS_V2"},
        "skipped": {2: "ImportFrom", 9: "Assign arch_names (Dict)"},
        "exit": 0,
    },
    "list_concat.py": {
        "genotypes": {"PC_DARTS_cifar": "pc_darts_cifar"},
        "skipped": {
            2: "ImportFrom",
            6: "Assign CONV_PRIMITIVES",
            7: "Assign OTHER_PRIMITIVES",
            8: "Assign ALL_PRIMITIVES (BinOp)",
        },
        "exit": 0,
    },
    "ordered_dict.py": {
        "genotypes": {"SGAS": "sgas"},
        "skipped": {
            2: "ImportFrom",
            6: "Assign PRIMITIVES (call to OrderedDict)",
            11: "Assign OPS_BY_SPACE (call to OrderedDict)",
        },
        "exit": 0,
    },
    "second_namedtuple.py": {
        "genotypes": {"PDARTS": "pdarts"},
        "invalid": {"MULTI": (9, "built with namedtuple 'Genotype_multi'")},
        "skipped": {2: "ImportFrom", 5: "namedtuple Genotype_multi"},
        "exit": 0,
    },
    "main_block.py": {
        "genotypes": {"SNAS_MILD": "snas_mild"},
        "skipped": {2: "ImportFrom", 8: "Expr (call to print)", 10: "If"},
        "exit": 0,
    },
    "duplicate.py": {
        "genotypes": {"DARTS": "darts_v2"},  # the last binding wins, as in Python
        "skipped": {2: "ImportFrom"},
        "warnings": ["'DARTS' is defined twice (lines 7 and 10)"],
        "exit": 0,
    },
    "bad_ops.py": {
        "genotypes": {"s1": None, "s2": None},
        "invalid": {
            "s3_noise": (8, "unknown op 'noise'"),
            "mixsep": (9, "unknown op 'mixsep'"),
            "circle": (10, "unknown op 'dil_circle_conv_5x5'"),
            "string_inputs": (11, "input 'c_{k-2}' is not an integer"),
        },
        "skipped": {3: "ImportFrom"},
        "exit": 0,
    },
    "no_genotype.py": {"error": "no Genotype(...) found in the file", "exit": 2},
    "snas_edge_all.py": {
        "genotypes": {"SNAS_mild_edge_all": None, "SNAS_mild_swapped": None},
        "invalid": {
            "SNAS_ambiguous_edge_all": (21, "node 2 keeps 3 non-none edges, not 2"),
        },
        "skipped": {3: "ImportFrom"},
        "warnings": ["'SNAS_mild_edge_all': the normal cell and reduce cell list every edge"],
        "exit": 0,
    },
    "none_edges.py": {
        "genotypes": {"ONE_NONE": None, "NONE_CHAIN": None},
        "skipped": {4: "ImportFrom"},
        "exit": 0,
    },
    "mixture.py": {
        "genotypes": {"DARTS_V2": "darts_v2", "DARTS_V1": "darts_v1"},
        "aliases": {"DARTS": "DARTS_V2"},
        "invalid": {
            "NB": (14, "built with namedtuple 'GenotypeNB'"),
            "NOISY": (22, "unknown op 'noise'"),
            "BROKEN": (25, "unsupported expression (BinOp)"),
        },
        "skipped": {
            3: "Import os",
            4: "Import sys",
            5: "ImportFrom",
            8: "namedtuple GenotypeNB",
            10: "Assign PRIMITIVES",
            12: "Assign EXTRA (BinOp)",
            13: "Assign TABLE (call to OrderedDict)",
            17: "FunctionDef helper",
            28: "Expr (call to print)",
            29: "Assign arch (Dict)",
            31: "If",
        },
        "warnings": ["'DARTS_V1' is defined twice (lines 21 and 26)"],
        "exit": 0,
    },
}


def test_the_corpus_is_complete():
    assert sorted(p.name for p in WILD.glob("*.py")) == sorted(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_reads_as_expected(name):
    expected = CORPUS[name]
    path = WILD / name
    if "error" in expected:
        with pytest.raises(InputError) as err:
            load_genotype_file(path)
        assert expected["error"] in err.value.problem and err.value.source == str(path)
        return
    found = read_genotype_file(path)
    assert list(found.genotypes) == list(expected["genotypes"])
    for genotype_name, twin in expected["genotypes"].items():
        if twin is not None:
            assert found.genotypes[genotype_name] == resolve_genotype(twin), genotype_name
    assert found.aliases == expected.get("aliases", {})
    invalid = expected.get("invalid", {})
    assert list(found.invalid) == list(invalid)
    for bad_name, (line, words) in invalid.items():
        bad = found.invalid[bad_name]
        assert bad.line == line and words in bad.problem, bad
        assert bad.problem.startswith(f"genotype {bad_name!r}")
    assert [item.line for item in found.skipped] == list(expected["skipped"])
    for item in found.skipped:
        assert item.kind.startswith(expected["skipped"][item.line]), item
    assert len(found.warnings) == len(expected.get("warnings", []))
    for warning, words in zip(found.warnings, expected.get("warnings", []), strict=True):
        assert words in warning and "\n" not in warning


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_through_the_cli(name, capsys):
    expected = CORPUS[name]
    path = WILD / name
    code = main(["analyze", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == expected["exit"]
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and str(path) in err and expected["error"] in err
        return
    report = json.loads(out)
    assert [r["genotype"] for r in report["genotypes"]] == list(expected["genotypes"])
    assert [item["line"] for item in report["skipped"]] == list(expected["skipped"])
    assert [bad["name"] for bad in report["invalid"]] == list(expected.get("invalid", {}))
    # One stderr line per unreadable genotype, naming the file, the line and the genotype.
    lines = [line for line in err.splitlines() if line.startswith("nasaudit: not read:")]
    assert len(lines) == len(expected.get("invalid", {}))
    for line, (bad_name, (lineno, words)) in zip(lines, expected.get("invalid", {}).items(), strict=False):
        assert f"{path}: line {lineno}: genotype {bad_name!r}" in line and words in line
    warnings = [line for line in err.splitlines() if line.startswith("nasaudit: warning:")]
    assert len(warnings) == len(expected.get("warnings", []))


def test_naming_an_invalid_genotype_exits_2_and_a_valid_one_0(capsys):
    path = WILD / "bad_ops.py"
    assert main(["analyze", f"{path}:s3_noise"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}: line 8: genotype 's3_noise', normal cell, node 0: unknown op 'noise'" in err
    assert main(["analyze", f"{path}:s2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["genotype"] for r in json.loads(out)["genotypes"]] == ["s2"]
    assert "not read" not in err  # only the named genotype matters


def test_table_output_names_skipped_statements(capsys):
    assert main(["analyze", str(WILD / "helper_function.py")]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 statements that define no genotype (never executed)" in out
    assert "line 15 FunctionDef count_ops" in out


def test_a_single_genotype_is_picked_only_when_unambiguous():
    with pytest.raises(InputError, match="holds 6 genotypes .*s3_noise \\(unreadable\\)"):
        resolve_genotype(WILD / "bad_ops.py")
    assert list(resolve_genotypes(WILD / "bad_ops.py")) == ["s1", "s2"]


def test_nothing_in_the_corpus_runs(tmp_path):
    # The corpus writes /tmp/nasaudit-should-never-exist if any of it ran; so does this file.
    marker = tmp_path / "ran"
    payload = (
        "import os\n"
        f"os.system('touch {marker}')\n"
        f"X = open({str(marker)!r}, 'w')\n"
        f"def f(): open({str(marker)!r}, 'w')\n"
        f"class C:\n    open({str(marker)!r}, 'w')\n"
        f"if True:\n    open({str(marker)!r}, 'w')\n"
        f"G = __import__('os').system('touch {marker}')\n"
        + genotype_to_python(resolve_genotype("darts"), "DARTS").split("\n\n", 2)[2]
    )
    found = read_genotype_text(payload, source="payload.py", suffix=".py")
    assert list(found.genotypes) == ["DARTS"]
    assert not marker.exists()
    for name in CORPUS:
        try:
            read_genotype_file(WILD / name)
        except InputError:
            pass
    assert not Path("/tmp/nasaudit-should-never-exist").exists()


# ------------------------------------------------------------------------------------------
# Hypothesis: valid genotypes mixed with arbitrary other statements
# ------------------------------------------------------------------------------------------

NOT_GENOTYPES = [
    "import os",
    "import subprocess as sp",
    "from collections import OrderedDict",
    "print('hello')",
    "os.system('touch {marker}')",
    "open('{marker}', 'w').write('x')",
    "X_{i} = __import__('os').system('touch {marker}')",
    "Y_{i} = [1, 2] + [3]",
    "Z_{i} = {{'a': 1}}",
    "T_{i} = OrderedDict([('a', 1)])",
    "L_{i} = lambda: open('{marker}', 'w')",
    "def helper_{i}():\n    open('{marker}', 'w')",
    "class Helper_{i}:\n    open('{marker}', 'w')",
    "if __name__ == '__main__':\n    open('{marker}', 'w')",
    "for k in range(3):\n    open('{marker}', 'w')",
    "with open('{marker}', 'w') as handle:\n    pass",
    "try:\n    open('{marker}', 'w')\nexcept Exception:\n    pass",
    "Other_{i} = namedtuple('Other', 'a b')",
    "Multi_{i} = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat extra')",
    "del os",
    "PRIMITIVES_{i} = ['none', 'skip_connect']",
    "assert False",
    "raise SystemExit(3)",
    "exec('open(\"{marker}\", \"w\")')",
    "eval('1')",
]
PRIMARY = sorted(n for n, e in shipped_genotypes().items() if not e["alias_of"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.just("genotype"), st.sampled_from(PRIMARY)),
            st.tuples(st.just("other"), st.sampled_from(NOT_GENOTYPES)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_generated_files_read_every_genotype_and_run_nothing(tmp_path, items):
    marker = tmp_path / "marker"
    lines = ["from collections import namedtuple",
             "Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')"]
    expected: dict[str, Genotype] = {}
    for i, (kind, value) in enumerate(items):
        if kind == "genotype":
            name = f"G_{i}_{value}"
            body = genotype_to_python(resolve_genotype(value), name).split("\n\n", 2)[2]
            lines.append(body.rstrip())
            expected[name] = resolve_genotype(value)
        else:
            lines.append(value.format(marker=marker, i=i))
    text = "\n".join(lines) + "\n"
    found = read_genotype_text(text, source="gen.py", suffix=".py")
    assert found.genotypes == expected  # every valid genotype, none invented
    assert not found.invalid and not found.aliases
    n_other = sum(kind == "other" for kind, _ in items)
    assert len(found.skipped) == n_other + 1  # + the namedtuple import line
    if not expected:
        assert "no Genotype(...) found" in found.no_genotype_error().problem
    assert not marker.exists()
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------
# The hash ignores the order of a node's edges
# ------------------------------------------------------------------------------------------


def test_hash_ignores_edge_order_within_a_node_but_not_across_nodes():
    found = read_genotype_file(WILD / "snas_edge_all.py")
    mild = resolve_genotype("snas_mild")
    swapped = found.genotypes["SNAS_mild_swapped"]
    assert swapped != mild
    assert genotype_hash(swapped) == genotype_hash(mild)
    # The all-edge listing derives SNAS-mild up to the order inside nodes.
    derived = found.genotypes["SNAS_mild_edge_all"]
    assert derived.normal == mild.normal and derived != mild
    assert genotype_hash(derived) == genotype_hash(mild)
    # Moving an edge to another node is another cell.
    moved = mild._replace(normal=(mild.normal[2],) + mild.normal[1:2] + (mild.normal[0],) + mild.normal[3:])
    assert genotype_hash(moved) != genotype_hash(mild)


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(PRIMARY), data=st.data())
def test_hash_is_invariant_under_any_per_node_permutation(name, data):
    g = resolve_genotype(name)
    cells = {}
    for cell in ("normal", "reduce"):
        pairs = list(getattr(g, cell))
        nodes = [pairs[i : i + 2] for i in range(0, len(pairs), 2)]
        cells[cell] = tuple(p for node in nodes for p in data.draw(st.permutations(node)))
    assert genotype_hash(g._replace(**cells)) == genotype_hash(g)


def test_hash_is_pinned():
    # Pinned: a change re-keys every stored result (the audit's model keys include it).
    assert genotype_hash(resolve_genotype("darts_v2")).startswith("7ea48cd53473")


# ------------------------------------------------------------------------------------------
# Bounds
# ------------------------------------------------------------------------------------------


def test_a_1250_node_cell_is_refused_at_load(tmp_path, capsys):
    huge = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 1250
    path = tmp_path / "huge.py"
    g = Genotype(tuple(huge), (2,), resolve_genotype("darts").reduce, (2, 3, 4, 5))
    path.write_text(genotype_to_python(g, "HUGE"))
    with pytest.raises(InputError) as err:
        load_genotype_file(path)
    assert err.value.source == str(path)
    assert "genotype 'HUGE', normal cell has 1250 nodes; space 'paper' allows at most 8" in (
        err.value.problem
    )
    assert main(["analyze", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "1250 nodes" in captured.err
    assert str(path) in captured.err and "'HUGE'" in captured.err


def test_files_are_read_with_a_bound(tmp_path):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(InputError, match="larger than"):
        load_genotype_file("/dev/zero")
    fifo_free = tmp_path / "big.py"
    fifo_free.write_bytes(b"#" * (5 << 20))
    with pytest.raises(InputError, match="larger than"):
        load_genotype_file(fifo_free)


def test_duplicate_json_keys_are_errors(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"normal": [], "normal": [], "normal_concat": [2], "reduce": [], '
                    '"reduce_concat": [2]}')
    with pytest.raises(InputError, match="duplicate key 'normal'"):
        load_genotype_file(path)


def test_json_many_with_one_bad_entry_reads_the_rest(tmp_path):
    darts = json.loads(json.dumps({"normal": [list(p) for p in resolve_genotype("darts").normal],
                                   "normal_concat": [2, 3, 4, 5],
                                   "reduce": [list(p) for p in resolve_genotype("darts").reduce],
                                   "reduce_concat": [2, 3, 4, 5]}))
    bad = dict(darts, normal=[["noise", 0], ["sep_conv_3x3", 1]], normal_concat=[2])
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"genotypes": {"good": darts, "bad": bad, "worse": {"normal": 1}}}))
    found = read_genotype_file(path)
    assert list(found.genotypes) == ["good"] and found.genotypes["good"] == resolve_genotype("darts")
    assert sorted(found.invalid) == ["bad", "worse"]
    assert "unknown op 'noise'" in found.invalid["bad"].problem
    assert os.fspath(path) in found.problems()[0]


def test_a_space_file_sets_the_node_bound(tmp_path):
    from nasaudit.search_space import load_search_space

    ops = list(load_search_space("darts").ops)
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"ops": ops, "nodes": 3, "inputs_per_node": 2, "max_nodes": 3}))
    assert load_search_space(small).max_nodes == 3
    assert load_search_space("paper").max_nodes == 8  # default: max(8, 2 * nodes)
    with pytest.raises(InputError, match="normal cell has 4 nodes; space 'small' allows at most 3"):
        resolve_genotype("darts", space=str(small))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ops": ops, "nodes": 4, "inputs_per_node": 2, "max_nodes": 2}))
    with pytest.raises(InputError, match='"max_nodes" must be an integer between'):
        load_search_space(bad)
