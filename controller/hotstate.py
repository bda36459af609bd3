"""Bounded hot state: the recent telemetry of each host, in memory, compact.

Each accepted batch's snapshots are kept as what evidence is made of, not as the JSON
they arrived in (controller/detectors/window.py): a row of signal values per snapshot
and the newest of each table (read straight from the raw JSON where it has the usual
shapes: controller/detectors/rawextract.py), so a 300 s window of real 10 s snapshots costs tens of
kilobytes, not megabytes, and reading it decodes nothing but the tables. A batch's
events are kept as compact JSON beside it. The host's latest ``collector`` and
``agent`` objects are kept as raw JSON, and the latest status of each source it
reports (at most SOURCES_PER_HOST of them). Every byte kept is counted.

Per host, history is trimmed by time first (``retain_s``, at least the analysis
window), then by ``samples_per_host`` and ``bytes_per_host``; events by
``events_per_host``. Past ``max_total_bytes`` or ``max_hosts``, hosts that stopped
sending (nothing for ``missing_after_s``) go first, least recently seen first, and
are counted. A live host is never evicted for bytes: the host whose batch passes the
bound gives up its own oldest samples instead (counted as ``trimmed_for_total``). Only
``max_hosts`` live hosts all sending can evict a live one (counted apart).

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
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from collector.wire import Batch, BatchEnvelope, Snapshot, SnapshotEnvelope, SourceEntry, raw_or_none
from controller.config import HotStateSettings
from controller.detectors.evidence import Evidence, extract_or_error
from controller.detectors.rawextract import extract_raw
from controller.detectors.window import SignalWindow
from controller.topology import labels_from_info

Freshness = Literal["fresh", "stale", "missing", "unavailable"]
_DATA = msgspec.json.Decoder(dict[str, Any])
_EVENTS = msgspec.json.Decoder(list[dict[str, Any]])
_ENCODE = msgspec.json.Encoder()
_BLOCK_OVERHEAD = 64  # an event block's object, beyond its JSON (bytes, approximate)
# A batch names at most 64 sources (collector.wire.Limits); a host that keeps naming new
# ones keeps the 128 it reported last, the rest forgotten with their freshness.
SOURCES_PER_HOST = 128
_SOURCE_OVERHEAD = 64  # bytes a status entry costs beyond its name and reason (counted, approximate)


def _source_cost(name: str, status: tuple[str, str, str | None]) -> int:
    return len(name) + len(status[2] or "") + _SOURCE_OVERHEAD


@dataclass
class EventBlock:
    ts_max: float  # the batch's newest sample (its receive time if it had none)
    count: int
    raw: bytes  # the events, compact JSON


@dataclass
class HostState:
    host_id: str
    boot_id: str = ""
    window: SignalWindow = field(default_factory=SignalWindow)
    event_blocks: deque[EventBlock] = field(default_factory=deque)
    events: int = 0
    bytes: int = 0  # the window, the event blocks, the source statuses and the raw objects
    last_seen: float = 0.0
    collector: builtins.bytes | None = None  # raw JSON
    labels: dict[str, str] = field(default_factory=dict)  # from the collector object (topology)
    agent: builtins.bytes | None = None  # raw JSON
    dropped: dict[str, int] = field(default_factory=dict)
    source_ok_at: dict[str, float] = field(default_factory=dict)
    # Latest (status, path, reason) per source, least recently reported first; its bytes are
    # in ``bytes`` and at most SOURCES_PER_HOST are kept.
    source_status: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    evicted_snapshots: int = 0
    evicted_events: int = 0

    # Where analysis workers keep the windows: (newest sample time, samples) per batch,
    # which is all the API counts.
    counts: deque[tuple[float, int]] = field(default_factory=deque)
    counted: int = 0

    @property
    def snapshots(self) -> int:
        return len(self.window) or self.counted

    def newest(self) -> float:
        ts = self.window.last() if len(self.window) else -math.inf
        return max(ts, self.event_blocks[-1].ts_max) if self.event_blocks else ts


def _raw(value: msgspec.Raw | dict[str, Any] | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, msgspec.Raw):
        return raw_or_none(value)
    return _ENCODE.encode(value)


def _decoded(env: SnapshotEnvelope) -> Snapshot:
    """A snapshot as ingest checked it, its sources' data decoded where evidence reads it."""
    sources = {
        name: SourceEntry(
            e.status,
            e.path,
            e.reason,
            _DATA.decode(e.data) if e.status == "ok" or e.status == "fallback" else {},
            e.duration_s,
        )
        for name, e in env.sources.items()
    }
    return Snapshot(env.ts, env.interval_s, sources)


