"""A host's recent extracts, kept compact and updated one sample at a time.

Hot state keeps, per host, what evidence is made of rather than the batches it came
in: the samples' times as one array, each signal's values as one column of doubles
(NaN where a snapshot had none), the OOM-kill counters, the sources each snapshot
named and its GPU XID events; and, per source with tables, only the newest sample's
(the only one evidence reads): its data as it came, made into tables when they are
read, or the tables' JSON. A real 17-37 KB snapshot costs a few hundred bytes, and
its newest sample's data a few KB per host.

``evidence`` folds a window exactly as ``fold`` folds the extracts of the same
snapshots (tests/controller/test_incremental.py holds the two equal). A column with
no gap read whole is handed over as one zip, so reading the window of a host an
analysis worker keeps is a few dozen microseconds, not a rebuild.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sys
from array import array
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec

from controller.detectors.evidence import (
    MAX_POINTS,
    MAX_ROWS,
    TABLE_SOURCE,
    Band,
    Baseline,
    Evidence,
    Extract,
    Series,
    TailMeans,
    assemble,
    robust_baseline,
    series_outliers,
    source_tables,
    tail_mean,
    with_ts,
)

MAX_SIGNALS = 512  # names per host; a real host has 30-60 (more with many GPUs)
# Bytes a sample costs beyond its doubles (its time, counter, sources and XID slots) and
# a column or a table beyond its data: counted, approximate.
_SAMPLE_OVERHEAD = 40
_COLUMN_OVERHEAD = 96
_TABLE_OVERHEAD = 48
_BASELINE_ENTRY = 200  # a kept baseline: its key in the dict, a Baseline and a tuple
_NAN = math.nan
_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder()
_DEC_DICT = msgspec.json.Decoder(dict[str, Any])


class Column:
    __slots__ = ("gaps", "values")

    def __init__(self, values: array[float], gaps: int) -> None:
        self.values = values
        self.gaps = gaps  # NaNs in values: 0 lets a whole read skip the per-point check


class _Lazy(dict[str, Any]):
    """A mapping whose entries are made on first read by ``_load`` (False: no such key)."""

    def _load(self, key: str) -> bool:
        return dict.__contains__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return dict.__getitem__(self, key) if self._load(key) else default

    def __getitem__(self, key: str) -> Any:
        if not self._load(key):
            raise KeyError(key)
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._load(key)


class LazyTables(_Lazy):
    """Tables made on first read: an evaluation reads few of them (a detector looks at
    its table only once its signal crossed a threshold). Each key comes from one source,
    kept as its tables' JSON or as its raw data (made into tables by ``source_tables``).
    For detectors only: iterating it sees only the tables read so far, so it is never
    stored or encoded."""

    def __init__(self, kept: dict[str, tuple[bool, bytes]], extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._kept = kept  # source -> (raw data?, JSON)

    def _load(self, key: str) -> bool:
        if dict.__contains__(self, key):
            return True
        source = TABLE_SOURCE.get(key, key)
        kept = self._kept.pop(source, None)
        if kept is None:
            return False
        self.update(_tables_of(source, kept))
        return dict.__contains__(self, key)


def _tables_of(source: str, kept: tuple[bool, bytes]) -> dict[str, Any]:
    raw, data = kept
    if raw:
        return source_tables(source, _DEC_DICT.decode(data))
    tables: dict[str, Any] = _DEC_DICT.decode(data)
    return tables


class LazySeries(_Lazy, TailMeans):
    """Series built on first read, straight from the window's columns: an evaluation reads
    a third of the signals a host sends, and most only for the mean of their last few
    points (a detector reads more only once its own signal crossed a threshold). For
    detectors only, as LazyTables, and only until the window takes its next sample: the
    columns are the window's own, not copies (an analysis worker evaluates between
    batches, never during one)."""

    def __init__(
        self, ts: list[float], lo: int, columns: dict[str, Column], kept: BaselineCache | None = None
    ) -> None:
        super().__init__()
        self._ts = ts
        self._lo = lo
        self._columns = columns
        self._kept = kept if kept is not None else BaselineCache()

    def _load(self, key: str) -> bool:
        if dict.__contains__(self, key):
            return True
        col = self._columns.get(key)
        if col is None:
            return False
        pts = _points(self._ts, col.values[self._lo :] if self._lo else col.values, col.gaps == 0)
        if not pts:
            return False
        dict.__setitem__(self, key, pts)
        return True

    def tail_mean(self, name: str, n: int) -> float | None:
        if dict.__contains__(self, name):
            return super().tail_mean(name, n)  # built already: from its points
        col = self._columns.get(name)
        if col is None:
            return None
        values, lo = col.values, self._lo
        tail: list[float] = []
        i = len(values) - 1
        while i >= lo and len(tail) < n:
            v = values[i]
            if v == v:
                tail.append(v)
            i -= 1
        tail.reverse()
        return tail_mean(tail)

    def names(self) -> list[str]:
        return list(self._columns)

    def tail(self, name: str, n: int) -> Series:
        if dict.__contains__(self, name):
            return super().tail(name, n)
        col = self._columns.get(name)
        if col is None:
            return []
        values, lo, ts = col.values, self._lo, self._ts
        out: Series = []
        i = len(values) - 1
        while i >= lo and len(out) < n:
            v = values[i]
            if v == v:
                out.append((ts[i - lo], v))
            i -= 1
        out.reverse()
        return out

    def outliers(self, lo: float, hi: float, band: Band) -> list[tuple[str, Baseline, float, float]]:
        ts = self._ts
        if len(ts) > MAX_POINTS:  # the built series hold only the newest points: judge those
            return series_outliers({name: self[name] for name in self.names() if name in self}, lo, hi, band)
        i0, i1 = bisect.bisect_left(ts, lo), bisect.bisect_left(ts, hi)
        if i1 >= len(ts):
            return []  # no sample since the stretch: nothing new to judge
        # The same samples in [lo, hi) (and the same band) give the same baselines: kept
        # while the window slides, remade once per step of the stretch.
        key = (lo, hi, band, i1 - i0, ts[i0] if i0 < i1 else None, ts[i1 - 1] if i0 < i1 else None)
        kept = self._kept
        if kept.key != key:
            kept.key, kept.entries = key, {}
        entries, a, b = kept.entries, self._lo + i0, self._lo + i1
        out = []
        for name, col in self._columns.items():
            entry = entries.get(name, _UNSEEN)
            if entry is _UNSEEN:
                base = robust_baseline(col.values[a:b])
                limits = band(name, base) if base is not None else None
                entry = entries[name] = None if limits is None or base is None else (base, *limits)
            if entry is None:
                continue
            values = col.values
            j = len(values) - 1
            while j >= b and values[j] != values[j]:
                j -= 1
            if j >= b and abs(values[j] - entry[1]) >= entry[2]:
                out.append((name, *entry))
        return out

    def total(self, name: str) -> float:
        if dict.__contains__(self, name):
            return super().total(name)
        col = self._columns.get(name)
        if col is None:
            return 0
        values = col.values[self._lo :] if self._lo else col.values
        kept = [v for v in values.tolist() if v == v] if col.gaps else values.tolist()
        return sum(kept[-MAX_POINTS:] if len(kept) > MAX_POINTS else kept)


_UNSEEN: Any = object()


class BaselineCache:
    """A window's robust baselines for the stretch last asked about (general detectors):
    at most one entry per column, dropped when the stretch moves."""

    __slots__ = ("charged", "entries", "key")

    def __init__(self) -> None:
        self.key: Any = None
        self.entries: dict[str, tuple[Baseline, float, float] | None] = {}
        self.charged = 0  # bytes of it the window has counted so far

    def recharge(self) -> int:
        """The change in its size since last counted (made between batches, counted at the next)."""
        size = _BASELINE_ENTRY * len(self.entries)
        delta, self.charged = size - self.charged, size
        return delta


def _points(ts: list[float], values: array[float], whole: bool) -> Series:
    """A column's points (the NaNs left out unless it has none), the newest MAX_POINTS."""
    if whole:
        pts = list(zip(ts, values.tolist(), strict=True))
    else:
        pts = [(t, v) for t, v in zip(ts, values.tolist(), strict=True) if v == v]
    return pts[-MAX_POINTS:] if len(pts) > MAX_POINTS else pts


