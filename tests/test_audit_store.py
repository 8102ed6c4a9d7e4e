"""The audit's SQLite store: one transactional row per unit, claims, crash safety."""

from __future__ import annotations

import multiprocessing as mp
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasaudit.audit.store import Store


def _record(store: Store, key: str, **overrides) -> None:
    args = dict(
        unit_key=key, model="m", model_group="nas", stage="attack", name="pgd",
        params={"n_inputs": 5}, seed=0, result={"kind": "attack.pgd", "asr": {"most_likely": 0.5}},
        started=time.time() - 1.0, device="cpu", genotype_hash="abc", model_key="mk",
        torch_version="x",
    )
    args.update(overrides)
    store.record_unit(**args)


def test_record_and_read_back(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _record(store, "k1")
        _record(store, "k2", status="failed", result=None, error="RuntimeError: boom")
        assert store.done_keys() == {"k1"}
        assert store.is_done("k1") and not store.is_done("k2")
        row = store.get("k1")
        assert row.params == {"n_inputs": 5} and row.result["asr"]["most_likely"] == 0.5
        assert row.kind == "attack.pgd" and row.genotype_hash == "abc" and row.seconds >= 1.0
        assert row.nasaudit_version and row.torch_version == "x" and row.device == "cpu"
        assert [r.unit_key for r in store.units(status="failed")] == ["k2"]
        # A retry replaces the failed row with the finished one.
        _record(store, "k2")
        assert store.done_keys() == {"k1", "k2"} and store.count("failed") == 0
    # WAL mode, so readers and a writer can work at once.
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        with pytest.raises(RuntimeError), store._tx() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('half', '1')")
            raise RuntimeError("killed mid-write")
        assert store.get_meta("half") is None
        with pytest.raises(TypeError):  # an unserialisable field fails before anything is written
            _record(store, "bad", seed=object())
        assert store.get("bad") is None


def test_update_result_and_meta(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _record(store, "k")
        store.update_result("k", {"kind": "attack.pgd", "asr": {"most_likely": 0.9}})
        assert store.get("k").result["asr"]["most_likely"] == 0.9
        with pytest.raises(KeyError):
            store.update_result("missing", {})
        store.set_meta("config", {"name": "x"})
        store.set_meta("config", {"name": "y"})
        assert store.get_meta("config") == {"name": "y"}


def test_kill_during_transaction_keeps_database_consistent(tmp_path: Path) -> None:
    """A process SIGKILLed between INSERT and COMMIT leaves no row and a healthy database."""
    with Store(tmp_path) as store:
        _record(store, "before")
    script = (
        "import os, signal, time\n"
        "from nasaudit.audit.store import Store\n"
        f"s = Store({str(tmp_path)!r})\n"
        "s._conn.execute('BEGIN IMMEDIATE')\n"
        "s._conn.execute(\"INSERT INTO meta (key, value) VALUES ('torn', '1')\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Store(tmp_path) as store:
        assert store.get_meta("torn") is None
        assert store.done_keys() == {"before"}
        _record(store, "after")  # the write lock was released by the kernel
        assert store.done_keys() == {"before", "after"}
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _writer(path: str, prefix: str, n: int) -> None:
    with Store(path) as store:
        for i in range(n):
            _record(store, f"{prefix}{i}")


def test_concurrent_writers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p, 25)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with Store(tmp_path) as store:
        assert len(store.done_keys()) == 50


def test_claims(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        assert store.claim_state("g1") == "free"
        assert store.claim("g1", "w0")
        assert store.claim("g1", "w0")  # idempotent for its owner
        assert store.claim_state("g1") == "busy"
        assert not store.claim("g1", "w1")  # held by a live process (this one)
        # A claim held by a dead process (a killed worker) is stale and can be taken over.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        store._conn.execute("UPDATE claims SET pid = ?, worker = 'gone' WHERE group_key = 'g1'", (dead.pid,))
        assert store.claim_state("g1") == "free"
        assert store.claim("g1", "w1")
        # Once finished, a group is not attempted again in this run, by anyone.
        store.finish("g1", "w1")
        assert store.claim_state("g1") == "finished"
        assert not store.claim("g1", "w1") and not store.claim("g1", "w2")
        assert store.claim("g2", "w2")
        store.release("g2", "w2")
        assert store.claim_state("g2") == "free"
        store.clear_claims()
        assert store.claim_state("g1") == "free"


def test_must_exist(tmp_path: Path) -> None:
    from nasaudit.errors import InputError

    with pytest.raises(InputError, match="results.sqlite"):
        Store(tmp_path / "nothing", must_exist=True)
