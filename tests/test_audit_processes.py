"""The processes engine: two spawned one-thread workers give the same records as the local
engine on one thread, really run in other processes, and survive a worker killed mid-unit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from nasaudit.audit.demo import default_workers
from nasaudit.audit.engines.processes import threads_per_worker
from nasaudit.audit.plan import build_plan
from nasaudit.audit.runner import run_audit
from nasaudit.audit.store import Store
from nasaudit.audit.units import checkpoint_file
from nasaudit.cli import main
from nasaudit.infra.errors import InputError
from tests.engine_helpers import TINY, TOTAL, one_thread
from tests.engine_helpers import comparable as _comparable
from tests.engine_helpers import make_config as _config


def _marker_pids(out_dir: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (out_dir / "work" / ".attempts").rglob("*.json")}


def test_processes_records_equal_local_and_run_in_two_workers(tmp_path: Path) -> None:
    local_cfg = _config(tmp_path / "local")
    proc_cfg = _config(tmp_path / "processes")
    with one_thread():  # the workers run one thread each: the same floating-point work
        local = run_audit(local_cfg, device="cpu", engine="local", progress=False, report=False)
        # From the CLI, as a user runs it.
        code = main(["audit", str(proc_cfg.source), "--engine", "processes", "--workers", "2",
                     "--device", "cpu", "--no-progress", "--no-report"])
    assert code == 0 and local.failed == 0 and local.ran == TOTAL
    with Store(local_cfg.out_dir) as a, Store(proc_cfg.out_dir) as b:
        rows_a = {r.unit_key: r for r in a.units()}
        rows_b = {r.unit_key: r for r in b.units()}
        assert b.get_meta("runs")[-1]["engine"] == "processes"
    assert sorted(rows_a) == sorted(rows_b)
    for key, row in rows_a.items():
        assert _comparable(row.result, local_cfg.out_dir) == _comparable(rows_b[key].result, proc_cfg.out_dir), \
            f"{row.model} {row.stage} {row.name} differs between engines"
    # The units that leave an attempt marker (training) ran in the workers, not in the driver;
    # the two trainings are independent, so both workers took one.
    pids = set(_marker_pids(proc_cfg.out_dir).values())
    assert os.getpid() not in pids and len(pids) == 2
    # The two models' runs overlapped in time: the workers ran side by side.
    spans = sorted((r.started, r.finished) for r in rows_b.values() if r.stage == "train")
    assert spans[1][0] < spans[0][1]


def test_worker_killed_mid_training_is_retried_and_resumes(tmp_path: Path) -> None:
    """SIGKILL the worker that trains: the pool restarts, the unit runs again and resumes from
    its last epoch checkpoint, and the store ends with every unit done once."""
    cfg = _config(tmp_path, TINY.replace("epochs = 2", "epochs = 6").replace('[[models]]\nname = "resnet18"\n', ""))
    plan = build_plan(cfg)
    train = next(u for u in plan.units if u.stage == "train" and u.model == "tiny_cnn")
    ckpt = checkpoint_file(cfg, plan.models[train.group_key], "digits")
    box: dict = {}
    driver = threading.Thread(target=lambda: box.update(summary=run_audit(
        cfg, device="cpu", engine="processes", workers=2, progress=False, report=False)))
    driver.start()
    killed = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and driver.is_alive() and killed is None:
            pid = _marker_pids(cfg.out_dir).get(train.key)
            if pid is not None and ckpt.with_suffix(".json").is_file():
                epoch = json.loads(ckpt.with_suffix(".json").read_text()).get("epoch", 0)
                if epoch >= 1:
                    killed, epoch_at_kill = pid, epoch
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
    finally:
        driver.join(timeout=300)
    assert killed is not None and killed != os.getpid(), "training ended before it could be killed"
    assert 1 <= epoch_at_kill < 6
    summary = box["summary"]
    assert summary.failed == 0 and summary.blocked == 0 and summary.ran == summary.total == 5
    with Store(cfg.out_dir) as store:
        rows = [r for r in store.units(status=None) if r.unit_key == train.key]
    assert len(rows) == 1 and rows[0].status == "done"
    assert rows[0].result["epochs_done"] == 6
    history_epochs = [h["epoch"] for h in rows[0].result["history"]]
    assert history_epochs == sorted(set(history_epochs))  # resumed: no epoch twice
    marker = json.loads(next((cfg.out_dir / "work" / ".attempts").rglob(f"{train.key}.json")).read_text())
    assert marker["attempt"] == 2 and marker["pid"] != killed  # a second attempt, in a new worker


def test_thread_split_and_demo_default() -> None:
    assert [threads_per_worker(2, t) for t in (1, 2, 3, 8)] == [1, 1, 1, 4]
    assert default_workers("cpu", 2) == 2 and default_workers("cpu", 1) == 1
    assert default_workers("cpu", None) == 1
    if torch.cuda.is_available():
        assert default_workers("cuda", 8) == 1


def test_demo_rejects_zero_workers(tmp_path: Path, capsys) -> None:
    from nasaudit.audit.demo import run_demo

    with pytest.raises(InputError, match="must be >= 1"):
        run_demo(tmp_path / "d", device="cpu", quick=True, progress=False, workers=0)
    assert main(["demo", "--out", str(tmp_path / "cli"), "--quick", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "must be >= 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cli").exists()  # a bad flag writes nothing


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_die_with_a_killed_driver(tmp_path: Path) -> None:
    """kill -9 of the driver: its spawned workers and multiprocessing's resource tracker go too,
    instead of holding their memory for minutes."""
    import subprocess
    import sys

    cfg = _config(tmp_path, TINY.replace("epochs = 2", "epochs = 50"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers: set[int] = set()
    driver = subprocess.Popen([sys.executable, "-m", "nasaudit", "audit", str(cfg.source), "--engine", "processes",
                               "--workers", "2", "--device", "cpu", "--no-progress", "--no-report"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2:  # two workers and the tracker
            time.sleep(0.2)
            workers = _children(driver.pid)
        assert len(workers) >= 2, "the pool never started"
        time.sleep(1.0)
        workers = _children(driver.pid)
        driver.kill()
        driver.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "processes outlived their driver"
    finally:
        driver.kill()
        for p in workers | _children(driver.pid):  # orphans too, should the test fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
