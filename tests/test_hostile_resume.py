"""Checkpoints read back for `train --resume` and `search --resume`: every field is checked before
anything trains. A malformed one is one stderr line and exit 2, the checkpoint is left byte for
byte as it was (nothing derived from it is written), and the next resume says the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasaudit.cli import main
from nasaudit.infra.outdir import claim_output_dir

TRAIN = ["train", "--model", "tiny_cnn", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
         "--device", "cpu", "--no-progress"]
SEARCH = ["search", "--dataset", "digits", "--epochs", "2", "--C", "4", "--layers", "2", "--batch-size", "32",
          "--train-subset", "64", "--device", "cpu", "--no-progress"]


def _refused(capsys, argv: list[str], ckpt: Path, *needles: str) -> None:
    before = ckpt.read_bytes()
    for _ in range(2):  # a second resume meets the same untouched checkpoint
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("nasaudit: error:") and err.count("\n") == 1, err
        for needle in needles:
            assert needle in err, err
        assert ckpt.read_bytes() == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny_cnn trained for its one epoch: its checkpoint and state."""
    root = tmp_path_factory.mktemp("train")
    assert main([*TRAIN, "--model-dir", str(root)]) == 0
    ckpt = root / "image" / "digits" / "tiny_cnn.pth"
    return ckpt, torch.load(ckpt, weights_only=True)


@pytest.mark.parametrize("field,value,needle", [
    ("history", "abc", "history must list"),
    ("history", [{"epoch": 1, "lr": "x"}], "field 'lr'"),
    ("history", [1], "history entry 1"),
    ("epoch", -5, "epoch must be a whole number"),
    ("epoch", "abc", "epoch must be a whole number"),
    ("epoch", 99, "epoch must be a whole number in [0, 1]"),
    ("optimizer", "x", "cannot resume from this checkpoint"),
    ("scheduler", {"last_epoch": "x"}, "cannot resume"),
    ("config", "a string", "config is not a table"),
])
def test_train_resume_refuses_a_malformed_checkpoint(tmp_path, capsys, trained, field, value, needle):
    _, state = trained
    claim_output_dir(tmp_path, "models")  # the model dir of an earlier `nasaudit train`
    ckpt = tmp_path / "image" / "digits" / "tiny_cnn.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({**state, field: value}, ckpt)
    argv = [*TRAIN, "--model-dir", str(tmp_path), "--resume"]
    _refused(capsys, argv, ckpt, "tiny_cnn.pth", needle)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("search")
    assert main([*SEARCH, "--out", str(root / "s"), "--max-steps", "1"]) == 0
    return root / "s", torch.load(root / "s" / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("field,value,needle", [
    ("step", "abc", "step must be a whole number"),
    ("epoch", -1, "epoch must be a whole number"),
    ("history", [{"epoch": 3}], "history must hold"),
    ("counters", {"weight_steps": "x"}, "counters"),
    ("sums", {"train_loss": 1.0}, "sums"),
    ("seconds", float("nan"), "seconds"),
    ("config", "a string", "config is not a table"),
    ("w_opt", "x", "w_opt must be a state dict"),
    ("sched", {"nope": 1}, "cannot resume"),
])
def test_search_resume_refuses_a_malformed_checkpoint(tmp_path, capsys, searched, field, value, needle):
    import shutil

    original, state = searched
    out = tmp_path / "s"
    shutil.copytree(original, out)  # the search's own folder (its marker included)
    ckpt = out / "checkpoint.pt"
    torch.save({**state, field: value}, ckpt)
    _refused(capsys, [*SEARCH, "--out", str(out), "--resume"], ckpt, "checkpoint.pt", needle)


@pytest.mark.parametrize("change,needle", [
    ({"model": "/etc/passwd.json"}, "not a path elsewhere"),
    ({"model": "../../../../x.py:G"}, "not a path elsewhere"),
    ({"model": "darts_v2", "genotype": "enas"}, "its genotype differs from 'darts_v2'"),
    ({"genotype": "enas"}, "names the manual model 'tiny_cnn' but records a genotype"),
])
def test_a_sidecar_that_points_elsewhere_or_contradicts_itself_is_refused(tmp_path, capsys, trained, change, needle):
    import json

    from nasaudit.genotype import genotype_to_json, shipped_genotypes
    from nasaudit.infra.checkpoint import sidecar_path

    ckpt, _ = trained
    copy = tmp_path / "m.pth"
    copy.write_bytes(ckpt.read_bytes())
    meta = json.loads(sidecar_path(ckpt).read_text())
    if "genotype" in change:
        change = {**change, "genotype": genotype_to_json(shipped_genotypes()[change["genotype"]]["genotype"])}
    sidecar_path(copy).write_text(json.dumps({**meta, **change}))
    code = main(["eval", "--checkpoint", str(copy), "--dataset", "digits", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "m.json" in err and needle in err, err
