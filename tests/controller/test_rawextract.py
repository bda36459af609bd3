"""The raw-JSON extract equals the full one wherever it answers (controller/detectors/rawextract.py).

Hot state in the analysis workers reads each sample through ``extract_raw``; replays,
the in-process path and every earlier test read it through ``extract`` on decoded
data. The two must give the same values (in the same order), the same OOM counter,
XIDs and sources, and tables that decode to the same rows; where the raw path declines
(None) the full path answers, extract or error, exactly as before.
"""

from __future__ import annotations

import gzip
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.wire import Snapshot, SnapshotEnvelope
from controller.detectors.evidence import SOURCE_TABLES, Extract, extract, extract_or_error, source_tables
from controller.detectors.rawextract import extract_raw
from testkit.store import WINDOWS

FAMILIES = sorted(p.name.removesuffix(".jsonl.gz") for p in WINDOWS.glob("*.jsonl.gz"))
_ENV = msgspec.json.Decoder(SnapshotEnvelope)
_FULL = msgspec.json.Decoder(Snapshot)
_ENC = msgspec.json.Encoder()


def comparable(ex: Extract) -> tuple[Any, ...]:
    """Everything an extract says, its tables made of the data kept raw as hot state makes them."""
    tables = dict(ex.tables)
    for source, data in ex.raw.items():
        tables.update(source_tables(source, msgspec.json.decode(data)))
    return (ex.ts, list(ex.values.items()), ex.oom, sorted(tables.items()), ex.xids, ex.sources)


def both(raw: bytes) -> tuple[Extract | None, tuple[Extract, str | None]]:
    return extract_raw(_ENV.decode(raw)), extract_or_error(_FULL.decode(raw))


def snapshots_of(family: str) -> list[bytes]:
    return gzip.decompress((WINDOWS / f"{family}.jsonl.gz").read_bytes()).splitlines()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_recorded_snapshot_reads_the_same_raw(family: str) -> None:
    for i, raw in enumerate(snapshots_of(family)):
        fast, (full, error) = both(raw)
        assert error is None
        assert fast is not None, (family, i)  # real data always takes the fast path
        assert comparable(fast) == comparable(full), (family, i)


# --- property: recorded snapshots with parts replaced by arbitrary JSON -------------------------

# The names the extract reads, so that arbitrary objects often hit them.
KEYS = [
    "cpu", "util_pct", "idle", "iowait", "steal", "procs_running", "procs_blocked", "forks_per_s",
    "memory", "MemTotal", "MemAvailable", "load", "vmstat", "oom_kill", "vmstat_rates", "pswpin_per_s",
    "some", "full", "avg10", "io", "devices", "read_await_ms", "write_await_ms", "interfaces", "name",
    "operstate", "rates", "rx_errors_per_s", "tx_dropped_per_s", "in_rto_backoff",
    "listeners_near_backlog", "top_retrans", "rows", "fd_holders", "io_top", "num_fds", "fd_pct",
    "totals", "processes", "cgroups", "throttled_periods_pct", "counts", "tcp_retransmit", "index",
    "xid_events", "utilization_pct", "gpu", "total", "used", "throttle_reasons",
]  # fmt: skip
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(-1e9, 1e9, allow_nan=False),
    st.text(max_size=3),
)
JSON = st.recursive(
    LEAF,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(KEYS), kids, max_size=4)
    ),
    max_leaves=10,
)


def perturb(value: Any, draw: Any, depth: int = 0) -> Any:
    """The value with, here and there, a subtree replaced by arbitrary JSON, a key dropped
    or a list cut short."""
    if depth and draw(st.integers(0, 7)) == 0:
        return draw(JSON)
    if isinstance(value, dict):
        return {
            k: perturb(v, draw, depth + 1) for k, v in value.items() if depth > 4 or draw(st.integers(0, 9))
        }
    if isinstance(value, list) and depth <= 4:
        kept = value[: draw(st.integers(0, len(value)))]
        return [perturb(v, draw, depth + 1) for v in kept]
    return value


TEMPLATES = [msgspec.json.decode(snapshots_of(f)[-1]) for f in FAMILIES]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_arbitrary_shapes_read_the_same_or_take_the_full_path(data: st.DataObject) -> None:
    snap = data.draw(st.sampled_from(TEMPLATES))
    name = data.draw(st.sampled_from(sorted(snap["sources"])))
    entry = dict(snap["sources"][name])
    entry["status"] = data.draw(st.sampled_from(["ok", "ok", "fallback", "error"]))
    changed = perturb(entry["data"], data.draw, 1)
    entry["data"] = changed if isinstance(changed, dict) else {}  # the wire wants an object
    raw = _ENC.encode(snap | {"sources": snap["sources"] | {name: entry}})
    fast, (full, error) = both(raw)
    if fast is not None:
        assert error is None, error
        assert comparable(fast) == comparable(full)


def test_a_shape_the_raw_path_does_not_take_gives_the_full_paths_answer() -> None:
    snap = msgspec.json.decode(snapshots_of("cpu_saturation")[-1])
    odd = [
        ("processes", {"rows": [1, {"pid": 2, "num_fds": 9}]}),  # a row that is not an object
        ("host", {"cpu": {"util_pct": [1, 2]}, "load": [3.0]}),  # a list where an object is read
        ("disk", {"devices": None}),  # iterating null: the full path's error
        ("network", {"interfaces": [{"rates": [1]}]}),  # .get on a list: the full path's error
    ]
    for name, data in odd:
        src = snap["sources"] | {name: {"status": "ok", "path": "kernel", "reason": None, "data": data}}
        fast, (full, error) = both(_ENC.encode(snap | {"sources": src}))
        assert fast is None, name
        if name in ("processes", "host"):
            assert error is None and full.values  # taken whole by the full path
        else:
            assert error is not None and full.values == {}  # the host's error, as before


def test_the_raw_path_answers_for_a_snapshot_without_sources() -> None:
    raw = _ENC.encode({"ts": 5.0, "interval_s": 1.0, "sources": {}})
    fast, (full, _) = both(raw)
    assert fast is not None and comparable(fast) == comparable(full) == (5.0, [], None, [], [], [])
    assert fast.raw == {}
    assert comparable(extract(_FULL.decode(raw))) == comparable(full)


def test_every_source_with_tables_makes_exactly_its_tables() -> None:
    # Hot state keeps these sources' data raw and trusts source_tables to make their tables.
    for source, keys in SOURCE_TABLES.items():
        assert set(source_tables(source, {})) == set(keys), source
    assert source_tables("host", {"cpu": {}}) == {}
