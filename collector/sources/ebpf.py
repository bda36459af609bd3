"""ebpf: kernel events through bcc tracepoint programs (collector/sources/ebpf.bpf.c).

Kernel path: process exec and exit, OOM victims and TCP retransmits leave the
BPF programs as probe_core binary records (docs/event-format.md) through one
perf buffer and are decoded by probe_core; run-queue and block-IO latency are
log2 histograms read from BPF maps each sample. A record probe_core refuses is
kept as an ``undecodable`` JSON event with the reason, offset and leading bytes.
Nothing is dropped silently: perf-buffer losses and events past the per-sample
bound are counted in ``dropped``.

File fallback (no BPF privilege, no bcc, no tracefs): counts from /proc deltas:
forks (/proc/stat), OOM kills (vmstat oom_kill), retransmitted segments
(/proc/net/snmp) and per-CPU run-queue wait (/proc/schedstat). No per-event detail.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import probe_core

from collector.errors import SourceError
from collector.sources import ebpf_loader as loader
from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.ebpf_loader import Loaded, LoadError
from collector.sources.registry import register

MAX_EVENTS_PER_TYPE = 256  # kept per sample; the rest are counted as overflow
PERF_PAGES = 64  # per CPU: 256 KiB holds ~4,000 exec records between 1 s samples
RAW_PREFIX = 64  # bytes of an undecodable record kept for the operator
# Per sample: the rings hold ~4,000 records a CPU; the rest waits for the next sample.
MAX_SAMPLES_PER_POLL = 65_536


def parse_schedstat_wait(text: str) -> int:
    """Total run-queue wait in ns over all CPUs from /proc/schedstat (version 15+ fields)."""
    total = 0
    for line in text.splitlines():
        if line.startswith("cpu"):
            fields = line.split()
            # cpuN yld_count 0 sched_count sched_goidle ttwu_count ttwu_local run_time wait_time timeslices
            if len(fields) >= 9:
                total += int(fields[8])
    return total


def parse_runq_items(items: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """runq_hist's entries (u32 log2 slot -> u64 count, host byte order) as a dict."""
    return {
        int.from_bytes(k[:4], sys.byteorder): int.from_bytes(v[:8], sys.byteorder)
        for k, v in items
        if len(k) >= 4 and len(v) >= 8
    }


def parse_bio_items(items: list[tuple[bytes, bytes]]) -> dict[tuple[int, int], int]:
    """bio_hist's entries ({u32 dev, u32 slot} -> u64 count) as a dict."""
    return {
        (int.from_bytes(k[:4], sys.byteorder), int.from_bytes(k[4:8], sys.byteorder)): int.from_bytes(
            v[:8], sys.byteorder
        )
        for k, v in items
        if len(k) >= 8 and len(v) >= 8
    }


def histogram_delta(prev: dict[int, int], cur: dict[int, int]) -> list[int]:
    """Per-slot counts since the last reading, trimmed after the last non-zero slot (at least one)."""
    slots = [max(0, cur.get(i, 0) - prev.get(i, 0)) for i in range(64)]
    last = max((i for i, v in enumerate(slots) if v), default=0)
    return slots[: last + 1]


def _ppid(procfs: Path, pid: int) -> int:
    try:
        return probe_core.parse_pid_stat((procfs / str(pid) / "stat").read_text())["ppid"]
    except (OSError, probe_core.ParseError):
        return 0  # the process is already gone


