"""The hostile-input corpus: every failure class of issue 10, each as a user or an attacker
would meet it.

Every case asserts the promise: exit code 2, one line on stderr naming the file (or flag) and
the problem, no traceback, and the files around the target untouched (hashed before and
after). CLI cases run in-process through `nasaudit.cli.main`; only what needs a real process
(a closed stdout, stdout on /dev/full, kill -9) runs one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nasaudit.infra.errors import InputError
from nasaudit.infra.outdir import MARKER, claim_output_dir
from tests.cli_helpers import cli, one_line

CHECKOUT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
AUDIT = """
name = "hostile"
out_dir = "{out}"

[dataset]
name = "digits"

[train]
epochs = 1

[[models]]
name = "tiny_cnn"
"""


# ------------------------------------------------------------------------------------ helpers


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (symlinks not followed), by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def untouched(before: dict[str, str], root: Path) -> None:
    """Every file hashed in `before` is still there with the same content."""
    after = hashes(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or deleted: {changed}"


def users_folder(path: Path) -> Path:
    """A folder full of a user's own work, named like files nasaudit writes."""
    (path / "report_files").mkdir(parents=True)
    (path / "report_files" / "thesis.tex").write_text("\\chapter{six months of work}\n")
    (path / "report.md").write_text("# my own report\n")
    (path / "report.html").write_text("<p>mine</p>\n")
    (path / "config.json").write_text('{"mine": true}\n')
    (path / "genotype.json").write_text('{"mine": true}\n')
    return path


def audit_config(tmp_path: Path, out: str | Path = "out", extra: str = "", text: str = AUDIT) -> Path:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text.format(out=out) + extra)
    return cfg


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """tiny_cnn trained one epoch on digits (seconds); its .pth with the sidecar beside it."""
    from nasaudit.data import load_dataset
    from nasaudit.training import TrainConfig, train_on_dataset

    model_dir = tmp_path_factory.mktemp("hostile_models") / "models"
    result = train_on_dataset("tiny_cnn", load_dataset("digits"), TrainConfig(epochs=1, batch_size=256),
                              device="cpu", model_dir=model_dir, progress=False)
    return Path(result.checkpoint)


