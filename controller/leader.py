"""One writer among controllers sharing PostgreSQL.

Each controller keeps a dedicated session and tries ``pg_try_advisory_lock`` every
``ha.poll_interval_s``. The holder is the leader: it writes its URL into
``controller_leader`` and refreshes a heartbeat there. Followers read the URL and
answer ingest and mutating calls with 503 and that URL. A leader that dies loses
its session, PostgreSQL releases the lock, and the next poll of a follower takes
it: takeover within one poll interval plus the time PostgreSQL needs to notice
the dead session (immediate for a killed process, the TCP keepalive for a lost
host). With SQLite there is one controller and it always leads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.errors import StoreError
from controller.store import repo
from controller.store.lock import AdvisoryLock

log = logging.getLogger(__name__)


class Leadership:
    """The single-node case: always the leader."""

    def __init__(self, url: str | None = None) -> None:
        self.node_id = uuid.uuid4().hex[:12]
        self.url = url
        self.on_promote: Callable[[], None] | None = None

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader_url(self) -> str | None:
        return self.url

    def start(self) -> None:
        if self.on_promote is not None:
            self.on_promote()

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"mode": "single", "role": "leader", "node_id": self.node_id, "leader_url": self.url}


class PostgresLeadership(Leadership):
    def __init__(self, engine: Engine, dsn: str, url: str | None, lock_key: int, poll_s: float) -> None:
        super().__init__(url)
        self._engine = engine
        self._lock = AdvisoryLock(dsn, lock_key)
        self._poll = poll_s
        self._leader = False
        self._leader_url: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self.promotions = 0

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def leader_url(self) -> str | None:
        return self.url if self._leader else self._leader_url

    def start(self) -> None:
        self._tick()  # decide before serving, so the first request gets the right answer
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._poll * 3 + 5)
        self._drop()

    def _drop(self) -> None:
        self._leader = False
        self._lock.release()

    def _tick(self) -> None:
        try:
            if self._leader:
                self._lock.check()
                with self._engine.begin() as conn:
                    if not repo.heartbeat(conn, node_id=self.node_id, now=time.time()):
                        repo.set_leader(conn, node_id=self.node_id, url=self.url, now=time.time())
                return
            if self._lock.try_acquire():
                with self._engine.begin() as conn:
                    repo.set_leader(conn, node_id=self.node_id, url=self.url, now=time.time())
                self._leader = True
                self.promotions += 1
                log.warning("this controller (%s) is now the leader", self.node_id)
                if self.on_promote is not None:
                    self.on_promote()
            else:
                with self._engine.connect() as conn:
                    row = repo.get_leader(conn)
                self._leader_url = row["url"] if row else None
        except (StoreError, SQLAlchemyError) as exc:
            log.warning("leader election: %s", exc)
            self._drop()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._tick()

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "postgres",
            "role": "leader" if self._leader else "follower",
            "node_id": self.node_id,
            "leader_url": self.leader_url,
            "promotions": self.promotions,
        }
