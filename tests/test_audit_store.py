"""The audit's SQLite store: one transactional row per unit, crash safety, corrupt rows,
foreign databases."""

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


def test_corrupt_row_is_a_corrupt_unit_not_a_done_one(tmp_path: Path) -> None:
    """A row whose JSON does not decode is listed with the failures (status "corrupt"), never
    as done: the report still reads the store, and the audit runs the unit again."""
    with Store(tmp_path) as store:
        _record(store, "good")
        _record(store, "bad_result")
        _record(store, "bad_params")
        _record(store, "not_object")
        store._conn.execute("UPDATE units SET result = '{\"kind\": \"attack.pgd\", \"asr\": ' WHERE unit_key = 'bad_result'")
        store._conn.execute("UPDATE units SET params = 'nan{' WHERE unit_key = 'bad_params'")
        store._conn.execute("UPDATE units SET result = '[1, 2]' WHERE unit_key = 'not_object'")
        assert store.done_keys() == {"good"}
        assert [r.unit_key for r in store.units()] == ["good"]
        corrupt = {r.unit_key: r for r in store.units(status="failed")}
        assert set(corrupt) == {"bad_result", "bad_params", "not_object"}
        assert all(r.status == "corrupt" and r.result is None for r in corrupt.values())
        assert "result is not valid JSON" in corrupt["bad_result"].error
        assert "params is not valid JSON" in corrupt["bad_params"].error
        assert "result is not a JSON object" in corrupt["not_object"].error
        assert store.get("bad_result").status == "corrupt" and not store.is_done("bad_result")
        assert store.statuses() == {"good": "done", "bad_result": "corrupt", "bad_params": "corrupt",
                                    "not_object": "corrupt"}
        assert store.count("corrupt") == 3 and store.count("done") == 1
        _record(store, "bad_result")  # rerunning the unit replaces the damaged row
        assert store.done_keys() == {"good", "bad_result"}


def _foreign_databases(tmp_path: Path) -> list[Path]:
    made = []
    for name, statements in (
        ("other_tables.sqlite", ["CREATE TABLE foo (x INTEGER)", "INSERT INTO foo VALUES (1)"]),
        ("same_names.sqlite", ["CREATE TABLE meta (k TEXT)", "CREATE TABLE units (id INTEGER)"]),
        ("foreign_app.sqlite", ["PRAGMA application_id = 1234"]),
    ):
        path = tmp_path / name
        conn = sqlite3.connect(path)
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
        made.append(path)
    text = tmp_path / "text.sqlite"
    text.write_bytes(b"not a database at all, just some notes\n" * 20)
    made.append(text)
    return made


def test_database_of_another_tool_is_refused_untouched(tmp_path: Path) -> None:
    import hashlib

    from nasaudit.infra.errors import InputError

    for path in _foreign_databases(tmp_path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(InputError) as info:
            Store(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # not a byte written
        assert not path.with_name(path.name + "-wal").exists() and not path.with_name(path.name + "-shm").exists()
    # Ours is recognised again (application_id set at creation); our schema without it is not.
    with Store(tmp_path / "ours") as store:
        _record(store, "k")
    with Store(tmp_path / "ours") as store:
        assert store.done_keys() == {"k"}
    conn = sqlite3.connect(tmp_path / "ours" / "results.sqlite")
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x6E617361
    conn.execute("PRAGMA application_id = 0")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="not an audit's results"):
        Store(tmp_path / "ours")


def test_must_exist(tmp_path: Path) -> None:
    from nasaudit.infra.errors import InputError

    with pytest.raises(InputError, match="results.sqlite"):
        Store(tmp_path / "nothing", must_exist=True)
