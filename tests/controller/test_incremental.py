"""Incremental equals full: the evidence hot state keeps updated sample by sample is the
evidence a full build from the same snapshots gives, on every recorded window and on
property-generated sequences (late batches, trimming, OOM counters, tables, XIDs),
whether hot state took the batch decoded (the in-process path) or raw (an analysis
worker's: controller/detectors/rawextract.py); and an evaluation on the lazy window
(series built as read, tail means from the columns) finds what one on the full
evidence finds."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.wire import BATCH_SCHEMA, Snapshot, validate_batch, validate_envelope
from controller.config import HotStateSettings
from controller.detectors import Evidence, build_evidence
from controller.hotstate import HotState
from controller.workflow.analysis import detect, rank
from testkit.store import WINDOWS, batches

FAMILIES = sorted(p.name.removesuffix(".jsonl.gz") for p in WINDOWS.glob("*.jsonl.gz"))
_SNAP = msgspec.json.Decoder(Snapshot)


def full(hot: HotState, host: str, fed: list[Snapshot], seconds: float, since: float | None = None) -> Any:
    """The full build over the snapshots hot state still holds, by the same window rule."""
    h = hot.host(host)
    assert h is not None
    kept = set(h.window.ts)
    newest = h.newest()
    floor = newest - seconds if since is None else max(newest - seconds, since)
    window = sorted((s for s in fed if s.ts in kept and s.ts >= floor), key=lambda s: s.ts)
    ev = hot.evidence(host, seconds, since)
    assert ev is not None
    built = build_evidence(host, window, ev.events, hot.freshness(host))
    same_reading(lambda: hot.evidence(host, seconds, since, lazy=True), built)
    return built.to_dict(), ev.to_dict()


def same_reading(lazy_of: Callable[[], Evidence | None], full: Evidence) -> None:
    """What a detector can read of the lazy evidence is the full evidence's, and so are
    the findings and hypotheses."""
    names = [*full.series, "absent_signal", "gpu0_util_pct"]
    lazy = lazy_of()
    assert lazy is not None
    for name in names:  # tail means and totals first: from the columns, before any series is built
        for n in (1, 2, 3, 5, 40):
            assert lazy.recent(name, n) == full.recent(name, n), (name, n)
        assert lazy.total(name) == full.total(name) == sum(full.values(name)), name
    for name in names:
        assert lazy.series.get(name) == full.series.get(name), name
        assert (name in lazy.series) == (name in full.series), name
        assert lazy.recent(name, 3) == full.recent(name, 3), name  # and from the series built
    lazy = lazy_of()
    assert lazy is not None
    assert (lazy.start, lazy.end, lazy.samples, lazy.events, lazy.freshness, lazy.sources_seen) == (
        full.start,
        full.end,
        full.samples,
        full.events,
        full.freshness,
        full.sources_seen,
    )
    found = detect(full)
    assert [f.to_dict() for f in detect(lazy)] == [f.to_dict() for f in found]
    assert rank(lazy, detect(lazy)) == rank(full, found)


@pytest.mark.parametrize("taken", ["decoded", "raw"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_recorded_window_incremental_equals_full(family: str, taken: str) -> None:
    lines = gzip.decompress((WINDOWS / f"{family}.jsonl.gz").read_bytes()).splitlines()
    snapshots = [json.loads(line) for line in lines]
    last = snapshots[-1]["ts"]
    hot = HotState(HotStateSettings(samples_per_host=40), clock=lambda: last + 1)
    fed: list[Snapshot] = []
    for i, raw in enumerate(batches(snapshots, "recorded")):
        batch = validate_batch(raw)
        hot.ingest(batch if taken == "decoded" else validate_envelope(raw), raw)
        fed.extend(batch.snapshots)
        if i % 5 == 0 or i == len(snapshots) - 1:
            for seconds, since in ((300, None), (60, None), (300, batch.snapshots[0].ts - 20)):
                expected, got = full(hot, "recorded", fed, seconds, since)
                assert got == expected, (family, i, [k for k in got if got[k] != expected[k]])


def _snapshot(ts: float, spec: dict[str, Any]) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    if spec["host"]:
        host: dict[str, Any] = {
            "cpu": {"util_pct": {"idle": spec["idle"], "iowait": 1.0, "steal": 0.0}, "procs_running": 3},
            "memory": {"MemTotal": 1000, "MemAvailable": spec["avail"]},
        }
        if spec["oom"] is not None:
            host["vmstat"] = {"oom_kill": spec["oom"]}
        sources["host"] = {"status": "ok", "path": "kernel", "reason": None, "data": host}
    if spec["psi"]:
        sources["psi"] = {
            "status": "fallback" if spec["idle"] > 50 else "ok",
            "path": "file",
            "reason": None,
            "data": {"cpu": {"some": {"avg10": spec["idle"] / 2}}},
        }
    if spec["procs"]:
        rows = [{"pid": p, "comm": f"p{p}", "num_fds": p * 3} for p in range(spec["procs"])]
        sources["processes"] = {"status": "ok", "path": "kernel", "reason": None, "data": {"rows": rows}}
    if spec["gpu"]:
        dev = {"index": 0, "utilization_pct": {"gpu": spec["idle"]}, "memory": {"total": 10, "used": 5}}
        gpu = {"devices": [dev], "xid_events": [{"xid": 79, "ts": ts}] if spec["xid"] else []}
        sources["gpu"] = {"status": "ok", "path": "kernel", "reason": None, "data": gpu}
    if spec["broken"]:
        sources["disk"] = {"status": "error", "path": "none", "reason": "gone", "data": {}}
    return {"ts": ts, "interval_s": 1.0, "sources": sources}


SPEC = st.fixed_dictionaries(
    {
        "host": st.booleans(),
        "psi": st.booleans(),
        "idle": st.floats(0, 100, allow_nan=False),
        "avail": st.integers(0, 1000),
        "oom": st.one_of(st.none(), st.integers(0, 50)),
        "procs": st.integers(0, 4),
        "gpu": st.booleans(),
        "xid": st.booleans(),
        "broken": st.booleans(),
        "late": st.booleans(),  # this batch's samples are older than the newest kept
        "per_batch": st.integers(1, 3),
    }
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(SPEC, min_size=1, max_size=40),
    st.integers(3, 30),
    st.sampled_from([5.0, 20.0, 300.0]),
    st.booleans(),
)
def test_random_sequences_incremental_equals_full(
    specs: list[dict[str, Any]], samples: int, seconds: float, raw_path: bool
) -> None:
    hot = HotState(HotStateSettings(samples_per_host=samples), clock=lambda: 10_000.0)
    fed: list[Snapshot] = []
    t = 1000.0
    for seq, spec in enumerate(specs, 1):
        snaps = []
        for k in range(spec["per_batch"]):
            t += 1.0
            ts = t - 7.5 - k * 0.01 if spec["late"] else t  # unique, some before the newest
            snaps.append(_snapshot(ts, spec))
        obj = {
            "schema": BATCH_SCHEMA,
            "host_id": "h",
            "boot_id": "b",
            "stream_id": "s",
            "seq": seq,
            "sent_at": t,
            "snapshots": snaps,
            "events": [{"type": "exec", "pid": seq, "ppid": 1}],
        }
        raw = msgspec.json.encode(obj)
        batch = validate_batch(raw)
        hot.ingest(validate_envelope(raw) if raw_path else batch, raw)
        fed.extend(batch.snapshots)
        expected, got = full(hot, "h", fed, seconds)
        assert got == expected
