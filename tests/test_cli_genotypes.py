"""`nasaudit genotypes`, `nasaudit analyze` and `nasaudit mitigate`, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasaudit.cli import main
from nasaudit.genotype import genotype_to_nni, load_genotype_file, resolve_genotype, write_genotype

FIXTURES = Path(__file__).parent / "fixtures" / "genotypes"


def _one_line_error(capsys, code):
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("nasaudit: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_genotypes_lists_names_aliases_and_sources(capsys):
    assert main(["genotypes"]) == 0
    out = capsys.readouterr().out
    for name in ("nasnet", "darts_v2", "darts_iii", "pc_darts", "random"):
        assert name in out
    assert "AmoebaNet-A (Real et al. 2019)" in out
    darts_row = next(line for line in out.splitlines() if line.startswith("darts "))
    assert "darts_v2" in darts_row and "3/3c/2" in darts_row


def test_genotypes_json(capsys):
    assert main(["genotypes", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["darts_i"]["alias_of"] == "diy_deep"
    assert rows["diy_deep"]["cells"]["normal"] == {"depth": 5, "width": 1, "skip_connects": 2}
    assert len(rows) == 23


def test_analyze_name_table(capsys):
    assert main(["analyze", "darts"]) == 0
    out = capsys.readouterr().out
    assert "c_{k-2} -> 0 -> 3 -> output" in out
    normal = next(line for line in out.splitlines() if line.startswith("normal "))
    assert normal.split()[:4] == ["normal", "3", "3c", "2"]


def test_analyze_json_shape(capsys):
    assert main(["analyze", "darts_v2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["genotype"] == "darts_v2"
    assert record["cells"]["normal"]["depth"] == 3
    assert record["cells"]["normal"]["width"] == 3
    assert record["cells"]["normal"]["skip_connects"] == 2
    assert record["cells"]["reduce"]["skip_connects"] == 3


def test_analyze_third_party_file_gives_every_genotype_and_what_was_skipped(capsys):
    assert main(["analyze", str(FIXTURES / "darts_genotypes.py"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    records = report["genotypes"]
    assert [r["genotype"] for r in records] == ["NASNet", "AmoebaNet", "DARTS_V1", "DARTS_V2"]
    assert records[0]["cells"]["normal"]["width"] == 5
    assert report["source"] == str(FIXTURES / "darts_genotypes.py")
    assert report["aliases"] == {"DARTS": "DARTS_V2"} and report["invalid"] == []
    assert [item["line"] for item in report["skipped"]] == [3, 8]  # the import, PRIMITIVES


def test_analyze_file_colon_alias_and_nni_and_json(tmp_path, capsys):
    def only_record() -> dict:
        (record,) = json.loads(capsys.readouterr().out)["genotypes"]
        return record

    assert main(["analyze", f"{FIXTURES / 'darts_genotypes.py'}:DARTS", "--json"]) == 0
    assert only_record()["genotype"] == "DARTS"
    assert main(["analyze", str(FIXTURES / "nni_darts_v2.json"), "--json"]) == 0
    assert only_record()["cells"]["normal"]["depth"] == 3
    nni = tmp_path / "arch.json"
    nni.write_text(json.dumps(genotype_to_nni(resolve_genotype("darts_iii"))))
    assert main(["analyze", str(nni), "--json"]) == 0
    assert only_record()["cells"]["normal"]["depth"] == 5
    canonical = write_genotype(tmp_path / "mine.json", resolve_genotype("sgas"), "mine")
    assert main(["analyze", str(canonical), "--json"]) == 0
    assert only_record()["genotype"] == "mine"


def test_analyze_every_shipped_genotype(capsys):
    assert main(["genotypes", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    for name in names:
        assert main(["analyze", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["genotype"] == name


def test_analyze_draw(tmp_path, capsys):
    out = tmp_path / "cells.png"
    assert main(["analyze", "darts", "--draw", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["analyze", str(FIXTURES / "darts_genotypes.py"), "--draw", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.glob("cells_*.png")) == [
        "cells_AmoebaNet.png",
        "cells_DARTS_V1.png",
        "cells_DARTS_V2.png",
        "cells_NASNet.png",
    ]


def test_analyze_space_option(capsys):
    assert main(["analyze", "darts", "--space", "darts"]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, main(["analyze", "nasnet", "--space", "darts"]))
    assert "unknown op 'sep_conv_7x7'" in err
    err = _one_line_error(capsys, main(["analyze", "darts", "--space", "nope"]))
    assert "unknown search space" in err


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("garbage.json", b"\x00\xff\xfe binary", "not a UTF-8"),
        ("bad.json", b'{"normal": [["sep_conv_3x3", 0]]}', "lacks normal_concat"),
        ("evil.py", b"X = __import__('os').system('touch /tmp/pwned')\n", "no Genotype(...) found"),
        (
            "bad_input.py",
            b"BAD = Genotype([('sep_conv_3x3', 0), ('sep_conv_3x3', 7)], [2], "
            b"[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [2])\n",
            "line 1: genotype 'BAD', normal cell, node 0: input 7 is not below the node (allowed 0..1)",
        ),
        ("deep.json", b"[" * 100_000, "invalid JSON"),
        (
            "nni.json",
            b'{"normal/op_2_0": "sep_conv_3x3", "normal/input_2_0": [0, 1]}',
            "must choose one input",
        ),
    ],
)
def test_malformed_files_exit_2_with_one_line(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    err = _one_line_error(capsys, main(["analyze", str(path)]))
    assert str(path) in err and expected in err


def test_unknown_name_and_missing_file(capsys):
    err = _one_line_error(capsys, main(["analyze", "nonexistent_genotype"]))
    assert "unknown genotype" in err and "darts_v2" in err
    err = _one_line_error(capsys, main(["analyze", "missing/file.json"]))
    assert "not found" in err


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".json", ".py", ".txt"]))
def test_fuzzed_files_never_traceback(tmp_path, capsys, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    code = main(["analyze", str(path), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code == 0:
        json.loads(out)
    else:
        # Several unreadable genotypes are named one line each before the final error line.
        assert code == 2 and err.splitlines()[-1].startswith("nasaudit: error: ")


def test_mitigate_deepen_writes_json_and_prints_analysis(tmp_path, capsys):
    out = tmp_path / "deep.json"
    assert main(["mitigate", "deepen", "darts_v2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "darts_v2_deep" in printed
    found = load_genotype_file(out)
    assert found == {"darts_v2_deep": resolve_genotype("darts_i")}
    meta = json.loads(out.read_text())
    assert meta["derived_from"] == "darts_v2" and "deepen" in meta["source"]


def test_mitigate_deskip_python_out_and_json(tmp_path, capsys):
    out = tmp_path / "noskip.py"
    args = [
        "mitigate",
        "deskip",
        "darts",
        "--sibling",
        "--cells",
        "normal",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["before"]["cells"]["normal"]["skip_connects"] == 2
    assert report["after"]["cells"]["normal"]["skip_connects"] == 0
    assert load_genotype_file(out) == {"darts_noskip": resolve_genotype("darts_ii")}


def test_mitigate_both_cells_with_op(tmp_path, capsys):
    out = tmp_path / "x.json"
    assert (
        main(
            [
                "mitigate",
                "deskip",
                "nasnet",
                "--op",
                "sep_conv_7x7",
                "--cells",
                "both",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    after = json.loads(capsys.readouterr().out)["after"]["cells"]
    assert after["normal"]["skip_connects"] == after["reduce"]["skip_connects"] == 0
    assert after["normal"]["op_histogram"]["sep_conv_7x7"] == 2


def test_mitigate_default_out_goes_to_cwd(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["mitigate", "deepen", "darts", "--cells", "both"]) == 0
    g = load_genotype_file(tmp_path / "darts_deep.json")["darts_deep"]
    assert g.reduce != resolve_genotype("darts").reduce


def test_mitigate_errors(tmp_path, capsys):
    err = _one_line_error(
        capsys,
        main(
            ["mitigate", "deskip", "darts", "--op", "conv_9x9", "--out", str(tmp_path / "x.json")]
        ),
    )
    assert "--op" in err and "conv_9x9" in err
    err = _one_line_error(
        capsys,
        main(
            [
                "mitigate",
                "deskip",
                "darts",
                "--op",
                "skip_connect",
                "--out",
                str(tmp_path / "x.json"),
            ]
        ),
    )
    assert "skip_connect" in err
    err = _one_line_error(
        capsys, main(["mitigate", "deepen", "darts", "--out", str(tmp_path / "x.yaml")])
    )
    assert "suffix" in err
    err = _one_line_error(
        capsys, main(["mitigate", "deepen", str(FIXTURES / "darts_genotypes.py")])
    )
    assert "pick one" in err


def test_genotypes_table_shows_the_source_of_aliases(capsys):
    assert main(["genotypes"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    for alias, target in (("darts", "darts_v2"), ("darts_i", "diy_deep"), ("darts_ii", "diy_noskip"),
                          ("darts_iii", "diy_deep_noskip"), ("drnas", "drnas_cifar10"),
                          ("pc_darts", "pc_darts_cifar")):
        target_source = rows[target].split("  ")[-1].strip()
        assert target_source and rows[alias].endswith(f"= {target}: {target_source}")
    assert "= darts_v2: DARTS second order" in rows["darts"]


@pytest.mark.parametrize("op", ["none", "skip_connect"])
def test_mitigate_deskip_rejects_non_replacement_ops(tmp_path, capsys, op):
    out = tmp_path / "x.json"
    assert main(["mitigate", "deskip", "darts", "--op", op, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasaudit: error: --op:") and err.count("\n") == 1
    assert "Traceback" not in err and f"'{op}'" in err and not out.exists()


def test_analyze_draw_into_a_directory_is_refused_up_front(tmp_path, capsys):
    assert main(["analyze", "darts", "--draw", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nasaudit: error: --draw:") and captured.err.count("\n") == 1
    assert "is a directory" in captured.err and "Traceback" not in captured.err
    assert captured.out == "" and not any(tmp_path.iterdir())
