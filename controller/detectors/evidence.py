"""From a host's window of snapshots to evidence: named time series plus the latest tables.

Evidence is what the analyzer reads and what a run's evidence package stores, so a
replay reads exactly what the first run read. It is bounded: at most MAX_POINTS per
series, MAX_ROWS per table, MAX_EVENTS events.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import msgspec
import probe_core

from collector.wire import Snapshot

MAX_POINTS = 900  # 15 minutes at 1 s
MAX_ROWS = 20
MAX_EVENTS = 200
_DATA = msgspec.json.Decoder(dict[str, Any])
Series = list[tuple[float, float]]


@dataclass
class Evidence:
    host_id: str
    start: float
    end: float
    samples: int
    series: dict[str, Series] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    freshness: dict[str, str] = field(default_factory=dict)
    sources_seen: list[str] = field(default_factory=list)
    # The host's topology labels when the window was read: rules match them, and a replay
    # decides under the labels the run was opened with.
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Shallow (shares the lists): for encoding, where asdict's deep copy was most of a run's CPU."""
        return {f: getattr(self, f) for f in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        ev = cls(**{k: v for k, v in d.items() if k != "series"})
        ev.series = {k: [(float(t), float(v)) for t, v in pts] for k, pts in d.get("series", {}).items()}
        return ev

    def expected(self) -> dict[str, str]:
        """Freshness of the sources this host should have: not those it never had (no GPU here)."""
        return {n: s for n, s in self.freshness.items() if s != "unavailable"}

    def not_fresh(self) -> dict[str, str]:
        return {n: s for n, s in self.expected().items() if s != "fresh"}

    def latest(self, name: str) -> float | None:
        pts = self.series.get(name)
        return pts[-1][1] if pts else None

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.series.get(name, [])]

    def recent(self, name: str, n: int = 5) -> float | None:
        """The mean of the last n points of a series (None without one): a detector's first
        look, which a window answers from its column without building the series."""
        if isinstance(self.series, TailMeans):
            return self.series.tail_mean(name, n)
        return series_tail_mean(self.series, name, n)

    def total(self, name: str) -> float:
        """The sum of a series' values (0 without one), added oldest first."""
        if isinstance(self.series, TailMeans):
            return self.series.total(name)
        return series_total(self.series, name)

    def last_nonzero(self, name: str) -> float | None:
        """When a series last had a value other than 0 (a counter's last increase)."""
        for t, v in reversed(self.series.get(name, [])):
            if v:
                return t
        return None

    def tail(self, name: str, n: int) -> Series:
        """The last n points of a series, oldest first."""
        if isinstance(self.series, TailMeans):
            return self.series.tail(name, n)
        return list(self.series.get(name, [])[-n:])

    def signal_names(self) -> list[str]:
        """Every series the evidence holds (a lazy window's too, built or not)."""
        if isinstance(self.series, TailMeans):
            return self.series.names()
        return list(self.series)

    def outliers(self, lo: float, hi: float, band: Band) -> list[tuple[str, Baseline, float, float]]:
        """The signals whose newest point lies outside ``band`` of their baseline: the robust
        statistics of their points in [lo, hi). (name, baseline, center, half-width) each;
        a window answers from baselines it keeps while [lo, hi) holds the same points."""
        if isinstance(self.series, TailMeans):
            return self.series.outliers(lo, hi, band)
        return series_outliers(self.series, lo, hi, band)

    def interval(self) -> float:
        """The typical time between samples (the collector's interval)."""
        return (self.end - self.start) / (self.samples - 1) if self.samples > 1 else 0.0


def tail_mean(tail: Sequence[float]) -> float | None:
    """The mean of the points given, oldest first (the one way both paths add them)."""
    return sum(tail) / len(tail) if tail else None


def series_tail_mean(series: Mapping[str, Series], name: str, n: int) -> float | None:
    return tail_mean([v for _, v in series.get(name, [])[-n:]])


def series_total(series: Mapping[str, Series], name: str) -> float:
    return sum(v for _, v in series.get(name, []))


@dataclass(frozen=True)
class Baseline:
    """Robust statistics of a signal's points in a stretch of time."""

    median: float
    mad: float  # the median absolute deviation from the median
    n: int


