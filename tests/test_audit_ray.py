"""The Ray engine on a real local Ray cluster (2 CPUs, no GPU): the same records as the local
engine, a worker killed mid-training, a driver killed mid-run, --dry-run = what runs.

One cluster serves the whole module (Ray starts in seconds, not milliseconds). It has no GPUs,
so the engine drops the GPU part of each unit's request and runs every unit on one CPU: at
most two units at once. OMP_NUM_THREADS=1 is passed to the tasks (runtime_env), so two torch
processes do not oversubscribe the two cores.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from nasaudit.audit.plan import build_plan  # noqa: E402
from nasaudit.audit.runner import dry_run, run_audit  # noqa: E402
from nasaudit.audit.store import Store  # noqa: E402
from nasaudit.audit.units import checkpoint_file  # noqa: E402
from tests.engine_helpers import TINY, TOTAL, one_thread  # noqa: E402
from tests.engine_helpers import comparable as _comparable  # noqa: E402
from tests.engine_helpers import make_config as _config  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module: 2 CPUs, no GPU, no dashboard."""
    # One thread per task (two tasks on two cores); the local runs below use one thread too, so
    # the two engines do the same floating-point work and their records can be compared.
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rows(db: Path) -> dict[str, tuple[float, float]]:
    conn = sqlite3.connect(db)
    try:
        return {k: (s, f) for k, s, f in conn.execute(
            "SELECT unit_key, started, finished FROM units WHERE status = 'done'")}
    finally:
        conn.close()


