"""The SQLite store: one file, no server (the standard library's `sqlite3`, WAL mode).

Tables: `aioclock_meta` (schema version, last run number), `aioclock_progress` (one row per
task: its pickled `TaskProgress` fields), `aioclock_added` (the tasks added while serving),
`aioclock_runs` (the run history, the last HISTORY_LIMIT runs), `aioclock_lease` (one row:
owner, expiry as a wall-clock time, fencing token). A save and the check that its writer still
holds the lease are one transaction, so a writer that lost its lease never overwrites the
progress of the one that took it.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aioclock.stores import HISTORY_LIMIT, SCHEMA_VERSION, Run, Saved, Store, StoreVersionError

#: How long a statement waits for another process's write lock (seconds).
BUSY_TIMEOUT = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aioclock_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS aioclock_progress (task TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS aioclock_added (task TEXT PRIMARY KEY, definition BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS aioclock_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    due REAL,
    start REAL,
    "end" REAL,
    outcome TEXT NOT NULL,
    error TEXT,
    node TEXT,
    worker INTEGER
);
CREATE INDEX IF NOT EXISTS aioclock_runs_task ON aioclock_runs (task, id);
CREATE TABLE IF NOT EXISTS aioclock_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    token INTEGER NOT NULL
);
"""


class SqliteStore(Store):
    """A store in the SQLite file at `path` (created with its folder's permissions).

    Use it from one thread: the connection is made on first use, in that thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.url = "sqlite:///" + self.path
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                self._check_version(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _check_version(self, db: sqlite3.Connection) -> None:
        db.executescript(_SCHEMA)  # (idempotent; it commits what is pending first)
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT value FROM aioclock_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO aioclock_meta (key, value) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreVersionError(self.url, int(row[0]))
            elif int(row[0]) < SCHEMA_VERSION:
                self._upgrade(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """From version 1: the run history gains each run's node and worker."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(aioclock_runs)")}
        for column, kind in (("node", "TEXT"), ("worker", "INTEGER")):
            if column not in columns:
                db.execute(f"ALTER TABLE aioclock_runs ADD COLUMN {column} {kind}")
        db.execute(
            "UPDATE aioclock_meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
        )

    def load(self) -> Saved:
        db = self._connection()
        progress = {
            task: tuple(pickle.loads(data))
            for task, data in db.execute("SELECT task, data FROM aioclock_progress")
        }
        row = db.execute("SELECT value FROM aioclock_meta WHERE key = 'last_seq'").fetchone()
        added = dict(db.execute("SELECT task, definition FROM aioclock_added"))
        return Saved(progress, 0 if row is None else int(row[0]), added)

    def save(
        self,
        progress: Mapping[str, tuple[Any, ...]],
        last_seq: int,
        owner: str,
        token: int,
        added: Mapping[str, bytes | None] | None = None,
        runs: Sequence[Run] = (),
    ) -> bool:
        db = self._connection()
        rows = [(task, pickle.dumps(fields, protocol=5)) for task, fields in progress.items()]
        db.execute("BEGIN IMMEDIATE")
        try:
            if not self._holds(db, owner, token):
                db.execute("ROLLBACK")
                return False
            db.executemany(
                "INSERT INTO aioclock_progress (task, data) VALUES (?, ?) "
                "ON CONFLICT (task) DO UPDATE SET data = excluded.data",
                rows,
            )
            db.execute(
                "INSERT INTO aioclock_meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (last_seq,),
            )
            for task_id, definition in (added or {}).items():
                if definition is None:
                    db.execute("DELETE FROM aioclock_added WHERE task = ?", (task_id,))
                else:
                    db.execute(
                        "INSERT INTO aioclock_added (task, definition) VALUES (?, ?) "
                        "ON CONFLICT (task) DO UPDATE SET definition = excluded.definition",
                        (task_id, definition),
                    )
            if runs:
                db.executemany(
                    'INSERT INTO aioclock_runs (task, due, start, "end", outcome, error, node, '
                    "worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    runs,
                )
                db.execute(
                    "DELETE FROM aioclock_runs WHERE id <= (SELECT max(id) FROM aioclock_runs) - ?",
                    (HISTORY_LIMIT,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def history(self, task: str | None = None, limit: int = 100) -> list[Run]:
        db = self._connection()
        columns = 'task, due, start, "end", outcome, error, node, worker'
        if task is None:
            rows = db.execute(
                f"SELECT {columns} FROM aioclock_runs ORDER BY id DESC LIMIT ?", (limit,)
            )
        else:
            rows = db.execute(
                f"SELECT {columns} FROM aioclock_runs WHERE task = ? ORDER BY id DESC LIMIT ?",
                (task, limit),
            )
        return [Run(*row) for row in reversed(rows.fetchall())]

    def acquire(self, owner: str, ttl: float) -> int | None:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            row = db.execute("SELECT owner, expires, token FROM aioclock_lease").fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                db.execute("ROLLBACK")
                return None
            token = 1 if row is None else int(row[2]) + 1
            db.execute(
                "INSERT INTO aioclock_lease (id, owner, expires, token) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, "
                "expires = excluded.expires, token = excluded.token",
                (owner, now + ttl, token),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return token

    def renew(self, owner: str, token: int, ttl: float) -> bool:
        db = self._connection()
        cursor = db.execute(
            "UPDATE aioclock_lease SET expires = ? WHERE owner = ? AND token = ?",
            (time.time() + ttl, owner, token),
        )
        return cursor.rowcount == 1

    def release(self, owner: str, token: int) -> None:
        db = self._connection()
        db.execute(
            "UPDATE aioclock_lease SET expires = 0 WHERE owner = ? AND token = ?", (owner, token)
        )

    def _holds(self, db: sqlite3.Connection, owner: str, token: int) -> bool:
        row = db.execute("SELECT owner, token FROM aioclock_lease").fetchone()
        return row is not None and row[0] == owner and row[1] == token

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
