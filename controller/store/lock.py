"""The HA writer lock: a PostgreSQL session-level advisory lock on a dedicated psycopg
session (not the pool's: the lock lives exactly as long as that session does)."""

from __future__ import annotations

import logging
from typing import Any

from controller.errors import StoreError

log = logging.getLogger(__name__)


class AdvisoryLock:
    def __init__(self, dsn: str, key: int) -> None:
        self._dsn = dsn
        self._key = key
        self._conn: Any = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (never waits). StoreError when the session fails."""
        import psycopg

        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
            return bool(self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()[0])
        except psycopg.Error as exc:
            raise StoreError(f"the lock session failed: {exc}") from exc

    def check(self) -> None:
        """Raises StoreError unless the session (and with it the lock) is alive."""
        import psycopg

        try:
            self._conn.execute("SELECT 1")
        except (psycopg.Error, AttributeError) as exc:
            raise StoreError(f"the lock session is gone: {exc}") from exc

    def release(self) -> None:
        """Close the session: PostgreSQL releases the lock with it."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the lock session failed", exc_info=True)
            self._conn = None