def copy_checkpoint(ckpt: Path, dest: Path, **sidecar_changes) -> Path:
    """A copy of `ckpt` and its sidecar in `dest`, with sidecar fields replaced."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / ckpt.name
    target.write_bytes(ckpt.read_bytes())
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta.update(sidecar_changes)
    target.with_suffix(".json").write_text(json.dumps(meta))
    return target


# --------------------------------------------------------------- 1. output ownership


def test_audit_into_a_users_folder_is_refused(tmp_path, capsys):
    folder = users_folder(tmp_path / "work")
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "audit", audit_config(tmp_path, folder), "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, str(folder.resolve()), "not empty", "not made by a nasaudit audit run")
    untouched(before, tmp_path)
    assert not (folder / MARKER).exists() and not (folder / "results.sqlite").exists()


def test_an_audit_reruns_into_its_own_directory(tmp_path, capsys):
    """The directory an audit made is its own: a rerun (and `report`) work, nothing redone."""
    cfg = audit_config(tmp_path, text=AUDIT.replace("epochs = 1", "epochs = 1\nbatch_size = 256"))
    args = ["audit", cfg, "--device", "cpu", "--no-progress", "--no-report"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / MARKER).read_text())["kind"] == "audit"
    code, out, err = cli(capsys, *args)
    assert code == 0 and " 0 run now" in out, out + err
    assert cli(capsys, "report", tmp_path / "out")[0] == 0


def test_search_over_a_users_folder_is_refused(tmp_path, capsys):
    folder = users_folder(tmp_path / "work")
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "search", "--dataset", "digits", "--epochs", "1", "--out", folder,
                       "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, "--out", "not empty", "config.json")
    untouched(before, tmp_path)


@pytest.mark.parametrize("command", ["train", "probe", "attack", "demo", "report"])
def test_every_directory_writer_refuses_a_users_folder(command, tmp_path, capsys, tiny_checkpoint):
    folder = users_folder(tmp_path / "work")
    if command == "report":
        (folder / "results.sqlite").write_bytes(b"")  # even beside a database, the rest is not ours
    before = hashes(tmp_path)
    argv = {
        "train": ["train", "--model", "tiny_cnn", "--epochs", "1", "--model-dir", folder],
        "probe": ["probe", "gradvar", "--model", "tiny_cnn", "--out", folder],
        "attack": ["attack", "pgd", "--checkpoint", tiny_checkpoint, "--param", "n_inputs=2",
                   "--work-dir", folder],
        "demo": ["demo", "--out", folder, "--quick"],
        "report": ["report", folder],
    }[command]
    if command != "report":
        argv += ["--device", "cpu", "--no-progress"]
    code, _, err = cli(capsys, *argv)
    assert code == 2
    one_line(err, "not empty", "nasaudit writes only into a new or empty directory")
    untouched(before, tmp_path)
    assert not (folder / MARKER).exists()


@pytest.mark.parametrize("where", ["/", "~", "checkout"])
def test_root_home_and_checkout_are_never_run_directories(where, tmp_path, capsys):
    out = {"/": "/", "~": str(Path.home()), "checkout": str(CHECKOUT)}[where]
    # In the config file: refused at load, naming the file.
    code, _, err = cli(capsys, "audit", audit_config(tmp_path, out), "--device", "cpu")
    assert code == 2
    one_line(err, "cfg.toml", "out_dir", "never writes into /")
    # As a flag of every directory writer.
    for argv in (["search", "--dataset", "digits", "--out", out],
                 ["train", "--model", "tiny_cnn", "--epochs", "1", "--model-dir", out],
                 ["demo", "--out", out, "--quick"]):
        code, _, err = cli(capsys, *argv, "--device", "cpu", "--no-progress")
        assert code == 2, argv
        one_line(err, "refusing to write a run into")
    assert not Path("/results.sqlite").exists() and not (Path(out) / MARKER).exists()


def test_mitigate_refuses_to_overwrite_its_input_without_force(tmp_path, capsys):
    from nasaudit.genotype import resolve_genotype, write_genotype

    src = write_genotype(tmp_path / "mine.json", resolve_genotype("darts_v2"), "mine")
    (tmp_path / "notes.txt").write_text("neighbour")
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "mitigate", "deepen", src, "--out", src)
    assert code == 2
    one_line(err, "--out", "is the input file", "--force")
    untouched(before, tmp_path)
    code, _, err = cli(capsys, "mitigate", "deepen", f"{src}:mine", "--out", tmp_path / "." / "mine.json")
    assert code == 2 and "is the input file" in err
    code, _, _ = cli(capsys, "mitigate", "deepen", src, "--out", src, "--force")
    assert code == 0 and "mine_deep" in src.read_text()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "a/b", "..", "x\\y", ""])
@pytest.mark.parametrize("table", ["models", "searches"])
def test_labels_and_search_names_must_be_plain_path_components(name, table, tmp_path, capsys):
    if table == "models":
        extra = f'[[models]]\nname = {json.dumps(name)}\nspec = "resnet18"\n'
    else:
        extra = (f'[[searches]]\nname = {json.dumps(name)}\nepochs = 1\n'
                 f'[[models]]\nname = "found"\nspec = {json.dumps("search:" + name)}\n')
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "audit", audit_config(tmp_path, extra=extra), "--device", "cpu")
    assert code == 2
    one_line(err, "cfg.toml", "must be a plain name")
    untouched(before, tmp_path)
    assert not (tmp_path / "out").exists() and not Path("/tmp/absolute").exists()


# ------------------------------------------------------------ 2. runs never stop silently


def _closed_stdout(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run nasaudit with stdout read for one line and then closed (`| head -1`)."""
    proc = subprocess.Popen([sys.executable, "-m", "nasaudit", *argv], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    _, err = proc.communicate(timeout=600)
    assert first, err.decode()
    return proc.returncode, err.decode()


def test_train_with_a_closed_stdout_finishes_and_returns_its_own_code(tmp_path):
    code, err = _closed_stdout(["train", "--model", "tiny_cnn", "--epochs", "3", "--batch-size", "256",
                                "--model-dir", "models", "--device", "cpu", "--no-progress"], tmp_path)
    assert code == 0 and "Traceback" not in err and "Broken pipe" not in err, err
    meta = json.loads((tmp_path / "models/image/digits/tiny_cnn.json").read_text())
    assert meta["epoch"] == 3  # all epochs, not the one running when the pipe closed
    # A failing job keeps its own code (2) with its one-line message, its stdout unread.
    proc = subprocess.run([sys.executable, "-m", "nasaudit", "analyze", "no_such_genotype"], cwd=tmp_path,
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 2
    one_line(proc.stderr.decode(), "no_such_genotype")


def test_search_with_a_closed_stdout_writes_its_genotype(tmp_path):
    code, err = _closed_stdout(["search", "--dataset", "digits", "--epochs", "1", "--C", "4",
                                "--layers", "2", "--nodes", "2", "--batch-size", "32",
                                "--train-subset", "64", "--probe-samples", "0", "--out", "s",
                                "--device", "cpu", "--no-progress"], tmp_path)
    assert code == 0 and "Traceback" not in err, err
    assert json.loads((tmp_path / "s" / "genotype.json").read_text())["normal"]


def test_stdout_on_a_full_device_is_one_line_exit_2(tmp_path):
    """A real ENOSPC from the kernel: stdout redirected to /dev/full."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "nasaudit", "analyze", "darts_v2", "--json"],
                              cwd=tmp_path, env=ENV, stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 2
    one_line(proc.stderr.decode(), "standard output", "disk full")


# ------------------------------------------------------------------- 3. OS failures


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails as on a read-only mount (EROFS from creating its temp file)."""
    import tempfile

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - mkstemp's own argument name
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("command", ["train", "audit", "search", "mitigate", "attack-output",
                                     "analyze-draw", "work-dir", "demo"])
def test_a_read_only_output_is_one_line_exit_2(command, tmp_path, capsys, monkeypatch, tiny_checkpoint):
    (tmp_path / "neighbour.txt").write_text("keep me")
    cfg = audit_config(tmp_path, tmp_path / "ro")
    before = hashes(tmp_path)
    target = tmp_path / "ro"
    argv = {
        "train": ["train", "--model", "tiny_cnn", "--epochs", "1", "--model-dir", target, "--device", "cpu"],
        "audit": ["audit", cfg, "--device", "cpu"],
        "search": ["search", "--dataset", "digits", "--epochs", "1", "--out", target, "--device", "cpu"],
        "mitigate": ["mitigate", "deepen", "darts_v2", "--out", target / "g.json"],
        "attack-output": ["attack", "pgd", "--checkpoint", tiny_checkpoint, "--param", "n_inputs=2",
                          "--param", "iters_most_likely=1", "--param", "iters_least_likely=1", "--output", target / "r.json", "--device", "cpu"],
        "analyze-draw": ["analyze", "darts_v2", "--draw", target / "cells.png"],
        "work-dir": ["attack", "pgd", "--checkpoint", tiny_checkpoint, "--param", "n_inputs=2",
                     "--work-dir", target, "--device", "cpu"],
        "demo": ["demo", "--out", target, "--quick", "--device", "cpu"],
    }[command]
    if command not in ("mitigate", "analyze-draw"):
        argv.append("--no-progress")
    _read_only(monkeypatch)
    code, _, err = cli(capsys, *argv)
    assert code == 2
    one_line(err, str(target), "read-only file system")
    untouched(before, tmp_path)


def test_disk_full_leaves_the_previous_checkpoint_intact(tmp_path, capsys, monkeypatch):
    argv = ["train", "--model", "tiny_cnn", "--batch-size", "256", "--model-dir", tmp_path / "m",
            "--device", "cpu", "--no-progress"]
    argv += ["--epochs", "1"]
    assert cli(capsys, *argv)[0] == 0
    ckpt = tmp_path / "m/image/digits/tiny_cnn.pth"
    before = hashes(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("nasaudit.infra.io.os.fsync", full)
    code, _, err = cli(capsys, *argv, "--overwrite")  # starting over writes at the epoch's end
    assert code == 2
    one_line(err, str(ckpt.parent), "disk full")
    untouched(before, tmp_path)
    assert not [p for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]


def test_torch_save_on_a_really_full_device_names_the_file(tmp_path, monkeypatch):
    """torch.save hides ENOSPC as RuntimeError("unexpected pos"): the writer reports it as
    "disk full" naming the target, with bytes really refused by the kernel (/dev/full)."""
    import torch

    from nasaudit.infra.errors import describe_os_error
    from nasaudit.infra.io import atomic_torch_save

    real_fdopen = os.fdopen

    def to_dev_full(fd, mode="r", *args, **kwargs):
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, *args, **kwargs)

    monkeypatch.setattr("nasaudit.infra.io.os.fdopen", to_dev_full)
    target = tmp_path / "model.pth"
    with pytest.raises(OSError) as caught:
        atomic_torch_save({"w": torch.zeros(100_000)}, target)
    assert caught.value.errno == errno.ENOSPC
    assert describe_os_error(caught.value) == f"{target}: disk full (no space left on the device)"
    assert list(tmp_path.iterdir()) == []  # no torn temp file left


def test_an_output_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    before = hashes(tmp_path)
    for argv, needle in (
        (["search", "--dataset", "digits", "--out", tmp_path / "afile"], "exists and is a file"),
        (["train", "--model", "tiny_cnn", "--epochs", "1", "--model-dir", tmp_path / "afile"],
         "exists and is a file"),
        (["demo", "--out", tmp_path / "afile", "--quick"], "exists and is a file"),
    ):
        code, _, err = cli(capsys, *argv, "--device", "cpu", "--no-progress")
        assert code == 2, argv
        one_line(err, "afile", needle)
    code, _, err = cli(capsys, "analyze", "darts_v2", "--draw", tmp_path / "afile" / "cells.png")
    assert code == 2
    one_line(err, "afile", "is a file, not a directory")
    untouched(before, tmp_path)


@pytest.mark.parametrize("argv", [
    ["search", "--dataset", "digits", "--epochs", "1", "--out", "/proc/nasaudit-test-run",
     "--device", "cpu", "--no-progress"],
    ["analyze", "darts_v2", "--draw", "/proc/nasaudit-test-cells.png"],
    ["mitigate", "deepen", "darts_v2", "--out", "/proc/nasaudit-test.json"],
])
def test_unwritable_proc_targets_are_one_line_exit_2(argv, capsys):
    """/proc refuses new files even to root: a real OS failure, not a simulated one."""
    code, _, err = cli(capsys, *argv)
    assert code == 2
    one_line(err, "/proc/nasaudit-test")


def test_special_files_are_never_replaced(tmp_path, capsys):
    """Renaming a temp file over /dev/full (root may) would replace the device for everyone."""
    from nasaudit.infra.io import atomic_write_text

    with pytest.raises(InputError, match="special file"):
        atomic_write_text("/dev/full", "x")
    (tmp_path / "g.json").symlink_to("/dev/null")  # an output name planted as a device link
    code, _, err = cli(capsys, "mitigate", "deepen", "darts_v2", "--out", tmp_path / "g.json")
    assert code == 2
    one_line(err, "g.json", "already exists")  # refused as an existing file first ...
    code, _, err = cli(capsys, "mitigate", "deepen", "darts_v2", "--out", tmp_path / "g.json", "--force")
    assert code == 2
    one_line(err, "g.json", "special file")  # ... and --force never replaces a device
    assert Path("/dev/full").is_char_device() and Path("/dev/null").is_char_device()


# ------------------------------------------------------------- 4. bounded resources


@pytest.mark.parametrize(("change", "needle"), [
    ({"num_classes": 10**9}, "num_classes must be at most"),
    ({"model_kwargs": {"width": 10**6}}, "model_kwargs.width must be at most"),
    ({"model_kwargs": {"width": [1, 2]}}, "model_kwargs.width must be a number"),
])
def test_sidecar_sizes_are_bounded(change, needle, tmp_path, capsys, tiny_checkpoint):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "m", **change)
    before = hashes(tmp_path)
    start = time.perf_counter()
    code, _, err = cli(capsys, "eval", "--checkpoint", ckpt, "--dataset", "digits", "--device", "cpu")
    assert code == 2 and time.perf_counter() - start < 30
    one_line(err, "tiny_cnn.json", needle)
    untouched(before, tmp_path)


def test_search_nodes_and_flags_are_bounded(tmp_path, capsys):
    for argv, needle in (
        (["search", "--dataset", "digits", "--nodes", "1000", "--out", tmp_path / "s"], "--nodes"),
        (["train", "--model", "tiny_cnn", "--momentum", "2", "--model-dir", tmp_path / "m"],
         "--momentum: momentum must be <= 1, got 2"),
        (["train", "--model", "tiny_cnn", "--adv-eps", "2", "--model-dir", tmp_path / "m"],
         "--adv-eps: adv_eps must be <= 1, got 2"),
        (["train", "--model", "tiny_cnn", "--epochs", "10000000", "--model-dir", tmp_path / "m"],
         "--epochs"),
    ):
        code, _, err = cli(capsys, *argv, "--device", "cpu", "--no-progress")
        assert code == 2, argv
        one_line(err, needle)
    assert list(tmp_path.iterdir()) == []  # nothing claimed, nothing written


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**70)])
def test_seeds_outside_0_to_2_63_are_refused(seed, tmp_path, capsys, tiny_checkpoint):
    for argv in (["train", "--model", "tiny_cnn", "--model-dir", tmp_path / "m"],
                 ["search", "--dataset", "digits", "--out", tmp_path / "s"],
                 ["probe", "gradvar", "--model", "tiny_cnn"],
                 ["attack", "pgd", "--checkpoint", tiny_checkpoint]):
        code, _, err = cli(capsys, *argv, "--seed", seed, "--device", "cpu", "--no-progress")
        assert code == 2, argv
        one_line(err, "seed", "2^63-1")
    # In a config file, checked at load.
    code, _, err = cli(capsys, "audit", audit_config(tmp_path, text="seeds = [-1]\n" + AUDIT), "--device", "cpu")
    assert code == 2
    one_line(err, "cfg.toml", "seeds must be an integer in 0..2^63-1")
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()


