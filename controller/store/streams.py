"""The ingest ledger's writes: one upsert per accepted batch, the controller's hottest statement.

``StreamWriter`` goes through the SQLAlchemy engine (PostgreSQL, or SQLite with no
file) and always waits: a network round trip has no place on the event loop.

``SqliteStreamWriter`` holds sqlite3 connections of its own, the statement prepared
once (SQLAlchemy's execute cost three times the commit). Its ``try_save`` never waits
for SQLite's write lock (busy_timeout 0): when nothing else holds it, the event loop
commits a batch itself, a WAL append of a few microseconds, instead of a hop to a
thread and back; when the workflow holds it, the caller takes the waiting ``save`` on
its pool. Neither connection checkpoints on commit (a checkpoint writes and fsyncs the
database file: never on the loop): every ``CHECKPOINT_EVERY`` commits one ``try_save``
declines, and the ``save`` that takes its batch off the loop checkpoints the WAL
(PASSIVE: it waits for nobody).

Callers serialise the calls (the ledger's lock): a connection is used by one thread at
a time. Every sqlite3 failure but a busy lock leaves as StoreError.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.errors import StoreError
from controller.store.repo import STREAM_COLUMNS, UPSERT_STREAM, upsert_stream_sql

# 1,000 pages is SQLite's own wal_autocheckpoint; a ledger row commit writes one or two.
CHECKPOINT_EVERY = 1000
BUSY_WAIT_MS = 10_000  # the waiting path's busy_timeout, as the engine's connections have


class StreamWriter:
    """The ledger's row writes through the engine: always a wait, never inline."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def try_save(self, row: dict[str, Any]) -> bool:
        """Commit without waiting for anything; False when that is not possible now."""
        return False

    def save(self, row: dict[str, Any]) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(UPSERT_STREAM, row)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot commit the ingest ledger: {exc}") from exc

    def close(self) -> None:
        pass


class SqliteStreamWriter(StreamWriter):
    def __init__(self, engine: Engine, path: Path) -> None:
        super().__init__(engine)
        self._path = path
        self._sql = upsert_stream_sql("?")
        # Opened on first use: the engine has made the file (and set WAL) by then.
        self._now: sqlite3.Connection | None = None
        self._wait: sqlite3.Connection | None = None
        self._since_checkpoint = 0

    @staticmethod
    def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
        try:
            # Autocommit mode (the transactions are explicit); used from the loop and the pool.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # The engine's connections set WAL (persistent in the file) and synchronous=NORMAL
            # (per connection: set here too, or each commit would fsync).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the ingest ledger's connection to {path}: {exc}") from exc
        return conn

    def _commit(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(self._sql, tuple(row[c] for c in STREAM_COLUMNS))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have ended it already
                conn.execute("ROLLBACK")
            raise

    def try_save(self, row: dict[str, Any]) -> bool:
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            return False  # this one goes to the pool, which checkpoints
        try:
            if self._now is None:
                self._now = self._connect(self._path, busy_ms=0)
            self._commit(self._now, row)
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return False
            raise StoreError(f"cannot commit the ingest ledger: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot commit the ingest ledger: {exc}") from exc
        self._since_checkpoint += 1
        return True

    def save(self, row: dict[str, Any]) -> None:
        try:
            if self._wait is None:
                self._wait = self._connect(self._path, busy_ms=BUSY_WAIT_MS)
            self._commit(self._wait, row)
            self._since_checkpoint += 1
            if self._since_checkpoint >= CHECKPOINT_EVERY:
                self._wait.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._since_checkpoint = 0
        except sqlite3.Error as exc:
            raise StoreError(f"cannot commit the ingest ledger: {exc}") from exc

    def close(self) -> None:
        for conn in (self._now, self._wait):
            if conn is not None:
                conn.close()
        self._now = self._wait = None


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def stream_writer(engine: Engine, sqlite_file: Path | None) -> StreamWriter:
    """The writer for this store: SQLite's own connections where there is a file."""
    return SqliteStreamWriter(engine, sqlite_file) if sqlite_file is not None else StreamWriter(engine)