class SignalWindow:
    __slots__ = (
        "baselines",
        "bytes",
        "columns",
        "dropped_signals",
        "ooms",
        "repeated",
        "sources",
        "tables",
        "ts",
        "xid_samples",
        "xids",
    )

    def __init__(self) -> None:
        self.ts = array("d")
        self.columns: dict[str, Column] = {}
        self.ooms = array("d")  # NaN: none in that snapshot
        self.sources: deque[tuple[str, ...]] = deque()
        self.xids: deque[bytes | None] = deque()
        self.xid_samples = 0  # samples in the window that carry XID events
        # Per source with tables, the newest sample's: (its ts, raw data?, JSON): the source's
        # raw data (rawextract's, made into tables when read), or its tables' JSON.
        self.tables: dict[str, tuple[float, bool, bytes]] = {}
        self.bytes = 0
        self.dropped_signals = 0  # values whose name would pass MAX_SIGNALS, not kept
        self.repeated = 0  # samples of a time already held, not kept twice
        self.baselines = BaselineCache()

    def __len__(self) -> int:
        return len(self.ts)

    def first(self) -> float:
        return self.ts[0]

    def last(self) -> float:
        return self.ts[-1]

    def add(self, ex: Extract) -> int:
        """Take one snapshot's extract (in time order or not); returns the bytes it added."""
        n = len(self.ts)
        # A late batch is kept in time order; a sample of a time already held is the same sample
        # again (a partition's rebuild that read it twice), not a second one.
        at = n if not n or self.ts[-1] < ex.ts else bisect.bisect_right(self.ts, ex.ts)
        if at and self.ts[at - 1] == ex.ts:
            self.repeated += 1
            return 0
        delta = _SAMPLE_OVERHEAD
        columns = self.columns
        values = ex.values
        for name, col in columns.items():
            v = values.get(name, _NAN)
            if v != v:
                col.gaps += 1
            if at == n:
                col.values.append(v)
            else:
                col.values.insert(at, v)
        for name, v in values.items():
            if name in columns:
                continue
            if len(columns) >= MAX_SIGNALS:
                self.dropped_signals += 1
                continue
            col = Column(array("d", [_NAN]) * (n + 1), n)
            col.values[at] = v
            columns[sys.intern(name)] = col
            delta += _COLUMN_OVERHEAD + 8 * n + len(name)
        delta += 8 * len(columns)
        xids = _ENC.encode(ex.xids) if ex.xids else None
        self.xid_samples += xids is not None
        sources = tuple(sys.intern(s) for s in ex.sources)
        if n and at == n and self.sources[-1] == sources:
            sources = self.sources[-1]  # one object for a run of the same sources: evidence skips it
        if at == n:
            self.ts.append(ex.ts)
            self.ooms.append(_NAN if ex.oom is None else ex.oom)
            self.sources.append(sources)
            self.xids.append(xids)
        else:
            self.ts.insert(at, ex.ts)
            self.ooms.insert(at, _NAN if ex.oom is None else ex.oom)
            self.sources.insert(at, sources)
            self.xids.insert(at, xids)
        delta += 8 * len(sources) + len(xids or b"")
        kept: dict[str, tuple[bool, bytes]] = {source: (True, data) for source, data in ex.raw.items()}
        if ex.tables:
            by_source: dict[str, dict[str, Any]] = {}
            for key, table in ex.tables.items():
                by_source.setdefault(TABLE_SOURCE.get(key, key), {})[key] = table
            for source, tables in by_source.items():
                kept[source] = (False, _ENC.encode(tables))
        for source, (raw, data) in kept.items():
            old = self.tables.get(source)
            if old is None or old[0] <= ex.ts:
                delta += len(data) - (len(old[2]) if old else -_TABLE_OVERHEAD - len(source))
                self.tables[source] = (ex.ts, raw, data)
        delta += self.baselines.recharge()
        self.bytes += delta
        return delta

    def drop_oldest(self) -> int:
        """Drop the oldest sample; returns the (negative) change in bytes."""
        delta = -_SAMPLE_OVERHEAD - 8 * len(self.columns)
        for name in list(self.columns):
            col = self.columns[name]
            v = col.values.pop(0)
            if v != v:
                col.gaps -= 1
            if col.gaps == len(col.values):  # nothing left in it: the name goes too
                del self.columns[name]
                delta -= _COLUMN_OVERHEAD + 8 * len(col.values) + len(name)
        self.ts.pop(0)
        self.ooms.pop(0)
        delta -= 8 * len(self.sources.popleft())
        gone = self.xids.popleft()
        if gone is not None:
            self.xid_samples -= 1
            delta -= len(gone)
        floor = self.ts[0] if self.ts else math.inf
        for source in [k for k, (ts, _, _) in self.tables.items() if ts < floor]:
            delta -= len(self.tables.pop(source)[2]) + _TABLE_OVERHEAD + len(source)
        delta += self.baselines.recharge()
        self.bytes += delta
        return delta

    def evidence(
        self,
        host_id: str,
        floor: float,
        events: list[dict[str, Any]],
        freshness: Mapping[str, str],
        *,
        lazy: bool = False,
    ) -> Evidence | None:
        """The evidence of the samples at or after ``floor``, as ``fold`` gives it; ``lazy``:
        tables decoded as they are read (an evaluation's, never one to store)."""
        lo = bisect.bisect_left(self.ts, floor) if self.ts and self.ts[0] < floor else 0
        n = len(self.ts)
        if lo >= n:
            return None
        ts = self.ts[lo:].tolist()
        series: dict[str, Series]
        if lazy:
            series = LazySeries(ts, lo, self.columns, self.baselines)
        else:
            series = {}
            for name, col in self.columns.items():
                pts = _points(ts, col.values if lo == 0 else col.values[lo:], col.gaps == 0)
                if pts:
                    series[name] = pts
        oom_points: Series = []
        prev = _NAN
        for t, v in zip(ts, self.ooms[lo:].tolist(), strict=True):
            if v == v:
                if prev == prev:
                    oom_points.append((t, max(0.0, v - prev)))
                prev = v
        if oom_points:
            series["oom_kills"] = oom_points[-MAX_POINTS:]
        seen: set[str] = set()
        last: tuple[str, ...] | None = None
        for names in itertools.islice(self.sources, lo, n):
            if names is not last:
                seen.update(names)
                last = names
        xids: list[Any] = []
        if self.xid_samples:
            for t, raw in zip(ts, itertools.islice(self.xids, lo, n), strict=True):
                if raw is not None:
                    xids.extend(with_ts(_DEC.decode(raw), t))
        kept = {source: (raw, data) for source, (t, raw, data) in self.tables.items() if t >= ts[0]}
        extra = {"xid_events": xids[-MAX_ROWS:]} if xids else {}
        tables: dict[str, Any]
        if lazy:
            tables = LazyTables(kept, extra)
        else:
            tables = {}
            for source, k in kept.items():
                tables.update(_tables_of(source, k))
            tables.update(extra)
        return assemble(host_id, (ts[0], ts[-1]), len(ts), series, tables, events, freshness, seen)
