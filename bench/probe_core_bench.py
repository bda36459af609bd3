"""probe_core against its peers, in one run; writes bench/results/probe_core.json.

1. Process scan cost per pid: ProcessScanner (totals plus the top 20 rows, enriched)
   against psutil's process_iter with oneshot() reading cpu_times, memory_info,
   io_counters, num_fds and name, at the current pid count and with 2,000 extra
   sleeping processes that this bench starts and reaps.
2. One full host snapshot (cpu, memory, vmstat, PSI, disk counters, network, netstat,
   top 20 processes) through probe_core against the same data through psutil and
   Python file reads. Disk queue attributes are configuration, refreshed with the
   hardware inventory, so neither side reads them per snapshot. The scanner runs with
   its default cold_ttl_s, as the collector does; the snapshot with every cold read
   done each time (cold_ttl_s=0) is recorded too.
3. The same snapshot against the CPU one Prometheus node_exporter scrape costs the
   exporter (Debian prometheus-node-exporter, started here on a loopback port).

Targets (issue 2): ProcessScanner >= 5x cheaper per pid than psutil; the snapshot
>= 5x cheaper in CPU than one node_exporter scrape.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import probe_core
import psutil

from bench.harness import cpu_seconds_per_call, sleeping_processes, write_result
from bench.peers import node_exporter, proc_cpu_s

TOP_N = 20
EXTRA_PROCESSES = 2000
TARGET_SCAN_RATIO = 5.0
TARGET_SNAPSHOT_VS_NODE_EXPORTER = 5.0


# --- the psutil peer ---------------------------------------------------------------


class PsutilProcessTable:
    """The psutil way to get the same table: every process through oneshot()."""

    def __init__(self) -> None:
        self.prev: dict[int, float] = {}
        self.prev_t = 0.0

    def scan(self) -> tuple[int, list[tuple[float, int, str, Any, Any, Any]]]:
        now = time.monotonic()
        dt = now - self.prev_t if self.prev_t else 0.0
        rows = []
        seen: dict[int, float] = {}
        for p in psutil.process_iter():
            try:
                with p.oneshot():
                    times = p.cpu_times()
                    mem = p.memory_info()
                    io = p.io_counters()
                    fds = p.num_fds()
                    name = p.name()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            seen[p.pid] = cpu
            share = (cpu - self.prev.get(p.pid, cpu)) / dt * 100 if dt else 0.0
            rows.append((share, p.pid, name, mem, io, fds))
        self.prev, self.prev_t = seen, now
        rows.sort(key=lambda r: r[0], reverse=True)
        return len(seen), rows[:TOP_N]


def _kv(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line)}


def _psi(text: str) -> dict[str, dict[str, float]]:
    out = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        out[kind] = {k: float(v) for k, v in (f.split("=") for f in fields)}
    return out


def _netstat(text: str) -> dict[str, dict[str, int]]:
    lines = text.splitlines()
    out: dict[str, dict[str, int]] = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=True):
        group, names = head.split(":", 1)
        out[group] = dict(zip(names.split(), map(int, vals.split(":", 1)[1].split()), strict=True))
    return out


def psutil_snapshot(table: PsutilProcessTable) -> dict[str, Any]:
    disks = psutil.disk_io_counters(perdisk=True)
    return {
        "cpu": (psutil.cpu_times(), psutil.cpu_times(percpu=True), psutil.cpu_stats()),
        "memory": (psutil.virtual_memory(), psutil.swap_memory()),
        "vmstat": _kv(Path("/proc/vmstat").read_text()),
        "psi": {r: _psi(Path(f"/proc/pressure/{r}").read_text()) for r in ("cpu", "memory", "io")},
        "disks": disks,
        "net": psutil.net_io_counters(pernic=True),
        "netstat": _netstat(Path("/proc/net/snmp").read_text())
        | _netstat(Path("/proc/net/netstat").read_text()),
        "processes": table.scan(),
    }


def probe_snapshot(scanner: probe_core.ProcessScanner) -> dict[str, Any]:
    return {
        "cpu": probe_core.read_cpu(),
        "memory": probe_core.read_meminfo(),
        "vmstat": probe_core.read_vmstat(),
        "psi": probe_core.read_pressure(),
        "disks": probe_core.read_diskstats(queue_attrs=False),
        "net": probe_core.read_net_dev(),
        "netstat": probe_core.read_netstat(),
        "processes": scanner.scan("cpu", TOP_N),
    }


# --- node_exporter -------------------------------------------------------------------


def node_exporter_scrape_cpu(scrapes: int) -> dict[str, Any]:
    with node_exporter() as nx:
        for _ in range(10):
            body = nx.scrape()  # warm-up: the first scrapes discover devices
        before = proc_cpu_s(nx.pid)
        for _ in range(scrapes):
            nx.scrape()
        spent = proc_cpu_s(nx.pid) - before
    samples = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    return {"scrapes": scrapes, "cpu_s_per_scrape": spent / scrapes, "samples_per_scrape": samples}


# --- extra processes -------------------------------------------------------------------


def measure_scan(extra: int, quick: bool) -> dict[str, Any]:
    scanner = probe_core.ProcessScanner()
    table = PsutilProcessTable()
    pids = scanner.scan("cpu", TOP_N)["totals"]["processes"]
    probe = cpu_seconds_per_call(lambda: scanner.scan("cpu", TOP_N), calls=5 if quick else 20, trials=5)
    peer = cpu_seconds_per_call(table.scan, calls=1 if quick else 3, trials=5)
    probe_us = probe["median_s"] / pids * 1e6
    peer_us = peer["median_s"] / pids * 1e6
    return {
        "extra_processes": extra,
        "pids": pids,
        "probe_core_us_per_pid": round(probe_us, 2),
        "psutil_us_per_pid": round(peer_us, 2),
        "ratio": round(peer_us / probe_us, 2),
        "probe_core_timing": probe,
        "psutil_timing": peer,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls per trial (smoke run)")
    parser.add_argument("--extra", type=int, default=EXTRA_PROCESSES, help="extra sleeping processes")
    args = parser.parse_args(argv)

    def step(msg: str) -> None:
        print(f"[probe_core bench] {msg}", flush=True)

    step("process scan at the current pid count")
    scans = [measure_scan(0, args.quick)]
    step(f"process scan with {args.extra} extra sleeping processes")
    with sleeping_processes(args.extra):
        scans.append(measure_scan(args.extra, args.quick))

    step("full snapshot: probe_core and psutil + Python")
    scanner = probe_core.ProcessScanner()
    table = PsutilProcessTable()
    calls = 10 if args.quick else 50
    probe: Callable[[], object] = lambda: probe_snapshot(scanner)  # noqa: E731
    peer: Callable[[], object] = lambda: psutil_snapshot(table)  # noqa: E731
    snap_probe = cpu_seconds_per_call(probe, calls=calls, trials=5)
    cold_scanner = probe_core.ProcessScanner(cold_ttl_s=0)
    cold: Callable[[], object] = lambda: probe_snapshot(cold_scanner)  # noqa: E731
    snap_cold = cpu_seconds_per_call(cold, calls=calls, trials=5)
    snap_peer = cpu_seconds_per_call(peer, calls=max(2, calls // 10), trials=5)

    step("node_exporter scrapes")
    nx = node_exporter_scrape_cpu(scrapes=60 if args.quick else 300)

    probe_ms = snap_probe["median_s"] * 1e3
    result: dict[str, Any] = {
        "process_scan": scans,
        "snapshot": {
            "probe_core_cpu_ms": round(probe_ms, 3),
            "probe_core_every_cold_read_cpu_ms": round(snap_cold["median_s"] * 1e3, 3),
            "psutil_python_cpu_ms": round(snap_peer["median_s"] * 1e3, 3),
            "node_exporter_scrape_cpu_ms": round(nx["cpu_s_per_scrape"] * 1e3, 3),
            "ratio_vs_psutil_python": round(snap_peer["median_s"] / snap_probe["median_s"], 2),
            "ratio_vs_node_exporter": round(nx["cpu_s_per_scrape"] / snap_probe["median_s"], 2),
            "ratio_vs_node_exporter_every_cold_read": round(
                nx["cpu_s_per_scrape"] / snap_cold["median_s"], 2
            ),
            "node_exporter_samples_per_scrape": nx["samples_per_scrape"],
            "node_exporter_scrapes": nx["scrapes"],
            "probe_core_timing": snap_probe,
            "psutil_python_timing": snap_peer,
        },
        "targets": {
            "process_scan_ratio_min": TARGET_SCAN_RATIO,
            "snapshot_vs_node_exporter_ratio_min": TARGET_SNAPSHOT_VS_NODE_EXPORTER,
        },
    }
    met = {
        "process_scan": all(s["ratio"] >= TARGET_SCAN_RATIO for s in scans),
        "snapshot_vs_node_exporter": result["snapshot"]["ratio_vs_node_exporter"]
        >= TARGET_SNAPSHOT_VS_NODE_EXPORTER,
    }
    result["met"] = met
    result["quick"] = args.quick
    path = write_result("probe_core", result)
    for s in scans:
        step(
            f"scan, {s['pids']} pids: probe_core {s['probe_core_us_per_pid']} us/pid, "
            f"psutil {s['psutil_us_per_pid']} us/pid, ratio {s['ratio']}x"
        )
    snap = result["snapshot"]
    step(
        f"snapshot: probe_core {snap['probe_core_cpu_ms']} ms CPU, "
        f"psutil+Python {snap['psutil_python_cpu_ms']} ms ({snap['ratio_vs_psutil_python']}x), "
        f"node_exporter scrape {snap['node_exporter_scrape_cpu_ms']} ms "
        f"({snap['ratio_vs_node_exporter']}x)"
    )
    step(f"targets met: {met}; wrote {path}")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
