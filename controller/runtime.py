"""Everything one controller process holds, built from its settings and passed to the API."""

from __future__ import annotations

import logging
import os
import signal

from sqlalchemy import Engine

from controller.artifacts import KINDS
from controller.auth import Authenticator
from controller.config import ControllerSettings
from controller.errors import ConfigError
from controller.hotstate import HotState
from controller.ingest import IngestService
from controller.leader import Leadership, PostgresLeadership
from controller.ledger import Ledger
from controller.metrics import Metrics
from controller.store.db import make_engine, migrate, schema_version
from controller.store.payloads import PayloadStore
from controller.workflow.advisor import Advisor
from controller.workflow.engine import Failpoint, WorkflowEngine, WorkflowOptions

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: ControllerSettings, *, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.sqlalchemy_url)
        self.payloads = PayloadStore(settings.payload_root, settings.payload_options)
        self.auth = Authenticator(settings.auth)
        self.metrics = Metrics()
        self.hot = HotState(settings.hot_state)
        # Streams in memory: a few per host (a wiped spool starts a new stream).
        self.ledger = Ledger(
            self.engine, settings.ingest.dedupe_window, max_streams=settings.hot_state.max_hosts * 4
        )
        url = settings.ha.advertise_url
        if settings.is_postgres:
            assert settings.database_url is not None
            dsn = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
            self.leadership: Leadership = PostgresLeadership(
                self.engine, dsn, url, settings.ha.lock_key, settings.ha.poll_interval_s
            )
        else:
            self.leadership = Leadership(url)
        w = settings.workflow
        self.workflow_store = PayloadStore(
            settings.payload_url or str(settings.data_dir / "agent"), settings.payload_options
        )
        self.workflow = WorkflowEngine(
            self.engine,
            self.workflow_store,
            self.hot,
            WorkflowOptions(
                window_s=w.window_s,
                open_threshold=w.open_threshold,
                attach_window_s=w.attach_window_s,
                queue_max=w.queue_max,
            ),
            advisor=self._advisor(),
            failpoint=_failpoint(w.failpoint),
        )
        self.leadership.on_promote = self._promoted
        self.ingest = IngestService(
            on_accepted=self.workflow.notify if w.enabled else None,
            auth=self.auth,
            ledger=self.ledger,
            hot=self.hot,
            leadership=self.leadership,
            metrics=self.metrics,
            max_decompressed=settings.ingest.max_decompressed_bytes,
        )
        self.metrics.bind(lambda: self.leadership.is_leader, self.hot.stats)
        self.schema_version = 0
        self.ready = False

    def _advisor(self) -> Advisor | None:
        a = self.settings.workflow.advisor
        if a.url is None:
            return None
        return Advisor(a.url, a.model, api_key=a.key(), timeout_s=a.timeout_s)

    def start(self) -> None:
        applied = migrate(self.engine)
        if applied:
            log.warning("applied schema migrations %s", applied)
        self.schema_version = schema_version(self.engine)
        self.leadership.start()
        self.ready = True

    def _promoted(self) -> None:
        """Leadership moved here: the store is the truth (ledger), and unfinished runs resume."""
        self.ledger.reload()
        if self.settings.workflow.enabled:
            self.workflow.start()

    def stop(self) -> None:
        self.ready = False
        self.leadership.stop()
        self.workflow.stop()
        if self.workflow.advisor is not None:
            self.workflow.advisor.close()
        self.engine.dispose()


def _failpoint(spec: str | None) -> Failpoint | None:
    """The crash tests' kill switch: SIGKILL, so nothing (no finally, no atexit) tidies up."""
    if spec is None:
        return None
    kind, where = spec.split(":")
    if kind not in KINDS:
        raise ConfigError(f"workflow.failpoint: {kind!r} is not an artifact kind; known: {', '.join(KINDS)}")

    def hit(at_kind: str, at: str) -> None:
        if (at_kind, at) == (kind, where):
            log.warning("failpoint %s reached: killing the process", spec)
            os.kill(os.getpid(), signal.SIGKILL)

    return hit
