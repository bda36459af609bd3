"""Hot state bounds, eviction counts, freshness and windows, with an injected clock."""

from __future__ import annotations

import msgspec

from collector.wire import BATCH_SCHEMA, Batch, validate_batch
from controller.config import HotStateSettings
from controller.hotstate import HotState


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(
    host: str, seq: int, ts: list[float], source_status: str = "ok", events: int = 0
) -> tuple[Batch, bytes]:
    obj = {
        "schema": BATCH_SCHEMA,
        "host_id": host,
        "boot_id": "b",
        "stream_id": "s",
        "seq": seq,
        "sent_at": ts[-1] if ts else 0.0,
        "snapshots": [
            {
                "ts": t,
                "interval_s": 1.0,
                "sources": {"psi": {"status": source_status, "path": "file", "reason": None, "data": {}}},
            }
            for t in ts
        ],
        "events": [{"type": "exec", "pid": i} for i in range(events)],
    }
    raw = msgspec.json.encode(obj)
    return validate_batch(raw), raw


def test_ring_bounded_by_snapshots_and_bytes() -> None:
    hot = HotState(HotStateSettings(samples_per_host=5, bytes_per_host=1 << 20))
    for i in range(10):
        hot.ingest(*make("h", i, [float(i)]))
    h = hot.host("h")
    assert h is not None and h.snapshots == 5 and h.evicted_snapshots == 5
    assert [s.ts for s in hot.window("h", 100)] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert [s.ts for s in hot.window("h", 2)] == [7.0, 8.0, 9.0]
    per = len(make("h", 0, [0.0])[1])
    small = HotState(HotStateSettings(samples_per_host=100, bytes_per_host=max(1024, per * 3)))
    for i in range(10):
        small.ingest(*make("h", i, [float(i)]))
    hs = small.host("h")
    assert hs is not None and hs.bytes <= max(1024, per * 3) and small.stats()["bytes"] == hs.bytes


def test_hosts_evicted_least_recently_seen_first_and_counted() -> None:
    hot = HotState(HotStateSettings(max_hosts=2))
    hot.ingest(*make("a", 1, [1.0]))
    hot.ingest(*make("b", 1, [1.0]))
    hot.ingest(*make("a", 2, [2.0]))  # a is now the most recent
    hot.ingest(*make("c", 1, [1.0]))
    assert hot.host_ids() == ["a", "c"] and hot.stats()["evicted_hosts"] == 1
    per = len(make("x", 1, [1.0])[1])
    capped = HotState(HotStateSettings(max_total_bytes=1 << 20))
    for i in range((1 << 20) // per + 10):
        capped.ingest(*make(f"h{i}", 1, [1.0]))
    assert capped.stats()["bytes"] <= 1 << 20 and capped.stats()["evicted_hosts"] > 0


def test_freshness_states() -> None:
    clock = Clock()
    hot = HotState(HotStateSettings(stale_after_s=30, missing_after_s=120), clock=clock)
    hot.ingest(*make("h", 1, [clock.t]))
    assert hot.freshness("h") == {"psi": "fresh"}
    clock.t += 60
    assert hot.freshness("h") == {"psi": "stale"}
    clock.t += 100
    assert hot.freshness("h") == {"psi": "missing"}
    hot.ingest(*make("h", 2, [clock.t], source_status="unavailable"))
    assert hot.freshness("h") == {"psi": "missing"}  # answering "unavailable" is not fresh data
    assert hot.freshness("nobody") == {}
    # A source this host never had (no GPU here) is not held against it; one that went away is.
    hot.ingest(*make("g", 1, [clock.t], source_status="unavailable"))
    assert hot.freshness("g") == {"psi": "unavailable"}
    hot.ingest(*make("g", 2, [clock.t], source_status="error"))
    assert hot.freshness("g") == {"psi": "missing"}


def test_events_come_from_the_window_newest_first_bounded() -> None:
    hot = HotState(HotStateSettings(events_per_host=3, samples_per_host=2))
    hot.ingest(*make("h", 1, [1.0], events=5))
    assert [e["pid"] for e in hot.read("h", 100).events] == [2, 3, 4]
    hot.ingest(*make("h", 2, [2.0], events=1))
    hot.ingest(*make("h", 3, [3.0], events=1))  # the first batch leaves the ring, its events with it
    h = hot.host("h")
    assert h is not None and h.events == 2 and h.evicted_events == 5
    assert [e["pid"] for e in hot.read("h", 100).events] == [0, 0]
