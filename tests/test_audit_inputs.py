"""Bad audit inputs: one line naming the file, exit code 2, no traceback, nothing overwritten.

All of these fail before any training, so they are fast.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nasaudit.cli import main
from nasaudit.infra.outdir import MARKER, claim_output_dir

BASE = """
name = "bad"
out_dir = "out"

[dataset]
name = "digits"

[train]
epochs = 1

[[models]]
name = "tiny_cnn"
"""


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("nasaudit: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _config(tmp_path: Path, extra: str = "", base: str = BASE) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(base + extra)
    return path


@pytest.mark.parametrize("content", [b"junk\n", b"SQLite format 3\x00" + b"\x07" * 200])
def test_report_on_a_corrupt_database_names_it_and_leaves_it(tmp_path, capsys, content):
    claim_output_dir(tmp_path, "audit")  # an audit's own directory, its database damaged
    db = tmp_path / "results.sqlite"
    db.write_bytes(content)
    assert main(["report", str(tmp_path)]) == 2
    _one_line_error(capsys, "results.sqlite", "not an audit results database")
    assert db.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MARKER, "results.sqlite"])


def test_audit_into_a_corrupt_database_names_it_and_leaves_it(tmp_path, capsys):
    cfg = _config(tmp_path)
    claim_output_dir(tmp_path / "out", "audit")
    db = tmp_path / "out" / "results.sqlite"
    db.write_text("junk\n")
    assert main(["audit", str(cfg), "--no-progress", "--device", "cpu"]) == 2
    _one_line_error(capsys, "results.sqlite", "not an audit results database")
    assert db.read_text() == "junk\n"


def test_audit_refuses_a_foreign_sqlite_database(tmp_path, capsys):
    cfg = _config(tmp_path)
    claim_output_dir(tmp_path / "out", "audit")
    db = tmp_path / "out" / "results.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    assert main(["audit", str(cfg), "--no-progress", "--device", "cpu"]) == 2
    _one_line_error(capsys, "results.sqlite", "not an audit's results")
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "base", "needles"),
    [
        # A wrong type in [train] (was a TypeError traceback from TrainConfig.validate).
        ("", BASE.replace("epochs = 1", 'epochs = "two"'), ["epochs must be an integer", "'two'"]),
        ("", BASE.replace("epochs = 1", "epochs = 1.5"), ["epochs must be an integer"]),
        ("", BASE.replace("epochs = 1", "epochs = 1\nflip = 1"), ["flip must be true or false"]),
        ("", BASE.replace("epochs = 1", "epochs = 1\nlr = -1"), ["lr must be > 0"]),
        # The same ranges as the flags: a momentum of 2 in a config is refused like --momentum 2.
        ("", BASE.replace("epochs = 1", "epochs = 1\nmomentum = 2"), ["momentum must be <= 1, got 2"]),
        ("", BASE.replace("epochs = 1", "epochs = 1\nadv_eps = 2.0"), ["adv_eps must be <= 1, got 2"]),
        # Probe and attack values are checked by the modules' make_params, before any work.
        ("[probes.contour_param]\npoints = 4\n", BASE, ["[probes.contour_param]", "points"]),
        ("[attacks.pgd]\nn_inputs = -5\n", BASE, ["[attacks.pgd]", "n_inputs"]),
        # An unknown model: neither a baseline (listed) nor a genotype.
        ("", BASE.replace('name = "tiny_cnn"', 'name = "no_such_net"'),
         ["model 'no_such_net'", "neither a manual baseline", "resnet18", "nor a genotype"]),
        # Bad sizes in kwargs are caught by building the network on the meta device.
        ('[[models]]\nname = "r"\nspec = "resnet18"\nkwargs = { width = -4 }\n', BASE,
         ["model 'r'", "width must be an integer >= 1"]),
        ('[[models]]\nname = "d"\nspec = "darts"\nkwargs = { C = 0 }\n', BASE,
         ["model 'd'", "C must be an integer >= 1"]),
        ('[[models]]\nname = "d"\nspec = "darts"\nkwargs = { cells = 3 }\n', BASE,
         ["model 'd'", "cells"]),
        # Searches: a bad hook names the config file.
        ('[[searches]]\nname = "s"\nhooks = [1]\n[[models]]\nname = "m"\nspec = "search:s"\n',
         BASE, ["hooks must be a list of strings, got [1]"]),
        ('[[searches]]\nname = "s"\nlr = -1\n[[models]]\nname = "m"\nspec = "search:s"\n',
         BASE, ["lr must be > 0"]),
    ],
)
def test_bad_config_values_fail_up_front(tmp_path, capsys, extra, base, needles):
    cfg = _config(tmp_path, extra, base)
    assert main(["audit", str(cfg), "--no-progress", "--device", "cpu"]) == 2
    _one_line_error(capsys, "cfg.toml", *needles)
    assert not (tmp_path / "out").exists()  # nothing started, nothing written
