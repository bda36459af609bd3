"""Everything one controller process holds, built from its settings and passed to the API."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from collector.wire import partition_of
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
from controller.partitions import LeaderOwnership, Ownership, PartitionLeases
from controller.store.db import check_store, libpq_dsn, make_engine, migrate, schema_version, sqlite_path
from controller.store.payloads import PayloadStore
from controller.store.runs import RunStore
from controller.store.streams import stream_writer
from controller.workflow.advisor import Advisor
from controller.workflow.analysis_pool import AnalysisPool, WorkerConfig
from controller.workflow.engine import Failpoint, WorkflowEngine
from controller.workflow.execution import ExecutionService
from controller.workflow.fleet import FLEET_HOST, SharedSightings
from controller.workflow.notify import Notifier
from controller.workflow.options import ExecutionOptions, WorkflowOptions, posture_from
from controller.workflow.postmortems import Postmortems
from controller.workflow.reads import CODE_VERSION

log = logging.getLogger(__name__)
MEMBER_CLUSTERS = 256  # clusters a replica reports host counts for (the most populous)
LIVE_HOSTS_WATCHED = 10_000  # hosts with live runs an acquired partition's workers are told of


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
        # Which hosts this controller writes: all of them while it leads, or the partitions it
        # holds when replicas share the fleet (the HA leader then only coordinates: fleet
        # incidents, re-sent alerts).
        sharing = settings.shares_partitions
        if sharing:
            assert settings.database_url is not None
            self.ownership: Ownership = PartitionLeases(
                libpq_dsn(settings.database_url),
                node_id=self.leadership.node_id,
                url=url,
                partitions=settings.bus.partitions,
                lock_key=settings.ha.lock_key,
                poll_s=settings.ha.poll_interval_s,
                lease_s=settings.ha.lease_s,
                detail=self._member_detail,
            )
            self.workflow.active = lambda: True
            self.workflow.triggers.owns = self.ownership.owns_host
            self.workflow.triggers.sharded = True
            self.workflow.triggers.coordinator = lambda: self.leadership.is_leader
            self.workflow.triggers.shared = SharedSightings(self.engine)
            self.workflow.triggers.known = self._fleet_known
            self.notifier.resends = lambda: self.leadership.is_leader
        else:
            self.ownership = LeaderOwnership(self.leadership, settings.bus.partitions)
            self.workflow.active = lambda: self.leadership.is_leader
        self.ownership.on_acquire = self._acquired
        self.ownership.on_release = self._releasing
        self.ownership.on_released = self._released
        self.leadership.on_promote = self._promoted
        self.ingest = IngestService(
            on_accepted=self._on_accepted if w.enabled else None,
            auth=self.auth,
            ledger=self.ledger,
            hot=self.hot,
            leadership=self.leadership,
            metrics=self.metrics,
            settings=settings.ingest,
            ownership=self.ownership,
        )
        self.bus: BusConsumer | None = None
        if settings.bus.enabled:
            self.bus = BusConsumer(
                settings.bus,
                self.ingest,
                self.ownership.owned,
                max_body_bytes=settings.ingest.max_body_bytes,
                # A new owner rebuilds the analysis window, when there is analysis to rebuild for.
                window_s=w.window_s if w.enabled else 0.0,
                rebuilt=self._rebuilt,
                rebuild_done=self._rebuild_done,
                epoch=self.ownership.epoch,
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

    def _rebuilt(self, accepted: Accepted) -> None:
        """A batch a partition's rebuild read (already in this process's hot state): into the
        analysis windows, without an evaluation of its own (on the bus's pool: it waits for room
        in the worker's queue rather than be dropped)."""
        if self.analysis is not None:
            self.analysis.submit_when_room(accepted)

    def _rebuild_done(self, partition: int, hosts: list[str]) -> None:
        """A partition's rebuild ended: each host it read is evaluated once, on its whole window,
        and (replicas sharing the fleet) the partition's unfinished runs continue here."""
        if not self.settings.workflow.enabled:
            return
        if self.analysis is not None:
            self.analysis.kick(hosts)
        else:
            for host in hosts:
                self.workflow.notify(host)
        if self.ownership.sharded:
            self.workflow.triggers.take_over(self._hosts_of(frozenset((partition,))))

    def _hosts_of(self, parts: frozenset[int]) -> Callable[[str], bool]:
        n = self.settings.bus.partitions
        return lambda host: host != FLEET_HOST and partition_of(host, n) in parts

    def _acquired(self, parts: frozenset[int]) -> None:
        """Partitions moved here (called before they are published as ours): their streams are
        read from the store afresh, and the analysis workers watch their hosts' live runs. Their
        unfinished runs continue once the rebuild has made their windows whole (_rebuild_done)."""
        hosts = self._hosts_of(parts)
        self.ledger.forget(hosts)
        if self.settings.workflow.enabled and self.ownership.sharded and self.analysis is not None:
            with self.runs.read() as tx:
                live = [h for h in tx.live_hosts(LIVE_HOSTS_WATCHED) if hosts(h)]
            if live:
                self.analysis.watch(live)

    def _releasing(self, parts: frozenset[int]) -> None:
        """Partitions about to move away (no longer named by ``owned()``): wait, bounded, until
        no message of theirs is half ingested here; the lock goes after this."""
        if self.bus is not None and not self.bus.quiesce(parts, timeout_s=self.settings.ha.lease_s / 4):
            log.warning(
                "partitions %s: a message was still being ingested when they were given up", sorted(parts)
            )

    def _released(self, parts: frozenset[int]) -> None:
        """Partitions moved away: what this controller held of their hosts goes (the new owner
        rebuilds it from the stream; should they come back, so does this one)."""
        hosts = self._hosts_of(parts)
        self.ledger.forget(hosts)
        if self.bus is not None:
            self.bus.forget(parts)
        if not self.ownership.sharded:
            return  # a deposed leader keeps its state, as before (it may lead again)
        gone = [h for h in self.hot.host_ids() if hosts(h)]
        self.hot.forget(hosts)
        if self.analysis is not None:
            self.analysis.forget(gone)
        self.workflow.triggers.let_go(hosts)

    def _member_detail(self) -> dict[str, Any]:
        """What the other replicas read of this one (controller_members.detail): rebuilds, lag,
        and the hosts it holds by cluster (the fleet's blast-radius denominators)."""
        out: dict[str, Any] = {}
        if self.bus is not None:
            st = self.bus.status()
            out["rebuilding"] = st["rebuilding"]
            out["lag"] = st["pending"]
        out["hosts"], out["clusters"] = self.hot.cluster_counts(MEMBER_CLUSTERS)
        return out

    def _fleet_known(self, match: dict[str, str]) -> tuple[int, int]:
        """(hosts in the cluster ``match`` names, hosts known): summed over the live replicas."""
        assert isinstance(self.ownership, PartitionLeases)
        total = in_cluster = 0
        for m in self.ownership.members():
            if not m.alive:
                continue
            total += int(m.detail.get("hosts", 0) or 0)
            clusters = m.detail.get("clusters") or {}
            in_cluster += int(clusters.get(match.get("cluster", ""), 0) or 0) if match else 0
        return (in_cluster if match else total), total

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
        if self.ownership.sharded and self.settings.workflow.enabled:
            # Every replica runs the workflow of its own hosts (those it holds come as its
            # partitions do); the leader coordinates, and takes up the unfinished postmortems.
            self.ledger.reload()
            self.workflow.start()
            self.postmortems.start(resume=self.leadership.is_leader)
            self.notifier.start()
        self.ownership.start()
        if self.bus is not None:
            self.bus.start()  # consumes the partitions this controller owns
        self.ready = True

    def _promoted(self) -> None:
        """Leadership moved here: the store is the truth (ledger), and unfinished runs resume.
        (Replicas sharing partitions started theirs at start; leading only coordinates: the
        fleet incidents a dead leader left unfinished continue here.)"""
        if self.ownership.sharded:
            if self.settings.workflow.enabled:
                self.workflow.triggers.take_over(lambda host: host == FLEET_HOST, delay_s=1.0)
            return
        self.ledger.reload()
        if self.settings.workflow.enabled:
            self.workflow.start()
            self.postmortems.start()
            self.notifier.start()

    def stop(self) -> None:
        self.ready = False
        if self.bus is not None:
            self.bus.stop()
        self.ownership.stop()
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
