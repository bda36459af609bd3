"""Everything one controller process holds, built from its settings and passed to the API."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from controller import __version__
from controller.actuators import KubeTarget, host_env
from controller.api.guard import Guard
from controller.artifacts import KINDS
from controller.auth import Authenticator
from controller.bus import BusConsumer
from controller.config import ControllerSettings
from controller.errors import ConfigError
from controller.hotstate import HotState
from controller.ingest import Accepted, IngestService
from controller.leader import Leadership, PostgresLeadership
from controller.ledger import Ledger
from controller.metrics import Metrics
from controller.store.db import check_store, libpq_dsn, make_engine, migrate, schema_version, sqlite_path
from controller.store.payloads import PayloadStore
from controller.store.runs import RunStore
from controller.store.streams import stream_writer
from controller.workflow.advisor import Advisor
from controller.workflow.analysis_pool import AnalysisPool, WorkerConfig
from controller.workflow.engine import Failpoint, WorkflowEngine
from controller.workflow.execution import ExecutionService
from controller.workflow.notify import Notifier
from controller.workflow.options import ExecutionOptions, WorkflowOptions, posture_from
from controller.workflow.postmortems import Postmortems
from controller.workflow.reads import CODE_VERSION

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self, settings: ControllerSettings, *, engine: Engine | None = None, init_store: bool = False
    ) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.sqlalchemy_url)
        check_store(self.engine, settings.sqlalchemy_url, init=init_store)
        self.guard = Guard(settings.server, settings.peer_inflight_bytes)
        # Ingest's decode and validation: bounded by server.max_inflight_batches at the door.
        self.pool = ThreadPoolExecutor(settings.server.decode_workers, thread_name_prefix="ingest")
        self.payloads = PayloadStore(settings.payload_root, settings.payload_options)
        self.auth = Authenticator(settings.auth)
        self.metrics = Metrics()
        a = settings.workflow.analysis
        pooled = settings.workflow.enabled and a.workers > 0
        # Windows are kept where analysis runs: in the workers, or here with none; with the
        # workflow off, nowhere (nothing reads them). This one always keeps what the API reports.
        self.hot = HotState(settings.hot_state, windows=settings.workflow.enabled and not pooled)
        # Streams in memory: a few per host (a wiped spool starts a new stream).
        self.ledger = Ledger(
            self.engine,
            settings.ingest.dedupe_window,
            max_streams=settings.hot_state.max_hosts * 4,
            writer=stream_writer(self.engine, sqlite_path(settings.sqlalchemy_url)),
        )
        url = settings.ha.advertise_url
        if settings.is_postgres:
            assert settings.database_url is not None
            dsn = libpq_dsn(settings.database_url)
            self.leadership: Leadership = PostgresLeadership(
                self.engine, dsn, url, settings.ha.lock_key, settings.ha.poll_interval_s
            )
        else:
            self.leadership = Leadership(url)
        w = settings.workflow
        self.workflow_store = PayloadStore(
            settings.payload_url or str(settings.data_dir / "agent"), settings.payload_options
        )
        x = w.execution
        failpoint = _failpoint(w.failpoint)
        self.runs = RunStore(self.engine)
        self.execution = ExecutionService(
            self.runs,
            host_env(x.host_root, self._kube(), tuple(x.commands)),
            ExecutionOptions.from_settings(x),
            clock=time.time,
            failpoint=failpoint,
        )
        posture = posture_from(x, local_host_ids(x.host_root))
        self.workflow = WorkflowEngine(
            self.engine,
            self.workflow_store,
            self.hot,
            WorkflowOptions.from_settings(w, posture),
            advisor=self._advisor(),
            failpoint=failpoint,
            execution=self.execution,
        )
        self.analysis: AnalysisPool | None = None
        if pooled:
            self.analysis = AnalysisPool(
                WorkerConfig(
                    settings.hot_state,
                    w.window_s,
                    w.open_threshold,
                    rules=self.workflow.opts.rules,
                    nice=a.nice,
                    report_clean=w.resolve_after_clean + 2,
                ),
                workers=a.workers,
                queue_max=a.queue_max,
                queue_bytes=a.queue_bytes,
                read_timeout_s=a.read_timeout_s,
                on_trigger=self.workflow.triggers.notify,
                on_failure=self.workflow.triggers.record_failure_text,
                on_ok=self.workflow.triggers.record_success,
                on_clean=self.workflow.triggers.notify_clean,
                on_xids=self.metrics.add_xids,
                live_hosts=self.workflow.triggers.live_hosts,
            )
            self.workflow.triggers.pool = self.analysis
        else:
            self.hot.on_error = self.workflow.triggers.record_failure_text
            self.hot.on_xids = self.metrics.add_xids
        # Postmortems when runs end, rendered off the engine's path (the leader's worker).
        self.postmortems = Postmortems(self.runs, w.postmortems, data_dir=settings.data_dir, clock=time.time)
        self.workflow.triggers.on_ended = self.postmortems.ask
        self.workflow.runner.on_ended = self.postmortems.ask
        self.workflow.postmortems = self.postmortems
        # Somebody gets told: Alertmanager and webhooks, off the engine's path.
        self.notifier = Notifier(
            w.alerts,
            clock=time.time,
            external_url=settings.ha.advertise_url,
            labels_of=self.hot.labels,
            live=self._live_paging,
            load=self.runs.run,
        )
        self.workflow.triggers.on_event = self.notifier.tell
        self.workflow.runner.on_event = self.notifier.tell
        self.workflow.notifier = self.notifier
        self.workflow.runner.on_stage = lambda kind, s: self.metrics.stage_seconds.labels(kind).observe(s)
        self.workflow.active = lambda: self.leadership.is_leader
        self.leadership.on_promote = self._promoted
        self.ingest = IngestService(
            on_accepted=self._on_accepted if w.enabled else None,
            auth=self.auth,
            ledger=self.ledger,
            hot=self.hot,
            leadership=self.leadership,
            metrics=self.metrics,
            settings=settings.ingest,
        )
        self.bus: BusConsumer | None = None
        if settings.bus.enabled:
            self.bus = BusConsumer(
                settings.bus,
                self.ingest,
                lambda: self.leadership.is_leader,
                max_body_bytes=settings.ingest.max_body_bytes,
            )
            bus = self.bus
            self.metrics.bind_bus(bus.status, lambda: dict(bus.pending))
        self.metrics.bind(lambda: self.leadership.is_leader, self.hot.stats)
        if self.analysis is not None:
            self.metrics.bind_analysis(self.analysis.stats)
        self.metrics.bind_operations(self._operations)
        self.metrics.build.info({"version": __version__, "code_version": CODE_VERSION})
        self.schema_version = 0
        self.ready = False

    def _operations(self) -> dict[str, Any]:
        """What /metrics reads when scraped: runs by status, family, state and scope, and the
        hosts' last batch and freshness."""
        with self.runs.read() as tx:
            counts = tx.run_counts()
        fresh: dict[str, int] = {}
        order = ("missing", "stale", "fresh", "unavailable")
        for host, _ in self.hot.last_seen():
            states = set(self.hot.freshness(host).values()) or {"missing"}
            worst = next((s for s in order if s in states), "missing")
            fresh[worst] = fresh.get(worst, 0) + 1
        return {
            "runs": counts,
            "awaiting_approval": sum(
                n for (status, *_), n in counts.items() if status == "awaiting_approval"
            ),
            "last_seen": self.hot.last_seen(),
            "freshness": fresh,
        }

    def _live_paging(self, limit: int) -> list[Any]:
        with self.runs.read() as tx:
            return list(tx.live_paging(limit=limit))

    def _on_accepted(self, accepted: Accepted) -> None:
        if self.analysis is not None:
            self.analysis.submit(accepted)
        else:
            self.workflow.notify(accepted.host_id)

    def _kube(self) -> KubeTarget | None:
        k = self.settings.workflow.execution.kubernetes
        if k is None:
            return None
        try:
            token = k.token_file.read_text().strip() if k.token_file else None
        except OSError as exc:
            raise ConfigError(f"execution.kubernetes: cannot read {k.token_file}: {exc.strerror}") from exc
        return KubeTarget(
            k.host,
            token,
            k.verify_ssl,
            str(k.ca_file) if k.ca_file else None,
            token_file=str(k.token_file) if k.token_file else None,
        )

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
        # Everything loaded so far (modules, settings, the engine) lives as long as the
        # process: out of the cyclic collector's scans, which otherwise add tens of ms
        # to a workflow run now and then (measured by bench/workflow_bench.py).
        gc.freeze()
        if self.analysis is not None:
            self.analysis.start()
        self.leadership.start()
        if self.bus is not None:
            self.bus.start()  # consumes while this controller leads
        self.ready = True

    def _promoted(self) -> None:
        """Leadership moved here: the store is the truth (ledger), and unfinished runs resume."""
        self.ledger.reload()
        if self.settings.workflow.enabled:
            self.workflow.start()
            self.postmortems.start()
            self.notifier.start()

    def stop(self) -> None:
        self.ready = False
        if self.bus is not None:
            self.bus.stop()
        self.leadership.stop()
        self.workflow.stop()
        self.postmortems.stop()
        self.notifier.stop()
        if self.analysis is not None:
            self.analysis.stop()
        self.execution.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.ledger.close()
        if self.workflow.advisor is not None:
            self.workflow.advisor.close()
        self.engine.dispose()


def local_host_ids(root: Path) -> list[str]:
    """The names a collector on this host reports it as: its machine id (the default
    host_id) and its hostname (the usual override)."""
    ids = [socket.gethostname()]
    with contextlib.suppress(OSError):
        ids.insert(0, (root / "etc" / "machine-id").read_text().strip())
    return [i for i in ids if i]


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