def test_ray_records_equal_local_and_dry_run_lists_them(cluster, tmp_path: Path) -> None:
    local_cfg = _config(tmp_path / "local")
    ray_cfg = _config(tmp_path / "ray")
    listed = [line.split()[0] for line in dry_run(ray_cfg).splitlines()[1:-1]]
    assert len(listed) == TOTAL and not (tmp_path / "ray" / "out").exists()  # the dry run wrote nothing

    with one_thread():
        local = run_audit(local_cfg, device="cpu", engine="local", progress=False, report=False)
    remote = run_audit(ray_cfg, device="cpu", engine="ray", progress=False, report=False)
    assert local.failed == remote.failed == 0 and local.ran == remote.ran == TOTAL
    assert remote.engine == "ray" and remote.ray_start_seconds is not None
    with Store(local_cfg.out_dir) as a, Store(ray_cfg.out_dir) as b:
        rows_a = {r.unit_key: r for r in a.units()}
        rows_b = {r.unit_key: r for r in b.units()}
        statuses = b.statuses()
    assert sorted(rows_b) == sorted(listed) == sorted(rows_a)  # --dry-run listed what ran
    for key, row in rows_a.items():
        assert _comparable(row.result, local_cfg.out_dir) == _comparable(rows_b[key].result, ray_cfg.out_dir), \
            f"{row.model} {row.stage} {row.name} differs between engines"
        assert (row.genotype_hash, row.model_key, row.device) == \
               (rows_b[key].genotype_hash, rows_b[key].model_key, rows_b[key].device)
    assert set(statuses.values()) == {"done"}
    # Shared-directory design: the tasks (other processes) wrote the checkpoints under OUT.
    plan = build_plan(ray_cfg)
    train = next(u for u in plan.units if u.stage == "train" and u.model == "tiny_cnn")
    ckpt = checkpoint_file(ray_cfg, plan.models[train.group_key], "digits")
    assert ckpt.is_file() and ckpt.with_suffix(".json").is_file()
    markers = list((ray_cfg.out_dir / "work" / ".attempts").rglob(f"{train.key}.json"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["pid"] != os.getpid()
    # The dry run of a finished audit says so for every unit.
    assert dry_run(ray_cfg).splitlines()[-1] == f"{TOTAL} units: {TOTAL} done"


def test_worker_killed_while_training_completes_once(cluster, tmp_path: Path) -> None:
    """SIGKILL the Ray worker that trains: Ray retries the task, which resumes from the last
    epoch checkpoint, and the store ends with the unit once."""
    text = TINY.replace("epochs = 2", "epochs = 6").replace('[[models]]\nname = "resnet18"\n', "")
    cfg = _config(tmp_path, text)
    plan = build_plan(cfg)
    train = next(u for u in plan.units if u.stage == "train")
    ckpt = checkpoint_file(cfg, plan.models[train.group_key], "digits")
    box: dict = {}
    driver = threading.Thread(target=lambda: box.update(summary=run_audit(
        cfg, device="cpu", engine="ray", progress=False, report=False)))
    driver.start()
    killed = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and driver.is_alive() and killed is None:
            markers = list((cfg.out_dir / "work" / ".attempts").rglob(f"{train.key}.json"))
            if markers and ckpt.with_suffix(".json").is_file():
                meta = json.loads(ckpt.with_suffix(".json").read_text())
                if meta.get("epoch", 0) >= 1:
                    killed = json.loads(markers[0].read_text())["pid"]
                    epoch_at_kill = meta["epoch"]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
    finally:
        driver.join(timeout=300)
    assert killed is not None and killed != os.getpid(), "training ended before it could be killed"
    assert 1 <= epoch_at_kill < 6
    summary = box["summary"]
    assert summary.failed == 0 and summary.ran == summary.total == 5
    with Store(cfg.out_dir) as store:
        rows = [r for r in store.units(status=None) if r.stage == "train"]
    assert len(rows) == 1 and rows[0].status == "done"
    assert rows[0].result["epochs_done"] == 6 and len(rows[0].result["history"]) == 6
    marker = json.loads(next((cfg.out_dir / "work" / ".attempts").rglob(f"{train.key}.json")).read_text())
    assert marker["attempt"] == 2 and marker["pid"] != killed  # a second attempt, in a new worker
    # It resumed: the retry trained only the epochs after the checkpoint it found, so the
    # TensorBoard run holds one event file per attempt and no epoch twice.
    history_epochs = [h["epoch"] for h in rows[0].result["history"]]
    assert history_epochs == sorted(set(history_epochs))


def test_driver_killed_then_rerun_finishes_grid(cluster, tmp_path: Path) -> None:
    """SIGKILL the driver (a subprocess joined to the cluster) mid-run: rerunning the same
    audit skips every finished unit, leaves their rows untouched and finishes the grid."""
    cfg = _config(tmp_path, TINY.replace('[[models]]\nname = "resnet18"\n', ""))
    total = 5
    db = cfg.out_dir / "results.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasaudit", "audit", str(tmp_path / "audit.toml"), "--engine", "ray",
         "--address", cluster, "--device", "cpu", "--no-progress", "--no-report"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if db.is_file() and len(_rows(db)) >= 2:
                    break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        assert proc.poll() is None, f"audit ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    before = _rows(db)
    assert 2 <= len(before) < total
    summary = run_audit(cfg, device="cpu", engine="ray", progress=False, report=False)
    assert summary.failed == 0 and summary.skipped == len(before)
    assert summary.ran == total - len(before)
    after = _rows(db)
    assert len(after) == total and {k: after[k] for k in before} == before


def test_ray_missing_is_one_line(tmp_path: Path) -> None:
    """Without Ray installed, --engine ray says how to install it (exit 2, no traceback)."""
    (tmp_path / "audit.toml").write_text(TINY)
    script = ("import sys; sys.modules['ray'] = None\n"
              "from nasaudit.cli import main\n"
              f"sys.exit(main(['audit', {str(tmp_path / 'audit.toml')!r}, '--engine', 'ray']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "nasaudit[ray]"' in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_run_directory_not_shared_stops_the_audit(tmp_path: Path) -> None:
    """A node that cannot read the driver's token (its OUT is not the driver's) is one line."""
    from nasaudit.audit.engines.ray_engine import verify_token_reads
    from nasaudit.infra.errors import InputError

    good = [("head", "10.0.0.1", "t0k"), ("gpu7", "10.0.0.7", "t0k")]
    assert verify_token_reads(tmp_path, "t0k", good) == ["gpu7", "head"]
    with pytest.raises(InputError, match=r"not visible from Ray node gpu7 \(10.0.0.7\).*NFS"):
        verify_token_reads(tmp_path, "t0k", [good[0], ("gpu7", "10.0.0.7", None)])
