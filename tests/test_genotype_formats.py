"""Genotype file formats (canonical JSON, DARTS-style Python, NNI dict) and fuzzing.

Every malformed input must raise InputError and nothing else; every valid genotype must
round-trip through every format.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasaudit.genotype import (
    Genotype,
    genotype_from_nni,
    genotype_to_json,
    genotype_to_nni,
    genotype_to_python,
    load_genotype_file,
    parse_genotypes,
    resolve_genotype,
    resolve_genotypes,
    shipped_genotypes,
    validate_genotype,
)
from nasaudit.infra.errors import InputError
from nasaudit.search_space import load_search_space

FIXTURES = Path(__file__).parent / "fixtures" / "genotypes"
PAPER = load_search_space("paper")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# Third-party files
# ------------------------------------------------------------------------------------------


def test_third_party_darts_genotypes_py():
    found = load_genotype_file(FIXTURES / "darts_genotypes.py")
    assert list(found) == [
        "NASNet",
        "AmoebaNet",
        "DARTS_V1",
        "DARTS_V2",
    ]  # alias DARTS not repeated
    assert found["NASNet"] == resolve_genotype("nasnet")
    assert found["AmoebaNet"] == resolve_genotype("amoebanet")
    assert found["DARTS_V1"] == resolve_genotype("darts_v1")  # list(range(2, 6)) concat
    assert found["DARTS_V2"] == resolve_genotype("darts_v2")  # range(2, 6) concat
    assert found["AmoebaNet"].reduce_concat == (3, 4, 6)


def test_nni_fixture_with_both_input_forms():
    # normal/input_* are [j], reduce/input_* are bare j; "width"/"depth" are ignored.
    assert load_genotype_file(FIXTURES / "nni_darts_v2.json") == {
        "nni_darts_v2": resolve_genotype("darts_v2")
    }


def test_lone_positional_genotype_expression():
    assert load_genotype_file(FIXTURES / "pdarts_expr.txt") == {
        "pdarts_expr": resolve_genotype("pdarts")
    }


def test_lone_keyword_expression_and_collections_namedtuple():
    text = genotype_to_python(resolve_genotype("sgas"), "x").split("x = ", 1)[1]
    assert parse_genotypes(text, suffix=".py", default_name="g") == {"g": resolve_genotype("sgas")}
    module = (
        "import collections\nG = collections.namedtuple('G', ['normal', 'normal_concat', "
        "'reduce', 'reduce_concat'])\nA = G([('skip_connect', 0), ('skip_connect', 1)], [2], "
        "normal_concat=None, reduce=[('max_pool_3x3', 1), ('max_pool_3x3', 0)], reduce_concat=[2])"
    )
    with pytest.raises(InputError, match="field normal_concat given twice"):
        parse_genotypes(module, suffix=".py")
    ok = module.replace("normal_concat=None, ", "")
    assert parse_genotypes(ok, suffix=".py")["A"].reduce == (
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
    )


def test_python_names_concat_variables_and_docstrings():
    text = (
        '"""My genotypes."""\nfrom collections import namedtuple\n'
        "Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')\n"
        "CONCAT = range(2, 4)\nCELL = [('sep_conv_3x3', 0), ('sep_conv_3x3', 1),\n"
        "        ('skip_connect', 2), ('avg_pool_3x3', 1)]\n"
        "MINE: Genotype = Genotype(normal=CELL, normal_concat=CONCAT, reduce=CELL,"
        " reduce_concat=[2, 3])\nOTHER = MINE\n"
    )
    found = parse_genotypes(text, source="mine.py", suffix=".py")
    assert list(found) == ["MINE"]
    assert found["MINE"].normal_concat == (2, 3)


def test_canonical_json_single_and_many(tmp_path):
    g = resolve_genotype("enas")
    single = tmp_path / "one.json"
    single.write_text(json.dumps(genotype_to_json(g, "my_enas", source="x", note={"a": 1})))
    assert load_genotype_file(single) == {"my_enas": g}
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps(genotype_to_json(g)))
    assert load_genotype_file(nameless) == {"nameless": g}
    many = tmp_path / "many.json"
    many.write_text(
        json.dumps(
            {
                "genotypes": {
                    "b": genotype_to_json(g),
                    "a": genotype_to_json(resolve_genotype("sgas")),
                },
                "aliases": {"c": "a"},
            }
        )
    )
    assert list(load_genotype_file(many)) == ["b", "a"]
    assert resolve_genotype(f"{many}:c") == resolve_genotype("sgas")


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "X = Genotype(normal=NOT_DEFINED, normal_concat=[2], reduce=[], reduce_concat=[2])\n",
            "line 1: genotype 'X': name 'NOT_DEFINED' is not assigned earlier",
        ),
        ("X = Genotype([], [2])\n", "genotype 'X': Genotype() lacks reduce, reduce_concat"),
        (
            "X = Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[], extra=1)\n",
            "no field 'extra'",
        ),
        ("X = Genotype(*A)\n", "positional"),
        ("X = Genotype(range(10 ** 9), [2], [], [2])\n", "unsupported expression (BinOp)"),
        ("X = Genotype(range(100000000), [2], [], [2])\n", "out of bounds"),
        ("X = Genotype(lambda: 1, [2], [], [2])\n", "unsupported expression (Lambda)"),
        ("X = Genotype([i for i in range(3)], [2], [], [2])\n", "(ListComp)"),
        ("X = Genotype(open('/etc/passwd').read(), [2], [], [2])\n", "unsupported"),
        ("C = __import__('os').system('echo pwned')\nX = Genotype(C, [2], [], [2])\n",
         "line 2: genotype 'X': name 'C' (line 1): unsupported call"),
        ("def C():\n    pass\nX = Genotype(C, [2], [], [2])\n",
         "name 'C' comes from line 1 (FunctionDef C), which is not read"),
        ("X = Genotype(os.path, [2], [], [2])\n", "unsupported attribute access"),
        ("X = Genotype(f'{1}', [2], [], [2])\n", "JoinedStr"),
        (
            "X = Genotype(normal=[('a', 0, 1)], normal_concat=[2], reduce=[], reduce_concat=[2])\n",
            "expected an [op, input] pair",
        ),
        ("X = Genotype(" + "[" * 50 + "]" * 50 + ", [2], [], [2])", "nested too deeply"),
        ("X = 1\n", "no Genotype(...) found"),
        ("def f():\n    pass\n", "no Genotype(...) found in the file (1 other statement skipped)"),
        ("import os\nX = __import__('os').system('echo pwned')\n", "no Genotype(...) found"),
        ("x.y = 3\nX = namedtuple('Genotype', 'a b')\n", "no Genotype(...) found"),
        ("(" * 300 + ")" * 300, "invalid Python"),
        ("Genotype(\n", "invalid Python"),
    ],
)
def test_unsupported_python_raises_input_error(text, problem):
    with pytest.raises(InputError) as err:
        parse_genotypes(text, source="genotypes.py", suffix=".py")
    assert err.value.source == "genotypes.py"
    assert problem in err.value.problem
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "obj, problem",
    [
        ([1, 2], "expected a JSON object"),
        ({"foo": 1}, "not a genotype file"),
        ({"normal": []}, "lacks normal_concat, reduce, reduce_concat"),
        ({"genotypes": []}, '"genotypes" must be'),
        ({"genotypes": {"a": 3}}, "genotype 'a' must be a JSON object"),
        (
            {"normal": 3, "normal_concat": [], "reduce": [], "reduce_concat": []},
            "normal must be a list",
        ),
        ({"normal/op_2_0": "sep_conv_3x3"}, "missing NNI key normal/input_2_0"),
        ({"normal/op_3_0": "x", "normal/input_3_0": 0}, "numbered 2, 3"),
        ({"normal/op_2_0": "x", "normal/input_2_0": [0, 1]}, "must choose one input"),
        ({"normal/oops": 1}, "unexpected NNI key"),
        ({"normal/op_2_0": "sep_conv_3x3", "normal/input_2_0": 0}, "no reduce/op_* keys"),
    ],
)
def test_bad_json_shapes(obj, problem):
    with pytest.raises(InputError) as err:
        parse_genotypes(json.dumps(obj), source="g.json", suffix=".json")
    assert problem in err.value.problem


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a UTF-8"),
        (b"{\x00}", "NUL"),
        (b"[" * 200_000, "invalid JSON"),
        (b"{" + b"1" * 5000 + b"}", "invalid JSON"),
        (b'{"normal": ' + b"9" * 5000 + b"}", "invalid JSON"),
    ],
)
def test_binary_and_pathological_json(data, problem):
    with pytest.raises(InputError) as err:
        parse_genotypes(data, source="g.json", suffix=".json")
    assert problem in err.value.problem


def test_huge_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (5 << 20))
    with pytest.raises(InputError, match="larger than"):
        load_genotype_file(path)


def test_validation_failure_in_a_file_names_the_file_and_genotype(tmp_path):
    path = tmp_path / "genotypes.py"
    bad = resolve_genotype("darts_v2")._replace(normal_concat=(2, 3, 4, 9))
    path.write_text(genotype_to_python(bad, "FOO"))
    with pytest.raises(InputError) as err:
        load_genotype_file(path)
    assert str(err.value) == (
        f"{path}: line 5: genotype 'FOO', normal_concat: 9 names a missing node (the cell has "
        "states 2..5)"
    )


# ------------------------------------------------------------------------------------------
# NNI
# ------------------------------------------------------------------------------------------


def test_nni_export_matches_nni_darts_v2_layout():
    d = genotype_to_nni(resolve_genotype("darts_v2"))
    assert len(d) == 32
    assert d["normal/op_2_0"] == "sep_conv_3x3" and d["normal/input_2_0"] == [0]
    assert d["normal/op_4_1"] == "skip_connect" and d["normal/input_4_1"] == [0]
    assert d["normal/op_5_1"] == "dil_conv_3x3" and d["normal/input_5_1"] == [2]
    assert d["reduce/op_3_0"] == "skip_connect" and d["reduce/input_3_0"] == [2]


@pytest.mark.parametrize("name", ["darts_v1", "darts_v2", "pdarts", "sgas", "random", "darts_iii"])
def test_nni_round_trip(name):
    g = resolve_genotype(name)
    assert genotype_from_nni(genotype_to_nni(g)) == g
    bare = {k: v[0] if isinstance(v, list) else v for k, v in genotype_to_nni(g).items()}
    assert genotype_from_nni(bare) == g


def test_nni_cannot_express_partial_concats():
    with pytest.raises(InputError, match="concatenates all intermediate nodes"):
        genotype_to_nni(resolve_genotype("nasnet"))  # reduce_concat [4, 5, 6]


# ------------------------------------------------------------------------------------------
# Round trips of every shipped genotype
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", sorted(n for n, e in shipped_genotypes().items() if not e["alias_of"])
)
def test_shipped_round_trip_json_and_python(name):
    g = resolve_genotype(name)
    as_json = json.dumps(genotype_to_json(g, name))
    assert parse_genotypes(as_json, suffix=".json") == {name: g}
    assert parse_genotypes(genotype_to_python(g, name), suffix=".py") == {name: g}


def test_python_writer_makes_identifiers():
    g = resolve_genotype("darts")
    text = genotype_to_python(g, "my-geno 2")
    assert "my_geno_2 = Genotype(" in text
    assert parse_genotypes(genotype_to_python(g, "3x"), suffix=".py") == {"G_3x": g}


# ------------------------------------------------------------------------------------------
# Hypothesis: valid genotypes round-trip, bad input raises InputError only
# ------------------------------------------------------------------------------------------


@st.composite
def cells(draw, max_nodes=6):
    n = draw(st.integers(1, max_nodes))
    pairs = tuple(
        (draw(st.sampled_from(PAPER.ops)), draw(st.integers(0, node + 1)))
        for node in range(n)
        for _ in range(2)
    )
    concat = tuple(sorted(draw(st.sets(st.integers(2, n + 1), min_size=1))))
    return pairs, concat


@st.composite
def genotypes(draw):
    (normal, normal_concat), (reduce, reduce_concat) = draw(cells()), draw(cells())
    return Genotype(normal, normal_concat, reduce, reduce_concat)


@FUZZ
@given(genotypes())
def test_valid_genotypes_round_trip_every_format(g):
    validate_genotype(g, PAPER, source="x", name="g")
    assert parse_genotypes(json.dumps(genotype_to_json(g, "g")), suffix=".json") == {"g": g}
    assert parse_genotypes(genotype_to_python(g, "g"), suffix=".py") == {"g": g}
    full = g._replace(
        normal_concat=tuple(range(2, len(g.normal) // 2 + 2)),
        reduce_concat=tuple(range(2, len(g.reduce) // 2 + 2)),
    )
    assert genotype_from_nni(json.loads(json.dumps(genotype_to_nni(full)))) == full


def _load_or_input_error(data, suffix):
    """Parse and validate; any exception other than InputError fails the test."""
    try:
        for name, g in parse_genotypes(data, source="fuzz", suffix=suffix).items():
            validate_genotype(g, PAPER, source="fuzz", name=name)
    except InputError as exc:
        assert "\n" not in str(exc)
        return None
    return True


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from([".json", ".py", ""]))
def test_random_bytes_raise_only_input_error(data, suffix):
    _load_or_input_error(data, suffix)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
genotype_keys = st.sampled_from(
    [
        "normal",
        "normal_concat",
        "reduce",
        "reduce_concat",
        "name",
        "genotypes",
        "aliases",
        "normal/op_2_0",
        "normal/input_2_0",
        "reduce/op_2_0",
        "reduce/input_2_1",
    ]
)


@FUZZ
@given(st.dictionaries(genotype_keys, json_values, max_size=6) | json_values)
def test_random_json_values_raise_only_input_error(obj):
    _load_or_input_error(json.dumps(obj), ".json")


def _mutate(obj, path, value):
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@FUZZ
@given(
    st.sampled_from(sorted(n for n, e in shipped_genotypes().items() if not e["alias_of"])),
    st.data(),
)
def test_mutated_valid_genotypes_raise_only_input_error(name, data):
    obj = genotype_to_json(resolve_genotype(name), name)
    cell = data.draw(st.sampled_from(["normal", "reduce"]))
    replacement = data.draw(json_values | st.integers(-3, 12) | st.sampled_from(PAPER.ops))
    kind = data.draw(st.sampled_from(["op", "input", "pair", "concat", "drop", "truncate"]))
    position = data.draw(st.integers(0, len(obj[cell]) - 1))
    if kind == "op":
        _mutate(obj, [cell, position, 0], replacement)
    elif kind == "input":
        _mutate(obj, [cell, position, 1], replacement)
    elif kind == "pair":
        _mutate(obj, [cell, position], replacement)
    elif kind == "concat":
        _mutate(obj, [f"{cell}_concat", 0], replacement)
    elif kind == "drop":
        del obj[data.draw(st.sampled_from(["normal", "normal_concat", "reduce", "reduce_concat"]))]
    else:
        obj[cell] = obj[cell][:position]
    text = json.dumps(obj)
    if _load_or_input_error(text, ".json"):
        # Whatever survived validation must round-trip through Python too.
        g = parse_genotypes(text, suffix=".json")[name]
        assert parse_genotypes(genotype_to_python(g, name), suffix=".py") == {name: g}


python_atoms = st.sampled_from(
    [
        "0",
        "1",
        "-1",
        "2.5",
        "'sep_conv_3x3'",
        "'skip_connect'",
        "None",
        "True",
        "range(2, 6)",
        "range(2)",
        "list(range(2, 4))",
        "[]",
        "()",
        "Genotype",
        "DARTS",
        "__import__('os')",
        "open('x')",
        "x.y",
        "lambda: 0",
        "{}",
        "{1}",
        "b'x'",
        "...",
        "*a",
        "f'{x}'",
        "1 + 1",
        "[('sep_conv_3x3', 0), ('skip_connect', 1)]",
        "[2, 3]",
        "print(1)",
    ]
)
python_exprs = st.recursive(
    python_atoms,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.lists(inner, max_size=4).map(lambda xs: "(" + ", ".join(xs) + ",)")
        | st.lists(inner, max_size=4).map(lambda xs: "Genotype(" + ", ".join(xs) + ")")
        | st.tuples(
            st.sampled_from(["normal", "normal_concat", "reduce", "reduce_concat", "bad"]), inner
        ).map(lambda kv: f"Genotype({kv[0]}={kv[1]})")
    ),
    max_leaves=12,
)
python_lines = st.one_of(
    st.tuples(st.sampled_from(["DARTS", "X", "Genotype", "range"]), python_exprs).map(
        lambda t: f"{t[0]} = {t[1]}"
    ),
    python_exprs,
    st.sampled_from(
        [
            "import os",
            "from collections import namedtuple",
            "# comment",
            "Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')",
            "def f(): pass",
            "if True: X = 1",
            "del X",
            "X += 1",
            "  bad indent",
        ]
    ),
    st.text(alphabet=string.printable, max_size=30),
)


@FUZZ
@given(st.lists(python_lines, min_size=1, max_size=6))
def test_random_python_snippets_raise_only_input_error(lines):
    _load_or_input_error("\n".join(lines) + "\n", ".py")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_random_text_raises_only_input_error(text):
    _load_or_input_error(text, "")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".py", ".txt"]))
def test_random_files_through_resolve(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        resolve_genotypes(str(path))
    except InputError:
        pass