@register
class EbpfSource(Source):
    name = "ebpf"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)
        self._loaded: Loaded | None = None
        self._perf: probe_core.BpfPerfBuffer | None = None
        self._why: str | None = None
        self._events: list[dict[str, Any]] = []
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._lost_seen = 0
        self._corrupt_seen = 0
        self._runq_prev: dict[int, int] = {}
        self._bio_prev: dict[tuple[int, int], int] = {}
        self._hist_at: float | None = None
        # A sample that outlived its budget may still read the rings and maps when the sampler
        # closes the source: close waits for it, never unmaps under it.
        self._kernel_lock = threading.Lock()
        if ctx.fallback_forced(self.name):
            self._why = "eBPF turned off by configuration (force_fallback)"
        elif not ctx.capabilities.bpf:
            self._why = f"eBPF unavailable: {ctx.capabilities.bpf_reason}"
        else:
            try:
                self._load()
            except Exception as exc:  # whatever the loader or the kernel says: the file fallback
                self.close()
                self._why = str(exc) if str(exc).startswith("eBPF") else f"eBPF programs did not load: {exc}"

    def _load(self) -> None:
        root = self.ctx.host_root
        self._loaded = loader.load(root, self.ctx.settings.ebpf_load_timeout_s)
        try:
            online = (Path(root) / "sys" / "devices" / "system" / "cpu" / "online").read_text()
        except OSError as exc:
            raise LoadError(f"cannot list the online CPUs: {exc.strerror}") from exc
        self._perf = probe_core.BpfPerfBuffer(
            self._loaded.maps["events"], loader.parse_cpu_list(online), PERF_PAGES
        )
        self._hist_at = self.ctx.clock()
        self._runq_prev = self._read_runq()
        self._bio_prev = self._read_bio()

    @property
    def _kernel(self) -> bool:
        return self._perf is not None

    def plan(self) -> PathPlan:
        return PathPlan("kernel") if self._kernel else PathPlan("file", self._why)

    # --- kernel path -------------------------------------------------------------------

    def _on_sample(self, cpu: int, raw: bytes) -> None:
        size = len(raw)
        # perf rounds each sample up to 8 bytes: one record per sample, so its own
        # length says where the padding starts.
        length = int.from_bytes(raw[6:8], "little") if size >= 8 else size
        if length <= size < length + 8:
            raw = raw[:length]
        try:
            decoded = probe_core.decode_events(raw)
        except probe_core.DecodeError as exc:
            self._dropped["undecodable"] += 1
            decoded = [
                {
                    "type": "undecodable",
                    "cpu": cpu,
                    "reason": exc.reason,
                    "offset": exc.offset,
                    "raw_hex": raw[:RAW_PREFIX].hex(),
                    "size": size,
                }
            ]
        for event in decoded:
            kind = str(event["type"])
            self._counts[kind] += 1
            if self._counts[kind] > MAX_EVENTS_PER_TYPE:
                self._dropped["event_overflow"] += 1
                continue
            if kind in ("exec", "exit") and not event.get("ppid"):
                event["ppid"] = _ppid(Path(self.ctx.settings.procfs_root), int(event["pid"]))
            self._events.append(event)

    def _map(self, name: str) -> list[tuple[bytes, bytes]]:
        assert self._loaded is not None
        return probe_core.bpf_map_items(self._loaded.maps[name])

    def _read_runq(self) -> dict[int, int]:
        return parse_runq_items(self._map("runq_hist"))

    def _read_bio(self) -> dict[tuple[int, int], int]:
        return parse_bio_items(self._map("bio_hist"))

    def _histograms(self) -> list[dict[str, Any]]:
        now = self.ctx.clock()
        interval_ns = int((now - (self._hist_at or now)) * 1e9)
        self._hist_at = now
        runq = self._read_runq()
        out = [
            {
                "type": "runq_latency",
                "dev": 0,
                "unit": "us",
                "interval_ns": interval_ns,
                "slots": histogram_delta(self._runq_prev, runq),
            }
        ]
        self._runq_prev = runq
        bio = self._read_bio()
        for dev in sorted({d for d, _ in bio}):
            cur = {slot: n for (d, slot), n in bio.items() if d == dev}
            prev = {slot: n for (d, slot), n in self._bio_prev.items() if d == dev}
            slots = histogram_delta(prev, cur)
            if any(slots):
                out.append(
                    {
                        "type": "bio_latency",
                        "dev": dev,
                        "unit": "us",
                        "interval_ns": interval_ns,
                        "slots": slots,
                    }
                )
        self._bio_prev = bio
        return out

    def _sample_kernel(self) -> SourceResult:
        assert self._perf is not None
        for cpu, raw in self._perf.poll(MAX_SAMPLES_PER_POLL):
            self._on_sample(cpu, raw)
        lost, corrupt = self._perf.lost(), self._perf.corrupt()
        if lost > self._lost_seen:
            self._dropped["perf_lost"] += lost - self._lost_seen
        if corrupt > self._corrupt_seen:
            self._dropped["undecodable"] += corrupt - self._corrupt_seen
        self._lost_seen, self._corrupt_seen = lost, corrupt
        events, counts, dropped = self._events, dict(self._counts), dict(self._dropped)
        self._events, self._counts, self._dropped = [], Counter(), Counter()
        data = {
            "counts": counts,
            "events": events,
            "histograms": self._histograms(),
            "dropped": {"perf_lost": 0, "event_overflow": 0, "undecodable": 0} | dropped,
        }
        return SourceResult.ok("kernel", data)

    # --- file fallback -------------------------------------------------------------------

    def _sample_files(self) -> SourceResult:
        root = self.ctx.host_root
        cpu = probe_core.read_cpu(root)
        vm = probe_core.read_vmstat(root)
        tcp = probe_core.read_netstat(root).get("Tcp", {})
        try:
            wait_ns: int | None = parse_schedstat_wait((Path(root) / "proc" / "schedstat").read_text())
        except (OSError, ValueError):
            wait_ns = None  # CONFIG_SCHEDSTATS off
        interval = self._rates.begin()
        forks = self._rates.rate("forks", cpu["processes"])
        ooms = self._rates.rate("oom_kill", vm["oom_kill"]) if "oom_kill" in vm else None
        retrans = self._rates.rate("retrans", tcp["RetransSegs"]) if "RetransSegs" in tcp else None
        wait = None if wait_ns is None else self._rates.rate("wait", wait_ns)
        self._rates.end()

        def count(rate: float | None) -> int | None:
            return None if rate is None or interval is None else round(rate * interval)

        data: dict[str, Any] = {
            "counts": {
                "fork": count(forks),
                "exit": None,
                "oom_kill": count(ooms),
                "tcp_retransmit": count(retrans),
            },
            "events": [],
            "histograms": [],
            "runq_wait_ms_per_s": None if wait is None else round(wait / 1e6, 3),
            "dropped": {},
        }
        return SourceResult.fallback(self._why or "eBPF unavailable", data)

    def sample(self) -> SourceResult:
        with self._kernel_lock:
            if self._kernel:
                try:
                    return self._sample_kernel()
                except probe_core.UnavailableError as exc:
                    raise SourceError(f"reading BPF maps failed: {exc}") from exc
        return self._sample_files()

    def close(self) -> None:
        with self._kernel_lock:
            if self._perf is not None:
                self._perf.close()
                self._perf = None
            if self._loaded is not None:
                self._loaded.close()  # the tracepoints' last fds: the programs detach
                self._loaded = None
