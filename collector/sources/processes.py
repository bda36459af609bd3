"""processes: the probe_core ProcessScanner table plus delay accounting for the top rows.

Kernel path: taskstats over generic netlink (needs CAP_NET_ADMIN) gives CPU
run-queue, block IO, swap-in, memory reclaim, thrashing and compaction delays
of each top process. Fallback: /proc/PID/task/*/schedstat gives the run-queue
delay only; the other delays are None. smaps_rollup and fd counts are read for
the top rows only; `fd_holders`, the processes with the most open files whatever
their CPU, comes from a separate walk at most every fd_scan_interval_s, and `io_top`,
the heaviest readers and writers, from a second scanner every io_scan_interval_s.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import probe_core

from collector.cgroups import parse_kube_ids
from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register

DELAY_FIELDS = (
    ("cpu", "cpu_delay_ns"),
    ("blkio", "blkio_delay_ns"),
    ("swapin", "swapin_delay_ns"),
    ("reclaim", "freepages_delay_ns"),
    ("thrashing", "thrashing_delay_ns"),
    ("compact", "compact_delay_ns"),
)
SMAPS_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Swap", "SwapPss")
MAX_THREADS_FOR_SCHEDSTAT = 256  # the fallback sums per-thread files; bounded per process


def parse_schedstat(text: str) -> tuple[int, int]:
    """/proc/PID/schedstat: "run_ns wait_ns timeslices"; returns (run_ns, wait_ns)."""
    parts = text.split()
    if len(parts) < 2:
        raise ValueError(f"malformed schedstat {text!r}")
    return int(parts[0]), int(parts[1])


FD_RESERVE = 1024  # open files left for everything else the collector does


def fd_budget(wanted: int) -> int:
    """How many stat files the scanner may keep open: raises the soft RLIMIT_NOFILE toward
    the hard one if needed, and returns less than wanted when the hard limit is lower."""
    if wanted == 0:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(0, min(wanted, soft - FD_RESERVE))


def delay_accounting_state(host_root: str) -> str:
    """on, off, or unknown: kernel.task_delayacct exists since Linux 5.14 (off by default there)."""
    try:
        value = (Path(host_root) / "proc" / "sys" / "kernel" / "task_delayacct").read_text().strip()
    except OSError:
        return "unknown"
    return "on" if value == "1" else "off"


@register
class ProcessesSource(Source):
    name = "processes"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._scanner = probe_core.ProcessScanner(
            ctx.host_root,
            cold_ttl_s=ctx.settings.cold_ttl_s,
            keep_fds=fd_budget(ctx.settings.process_stat_fds),
        )
        self._rates = Rates(ctx.clock)
        self._fd_holders: list[dict[str, Any]] = []
        self._fd_scanned_at: float | None = None
        # Its own scanner: IO rates over its own, longer interval, leaving the CPU ranking's alone.
        self._io_scanner = probe_core.ProcessScanner(ctx.host_root, cold_ttl_s=ctx.settings.cold_ttl_s)
        self._io_top: list[dict[str, Any]] = []
        self._io_scanned_at: float | None = None
        self._taskstats: probe_core.Taskstats | None = None
        self._why_file: str | None = None
        if ctx.fallback_forced(self.name):
            self._why_file = "taskstats turned off by configuration (force_fallback)"
        else:
            try:
                ts = probe_core.Taskstats()
                ts.tgid(os.getpid())  # the family resolves for anyone; the query needs CAP_NET_ADMIN
                self._taskstats = ts
            except probe_core.ReadError as exc:
                hint = " (needs CAP_NET_ADMIN)" if exc.errno == 1 else ""
                self._why_file = f"taskstats unavailable{hint}: {exc}"

    def plan(self) -> PathPlan:
        return PathPlan("kernel") if self._taskstats else PathPlan("file", self._why_file)

    def _delays(self, pid: int) -> dict[str, Any] | None:
        if self._taskstats is not None:
            try:
                d = self._taskstats.tgid(pid)
            except probe_core.ReadError:
                return None
            if d is None:
                return None
            return {name: d[field] for name, field in DELAY_FIELDS}  # type: ignore[literal-required]
        # /proc/PID/schedstat covers one thread: sum the thread group's.
        task_dir = Path(self.ctx.settings.procfs_root) / str(pid) / "task"
        try:
            tids = os.listdir(task_dir)[:MAX_THREADS_FOR_SCHEDSTAT]
        except OSError:
            return None
        wait = 0
        for tid in tids:
            try:
                wait += parse_schedstat((task_dir / tid / "schedstat").read_text())[1]
            except (OSError, ValueError):
                continue  # the thread exited between listdir and open
        return {"cpu": wait} | {name: None for name, _ in DELAY_FIELDS[1:]}

    def _holders(self) -> list[dict[str, Any]]:
        settings = self.ctx.settings
        now = self.ctx.clock()
        if settings.fd_holders == 0:
            return []
        if self._fd_scanned_at is None or now - self._fd_scanned_at >= settings.fd_scan_interval_s:
            self._fd_scanned_at = now
            self._fd_holders = [
                {**h, "fd_pct": round(100 * h["num_fds"] / h["fd_limit"], 2) if h["fd_limit"] else None}
                for h in self._scanner.fd_holders(settings.fd_holders)
            ]
        return self._fd_holders

    def _io(self) -> list[dict[str, Any]]:
        settings = self.ctx.settings
        now = self.ctx.clock()
        if settings.io_top == 0:
            return []
        if self._io_scanned_at is None or now - self._io_scanned_at >= settings.io_scan_interval_s:
            self._io_scanned_at = now
            rows = self._io_scanner.scan("io", settings.io_top, enrich=False)["rows"]
            self._io_top = [
                {
                    "pid": r["pid"],
                    "comm": r["comm"],
                    "read_bytes_per_s": r["read_bytes_per_s"],
                    "write_bytes_per_s": r["write_bytes_per_s"],
                }
                for r in rows
                if r["read_bytes_per_s"] or r["write_bytes_per_s"]  # None on the first pass: no rate yet
            ]
        return self._io_top

    def sample(self) -> SourceResult:
        scan = self._scanner.scan("cpu", self.ctx.settings.top_n)
        self._rates.begin()
        rows = []
        for row in scan["rows"]:
            pid = row["pid"]
            delays = self._delays(pid)
            delay_pct: dict[str, float | None] = {}
            if delays is not None:
                for name, value in delays.items():
                    rate = (
                        None
                        if value is None
                        else self._rates.rate(f"{pid}.{row['start_time_ticks']}.{name}", value)
                    )
                    # Delay ns per second of wall time / 1e7 = percent of the interval spent waiting.
                    delay_pct[name] = None if rate is None else round(rate / 1e7, 3)
            kube = parse_kube_ids(row["cgroup"]) if row["cgroup"] else None
            smaps = row["smaps"]
            rows.append(
                {
                    "pid": pid,
                    "ppid": row["ppid"],
                    "comm": row["comm"],
                    "state": row["state"],
                    "uid": row["uid"],
                    "cgroup": row["cgroup"],
                    "pod_uid": kube.pod_uid if kube else None,
                    "container_id": kube.container_id if kube else None,
                    "cpu_pct": row["cpu_percent"],
                    "rss_bytes": row["rss_bytes"],
                    "threads": row["threads"],
                    "majflt_per_s": row["majflt_per_s"],
                    "read_bytes_per_s": row["read_bytes_per_s"],
                    "write_bytes_per_s": row["write_bytes_per_s"],
                    "num_fds": row["num_fds"],
                    "smaps": {k: smaps[k] for k in SMAPS_KEYS if k in smaps} if smaps else None,
                    "delay_pct": delay_pct if delays is not None else None,
                }
            )
        self._rates.end()
        data = {
            "totals": scan["totals"],
            "vanished": scan["vanished"],
            "sort_key": "cpu",
            "rows": rows,
            "fd_holders": self._holders(),
            # How old the fd walk is (it runs at most every fd_scan_interval_s).
            "fd_holders_age_s": None
            if self._fd_scanned_at is None
            else round(self.ctx.clock() - self._fd_scanned_at, 3),
            "io_top": self._io(),
            "io_top_age_s": None
            if self._io_scanned_at is None
            else round(self.ctx.clock() - self._io_scanned_at, 3),
            "delay_source": "taskstats" if self._taskstats else "schedstat",
            "delay_accounting": delay_accounting_state(self.ctx.host_root),
        }
        if self._taskstats is not None:
            return SourceResult.ok("kernel", data)
        return SourceResult.fallback(self._why_file or "taskstats unavailable", data)

    def close(self) -> None:
        self._taskstats = None