def robust_baseline(values: Sequence[float] | array[float]) -> Baseline | None:
    """Median and MAD (NaN left out), by probe_core's selection: a window remakes a few
    dozen of these each step, and sorting them in Python cost more than the rest of an
    evaluation."""
    got = probe_core.median_mad(values if isinstance(values, array) else array("d", values))
    return Baseline(*got) if got is not None else None


# (name, baseline) -> (center, half-width) of the band a signal's newest point is normal in,
# or None: not judged (too few points, or a signal not looked at).
Band = Callable[[str, Baseline], tuple[float, float] | None]


def series_outliers(
    series: Mapping[str, Series], lo: float, hi: float, band: Band
) -> list[tuple[str, Baseline, float, float]]:
    out = []
    for name, pts in series.items():
        if not pts or pts[-1][0] < hi:
            continue  # no point since the baseline's stretch: nothing new to judge
        b = robust_baseline([v for t, v in pts if lo <= t < hi])
        if b is None:
            continue
        limits = band(name, b)
        if limits is not None and abs(pts[-1][1] - limits[0]) >= limits[1]:
            out.append((name, b, *limits))
    return out


class TailMeans(dict[str, "Series"]):
    """Series that may answer ``tail_mean``, ``total``, ``tail`` and ``outliers`` without
    building the series they read (controller/detectors/window.py overrides these): here,
    from the built series."""

    def tail_mean(self, name: str, n: int) -> float | None:
        return series_tail_mean(self, name, n)

    def total(self, name: str) -> float:
        return series_total(self, name)

    def tail(self, name: str, n: int) -> Series:
        return list(self.get(name, [])[-n:])

    def names(self) -> list[str]:
        return list(self)

    def outliers(self, lo: float, hi: float, band: Band) -> list[tuple[str, Baseline, float, float]]:
        return series_outliers(self, lo, hi, band)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _add(values: dict[str, float], name: str, value: float | None) -> None:
    # Finite inputs can still make an infinite ratio (-1.7e308 idle): such a point is noise,
    # and JSON would store it as null, which no run could read back.
    if value is not None and math.isfinite(value):
        values[name] = value


@dataclass
class Extract:
    """What one snapshot contributes to evidence: its signal values, the raw OOM-kill
    counter (a delta needs the sample before it in the same window), the tables it sets,
    its GPU XID events and the sources it names. Pure: the same snapshot, the same Extract.

    ``raw`` (rawextract's): the JSON of the data of the sources whose tables are not built
    yet, by source; their tables are ``source_tables`` of it, made when they are read."""

    ts: float
    values: dict[str, float]
    oom: float | None
    tables: dict[str, Any]
    xids: list[Any]
    sources: list[str]
    raw: dict[str, bytes] = field(default_factory=dict)


# Throttle reasons that mean the GPU itself is held down (not an idle clock-down).
BAD_THROTTLE = (
    "hw_thermal_slowdown",
    "sw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "sw_power_cap",
    "hw_slowdown",
)
Values = dict[str, float]
Tables = dict[str, Any]


# One function per source: what its data adds to the sample's values and tables. Pure
# and shared: controller/detectors/rawextract.py calls the small ones on decoded data.


def host_section(host: dict[str, Any], values: Values) -> float | None:
    """The host's signals; returns the raw OOM-kill counter."""
    util = _get(host, "cpu", "util_pct")
    if isinstance(util, dict):
        idle, iowait = _num(util.get("idle")), _num(util.get("iowait"))
        if idle is not None and iowait is not None:
            _add(values, "cpu_busy_pct", 100.0 - idle - iowait)
            _add(values, "cpu_iowait_pct", iowait)
        _add(values, "cpu_steal_pct", _num(util.get("steal")))
    _add(values, "procs_running", _num(_get(host, "cpu", "procs_running")))
    _add(values, "procs_blocked", _num(_get(host, "cpu", "procs_blocked")))
    _add(values, "forks_per_s", _num(_get(host, "cpu", "forks_per_s")))
    load = host.get("load")
    if isinstance(load, list) and load:
        _add(values, "load1", _num(load[0]))
    total, avail = _num(_get(host, "memory", "MemTotal")), _num(_get(host, "memory", "MemAvailable"))
    if total and avail is not None:
        _add(values, "mem_available_pct", 100.0 * avail / total)
    for key in ("pswpin_per_s", "pswpout_per_s", "pgmajfault_per_s"):
        _add(values, key, _num(_get(host, "vmstat_rates", key)))
    return _num(_get(host, "vmstat", "oom_kill"))


