"""The audit's SQLite store: one row per finished unit of work, the single source of the report.

A unit is (model x stage x parameters x seed). Its row is written in one transaction when the
unit finishes, so a kill -9 at any moment leaves either no row or a complete one; on resume the
runner skips every unit whose key has a ``done`` row. The database runs in WAL mode so that the
report (or a progress poller) can read while a worker writes.

Tables:
  * ``units``: key, model label, group, stage, unit name, params (JSON), seed, status
    ("done" | "failed"), result (the record as JSON), kind, timings (unix seconds), nasaudit and
    torch versions, device, genotype hash, model key, error text.
  * ``meta``: key/value pairs (schema version, config, run history).
  * ``claims``: which worker process owns which group of units right now (multi-GPU runs).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasaudit.errors import InputError

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    unit_key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_group TEXT NOT NULL,
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    kind TEXT,
    result TEXT,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    seconds REAL NOT NULL,
    nasaudit_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    genotype_hash TEXT,
    model_key TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS units_by_model ON units (model, stage);
CREATE TABLE IF NOT EXISTS claims (
    group_key TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed REAL NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class UnitRow:
    """One stored unit, as read back from the database (result and params decoded)."""

    unit_key: str
    model: str
    model_group: str
    stage: str
    name: str
    params: dict[str, Any]
    seed: int
    status: str
    kind: str | None
    result: dict[str, Any] | None
    started: float
    finished: float
    seconds: float
    nasaudit_version: str
    torch_version: str
    device: str
    genotype_hash: str | None
    model_key: str | None
    error: str | None


class Store:
    """A results database in `out_dir/results.sqlite`. Cheap to open; safe across processes.

    Every write is one transaction (``with self._tx()``); readers never see half a unit.
    """

    def __init__(self, path: str | Path, *, must_exist: bool = False):
        path = Path(path)
        if path.is_dir() or path.suffix != ".sqlite":
            path = path / DB_NAME
        self.path = path
        if must_exist and not path.is_file():
            raise InputError(path.parent, "no audit results here (results.sqlite is missing)")
        if path.is_dir():
            raise InputError(path, "is a directory, not an audit results database")
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        self._conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            # Read before anything writes: a file that is not ours (or is damaged) is reported
            # and left exactly as it is. (Never open() the file directly here: closing another
            # descriptor of it would drop the POSIX locks SQLite holds on it in this process.)
            tables = {r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"meta", "units"} <= tables:
                self._conn.close()
                raise InputError(path, "an SQLite database, but not an audit's results (no "
                                       "units/meta tables); move it away or choose another --out")
            self._enable_wal()
            # FULL: a committed unit survives power loss, not just a process kill.
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._tx() as conn:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.OperationalError):
                if "locked" in str(exc):
                    raise
                raise InputError(path, f"cannot use the results database ({exc})") from None
            raise InputError(path, f"not an audit results database ({exc})") from None
        self._conn.row_factory = sqlite3.Row

    # -- plumbing -------------------------------------------------------------------------
    def _enable_wal(self, timeout: float = 60.0) -> None:
        """Switch the database to WAL (once per file; it persists).

        Changing the journal mode needs an exclusive lock, and SQLite reports "database is
        locked" at once instead of waiting on the busy timeout when another process opens the
        same new database at the same moment, so retry until `timeout` seconds have passed.
        """
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: takes the write lock up front, so concurrent writers
        serialise instead of failing half-way; rolled back on any exception."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta -----------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under `key`."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, sort_keys=True, default=str)),
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # -- units ----------------------------------------------------------------------------
    def record_unit(
        self,
        *,
        unit_key: str,
        model: str,
        model_group: str,
        stage: str,
        name: str,
        params: dict[str, Any],
        seed: int,
        result: dict[str, Any] | None,
        started: float,
        finished: float | None = None,
        device: str,
        genotype_hash: str | None = None,
        model_key: str | None = None,
        status: str = "done",
        error: str | None = None,
        torch_version: str | None = None,
    ) -> None:
        """Write one finished (or failed) unit in a single transaction, replacing any old row."""
        from nasaudit import __version__

        if torch_version is None:
            import torch

            torch_version = torch.__version__
        finished = time.time() if finished is None else finished
        kind = result.get("kind") if isinstance(result, dict) else None
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO units (unit_key, model, model_group, stage, name, params,"
                " seed, status, kind, result, started, finished, seconds, nasaudit_version,"
                " torch_version, device, genotype_hash, model_key, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    unit_key, model, model_group, stage, name,
                    json.dumps(params, sort_keys=True, default=str), int(seed), status, kind,
                    None if result is None else json.dumps(result, sort_keys=True, default=str),
                    float(started), float(finished), float(finished - started), __version__,
                    torch_version, str(device), genotype_hash, model_key, error,
                ),
            )

    def done_keys(self) -> set[str]:
        """Keys of all successfully finished units."""
        rows = self._conn.execute("SELECT unit_key FROM units WHERE status = 'done'").fetchall()
        return {r[0] for r in rows}

    def is_done(self, unit_key: str) -> bool:
        """True when the unit has a ``done`` row."""
        row = self._conn.execute(
            "SELECT 1 FROM units WHERE unit_key = ? AND status = 'done'", (unit_key,)
        ).fetchone()
        return row is not None

    def get(self, unit_key: str) -> UnitRow | None:
        """The stored unit with this key, or None."""
        row = self._conn.execute("SELECT * FROM units WHERE unit_key = ?", (unit_key,)).fetchone()
        return None if row is None else _decode(row)

    def units(self, *, status: str | None = "done", stage: str | None = None, model: str | None = None) -> list[UnitRow]:
        """Stored units, filtered, in the order they finished."""
        query, args = "SELECT * FROM units WHERE 1 = 1", []
        for column, value in (("status", status), ("stage", stage), ("model", model)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        rows = self._conn.execute(query + " ORDER BY finished, unit_key", args).fetchall()
        return [_decode(r) for r in rows]

    def update_result(self, unit_key: str, result: dict[str, Any]) -> None:
        """Replace a unit's result JSON (used by tests and by manual corrections)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE units SET result = ? WHERE unit_key = ?",
                (json.dumps(result, sort_keys=True, default=str), unit_key),
            )
            if cur.rowcount != 1:
                raise KeyError(unit_key)

    def count(self, status: str = "done") -> int:
        """Number of units with this status."""
        return int(self._conn.execute("SELECT COUNT(*) FROM units WHERE status = ?", (status,)).fetchone()[0])

    # -- claims (one worker process per device) -------------------------------------------
    def claim(self, group_key: str, worker: str) -> bool:
        """Atomically take ownership of a group of units for this run; False if taken.

        A group is taken while a live worker holds it, and for the rest of the run once a
        worker has finished with it (even with failures: one attempt per group per run). A
        claim whose process died (kill -9 of a worker) is stale and is taken over.
        """
        with self._tx() as conn:
            row = conn.execute(
                "SELECT worker, pid, finished FROM claims WHERE group_key = ?", (group_key,)
            ).fetchone()
            if row is not None and (row[2] or (row[0] != worker and _alive(int(row[1])))):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO claims (group_key, worker, pid, claimed, finished)"
                " VALUES (?, ?, ?, ?, 0)",
                (group_key, worker, os.getpid(), time.time()),
            )
        return True

    def finish(self, group_key: str, worker: str) -> None:
        """Mark a group as attempted in this run: no worker claims it again."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE claims SET finished = 1 WHERE group_key = ? AND worker = ?", (group_key, worker)
            )

    def claim_state(self, group_key: str) -> str:
        """"free" (unclaimed or stale), "busy" (a live worker on it) or "finished" (this run)."""
        row = self._conn.execute(
            "SELECT pid, finished FROM claims WHERE group_key = ?", (group_key,)
        ).fetchone()
        if row is None:
            return "free"
        if row[1]:
            return "finished"
        return "busy" if _alive(int(row[0])) else "free"

    def release(self, group_key: str, worker: str) -> None:
        """Drop a claim held by `worker` (the group becomes free again)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM claims WHERE group_key = ? AND worker = ?", (group_key, worker))

    def clear_claims(self) -> None:
        """Forget every claim: called when a run starts (it holds the directory lock, so any
        claim left is from an earlier run)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM claims")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _decode(row: sqlite3.Row) -> UnitRow:
    data = dict(row)
    data["params"] = json.loads(data["params"])
    data["result"] = None if data["result"] is None else json.loads(data["result"])
    return UnitRow(**data)
