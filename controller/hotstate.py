"""Bounded hot state: the recent telemetry of each host, in memory.

Each accepted batch is kept as the JSON it arrived as (already validated), with
its time range and snapshot count; windows are decoded on demand. That keeps the
memory a host costs equal to what is counted, and keeps ingest from building a
second object graph. Per host the ring is bounded by snapshots
(``samples_per_host``) and bytes (``bytes_per_host``); the whole state by hosts
(``max_hosts``) and bytes (``max_total_bytes``), the least recently seen host going
first, counted. Events are kept decoded, bounded by ``events_per_host``.

Freshness per source: ``fresh`` within stale_after_s of its last ok or fallback
answer, ``stale`` until missing_after_s, ``missing`` after that or if it never
answered; ``unavailable`` when it never answered and says it cannot here (no GPU,
nothing configured): a host is not faulted for what it does not have.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from collector.wire import Batch, BatchEnvelope, Snapshot, SnapshotEnvelope
from controller.config import HotStateSettings

Freshness = Literal["fresh", "stale", "missing", "unavailable"]
_DECODE = msgspec.json.Decoder(Batch)


@dataclass
class Entry:
    ts_min: float
    ts_max: float
    snapshots: int
    raw: bytes  # the batch's JSON, validated at ingest


@dataclass
class HostState:
    host_id: str
    boot_id: str = ""
    entries: deque[Entry] = field(default_factory=deque)
    snapshots: int = 0
    bytes: int = 0
    events: deque[dict[str, Any]] = field(default_factory=deque)
    last_seen: float = 0.0
    collector: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    source_ok_at: dict[str, float] = field(default_factory=dict)
    source_status: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    evicted_snapshots: int = 0
    evicted_events: int = 0


class HotState:
    def __init__(self, settings: HotStateSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._hosts: OrderedDict[str, HostState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_hosts = 0
        self.total_bytes = 0

    def ingest(self, batch: BatchEnvelope | Batch, raw: bytes) -> None:
        s = self.settings
        with self._lock:
            host = self._hosts.get(batch.host_id)
            if host is None:
                host = self._hosts[batch.host_id] = HostState(batch.host_id)
            else:
                self._hosts.move_to_end(batch.host_id)
            host.last_seen = self._clock()
            host.boot_id = batch.boot_id
            host.dropped = batch.dropped
            if batch.collector is not None:
                host.collector = batch.collector
            if batch.agent is not None:
                host.agent = batch.agent
            if batch.snapshots:
                self._note_sources(host, batch)
                ts = [snap.ts for snap in batch.snapshots]
                host.entries.append(Entry(min(ts), max(ts), len(ts), raw))
                host.snapshots += len(ts)
                host.bytes += len(raw)
                self.total_bytes += len(raw)
                # Keep at least the newest batch, however large.
                while len(host.entries) > 1 and (
                    host.snapshots > s.samples_per_host or host.bytes > s.bytes_per_host
                ):
                    self._drop_oldest_entry(host)
            host.events.extend(batch.events)
            while len(host.events) > s.events_per_host:
                host.events.popleft()
                host.evicted_events += 1
            while len(self._hosts) > 1 and (
                len(self._hosts) > s.max_hosts or self.total_bytes > s.max_total_bytes
            ):
                _, gone = self._hosts.popitem(last=False)
                self.total_bytes -= gone.bytes
                self.evicted_hosts += 1

    @staticmethod
    def _note_sources(host: HostState, batch: BatchEnvelope | Batch) -> None:
        """Latest status per source, and the newest time each answered ok or fallback.

        Walks snapshots newest first and stops once every source has a good answer: one
        snapshot for the usual batch, every one only when some source keeps failing."""
        pending: set[str] | None = None
        snapshots: Sequence[SnapshotEnvelope | Snapshot] = batch.snapshots
        for snap in reversed(snapshots):
            if pending is None:
                pending = set(snap.sources)
                for name, entry in snap.sources.items():
                    host.source_status[name] = (entry.status, entry.path, entry.reason)
            for name in list(pending):
                found = snap.sources.get(name)
                if found is not None and (found.status == "ok" or found.status == "fallback"):
                    if snap.ts > host.source_ok_at.get(name, 0.0):
                        host.source_ok_at[name] = snap.ts
                    pending.discard(name)
            if not pending:
                break

    def _drop_oldest_entry(self, host: HostState) -> None:
        old = host.entries.popleft()
        host.snapshots -= old.snapshots
        host.bytes -= len(old.raw)
        self.total_bytes -= len(old.raw)
        host.evicted_snapshots += old.snapshots

    def freshness(self, host_id: str) -> dict[str, Freshness]:
        now = self._clock()
        with self._lock:
            host = self._hosts.get(host_id)
            if host is None:
                return {}
            out: dict[str, Freshness] = {}
            for name in host.source_status:
                at = host.source_ok_at.get(name)
                if at is None and host.source_status[name][0] == "unavailable":
                    out[name] = "unavailable"
                elif at is None or now - at >= self.settings.missing_after_s:
                    out[name] = "missing"
                elif now - at >= self.settings.stale_after_s:
                    out[name] = "stale"
                else:
                    out[name] = "fresh"
            return out

    def window(self, host_id: str, seconds: float) -> list[Snapshot]:
        """The host's snapshots of the last ``seconds`` before its newest one, oldest first."""
        with self._lock:
            host = self._hosts.get(host_id)
            if host is None or not host.entries:
                return []
            newest = max(e.ts_max for e in host.entries)
            chosen = [e.raw for e in host.entries if e.ts_max >= newest - seconds]
        out: list[Snapshot] = []
        for raw in chosen:  # decoded outside the lock: ingest goes on meanwhile
            out.extend(s for s in _DECODE.decode(raw).snapshots if s.ts >= newest - seconds)
        out.sort(key=lambda s: s.ts)
        return out

    def host(self, host_id: str) -> HostState | None:
        with self._lock:
            return self._hosts.get(host_id)

    def host_ids(self) -> list[str]:
        with self._lock:
            return list(self._hosts)

    def stats(self) -> dict[str, Any]:
        s = self.settings
        with self._lock:
            return {
                "hosts": len(self._hosts),
                "samples": sum(h.snapshots for h in self._hosts.values()),
                "events": sum(len(h.events) for h in self._hosts.values()),
                "bytes": self.total_bytes,
                "evicted_hosts": self.evicted_hosts,
                "bounds": {
                    "max_hosts": s.max_hosts,
                    "max_total_bytes": s.max_total_bytes,
                    "samples_per_host": s.samples_per_host,
                    "bytes_per_host": s.bytes_per_host,
                    "events_per_host": s.events_per_host,
                },
            }