def psi_section(psi: dict[str, Any], values: Values) -> None:
    for res in ("cpu", "memory", "io"):
        for kind in ("some", "full"):
            _add(values, f"psi_{res}_{kind}", _num(_get(psi, res, kind, "avg10")))


def disk_section(disk: dict[str, Any], values: Values, tables: Tables) -> None:
    devs = [d for d in disk.get("devices", []) if isinstance(d, dict)]
    utils = [u for d in devs if (u := _num(d.get("util_pct"))) is not None]
    if utils:
        _add(values, "disk_util_max_pct", max(utils))
    awaits = [
        a for d in devs for k in ("read_await_ms", "write_await_ms") if (a := _num(d.get(k))) is not None
    ]
    if awaits:
        _add(values, "disk_await_max_ms", max(awaits))
    tables["disks"] = sorted(devs, key=lambda d: -(_num(d.get("util_pct")) or 0))[:MAX_ROWS]


def interface_rates(ifaces: Sequence[Any], values: Values) -> None:
    """NIC errors and drops, summed over the interfaces' rates; the busiest real interface's
    bytes per second, in or out (loopback moves no bytes on a wire)."""
    errs = drops = busiest = 0.0
    for iface in ifaces:
        rates = iface.get("rates") or {}
        errs += sum(_num(rates.get(k)) or 0.0 for k in ("rx_errors_per_s", "tx_errors_per_s"))
        drops += sum(_num(rates.get(k)) or 0.0 for k in ("rx_dropped_per_s", "tx_dropped_per_s"))
        if iface.get("name") != "lo":
            for k in ("rx_bytes_per_s", "tx_bytes_per_s"):
                busiest = max(busiest, _num(rates.get(k)) or 0.0)
    _add(values, "nic_errors_per_s", errs)
    _add(values, "nic_drops_per_s", drops)
    _add(values, "nic_bytes_max_per_s", busiest)


def network_section(net: dict[str, Any], values: Values, tables: Tables) -> None:
    ifaces = [i for i in net.get("interfaces", []) if isinstance(i, dict)]
    interface_rates(ifaces, values)
    tables["interfaces"] = [
        {"name": f.get("name"), "operstate": f.get("operstate"), "rates": f.get("rates")} for f in ifaces
    ][:MAX_ROWS]


def sockets_section(socks: dict[str, Any], values: Values, tables: Tables) -> None:
    _add(values, "tcp_in_rto_backoff", _num(socks.get("in_rto_backoff")))
    near = socks.get("listeners_near_backlog") or []
    _add(values, "listeners_near_backlog", float(len(near)))
    tables["listeners_near_backlog"] = near[:MAX_ROWS]
    tables["top_retrans"] = (socks.get("top_retrans") or [])[:MAX_ROWS]


def processes_section(procs: dict[str, Any], values: Values, tables: Tables) -> None:
    rows = [r for r in procs.get("rows", []) if isinstance(r, dict)]
    holders = [h for h in procs.get("fd_holders") or [] if isinstance(h, dict)]
    fds = [f for r in rows + holders if (f := _num(r.get("num_fds"))) is not None]
    if fds:
        _add(values, "max_process_fds", max(fds))
    pcts = [p for h in holders if (p := _num(h.get("fd_pct"))) is not None]
    if pcts:
        _add(values, "max_process_fd_pct", max(pcts))
    tables["processes"] = rows[:MAX_ROWS]
    tables["fd_holders"] = holders[:MAX_ROWS]
    tables["io_top"] = [r for r in procs.get("io_top") or [] if isinstance(r, dict)][:MAX_ROWS]
    _add(values, "processes", _num(_get(procs, "totals", "processes")))


