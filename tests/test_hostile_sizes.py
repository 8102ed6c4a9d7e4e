"""Sizes from flags, configs and data files are bounded before anything is allocated, extracted
or spawned (`nasaudit.infra.limits`): each case is a one-line refusal naming the limit, nothing written."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nasaudit.infra.errors import InputError
from tests.cli_helpers import cli, one_line


@pytest.mark.parametrize("flags,limit", [
    (["--C", "100000"], "MAX_MODEL_SIZES['C']"),
    (["--C", "1000", "--layers", "100"], "MAX_MODEL_PARAMETERS"),  # each size allowed, the network not
])
def test_train_refuses_a_network_too_large_to_allocate(tmp_path, capsys, flags, limit):
    code, _, err = cli(capsys, "train", "--model", "darts_v2", *flags, "--dataset", "digits", "--epochs", "1",
                       "--model-dir", tmp_path / "run", "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, limit)
    assert not any((tmp_path / "run").glob("*.pth")) if (tmp_path / "run").exists() else True


def test_build_model_bounds_every_source_before_allocating():
    from nasaudit.models.registry import build_model

    with pytest.raises(InputError, match=r"width is 100,000.*MAX_MODEL_SIZES\['width'\]"):
        build_model("resnet18", 10, width=100_000, source="[[models]] resnet18")
    assert sum(p.numel() for p in build_model("resnet18", 10, width=8).parameters()) > 0


def _audit_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "a.toml"
    cfg.write_text('name = "a"\nout_dir = "out"\n[dataset]\nname = "digits"\n[[models]]\nname = "resnet18"\n')
    return cfg


@pytest.mark.parametrize("flags,needles", [
    (["--workers", "100000"], ["--workers", "MAX_WORKERS"]),
    (["--engine", "ray", "--address", "x;touch /tmp/pwned"], ["--address", "not a Ray address"]),
])
def test_audit_refuses_a_process_storm_and_a_malformed_cluster_address(tmp_path, capsys, flags, needles):
    code, _, err = cli(capsys, "audit", _audit_config(tmp_path), "--dry-run", *flags)
    assert code == 2
    one_line(err, *needles)


def test_an_archive_declaring_gigabytes_is_refused_before_extraction(tmp_path):
    """A tar whose one member declares 3 GB (a sparse file here, a bomb in the wild)."""
    from nasaudit.data import load_dataset

    header = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    header.size = 3 << 30
    archive = tmp_path / "cifar-10-python.tar.gz"
    with open(archive, "wb") as handle:
        handle.write(header.tobuf(format=tarfile.GNU_FORMAT))
        handle.truncate(512 + header.size + 1024)  # sparse: no disk used
    with pytest.raises(InputError, match="MAX_EXTRACTED_BYTES") as info:
        load_dataset("cifar10", tmp_path)
    assert "cifar-10-python.tar.gz" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]  # no temp folder left


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """An npz whose data.npy header declares `shape` (uint8) but holds almost nothing."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.ones(shape[0] if shape[0] < 10 else 4, dtype=np.int64))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.npy", header.getvalue() + b"\0" * 64)
        z.writestr("labels.npy", labels.getvalue())


@pytest.mark.parametrize("shape,needle", [
    ((1_400_000, 3072), "MAX_ARRAY_BYTES"),  # 4.3 GB declared
    ((4, 3072), "declares 12,288 bytes but stores"),  # small, but more than the member holds
])
def test_an_npz_declaring_more_than_it_holds_is_refused_before_loading(tmp_path, shape, needle):
    from nasaudit.data import load_dataset

    root = tmp_path / "imagenet32"
    for folder, name in (("Imagenet32_train_npz", "train_data_batch_1.npz"), ("Imagenet32_val_npz", "val_data.npz")):
        (root / folder).mkdir(parents=True)
        _npz_declaring(root / folder / name, shape)
    with pytest.raises(InputError, match=needle):
        load_dataset("imagenet32", tmp_path)
    assert os.path.getsize(root / "Imagenet32_val_npz" / "val_data.npz") < 10_000


BASE = 'name = "a"\nout_dir = "out"\n[dataset]\nname = "digits"\n[[models]]\nname = "resnet18"\n'


@pytest.mark.parametrize("extra,needles", [
    ("kwargs = { width = 100000 }\n", ["model 'resnet18'", "MAX_MODEL_SIZES['width']"]),
    ("[attacks.knockoff]\nreplica_kwargs = { width = 100000 }\n", ["[attacks.knockoff]", "MAX_MODEL_SIZES"]),
    ("[[searches]]\nname = \"x\"\nspace = \"/dev/zero\"\n", ["[[searches]] 'x'", "/dev/zero", "larger than"]),
    ("[[searches]]\nname = \"x\"\nspace = \"/etc/passwd\"\n", ["[[searches]] 'x'", "invalid JSON"]),
    ("[[sweeps]]\nname = \"k\"\ngamma = [\"a\", \"b\"]\n", ["[[searches]] 'k-gammaa'"]),
    ("[[sweeps]]\nname = \"k\"\nn_step = [" + ", ".join(map(str, range(1, 51))) + "]\nlr = ["
     + ", ".join(f"0.0{i}" for i in range(1, 51)) + "]\n", ["MAX_SWEEP_POINTS", "2,500"]),
    ("SEEDS", ["MAX_SEEDS", "100,000"]),
])
def test_audit_config_sizes_and_paths_fail_the_config_check(tmp_path, capsys, extra, needles):
    cfg = tmp_path / "a.toml"
    if extra == "SEEDS":
        cfg.write_text(f"seeds = {list(range(100_000))}\n" + BASE)
    else:
        cfg.write_text(BASE + extra)
    code, _, err = cli(capsys, "audit", cfg, "--dry-run")
    assert code == 2
    one_line(err, "a.toml", *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["analyze", "mitigate"])
def test_explicit_output_files_are_not_replaced_without_force(tmp_path, capsys, command):
    target = tmp_path / ("cells.png" if command == "analyze" else "g.json")
    target.write_text("mine\n")
    argv = (["analyze", "darts_v2", "--draw", target] if command == "analyze"
            else ["mitigate", "deepen", "darts_v2", "--out", target])
    code, _, err = cli(capsys, *argv)
    assert code == 2
    one_line(err, str(target), "already exists", "--force")
    assert target.read_text() == "mine\n"
    assert cli(capsys, *argv, "--force")[0] == 0 and target.read_bytes() != b"mine\n"
