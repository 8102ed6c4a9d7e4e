"""The audit runner on a tiny digits config: kill -9 and resume, reruns do no work, keys follow
parameters, checkpoints are reused, config validation."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasaudit.audit.config import config_from_dict, load_config
from nasaudit.audit.runner import run_audit
from nasaudit.audit.store import Store
from nasaudit.infra.errors import InputError

# 2 models x (analyze, gradvar at init, train, clean, gradvar, pgd, pgd_sweep) = 14 units.
TINY = """
name = "tiny"
out_dir = "out"
seeds = [0]

[dataset]
name = "digits"

[train]
epochs = 2
batch_size = 64
lr = 0.05
drop_path_prob = 0.0

[model_defaults.nas]
C = 4
layers = 2
auxiliary = false

[model_defaults.manual]
width = 4

[[models]]
name = "darts_v2"

[[models]]
name = "resnet18"

[probes.gradvar]
n_samples = 16
chunk_size = 8

[attacks.pgd]
n_inputs = 24
restarts = 1

[attacks.pgd_sweep]
n_inputs = 24
eps = [0.01, 0.03]
"""
TOTAL_UNITS = 14


def _rows(db: Path) -> dict[str, tuple[float, float]]:
    """unit_key -> (started, finished) of every finished unit, read with plain sqlite3."""
    conn = sqlite3.connect(db)
    try:
        return {k: (s, f) for k, s, f in conn.execute(
            "SELECT unit_key, started, finished FROM units WHERE status = 'done'")}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory):
    """Start the audit in a subprocess, SIGKILL it once some units are stored, then resume."""
    root = tmp_path_factory.mktemp("audit")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    db = root / "out" / "results.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasaudit", "audit", str(cfg), "--no-progress", "--no-report",
         "--device", "cpu"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if db.is_file() and len(_rows(db)) >= 4:
                    break
            except sqlite3.OperationalError:  # the schema is being created right now
                pass
            time.sleep(0.05)
        assert proc.poll() is None, f"audit ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = _rows(db)
    assert 4 <= len(before) < TOTAL_UNITS
    summary = run_audit(load_config(cfg), device="cpu", resume=True, progress=False)
    return cfg, db, before, summary


def test_kill_9_then_resume_completes_without_redoing(killed_and_resumed) -> None:
    cfg, db, before, summary = killed_and_resumed
    after = _rows(db)
    assert summary.total == TOTAL_UNITS and summary.failed == 0
    assert summary.skipped == len(before) and summary.ran == TOTAL_UNITS - len(before)
    assert len(after) == TOTAL_UNITS
    # Units finished before the kill were not run again: their rows are untouched.
    assert {k: after[k] for k in before} == before
    with Store(db) as store:
        rows = store.units()
        assert {r.stage for r in rows} == {"analyze", "probe_init", "train", "clean", "probe", "attack"}
        darts = [r for r in rows if r.model == "darts_v2"]
        assert all(r.genotype_hash and len(r.genotype_hash) == 64 for r in darts)
        assert all(r.nasaudit_version and r.torch_version and r.device == "cpu" for r in rows)
        clean = [r for r in rows if r.stage == "clean"]
        assert all(0.0 <= r.result["test_acc"] <= 1.0 for r in clean)
        assert all(r.result["kind"] == "attack.pgd" for r in rows if r.name == "pgd")
    report = (cfg.parent / "out" / "report.md").read_text()
    assert "Clean accuracy (Table 1)" in report and "darts_v2" in report
    assert any((cfg.parent / "out" / "tensorboard").rglob("events.out.tfevents.*"))


def test_rerun_of_finished_audit_does_no_work(killed_and_resumed) -> None:
    cfg, db, _, _ = killed_and_resumed
    before = _rows(db)
    started = time.perf_counter()
    summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    assert summary.ran == 0 and summary.skipped == summary.total == TOTAL_UNITS
    assert _rows(db) == before
    assert time.perf_counter() - started < 30  # planning only: nothing is loaded or trained


def test_changed_parameters_rerun_only_their_units(killed_and_resumed) -> None:
    cfg, db, _, _ = killed_and_resumed
    changed = cfg.parent / "changed.toml"
    changed.write_text(TINY.replace("[attacks.pgd]\nn_inputs = 24", "[attacks.pgd]\nn_inputs = 12"))
    before = _rows(db)
    summary = run_audit(load_config(changed), device="cpu", progress=False, report=False)
    assert summary.ran == 2 and summary.skipped == TOTAL_UNITS - 2  # pgd on each model
    after = _rows(db)
    assert set(before) <= set(after) and len(after) == TOTAL_UNITS + 2
    with Store(db) as store:
        pgd = [r for r in store.units() if r.name == "pgd" and r.params.get("n_inputs") == 12]
        assert {r.model for r in pgd} == {"darts_v2", "resnet18"}


def test_train_unit_reuses_matching_checkpoint(killed_and_resumed) -> None:
    cfg, db, _, _ = killed_and_resumed
    with Store(db) as store:
        train = next(r for r in store.units(stage="train") if r.model == "resnet18")
        store._conn.execute("DELETE FROM units WHERE unit_key = ?", (train.unit_key,))
    summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    assert summary.ran == 1
    with Store(db) as store:
        again = store.get(train.unit_key)
    assert again.result["reused_checkpoint"] is True
    assert again.result["epochs_done"] == train.result["epochs_done"] == 2
    assert again.result["history"] == train.result["history"]


def test_second_audit_on_same_directory_is_refused(killed_and_resumed, tmp_path: Path) -> None:
    import fcntl

    cfg, _, _, _ = killed_and_resumed
    with open(cfg.parent / "out" / ".audit.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another nasaudit audit"):
            run_audit(load_config(cfg), device="cpu", progress=False, report=False)


def test_config_paths_and_errors(tmp_path: Path) -> None:
    sub = tmp_path / "experiments"
    sub.mkdir()
    (sub / "c.toml").write_text(
        'out_dir = "../runs/x"\n[dataset]\nname = "cifar10"\ndata_dir = "../data"\n'
        '[[models]]\nname = "mine"\nspec = "cells.json"\n[[models]]\nname = "resnet18"\n'
        "[[attacks.knockoff]]\nbudgets = [10]\neach_model = \"replica\"\n"
    )
    config = load_config(sub / "c.toml")
    assert config.out_dir == (tmp_path / "runs" / "x").resolve()
    assert config.dataset.data_dir == (tmp_path / "data").resolve()
    assert config.model("mine").spec == str((sub / "cells.json").resolve())
    assert [m.group for m in config.models] == ["nas", "manual"]
    assert [t.params["replica"] for t in config.attacks] == ["mine", "resnet18"]
    assert [m.label for m in config.only(["resnet18"]).models] == ["resnet18"]
    with pytest.raises(InputError, match="unknown model"):
        config.only(["nope"])
    searched = config_from_dict({
        "dataset": {"name": "digits"}, "searches": [{"name": "s", "epochs": 1}],
        "models": [{"name": "found", "spec": "search:s"}, {"name": "resnet18"}],
        "attacks": {"knockoff": {"each_model": "replica", "each_model_in": ["resnet18"]}},
    })
    assert [s.name for s in searched.searches] == ["s"] and searched.model("found").group == "nas"
    assert searched.only(["resnet18"]).searches == ()
    assert [t.params for t in searched.attacks] == [{"replica": "resnet18"}]
    base = {"dataset": {"name": "digits"}, "models": [{"name": "resnet18"}]}
    for bad, message in (
        ({**base, "modles": []}, "unknown top-level key"),
        ({**base, "attacks": {"pgdd": {}}}, "unknown attack 'pgdd'"),
        ({**base, "models": [{"name": "a", "spec": "search:nope"}]}, "no such \\[\\[searches\\]\\]"),
        ({**base, "seeds": [0, 0]}, "seeds must not repeat"),
        ({"models": [{"name": "resnet18"}]}, "needs a name"),
    ):
        with pytest.raises(InputError, match=message):
            config_from_dict(bad)
    with pytest.raises(InputError, match="unknown parameter"):
        from nasaudit.audit.runner import validate_config

        validate_config(config_from_dict({**base, "attacks": {"pgd": {"n_input": 5}}}))
    with pytest.raises(InputError, match="invalid TOML"):
        (tmp_path / "bad.toml").write_text("[dataset\n")
        load_config(tmp_path / "bad.toml")


def test_corrupt_row_is_reported_and_rerun(killed_and_resumed) -> None:
    """A damaged JSON row: the report still builds (listing it as corrupt) and the next audit
    runs exactly that unit again."""
    from nasaudit.audit.report import write_report

    cfg, db, _, _ = killed_and_resumed
    with Store(db) as store:
        pgd = next(r for r in store.units() if r.name == "pgd" and r.model == "resnet18"
                   and r.params.get("n_inputs") == 24)
        store._conn.execute("UPDATE units SET result = '{broken' WHERE unit_key = ?", (pgd.unit_key,))
    report = write_report(cfg.parent / "out")
    assert report.is_file() and "Clean accuracy (Table 1)" in report.read_text()
    summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    assert summary.ran == 1 and summary.failed == 0
    with Store(db) as store:
        again = store.get(pgd.unit_key)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert again.status == "done" and drop(again.result) == drop(pgd.result)  # deterministic


def test_foreign_checkpoint_is_not_reused(killed_and_resumed) -> None:
    """A checkpoint under OUT whose sidecar does not match the unit (here: another training
    config, as a planted or stale file would have) is never reused; the unit trains anew."""
    import json

    cfg, db, _, _ = killed_and_resumed
    with Store(db) as store:
        train = next(r for r in store.units(stage="train") if r.model == "resnet18")
        store._conn.execute("DELETE FROM units WHERE unit_key = ?", (train.unit_key,))
    sidecar = (cfg.parent / "out" / train.result["checkpoint"]).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "config": {**meta["config"], "lr": 0.5}}))
    summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    assert summary.ran == 1 and summary.failed == 0
    with Store(db) as store:
        again = store.get(train.unit_key)
    assert again.result["reused_checkpoint"] is False
    assert json.loads(sidecar.read_text())["config"]["lr"] == 0.05  # rewritten by the new training
    untimed = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert untimed(again.result["history"]) == untimed(train.result["history"])  # deterministic


def test_sidecar_model_string_is_never_a_path(killed_and_resumed, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The sidecar's "model" names a genotype file in the current directory: the audit builds
    the network from its own plan, not from that file."""
    import json

    from nasaudit.genotype import resolve_genotype, write_genotype

    cfg, db, _, _ = killed_and_resumed
    with Store(db) as store:
        train = next(r for r in store.units(stage="train") if r.model == "darts_v2")
        clean = next(r for r in store.units(stage="clean") if r.model == "darts_v2")
        store._conn.execute("DELETE FROM units WHERE unit_key = ?", (clean.unit_key,))
    write_genotype(tmp_path / "planted.json", resolve_genotype("enas"), name="planted")
    monkeypatch.chdir(tmp_path)
    sidecar = (cfg.parent / "out" / train.result["checkpoint"]).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "model": "planted.json"}))
    summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    assert summary.ran == 1 and summary.failed == 0
    with Store(db) as store:
        assert store.get(clean.unit_key).result == clean.result


