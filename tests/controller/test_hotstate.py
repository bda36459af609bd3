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
                "sources": {
                    "psi": {
                        "status": source_status,
                        "path": "file",
                        "reason": None,
                        "data": {"cpu": {"some": {"avg10": t}}},
                    }
                },
            }
            for t in ts
        ],
        "events": [{"type": "exec", "pid": i} for i in range(events)],
    }
    raw = msgspec.json.encode(obj)
    return validate_batch(raw), raw


def window_ts(hot: HotState, host: str, seconds: float) -> list[float]:
    ev = hot.evidence(host, seconds)
    assert ev is not None
    return [t for t, _ in ev.series["psi_cpu_some"]]


def test_ring_bounded_by_snapshots_and_bytes() -> None:
    hot = HotState(HotStateSettings(samples_per_host=5, bytes_per_host=1 << 20))
    for i in range(10):
        hot.ingest(*make("h", i, [float(i)]))
    h = hot.host("h")
    assert h is not None and h.snapshots == 5 and h.evicted_snapshots == 5
    assert window_ts(hot, "h", 100) == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert window_ts(hot, "h", 2) == [7.0, 8.0, 9.0]
    per = len(make("h", 0, [0.0])[1])
    small = HotState(HotStateSettings(samples_per_host=100, bytes_per_host=max(1024, per * 3)))
    for i in range(10):
        small.ingest(*make("h", i, [float(i)]))
    hs = small.host("h")
    assert hs is not None and hs.bytes <= max(1024, per * 3) and small.stats()["bytes"] == hs.bytes


def test_hosts_that_stopped_sending_are_evicted_first_and_counted() -> None:
    clock = Clock()
    hot = HotState(HotStateSettings(max_hosts=2, missing_after_s=120), clock=clock)
    hot.ingest(*make("a", 1, [clock.t]))
    hot.ingest(*make("b", 1, [clock.t]))
    clock.t += 200
    hot.ingest(*make("a", 2, [clock.t]))  # a keeps sending; b stopped
    hot.ingest(*make("c", 1, [clock.t]))
    assert hot.host_ids() == ["a", "c"] and hot.stats()["evicted_hosts"] == 1
    # With every host sending, max_hosts still holds: the least recently seen goes, counted apart.
    hot.ingest(*make("d", 1, [clock.t]))
    assert hot.host_ids() == ["c", "d"] and hot.stats()["evicted_live_hosts"] == 1


def test_the_total_bound_holds_and_live_hosts_give_up_samples_not_their_place() -> None:
    clock = Clock()
    clock.t = 100_000.0
    capped = HotState(
        HotStateSettings(
            max_total_bytes=1 << 20, missing_after_s=120, retain_s=86_400, samples_per_host=100_000
        ),
        clock=clock,
    )
    for i in range(24000):
        capped.ingest(*make(f"h{i % 40}", i, [clock.t - 24000 + i]))
    stats = capped.stats()
    assert stats["bytes"] <= 1 << 20 and stats["hosts"] == 40 and stats["trimmed_for_total"] > 0
    assert stats["evicted_hosts"] == 0 and stats["evicted_live_hosts"] == 0
    # Hosts that stopped sending make room before any live one gives up a sample.
    clock.t += 200
    for i in range(200):
        capped.ingest(*make(f"new{i % 5}", i, [clock.t + i]))
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


def events(hot: HotState, host: str) -> list[dict[str, object]]:
    ev = hot.evidence(host, 100)
    assert ev is not None
    return ev.events


def test_events_come_from_the_window_newest_first_bounded() -> None:
    hot = HotState(HotStateSettings(events_per_host=3, samples_per_host=2))
    hot.ingest(*make("h", 1, [1.0], events=5))
    assert [e["pid"] for e in events(hot, "h")] == [2, 3, 4]
    hot.ingest(*make("h", 2, [2.0], events=1))
    hot.ingest(*make("h", 3, [3.0], events=1))  # the first batch leaves the ring, its events with it
    h = hot.host("h")
    assert h is not None and h.events == 2 and h.evicted_events == 5
    assert [e["pid"] for e in events(hot, "h")] == [0, 0]


def test_a_host_inventing_signal_names_keeps_at_most_max_signals_and_counts_the_rest() -> None:
    from controller.detectors.window import MAX_SIGNALS

    hot = HotState(HotStateSettings())
    devices = [{"index": i, "utilization_pct": {"gpu": 1.0}, "temperature_c": 40} for i in range(400)]
    obj = msgspec.json.decode(make("h", 1, [1.0])[1])
    obj["snapshots"][0]["sources"]["gpu"] = {
        "status": "ok",
        "path": "kernel",
        "reason": None,
        "data": {"devices": devices},
    }
    raw = msgspec.json.encode(obj)
    hot.ingest(validate_batch(raw), raw)
    h = hot.host("h")
    assert h is not None and len(h.window.columns) == MAX_SIGNALS
    assert hot.stats()["dropped_signals"] == 400 * 3 + 1 - MAX_SIGNALS


def test_a_window_read_twice_holds_each_sample_once() -> None:
    # A partition's rebuild that was stopped and begun again reads batches it already applied:
    # the samples of a time already held are not kept a second time, late ones still slot in.
    hot = HotState(HotStateSettings())
    for i in range(5):
        hot.ingest(*make("h", i + 1, [float(10 + 2 * i), float(11 + 2 * i)]))
    for i in range(5):
        hot.ingest(*make("h", i + 1, [float(10 + 2 * i), float(11 + 2 * i)]))
    hot.ingest(*make("h", 9, [10.5]))
    assert window_ts(hot, "h", 1000) == [10.0, 10.5, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0]
    h = hot.host("h")
    assert h is not None and h.window.repeated == 10
