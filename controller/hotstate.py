"""Bounded hot state: the recent telemetry of each host, in memory.

Each accepted batch is kept as the JSON it arrived as (already checked and
validated: json_check has bounded its depth and value count), with its time range
and snapshot and event counts; windows, events included, are decoded on demand.
The host's latest ``collector`` and ``agent`` objects are kept as raw JSON too, and
the latest status of each source it reports (at most SOURCES_PER_HOST of them).
Every byte kept is counted, so what a host costs is what ``bytes`` says: per host the
ring is bounded by snapshots (``samples_per_host``) and bytes (``bytes_per_host``,
batches plus the two objects); the whole state by hosts (``max_hosts``) and bytes
(``max_total_bytes``), the least recently seen host going first, counted. A read
takes at most ``events_per_host`` events, the newest of its window.

Freshness per source: ``fresh`` within stale_after_s of its last ok or fallback
answer, ``stale`` until missing_after_s, ``missing`` after that or if it never
answered; ``unavailable`` when it never answered and says it cannot here (no GPU,
nothing configured): a host is not faulted for what it does not have. The time of an
answer is the earlier of its sample time and when this controller received it, so a
clock running ahead cannot keep a dead host fresh and a catch-up batch of old
samples does not make a host look current.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from collector.wire import Batch, BatchEnvelope, Snapshot, SnapshotEnvelope, raw_or_none
from controller.config import HotStateSettings

Freshness = Literal["fresh", "stale", "missing", "unavailable"]
_DECODE = msgspec.json.Decoder(Batch)
_ENCODE = msgspec.json.Encoder()
# A batch names at most 64 sources (collector.wire.Limits); a host that keeps naming new
# ones keeps the 128 it reported last, the rest forgotten with their freshness.
SOURCES_PER_HOST = 128
_SOURCE_OVERHEAD = 64  # bytes a status entry costs beyond its name and reason (counted, approximate)


def _source_cost(name: str, status: tuple[str, str, str | None]) -> int:
    return len(name) + len(status[2] or "") + _SOURCE_OVERHEAD


@dataclass
class Entry:
    ts_min: float
    ts_max: float
    snapshots: int
    events: int
    raw: bytes  # the batch's JSON, validated at ingest


@dataclass
class HostState:
    host_id: str
    boot_id: str = ""
    entries: deque[Entry] = field(default_factory=deque)
    snapshots: int = 0
    events: int = 0
    bytes: int = 0  # entries plus the raw collector and agent objects
    last_seen: float = 0.0
    collector: builtins.bytes | None = None  # raw JSON
    agent: builtins.bytes | None = None  # raw JSON
    dropped: dict[str, int] = field(default_factory=dict)
    source_ok_at: dict[str, float] = field(default_factory=dict)
    # Latest (status, path, reason) per source, least recently reported first; its bytes are
    # in ``bytes`` and at most SOURCES_PER_HOST are kept.
    source_status: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    evicted_snapshots: int = 0
    evicted_events: int = 0


@dataclass(frozen=True)
class Window:
    snapshots: list[Snapshot]
    events: list[dict[str, Any]]


def _raw(value: msgspec.Raw | dict[str, Any] | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, msgspec.Raw):
        return raw_or_none(value)
    return _ENCODE.encode(value)


class HotState:
    def __init__(self, settings: HotStateSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._hosts: OrderedDict[str, HostState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_hosts = 0
        self.total_bytes = 0

    def ingest(self, batch: BatchEnvelope | Batch, raw: bytes, received_at: float | None = None) -> None:
        s = self.settings
        now = self._clock() if received_at is None else received_at
        collector, agent = _raw(batch.collector), _raw(batch.agent)
        with self._lock:
            host = self._hosts.get(batch.host_id)
            if host is None:
                host = self._hosts[batch.host_id] = HostState(batch.host_id)
            else:
                self._hosts.move_to_end(batch.host_id)
            host.last_seen = now
            host.boot_id = batch.boot_id
            host.dropped = batch.dropped
            if collector is not None:
                self._resize(host, len(collector) - len(host.collector or b""))
                host.collector = collector
            if agent is not None:
                self._resize(host, len(agent) - len(host.agent or b""))
                host.agent = agent
            if batch.snapshots or batch.events:
                self._resize(host, self._note_sources(host, batch, now))
                ts = [snap.ts for snap in batch.snapshots] or [now]
                host.entries.append(Entry(min(ts), max(ts), len(batch.snapshots), len(batch.events), raw))
                host.snapshots += len(batch.snapshots)
                host.events += len(batch.events)
                self._resize(host, len(raw))
                # Keep at least the newest batch, however large.
                while len(host.entries) > 1 and (
                    host.snapshots > s.samples_per_host or host.bytes > s.bytes_per_host
                ):
                    self._drop_oldest_entry(host)
            while len(self._hosts) > 1 and (
                len(self._hosts) > s.max_hosts or self.total_bytes > s.max_total_bytes
            ):
                _, gone = self._hosts.popitem(last=False)
                self.total_bytes -= gone.bytes
                self.evicted_hosts += 1

    def _resize(self, host: HostState, delta: int) -> None:
        host.bytes += delta
        self.total_bytes += delta

    @staticmethod
    def _note_sources(host: HostState, batch: BatchEnvelope | Batch, now: float) -> int:
        """Latest status per source, and the newest time each answered ok or fallback;
        returns the change in the bytes the status entries cost.

        Walks snapshots newest first and stops once every source has a good answer: one
        snapshot for the usual batch, every one only when some source keeps failing."""
        delta = 0
        statuses = host.source_status
        pending: set[str] | None = None
        snapshots: Sequence[SnapshotEnvelope | Snapshot] = batch.snapshots
        for snap in reversed(snapshots):
            if pending is None:
                pending = set(snap.sources)
                for name, entry in snap.sources.items():
                    old = statuses.pop(name, None)  # re-inserted: the most recently reported last
                    if old is not None:
                        delta -= _source_cost(name, old)
                    new = statuses[name] = (entry.status, entry.path, entry.reason)
                    delta += _source_cost(name, new)
                while len(statuses) > SOURCES_PER_HOST:
                    gone = next(iter(statuses))
                    delta -= _source_cost(gone, statuses.pop(gone))
                    host.source_ok_at.pop(gone, None)
            at = min(snap.ts, now)
            for name in list(pending):
                found = snap.sources.get(name)
                if found is not None and (found.status == "ok" or found.status == "fallback"):
                    if at > host.source_ok_at.get(name, 0.0) and name in statuses:
                        host.source_ok_at[name] = at
                    pending.discard(name)
            if not pending:
                break
        return delta

    def _drop_oldest_entry(self, host: HostState) -> None:
        old = host.entries.popleft()
        host.snapshots -= old.snapshots
        host.events -= old.events
        self._resize(host, -len(old.raw))
        host.evicted_snapshots += old.snapshots
        host.evicted_events += old.events

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

    def read(self, host_id: str, seconds: float, since: float | None = None) -> Window:
        """The host's snapshots of the last ``seconds`` before its newest one, oldest first
        (only those at or after ``since`` if given), and the newest ``events_per_host``
        events of the batches that hold them."""
        with self._lock:
            host = self._hosts.get(host_id)
            if host is None or not host.entries:
                return Window([], [])
            newest = max(e.ts_max for e in host.entries)
            floor = newest - seconds if since is None else max(newest - seconds, since)
            chosen = [e.raw for e in host.entries if e.ts_max >= floor]
        snapshots: list[Snapshot] = []
        events: list[dict[str, Any]] = []
        for raw in chosen:  # decoded outside the lock: ingest goes on meanwhile
            batch = _DECODE.decode(raw)
            kept = [s for s in batch.snapshots if s.ts >= floor]
            snapshots.extend(kept)
            if kept or not batch.snapshots:
                events.extend(batch.events)
        snapshots.sort(key=lambda s: s.ts)
        cap = self.settings.events_per_host
        return Window(snapshots, events[-cap:] if cap else [])

    def window(self, host_id: str, seconds: float) -> list[Snapshot]:
        return self.read(host_id, seconds).snapshots

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
                "events": sum(h.events for h in self._hosts.values()),
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