def cgroup_section(cg: dict[str, Any], values: Values, tables: Tables) -> None:
    rows = [r for r in cg.get("cgroups", []) if isinstance(r, dict)]
    throttled = [t for r in rows if (t := _num(_get(r, "cpu", "throttled_periods_pct"))) is not None]
    if throttled:
        _add(values, "cgroup_throttled_max_pct", max(throttled))
    tables["cgroups"] = rows[:MAX_ROWS]


def ebpf_section(ebpf: dict[str, Any], values: Values) -> None:
    counts = ebpf.get("counts") or {}
    for kind in ("tcp_retransmit", "exec", "exit", "oom_kill", "fork"):
        _add(values, f"ebpf_{kind}", _num(counts.get(kind)) or 0.0)


def with_ts(xids: list[Any], ts: float) -> list[Any]:
    """XID events with the time of the sample that drained them (what a timeline orders by)."""
    return [x | {"ts": ts} if isinstance(x, dict) and "ts" not in x else x for x in xids]


def gpu_section(gpu: dict[str, Any], values: Values, tables: Tables) -> list[Any]:
    """The GPUs' signals and table; returns the XID events."""
    devices = [d for d in gpu.get("devices", []) if isinstance(d, dict)]
    tables["gpus"] = devices[:MAX_ROWS]
    for dev in devices:
        i = dev.get("index")
        _add(values, f"gpu{i}_util_pct", _num(_get(dev, "utilization_pct", "gpu")))
        total, used = _num(_get(dev, "memory", "total")), _num(_get(dev, "memory", "used"))
        if total:
            _add(values, f"gpu{i}_mem_used_pct", 100.0 * (used or 0.0) / total)
        _add(values, f"gpu{i}_temp_c", _num(dev.get("temperature_c")))
        _add(values, f"gpu{i}_ecc_uncorrected", _num(_get(dev, "ecc", "uncorrected_volatile")))
        reasons = dev.get("throttle_reasons") or []
        _add(values, f"gpu{i}_throttled", 1.0 if [r for r in reasons if r in BAD_THROTTLE] else 0.0)
        _add(values, f"gpu{i}_power_w", _num(dev.get("power_w")))
        links = [x for x in dev.get("nvlink") or [] if isinstance(x, dict)]
        if links:
            errs = [_num(v) for x in links for v in (x.get("errors") or {}).values()]
            _add(values, f"gpu{i}_nvlink_errors", sum(e for e in errs if e is not None))
            _add(values, f"gpu{i}_nvlink_down", float(sum(1 for x in links if not x.get("active"))))
        pcie = dev.get("pcie")
        pcie = pcie if isinstance(pcie, dict) else {}
        gen, width = _num(pcie.get("link_gen")), _num(pcie.get("link_width"))
        max_gen, max_width = _num(pcie.get("max_link_gen")), _num(pcie.get("max_link_width"))
        if None not in (gen, width, max_gen, max_width):
            _add(values, f"gpu{i}_pcie_degraded", 1.0 if gen < max_gen or width < max_width else 0.0)  # type: ignore[operator]
    return list(gpu.get("xid_events") or [])


# The tables each source sets, every one of them whenever its section runs.
SOURCE_TABLES: dict[str, tuple[str, ...]] = {
    "disk": ("disks",),
    "network": ("interfaces",),
    "sockets": ("listeners_near_backlog", "top_retrans"),
    "processes": ("processes", "fd_holders", "io_top"),
    "cgroup": ("cgroups",),
    "gpu": ("gpus",),
}
TABLE_SOURCE = {key: source for source, keys in SOURCE_TABLES.items() for key in keys}


def source_tables(source: str, data: dict[str, Any]) -> Tables:
    """The tables one source's data sets, exactly as ``extract`` sets them."""
    tables: Tables = {}
    section = _TABLE_SECTIONS.get(source)
    if section is not None:
        section(data, {}, tables)  # the values are extract's, not wanted here
    return tables


_TABLE_SECTIONS: dict[str, Callable[[dict[str, Any], Values, Tables], Any]] = {
    "disk": disk_section,
    "network": network_section,
    "sockets": sockets_section,
    "processes": processes_section,
    "cgroup": cgroup_section,
    "gpu": gpu_section,
}