def test_os_error_in_a_unit_is_one_line_naming_the_path(killed_and_resumed) -> None:
    """A unit that hits an OS failure (here: its output directory's parent is a file) is
    recorded as failed with one line naming the path; the other units go on."""
    cfg, db, _, _ = killed_and_resumed
    out = cfg.parent / "out"
    with Store(db) as store:
        probes = [r for r in store.units(stage="probe")]
        for r in probes:
            store._conn.execute("DELETE FROM units WHERE unit_key = ?", (r.unit_key,))
    (out / "probes").rename(out / "probes.moved")
    (out / "probes").write_text("a file where the audit expects a directory\n")
    try:
        summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    finally:
        (out / "probes").unlink()
        (out / "probes.moved").rename(out / "probes")
    assert summary.ran == 0 and summary.failed == len(probes) == 2
    with Store(db) as store:
        failed = store.units(status="failed")
    assert {r.unit_key for r in failed} == {r.unit_key for r in probes}
    for row in failed:
        assert "\n" not in row.error and str(out / "probes") in row.error
        assert "is a file" in row.error or "not a directory" in row.error
    summary = run_audit(load_config(cfg), device="cpu", progress=False, report=False)
    assert summary.ran == 2 and summary.failed == 0


def test_describe_error_for_disk_full_and_read_only(tmp_path: Path) -> None:
    import errno

    from nasaudit.audit.units import describe_error

    full = describe_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.pth")))
    assert full == f"OSError: {tmp_path / 'm.pth'}: disk full (no space left on the device)"
    ro = describe_error(OSError(errno.EROFS, "Read-only file system", "/ro/x"))
    assert ro == "OSError: /ro/x: read-only file system"
    torn = describe_error(RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"))
    assert torn.startswith("OSError: disk full while writing a checkpoint") and "\n" not in torn
