"""The audit's SQLite store: one row per finished unit of work, the single source of the report.

A unit is (model x stage x parameters x seed). Its row is written in one transaction when the
unit finishes, so a kill -9 at any moment leaves either no row or a complete one; on resume the
runner skips every unit whose key has a ``done`` row. The audit's driver is the only process
that writes it (engines return records to the driver), so it never sees many writers on a
shared file system; WAL mode lets the report read while the driver writes.

A file that is not an audit's database (another tool's SQLite, another format) is refused
before anything is written to it. A row whose JSON does not decode is a *corrupt* unit: it is
listed with the failed units (status "corrupt"), never as done, so the report still builds and
the next audit runs the unit again.

Tables:
  * ``units``: key, model label, group, stage, unit name, params (JSON), seed, status
    ("done" | "failed"), result (the record as JSON), kind, timings (unix seconds), nasaudit and
    torch versions, device, genotype hash, model key, error text.
  * ``meta``: key/value pairs (schema version, config, run history).

(Databases written before the Ray engine also hold an unused ``claims`` table.)
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasaudit.infra.errors import InputError

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"
# PRAGMA application_id of every results.sqlite nasaudit creates ("nasa" in ASCII): another
# tool's database says something else (or nothing).
APPLICATION_ID = 0x6E617361
# Columns a results database must have.
_REQUIRED_COLUMNS = frozenset({"unit_key", "model", "model_group", "stage", "name", "params", "seed",
                               "status", "kind", "result", "started", "finished", "seconds",
                               "nasaudit_version", "torch_version", "device", "genotype_hash",
                               "model_key", "error", "host"})

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
    error TEXT,
    host TEXT
);
CREATE INDEX IF NOT EXISTS units_by_model ON units (model, stage);
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
    host: str | None = None  # the machine that ran the unit (None when not recorded)


class Store:
    """A results database in `out_dir/results.sqlite`. Cheap to open; safe across processes.

    Every write is one transaction (``with self._tx()``); readers never see half a unit.
    """

    def __init__(self, path: str | Path, *, must_exist: bool = False, read_only: bool = False):
        path = Path(path)
        if path.is_dir() or path.suffix != ".sqlite":
            path = path / DB_NAME
        self.path = path
        if (must_exist or read_only) and not path.is_file():
            raise InputError(path.parent, "no audit results here (results.sqlite is missing)")
        if path.is_dir():
            raise InputError(path, "is a directory, not an audit results database")
        if read_only:
            self._conn = _open_read_only(path)
            return
        if path.is_file():
            _check_ours(path, immutable=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        self._conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            # Checked again on the live connection (a WAL database's newest pages are not in
            # the main file the immutable look read), still before anything writes.
            fresh = not _check_ours(path, conn=self._conn)
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
                if fresh:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except InputError:
            self._conn.close()
            raise
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
        """The value stored under `key`, or `default`; InputError naming the row when it does
        not decode (a damaged store stops with one line, not a traceback)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except (TypeError, ValueError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else f"invalid JSON: {exc}"
            raise InputError(self.path, f"corrupt row (table meta, key {key!r}): {problem}") from None

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
        host: str | None = None,
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
                " torch_version, device, genotype_hash, model_key, error, host)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    unit_key, model, model_group, stage, name,
                    json.dumps(params, sort_keys=True, default=str), int(seed), status, kind,
                    None if result is None else json.dumps(result, sort_keys=True, default=str),
                    float(started), float(finished), float(finished - started), __version__,
                    torch_version, str(device), genotype_hash, model_key, error, host,
                ),
            )

    def done_keys(self) -> set[str]:
        """Keys of all successfully finished units (a corrupt row does not count as done)."""
        rows = self._conn.execute("SELECT * FROM units WHERE status = 'done'").fetchall()
        return {r["unit_key"] for r in rows if _decode(r).status == "done"}

    def statuses(self) -> dict[str, str]:
        """unit key -> "done" | "failed" | "corrupt", for every stored unit."""
        return {r["unit_key"]: _decode(r).status for r in self._conn.execute("SELECT * FROM units")}

    def is_done(self, unit_key: str) -> bool:
        """True when the unit has a ``done`` row that decodes."""
        row = self.get(unit_key)
        return row is not None and row.status == "done"

    def get(self, unit_key: str) -> UnitRow | None:
        """The stored unit with this key, or None (status "corrupt" when its JSON is damaged)."""
        row = self._conn.execute("SELECT * FROM units WHERE unit_key = ?", (unit_key,)).fetchone()
        return None if row is None else _decode(row)

    def units(self, *, status: str | None = "done", stage: str | None = None, model: str | None = None) -> list[UnitRow]:
        """Stored units, filtered, in the order they finished.

        status "done": finished units whose JSON decodes; "failed": failed units *and* corrupt
        ones (status "corrupt", error says what is damaged), so that whatever lists failures
        lists them; "corrupt": only those; None: every row.
        """
        query, args = "SELECT * FROM units WHERE 1 = 1", []
        for column, value in (("stage", stage), ("model", model)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        rows = [_decode(r) for r in self._conn.execute(query + " ORDER BY finished, unit_key", args)]
        if status is None:
            return rows
        wanted = {"done": {"done"}, "failed": {"failed", "corrupt"}}.get(status, {status})
        return [r for r in rows if r.status in wanted]

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
        """Number of units with this status (as `units` counts them)."""
        return len(self.units(status=status))


def _check_ours(path: Path, *, immutable: bool = False, conn: sqlite3.Connection | None = None) -> bool:
    """Whether `path` already is an audit's results database (False: new and empty).

    Raises InputError, having written nothing, for another tool's SQLite database (a foreign
    application_id, or tables that are not ours) and for a file that is not SQLite at all.
    `immutable` reads without taking locks or creating -wal/-shm files beside the file.
    """
    own = conn is None
    try:
        if own:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1" if immutable else str(path),
                                   uri=immutable)
        try:
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {r[1] for r in conn.execute("PRAGMA table_info(units)")} if "units" in tables else set()
            version = (conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                       if "meta" in tables else None)
        finally:
            if own:
                conn.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            raise
        raise InputError(path, f"not an audit results database ({exc}); move it away or choose another --out") from None
    if version is not None:
        try:
            number = int(version[0])
        except (TypeError, ValueError):
            raise InputError(path, f"corrupt row (table meta, key 'schema_version'): {version[0]!r}") from None
        if number > SCHEMA_VERSION:
            raise InputError(path, f"written by a newer nasaudit (results schema {number}; this version reads "
                                   f"{SCHEMA_VERSION}): upgrade nasaudit to read it")
    if app_id not in (0, APPLICATION_ID):
        raise InputError(path, f"an SQLite database of another application (application_id {app_id:#x}); "
                               "move it away or choose another --out")
    if not tables:
        return False
    if (app_id != APPLICATION_ID or not {"meta", "units"} <= tables or not _REQUIRED_COLUMNS <= columns
            or version is None):
        raise InputError(path, "an SQLite database, but not an audit's results (no units/meta tables "
                               "of nasaudit's schema); move it away or choose another --out")
    return True


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write: `report` reads the store and never changes it (no schema,
    no WAL switch), also on a read-only mount. An empty or foreign file is refused."""
    if not _check_ours(path, immutable=True):
        raise InputError(path, "an empty database with no audit results in it; nothing to report")
    uri = path.resolve().as_uri()
    for mode in ("mode=ro", "immutable=1"):  # a WAL database on a read-only mount needs immutable
        try:
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=60)
            conn.execute("SELECT count(*) FROM units").fetchone()
        except sqlite3.OperationalError:
            continue
        conn.row_factory = sqlite3.Row
        return conn
    raise InputError(path, "cannot open the results database for reading")


def _decode(row: sqlite3.Row) -> UnitRow:
    """A row as a UnitRow; damaged JSON gives status "corrupt" (result None, error explaining)."""
    data = dict(row)
    data = {k: v for k, v in data.items() if k in _UNIT_ROW_FIELDS}
    problems = []
    for column, allow_none in (("params", False), ("result", True)):
        text = data[column]
        if text is None and allow_none:
            continue
        try:
            value = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            problems.append(f"{column} is not valid JSON ({why})")
            value = None
        else:
            if not isinstance(value, dict):
                problems.append(f"{column} is not a JSON object")
                value = None
        data[column] = value
    if data["params"] is None:
        data["params"] = {}
    if problems:
        data["status"], data["result"] = "corrupt", None
        data["error"] = f"corrupt row in {DB_NAME} (table units, unit {data.get('unit_key')}): " + "; ".join(problems)
    return UnitRow(**data)


_UNIT_ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(UnitRow))
