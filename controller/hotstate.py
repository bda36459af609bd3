"""Bounded hot state: the recent snapshots and events of each host, in memory.

Per host: a ring of snapshots bounded by count (``samples_per_host``) and by bytes
(``bytes_per_host``, counted as the decompressed JSON each snapshot arrived as), a
ring of events, the latest CollectorInfo, agent health and drop counts, and per
source the last time it answered ok or fallback. At most ``max_hosts`` hosts: the
least recently seen goes first, and evictions are counted. Freshness per source:
``fresh`` within stale_after_s of the last good answer, ``stale`` until
missing_after_s, ``missing`` after that or if it never answered.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from collector.wire import Batch, Snapshot
from controller.config import HotStateSettings

Freshness = Literal["fresh", "stale", "missing"]


@dataclass
class HostState:
    host_id: str
    boot_id: str = ""
    samples: deque[tuple[float, int, Snapshot]] = field(default_factory=deque)
    bytes: int = 0
    events: deque[dict[str, Any]] = field(default_factory=deque)
    last_seen: float = 0.0
    collector: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    source_ok_at: dict[str, float] = field(default_factory=dict)
    source_status: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    evicted_samples: int = 0
    evicted_events: int = 0


class HotState:
    def __init__(self, settings: HotStateSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._hosts: OrderedDict[str, HostState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_hosts = 0
        self.total_bytes = 0

    def ingest(self, batch: Batch, body_bytes: int) -> None:
        s = self.settings
        per_snapshot = body_bytes // max(1, len(batch.snapshots)) if batch.snapshots else 0
        with self._lock:
            host = self._hosts.get(batch.host_id)
            if host is None:
                host = HostState(batch.host_id)
                self._hosts[batch.host_id] = host
                while len(self._hosts) > s.max_hosts:
                    _, gone = self._hosts.popitem(last=False)
                    self.total_bytes -= gone.bytes
                    self.evicted_hosts += 1
            else:
                self._hosts.move_to_end(batch.host_id)
            host.last_seen = self._clock()
            host.boot_id = batch.boot_id
            host.dropped = dict(batch.dropped)
            if batch.collector is not None:
                host.collector = batch.collector
            if batch.agent is not None:
                host.agent = batch.agent
            for snap in batch.snapshots:
                host.samples.append((snap.ts, per_snapshot, snap))
                host.bytes += per_snapshot
                self.total_bytes += per_snapshot
                for name, entry in snap.sources.items():
                    host.source_status[name] = (entry.status, entry.path, entry.reason)
                    if entry.status in ("ok", "fallback"):
                        host.source_ok_at[name] = max(host.source_ok_at.get(name, 0.0), snap.ts)
            while host.samples and (len(host.samples) > s.samples_per_host or host.bytes > s.bytes_per_host):
                _, size, _ = host.samples.popleft()
                host.bytes -= size
                self.total_bytes -= size
                host.evicted_samples += 1
            for event in batch.events:
                host.events.append(event)
            while len(host.events) > s.events_per_host:
                host.events.popleft()
                host.evicted_events += 1

    def freshness(self, host_id: str) -> dict[str, Freshness]:
        now = self._clock()
        with self._lock:
            host = self._hosts.get(host_id)
            if host is None:
                return {}
            out: dict[str, Freshness] = {}
            for name in host.source_status:
                at = host.source_ok_at.get(name)
                if at is None or now - at >= self.settings.missing_after_s:
                    out[name] = "missing"
                elif now - at >= self.settings.stale_after_s:
                    out[name] = "stale"
                else:
                    out[name] = "fresh"
            return out

    def window(self, host_id: str, seconds: float) -> list[Snapshot]:
        """The host's snapshots from the last ``seconds`` (by their own timestamps)."""
        with self._lock:
            host = self._hosts.get(host_id)
            if host is None or not host.samples:
                return []
            newest = host.samples[-1][0]
            return [snap for ts, _, snap in host.samples if ts >= newest - seconds]

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
                "samples": sum(len(h.samples) for h in self._hosts.values()),
                "events": sum(len(h.events) for h in self._hosts.values()),
                "bytes": self.total_bytes,
                "evicted_hosts": self.evicted_hosts,
                "bounds": {
                    "max_hosts": s.max_hosts,
                    "samples_per_host": s.samples_per_host,
                    "bytes_per_host": s.bytes_per_host,
                    "events_per_host": s.events_per_host,
                },
            }