def _events_json(batch: BatchEnvelope | Batch) -> bytes | None:
    """The batch's events as one compact JSON list (the raw events joined, not rebuilt)."""
    if not batch.events:
        return None
    if isinstance(batch, BatchEnvelope):
        return b"[" + b",".join(bytes(e) for e in batch.events) + b"]"
    return _ENCODE.encode(batch.events)


class HotState:
    def __init__(
        self,
        settings: HotStateSettings,
        clock: Callable[[], float] = time.time,
        *,
        windows: bool = True,
        on_error: Callable[[str, str], None] | None = None,
        on_xids: Callable[[str, list[Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        # False where analysis workers keep the windows (controller/workflow/analysis_pool.py):
        # this one then keeps what the API reports per host, and no samples.
        self.windows = windows
        # (host, error) for a snapshot evidence cannot read: the host's evaluation record takes it.
        self.on_error = on_error
        # (host, a snapshot's XID events): counted for /metrics where the windows are kept.
        self.on_xids = on_xids
        self._clock = clock
        self._hosts: OrderedDict[str, HostState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_hosts = 0  # hosts that had stopped sending
        self.evicted_live_hosts = 0  # past max_hosts with every host sending
        self.trimmed_for_total = 0  # samples a host gave up to keep the total bound
        self.labels_refused = 0  # collector labels dropped for breaking the label rules
        self.total_bytes = 0

    def ingest(self, batch: BatchEnvelope | Batch, raw: bytes, received_at: float | None = None) -> None:
        """Take an accepted batch (``raw`` is its JSON: kept nowhere, the snapshots are kept
        decoded as extracts). Snapshots arrive decoded when ingest decoded them already."""
        now = self._clock() if received_at is None else received_at
        snapshots: Sequence[Snapshot | SnapshotEnvelope] = batch.snapshots if self.windows else []
        extracts = []
        for snap in snapshots:
            # Straight from the raw JSON where its shapes allow; else the full decode.
            fast = None if isinstance(snap, Snapshot) else extract_raw(snap)
            if fast is not None:
                extracts.append(fast)
                continue
            ex, error = extract_or_error(snap if isinstance(snap, Snapshot) else _decoded(snap))
            extracts.append(ex)
            if error is not None and self.on_error is not None:
                self.on_error(batch.host_id, error)
        if self.on_xids is not None:
            for ex in extracts:
                if ex.xids:
                    self.on_xids(batch.host_id, ex.xids)
        s = self.settings
        collector, agent = _raw(batch.collector), _raw(batch.agent)
        events_json = _events_json(batch) if self.windows else None
        with self._lock:
            host = self._hosts.get(batch.host_id)
            if host is None:
                self._make_room(now)
                host = self._hosts[batch.host_id] = HostState(batch.host_id)
            else:
                self._hosts.move_to_end(batch.host_id)
            host.last_seen = now
            host.boot_id = batch.boot_id
            host.dropped = batch.dropped
            if collector is not None:
                self._resize(host, len(collector) - len(host.collector or b""))
                host.collector = collector
                host.labels, refused = labels_from_info(collector)
                self.labels_refused += refused
            if agent is not None:
                self._resize(host, len(agent) - len(host.agent or b""))
                host.agent = agent
            if batch.snapshots or batch.events:
                self._resize(host, self._note_sources(host, batch, now))
                for ex in extracts:
                    self._resize(host, host.window.add(ex))
                if not self.windows and batch.snapshots:
                    self._count(host, max(snap.ts for snap in batch.snapshots), len(batch.snapshots))
                if events_json is not None:
                    ts = max((ex.ts for ex in extracts), default=now)
                    block = EventBlock(ts, len(batch.events), events_json)
                    host.event_blocks.append(block)
                    host.events += block.count
                    self._resize(host, len(block.raw) + _BLOCK_OVERHEAD)
                self._trim(host)
            while self.total_bytes > s.max_total_bytes:
                if self._evict_idle(now, keep=host):
                    continue
                if host.snapshots > 1:  # the host sending pays first
                    self._drop_oldest_sample(host)
                    self.trimmed_for_total += 1
                elif len(self._hosts) > 1:  # every host live and down to one sample: a hard bound
                    self._evict(next(h for h in self._hosts if h != host.host_id))
                    self.evicted_live_hosts += 1
                else:
                    break

    def _trim(self, host: HostState) -> None:
        """By time (retain_s before the newest sample), then by count and bytes; at least
        the newest sample stays."""
        s = self.settings
        w = host.window
        floor = host.newest() - s.retain_s
        while len(w) > 1 and (
            w.first() < floor or len(w) > s.samples_per_host or host.bytes > s.bytes_per_host
        ):
            self._drop_oldest_sample(host)
        # A batch's events go with its samples (and by time, count and bytes), the newest
        # batch's always stay: a read takes the newest events_per_host of the window.
        blocks = host.event_blocks
        first = max(floor, w.first()) if len(w) else floor
        while len(blocks) > 1 and (
            blocks[0].ts_max < first
            or host.events - blocks[0].count >= s.events_per_host
            or host.bytes > s.bytes_per_host
        ):
            self._drop_block(host)

    def _count(self, host: HostState, newest: float, n: int) -> None:
        s = self.settings
        host.counts.append((newest, n))
        host.counted += n
        self._resize(host, 16)
        floor = max(newest, host.counts[0][0]) - s.retain_s
        while len(host.counts) > 1 and (host.counted > s.samples_per_host or host.counts[0][0] < floor):
            host.counted -= host.counts.popleft()[1]
            self._resize(host, -16)

    def _drop_oldest_sample(self, host: HostState) -> None:
        self._resize(host, host.window.drop_oldest())
        host.evicted_snapshots += 1

    def _drop_block(self, host: HostState) -> None:
        old = host.event_blocks.popleft()
        host.events -= old.count
        host.evicted_events += old.count
        self._resize(host, -len(old.raw) - _BLOCK_OVERHEAD)

    def _idle(self, host: HostState, now: float) -> bool:
        return now - host.last_seen >= self.settings.missing_after_s

    def _evict_idle(self, now: float, keep: HostState | None = None) -> bool:
        """Evict the least recently seen host that stopped sending; False if none has."""
        for host_id, host in self._hosts.items():  # least recently seen first
            if not self._idle(host, now):
                return False  # the rest were seen more recently still
            if host is not keep:
                self._evict(host_id)
                self.evicted_hosts += 1
                return True
        return False

    def _make_room(self, now: float) -> None:
        """Before a new host joins at max_hosts: an idle host goes, else the least recently
        seen live one (counted apart: max_hosts is then too small for the fleet)."""
        while len(self._hosts) >= self.settings.max_hosts:
            if not self._evict_idle(now):
                self._evict(next(iter(self._hosts)))
                self.evicted_live_hosts += 1

    def _evict(self, host_id: str) -> None:
        gone = self._hosts.pop(host_id)
        self.total_bytes -= gone.bytes

    def _resize(self, host: HostState, delta: int) -> None:
        host.bytes += delta
        self.total_bytes += delta

    @staticmethod
    def _note_sources(host: HostState, batch: BatchEnvelope | Batch, now: float) -> int:
        """Latest status per source, and the newest time each answered ok or fallback;
        returns the change in the bytes the status entries cost.

        The newest snapshot sets the statuses, in its order (the least recently reported
        first, for the bound). Times walk the snapshots newest first and stop once every
        source it names has a good answer: one snapshot for the usual batch, every one
        only when some source keeps failing."""
        snapshots: Sequence[SnapshotEnvelope | Snapshot] = batch.snapshots
        if not snapshots:
            return 0
        statuses = host.source_status
        newest = snapshots[-1].sources
        delta = 0
        if list(statuses) == list(newest):
            # The same sources in the same order (every batch of a steady host): the order
            # stands, and only a status that changed moves bytes.
            for name, entry in newest.items():
                new = (entry.status, entry.path, entry.reason)
                was = statuses[name]
                if was != new:
                    delta += _source_cost(name, new) - _source_cost(name, was)
                    statuses[name] = new
        else:
            for name, entry in newest.items():
                old = statuses.pop(name, None)  # re-inserted: the most recently reported last
                if old is not None:
                    delta -= _source_cost(name, old)
                new = statuses[name] = (entry.status, entry.path, entry.reason)
                delta += _source_cost(name, new)
            while len(statuses) > SOURCES_PER_HOST:
                gone = next(iter(statuses))
                delta -= _source_cost(gone, statuses.pop(gone))
                host.source_ok_at.pop(gone, None)
        ok_at = host.source_ok_at
        pending: list[str] = []
        at = min(snapshots[-1].ts, now)
        for name, entry in newest.items():
            if entry.status == "ok" or entry.status == "fallback":
                if at > ok_at.get(name, 0.0) and name in statuses:
                    ok_at[name] = at
            else:
                pending.append(name)
        for snap in reversed(snapshots[:-1]):
            if not pending:
                break
            at = min(snap.ts, now)
            still = []
            for name in pending:
                found = snap.sources.get(name)
                if found is not None and (found.status == "ok" or found.status == "fallback"):
                    if at > ok_at.get(name, 0.0) and name in statuses:
                        ok_at[name] = at
                else:
                    still.append(name)
            pending = still
        return delta

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

    def evidence(
        self, host_id: str, seconds: float, since: float | None = None, *, lazy: bool = False
    ) -> Evidence | None:
        """The evidence of the host's last ``seconds`` before its newest sample (only samples
        at or after ``since`` if given), with the newest ``events_per_host`` events of the
        batches that hold them and the host's freshness now; None without a sample."""
        freshness = self.freshness(host_id)
        with self._lock:
            host = self._hosts.get(host_id)
            if host is None or not len(host.window):
                return None
            newest = host.newest()
            floor = newest - seconds if since is None else max(newest - seconds, since)
            chosen = [b.raw for b in host.event_blocks if b.ts_max >= floor]
            window = host.window
            if window.last() < floor:
                return None
            # Folded under the lock: the columns are small and ingest may trim them meanwhile.
            events: list[dict[str, Any]] = []
            for raw in chosen:
                events.extend(_EVENTS.decode(raw))
            cap = self.settings.events_per_host
            ev = window.evidence(host_id, floor, events[-cap:] if cap else [], freshness, lazy=lazy)
            if ev is not None:
                ev.labels = host.labels  # replaced, never mutated: shared safely
            return ev

    def host(self, host_id: str) -> HostState | None:
        with self._lock:
            return self._hosts.get(host_id)

    def labels(self, host_id: str) -> dict[str, str]:
        with self._lock:
            h = self._hosts.get(host_id)
            return h.labels if h is not None else {}

    def last_seen(self) -> list[tuple[str, float]]:
        """(host, when its last batch arrived), least recently seen first."""
        with self._lock:
            return [(h.host_id, h.last_seen) for h in self._hosts.values()]

    def label_counts(self, match: dict[str, str]) -> tuple[int, int]:
        """(hosts whose labels include ``match``, hosts known): a blast radius's denominators."""
        with self._lock:
            hosts = list(self._hosts.values())
        if not match:
            return len(hosts), len(hosts)
        items = match.items()
        return sum(1 for h in hosts if all(h.labels.get(k) == v for k, v in items)), len(hosts)

    def cluster_counts(self, limit: int) -> tuple[int, dict[str, int]]:
        """(hosts known, hosts per ``cluster`` label, the ``limit`` most populous)."""
        with self._lock:
            counts = Counter(h.labels.get("cluster") for h in self._hosts.values())
            n = len(self._hosts)
        counts.pop(None, None)
        return n, {str(k): v for k, v in counts.most_common(limit)}

    def forget(self, hosts: Callable[[str], bool]) -> int:
        """Drop the hosts ``hosts`` names (their partition moved to another replica)."""
        with self._lock:
            gone = [h for h in self._hosts if hosts(h)]
            for h in gone:
                self._evict(h)
        return len(gone)

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
                "evicted_live_hosts": self.evicted_live_hosts,
                "trimmed_for_total": self.trimmed_for_total,
                "labels_refused": self.labels_refused,
                # Signal values past a host's MAX_SIGNALS names, not kept (a host inventing names).
                "dropped_signals": sum(h.window.dropped_signals for h in self._hosts.values()),
                "bounds": {
                    "max_hosts": s.max_hosts,
                    "max_total_bytes": s.max_total_bytes,
                    "retain_s": s.retain_s,
                    "samples_per_host": s.samples_per_host,
                    "bytes_per_host": s.bytes_per_host,
                    "events_per_host": s.events_per_host,
                },
            }