def _cifar_folder(root: Path, labels) -> Path:
    """A CIFAR-10 folder whose every batch holds 10 black images and `labels`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {"data": np.zeros((10, 3072), dtype=np.uint8), "labels": labels}
    payload = pickle.dumps(batch, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(payload)
    return folder


def _shared_reference_bomb() -> list:
    """10 labels, each the same list of 1,000 references to one list of 1,000 zeros: a few KB
    pickled, 10**7 int64 (80 MB) for np.asarray; one more level and it is terabytes."""
    inner = [0] * 1000
    middle = [inner] * 1000
    return [middle] * 10


@pytest.mark.parametrize(("labels", "needle"), [
    (_shared_reference_bomb(), "'labels'[0] must be an integer class index, got list"),
    ([2**70] * 10, "labels outside 0..9"),
    ([0.5] * 10, "'labels'[0] must be an integer class index, got float"),
    ([True] * 10, "got bool"),
    ([0] * 9, "'labels' has 9 entries for 10 images"),
])
def test_cifar_label_structures_are_checked_before_numpy(labels, needle, tmp_path, capsys):
    _cifar_folder(tmp_path / "data", labels)
    before = hashes(tmp_path)
    start = time.perf_counter()
    code, _, err = cli(capsys, "train", "--model", "tiny_cnn", "--dataset", "cifar10", "--data-dir",
                       tmp_path / "data", "--epochs", "1", "--model-dir", tmp_path / "m", "--device", "cpu")
    assert code == 2 and time.perf_counter() - start < 20
    one_line(err, "data_batch_1", needle)
    untouched(before, tmp_path)
    assert not (tmp_path / "m").exists()


def test_a_search_space_from_dev_zero_is_refused_without_reading_it(capsys):
    start = time.perf_counter()
    code, _, err = cli(capsys, "analyze", "darts_v2", "--space", "/dev/zero")
    assert code == 2 and time.perf_counter() - start < 10
    one_line(err, "/dev/zero", "larger than")


# ---------------------------------------------------------- 5. strict configs and formats


@pytest.mark.parametrize(("extra", "text", "needles"), [
    ("[model_defaults.manul]\nwidth = 8\n", AUDIT, ["unknown key 'manul' in [model_defaults]",
                                                     "did you mean 'manual'?"]),
    ("", AUDIT.replace('name = "digits"', 'name = "digits"\ndata-dir = "x"'),
     ["unknown key 'data-dir' in [dataset]", "did you mean 'data_dir'?"]),
    ("", AUDIT.replace("epochs = 1", "epochs = 1\nmomentun = 0.9"), ["'momentun'", "did you mean 'momentum'?"]),
    ("", "out_dirr = 'x'\n" + AUDIT, ["unknown top-level key 'out_dirr'", "did you mean 'out_dir'?"]),
    ('[[searches]]\nname = "s"\nn_stpe = 5\n[[models]]\nname = "m"\nspec = "search:s"\n', AUDIT,
     ["'n_stpe'", "did you mean 'n_step'?"]),
    ('[attacks.pgd]\nn_input = 5\n', AUDIT, ["n_input", "did you mean 'n_inputs'?"]),
    ('[attacks.pdg]\n', AUDIT, ["unknown attack 'pdg'", "did you mean 'pgd'?"]),
    ('[report]\nweighing = 1\n', AUDIT, ["unknown key 'weighing' in [report]", "did you mean 'weighting'?"]),
    # Booleans must be TOML booleans: "no" is a non-empty string, so it used to mean true.
    ('[attacks.pgd]\nenabled = "no"\n', AUDIT, ["[attacks.pgd].enabled must be true or false"]),
    ("", AUDIT.replace('name = "digits"', 'name = "digits"\ndownload = "no"'),
     ["[dataset].download must be true or false"]),
    ('[probes.gradvar]\nat_init = 1\n', AUDIT, ["at_init must be true or false"]),
    # Types are checked before use.
    ('[[models]]\nname = "r"\nspec = "resnet18"\nkwargs = 5\n', AUDIT, ["kwargs must be a table"]),
    ('[[models]]\nname = "r"\nspec = "resnet18"\ntrain = 5\n', AUDIT, ["train must be a table"]),
    ('[[searches]]\nname = "s"\nseed = "abc"\n[[models]]\nname = "m"\nspec = "search:s"\n', AUDIT,
     ["seed must be an integer"]),
    ("", AUDIT.replace('name = "digits"', 'name = "digits"\nnum_classes = "x"'),
     ["[dataset].num_classes must be an integer"]),
    ("", AUDIT.replace('name = "digits"', 'name = "digits"\nnum_classes = 1000000000'),
     ["[dataset].num_classes must be an integer in 1..100000"]),
    ("", AUDIT.replace('name = "digits"', "name = 5"), ["[dataset].name must be a string"]),
    ('[[models]]\nname = "r"\nspec = 5\n', AUDIT, ["spec must be a string"]),
])
def test_audit_configs_are_strict(extra, text, needles, tmp_path, capsys):
    cfg = audit_config(tmp_path, extra=extra, text=text)
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "audit", cfg, "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, "cfg.toml", *needles)
    untouched(before, tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "needle"), [
    ("gamma = 0.5\n[search]\nn_step = 2\n", "'gamma' is outside the [search] table"),
    ("n_step = 2\n[extra]\nn_step = 5\n", "unknown parameter(s) extra"),
    ("[search]\nn_stpe = 5\n", "did you mean 'n_step'?"),
    ("[search]\nseed = -3\n", "seed"),
])
def test_search_configs_are_strict(text, needle, tmp_path, capsys):
    cfg = tmp_path / "search.toml"
    cfg.write_text(text)
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "search", "--config", cfg, "--dataset", "digits", "--out", tmp_path / "s",
                       "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, "search.toml", needle)
    untouched(before, tmp_path)
    assert not (tmp_path / "s").exists()


def test_duplicate_json_keys_are_errors(tmp_path, capsys, tiny_checkpoint):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "m")
    sidecar = ckpt.with_suffix(".json")
    text = sidecar.read_text()
    sidecar.write_text(text[:-1] + ', "num_classes": 3}')
    before = hashes(tmp_path)
    code, _, err = cli(capsys, "eval", "--checkpoint", ckpt, "--dataset", "digits", "--device", "cpu")
    assert code == 2
    one_line(err, "tiny_cnn.json", "duplicate key 'num_classes'")
    from nasaudit.genotype import genotype_to_json, resolve_genotype

    genotype = json.dumps(genotype_to_json(resolve_genotype("darts_v2"), name="one"))
    (tmp_path / "g.json").write_text(genotype[:-1] + ', "name": "two"}')
    code, _, err = cli(capsys, "analyze", tmp_path / "g.json")
    assert code == 2
    one_line(err, "g.json", "duplicate key 'name'")
    untouched(before, tmp_path)


def test_a_search_space_with_an_unknown_op_fails_at_load(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"ops": ["none", "skip_connect", "teleport"], "nodes": 2,
                                 "inputs_per_node": 2}))
    code, _, err = cli(capsys, "search", "--space", space, "--dataset", "digits", "--epochs", "1",
                       "--out", tmp_path / "s", "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, "space.json", "'teleport'", "nasaudit does not have")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("only", [",", " , ,", ""])
def test_only_must_name_a_model(only, tmp_path, capsys):
    code, _, err = cli(capsys, "audit", audit_config(tmp_path), "--only", only, "--device", "cpu")
    assert code == 2
    one_line(err, "--only", "names no model label")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------ literal names: no mathtext, no escapes


EVIL_NAME = "\x1b[31mred\x1b[0m$\\frac{$\r"


def test_genotype_names_are_printed_and_drawn_literally(tmp_path, capsys):
    from nasaudit.genotype import genotype_to_json, resolve_genotype

    record = genotype_to_json(resolve_genotype("darts_v2"), name="x")
    record["name"] = EVIL_NAME
    (tmp_path / "evil.json").write_text(json.dumps(record))
    code, out, err = cli(capsys, "analyze", tmp_path / "evil.json", "--draw", tmp_path / "cells.png")
    assert code == 0, err
    assert "\x1b" not in out and "\r" not in out and "\\x1b[31mred" in out
    assert (tmp_path / "cells.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------- report: labels drawn literally, kill -9 leaves it valid


def _synthetic_audit(out: Path, labels: list[tuple[str, str]]) -> Path:
    """A results database with a few finished units per model (no training needed)."""
    from nasaudit.audit.store import Store

    rng = np.random.default_rng(0)
    claim_output_dir(out, "audit")  # as `nasaudit audit` does
    with Store(out) as store:
        store.set_meta("config", {"name": "hostile", "source": "test", "raw": {
            "models": [{"name": m} for m, _ in labels], "attacks": {"pgd": {}, "membership": {}},
            "probes": {"gradvar": {}}}})
        for i, (label, group) in enumerate(labels):
            info = {"kind": "model_info", "label": label, "spec": label, "group": group,
                    "parameters": 1000 + i, "kwargs": {}, "mitigation_of": None}
            store.record_unit(unit_key=f"{i}-info", model=label, model_group=group, stage="analyze",
                              name="model_info", params={}, seed=0, result=info, started=time.time(),
                              device="cpu")
            for seed in (0, 1):
                units = [
                    ("clean", "clean_accuracy", {"kind": "clean_accuracy", "test_acc": 0.9 + rng.normal(0, .01),
                                                 "test_loss": 0.3}),
                    ("attack", "pgd", {"kind": "attack.pgd", "asr": {"most_likely": float(rng.random()),
                                                                      "least_likely": float(rng.random())}}),
                    ("attack", "membership", {"kind": "attack.membership", "auc": float(rng.random()),
                                              "advantage_at_fpr": 0.01}),
                    ("probe", "gradvar", {"kind": "probe_gradvar", "log10_variance": float(rng.normal())}),
                ]
                for j, (stage, name, result) in enumerate(units):
                    store.record_unit(unit_key=f"{i}-{seed}-{j}", model=label, model_group=group,
                                      stage=stage, name=name, params={}, seed=seed, result=result,
                                      started=time.time(), device="cpu")
    return out


def _valid_report(out: Path) -> str:
    """report.md exists and every report_files/ link in it resolves; returns its text."""
    import re

    md = (out / "report.md").read_text()
    assert md.startswith("# nasaudit report") and (out / "report.html").is_file()
    links = re.findall(r"(report_files/[^)\s\"']+)", md + (out / "report.html").read_text())
    missing = [link for link in links if not (out / link).is_file()]
    assert not missing, missing
    return md


@pytest.mark.filterwarnings("error::UserWarning")  # a missing glyph: an escape drawn raw
def test_report_draws_mathtext_and_escape_labels_literally(tmp_path, capsys):
    out = _synthetic_audit(tmp_path / "run", [("$\\frac{$nas", "nas"), ("\x1b[31mman", "manual"),
                                               ("darts_v2", "nas"), ("resnet18", "manual")])
    code, _, err = cli(capsys, "report", out)
    assert code == 0, err
    _valid_report(out)
    assert list((out / "report_files" / "figures").glob("*.png"))


def test_kill_9_during_report_regeneration_leaves_a_valid_report(tmp_path, capsys):
    out = _synthetic_audit(tmp_path / "run", [("darts_v2", "nas"), ("enas", "nas"),
                                               ("resnet18", "manual"), ("vgg13_bn", "manual")])
    assert cli(capsys, "report", out)[0] == 0
    first = _valid_report(out)
    killed = 0
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        proc = subprocess.Popen([sys.executable, "-m", "nasaudit", "report", str(out)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=120)
        assert _valid_report(out) == first  # the previous report, whole and linked
    assert killed >= 2  # the build takes longer than the first delays
    # The next run cleans what the kills left and writes a fresh, valid report.
    assert cli(capsys, "report", out)[0] == 0
    _valid_report(out)
    assert not [p.name for p in out.iterdir() if p.name.startswith((".report-build-", ".report-old-"))]


def test_an_interrupted_swap_is_undone_at_the_next_start(tmp_path, capsys):
    """A kill between moving the old report_files aside and moving the new one in."""
    from nasaudit.audit.report.write import OLD_PREFIX, _recover

    out = _synthetic_audit(tmp_path / "run", [("darts_v2", "nas"), ("resnet18", "manual")])
    assert cli(capsys, "report", out)[0] == 0
    first = _valid_report(out)
    aside = out / f"{OLD_PREFIX}abc123"
    aside.mkdir()
    os.replace(out / "report_files", aside / "report_files")
    _recover(out)
    assert _valid_report(out) == first and not aside.exists()


def test_a_failed_report_build_leaves_the_previous_report(tmp_path, capsys, monkeypatch):
    out = _synthetic_audit(tmp_path / "run", [("darts_v2", "nas"), ("resnet18", "manual")])
    assert cli(capsys, "report", out)[0] == 0
    before = hashes(out)
    import nasaudit.audit.report.write as write

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report_files"))

    monkeypatch.setattr(write, "render_markdown", broken)
    code, _, err = cli(capsys, "report", out)
    assert code == 2
    one_line(err, "disk full")
    untouched(before, out)
    _valid_report(out)