def extract(snap: Snapshot) -> Extract:
    src = snap.sources
    values: Values = {}
    tables: Tables = {}
    xids: list[Any] = []
    ooms: float | None = None

    def data(name: str) -> dict[str, Any] | None:
        entry = src.get(name)
        return entry.data if entry is not None and entry.status in ("ok", "fallback") else None

    if (host := data("host")) is not None:
        ooms = host_section(host, values)
    if (psi := data("psi")) is not None:
        psi_section(psi, values)
    if (disk := data("disk")) is not None:
        disk_section(disk, values, tables)
    if (net := data("network")) is not None:
        network_section(net, values, tables)
    if (socks := data("sockets")) is not None:
        sockets_section(socks, values, tables)
    if (procs := data("processes")) is not None:
        processes_section(procs, values, tables)
    if (cg := data("cgroup")) is not None:
        cgroup_section(cg, values, tables)
    if (ebpf := data("ebpf")) is not None:
        ebpf_section(ebpf, values)
    if (gpu := data("gpu")) is not None:
        xids = gpu_section(gpu, values, tables)
    return Extract(snap.ts, values, ooms, tables, xids, list(src))


def extract_or_error(snap: Snapshot) -> tuple[Extract, str | None]:
    """The extract, or, when the snapshot's data is valid on the wire but not what evidence
    reads (a list that is a number), one without its signals and the error: the sample
    still counts, the host's window goes on, and the error is the host's to report."""
    try:
        return extract(snap), None
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        return Extract(snap.ts, {}, None, {}, [], list(snap.sources)), f"{type(exc).__name__}: {exc}"[:500]


def fold(
    host_id: str, extracts: Sequence[Extract], events: list[dict[str, Any]], freshness: Mapping[str, str]
) -> Evidence:
    """Evidence from a window's extracts, oldest first: the one definition both the full
    build and the incremental hot-state window (controller/detectors/window.py) answer by."""
    series: dict[str, Series] = {}
    tables: dict[str, Any] = {}
    xids: list[Any] = []
    prev_oom: float | None = None
    seen: set[str] = set()
    for ex in extracts:
        seen.update(ex.sources)
        for name, value in ex.values.items():
            series.setdefault(name, []).append((ex.ts, value))
        if ex.oom is not None:
            if prev_oom is not None:  # the first counter in the window only sets the base
                series.setdefault("oom_kills", []).append((ex.ts, max(0.0, ex.oom - prev_oom)))
            prev_oom = ex.oom
        tables.update(ex.tables)
        for source, raw in ex.raw.items():
            tables.update(source_tables(source, _DATA.decode(raw)))
        xids.extend(with_ts(ex.xids, ex.ts))
    if xids:
        tables["xid_events"] = xids[-MAX_ROWS:]
    for name in series:
        series[name] = series[name][-MAX_POINTS:]
    times = (extracts[0].ts, extracts[-1].ts) if extracts else (0.0, 0.0)
    return assemble(host_id, times, len(extracts), series, tables, events, freshness, seen)


def assemble(
    host_id: str,
    times: tuple[float, float],
    samples: int,
    series: dict[str, Series],
    tables: dict[str, Any],
    events: list[dict[str, Any]],
    freshness: Mapping[str, str],
    seen: set[str],
) -> Evidence:
    """The Evidence of a folded window: the events, freshness and sources rules in one place."""
    return Evidence(
        host_id=host_id,
        start=times[0],
        end=times[1],
        samples=samples,
        series=series,
        tables=tables,
        events=events[-MAX_EVENTS:],
        freshness=dict(sorted(freshness.items())),
        sources_seen=sorted(seen),
    )


def build_evidence(
    host_id: str, window: list[Snapshot], events: list[dict[str, Any]], freshness: Mapping[str, str]
) -> Evidence:
    """The full build, from the snapshots themselves (replays and tests; hot state keeps extracts)."""
    return fold(host_id, [extract(s) for s in window], events, freshness)


_FIELDS = tuple(f.name for f in fields(Evidence))
