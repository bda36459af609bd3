"""The collector's CPU share against a psutil-based collector; writes bench/results/collector.json.

Both run as separate processes at a 1 s interval for the same window while the
host carries 5,000 extra sleeping processes and 5,000 open loopback TCP
connections that this bench creates and removes. The collector runs with every
source on (`incidentlab-collector sample --json`, snapshots to /dev/null). The peer
gathers the same process and socket data the Python way: psutil's process_iter
with oneshot() (cpu_times, memory_info, io_counters, num_fds, name) ranked to the
top 20, /proc/net/tcp and tcp6 parsed into the same summary, and psutil's host
counters. CPU is read from /proc/PID/stat over the window after a warm-up; the
eBPF programs' own run time (accounted to the tasks that hit the tracepoints,
not to the collector) is read from the collector's BPF fdinfo and reported beside.

Memory (issue 18): the agent as a node runs it (``incidentlab-collector run``: every
source on, the spool, shipping to a real controller on loopback, /metrics served) beside
Debian's prometheus-node-exporter with its default collectors, both at a 1 s interval and
both scraped once a second, their RSS read from /proc every second of the window. The
eBPF programs are compiled in a short-lived loader child (collector/sources/ebpf_loader.py),
whose peak RSS and load time are reported beside.

Targets (issue 3): at most 5% of one core, and at least 5x cheaper than the peer.
Target (issue 18): at most 60 MB RSS with every source on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.harness import sleeping_processes, write_result
from bench.peers import proc_cpu_s

TARGET_SHARE_PCT = 5.0
TARGET_RATIO = 5.0
TARGET_RSS_MB = 60.0
TOKEN = "collector-bench-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]

PSUTIL_COLLECTOR = r"""
import json, sys, time, psutil
from pathlib import Path

def tcp_summary():
    states = {}
    listen_q = []
    queues = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            st = int(f[3], 16)
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            states[st] = states.get(st, 0) + 1
            if st == 10:
                if rx:
                    listen_q.append((rx, f[1]))
            else:
                queues.append((rx, tx, f[1], f[2]))
    queues.sort(reverse=True)
    listen_q.sort(reverse=True)
    return {"states": states, "listen": listen_q[:10], "top": queues[:10]}

prev = {}
prev_t = None
interval = float(sys.argv[1])
while True:
    start = time.monotonic()
    rows = []
    seen = {}
    for p in psutil.process_iter():
        try:
            with p.oneshot():
                t = p.cpu_times(); m = p.memory_info(); io = p.io_counters()
                fds = p.num_fds(); name = p.name()
        except psutil.Error:
            continue
        cpu = t.user + t.system
        seen[p.pid] = cpu
        share = (cpu - prev.get(p.pid, cpu)) / (start - prev_t) if prev_t else 0.0
        rows.append((share, p.pid, name, m.rss, io.read_bytes, fds))
    prev, prev_t = seen, start
    rows.sort(reverse=True)
    snap = {
        "processes": rows[:20], "count": len(rows), "sockets": tcp_summary(),
        "cpu": psutil.cpu_times(percpu=True), "mem": psutil.virtual_memory(),
        "disk": psutil.disk_io_counters(perdisk=True), "net": psutil.net_io_counters(pernic=True),
    }
    print(json.dumps(snap, default=str), flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - start)))
"""


@contextmanager
def loopback_connections(n: int) -> Iterator[None]:
    """n established loopback TCP connections (2n sockets) held open by this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    port = server.getsockname()[1]
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = server.accept()
            socks += (c, s)
        yield
    finally:
        for s in socks:
            s.close()
        server.close()


def bpf_run_time_ns(pid: int) -> int:
    """Summed run_time_ns of the BPF programs pid holds (needs kernel.bpf_stats_enabled=1)."""
    total = 0
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        with suppress(OSError):
            text = entry.read_text()
            if "prog_type:" in text:
                for line in text.splitlines():
                    if line.startswith("run_time_ns:"):
                        total += int(line.split()[1])
    return total


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def scrape(port: int) -> int:
    """One /metrics scrape, as Prometheus would; the number of sample lines."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"/metrics on {port} answered {resp.status}")
        return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    finally:
        conn.close()


def wait_metrics(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    """Until /metrics answers with a snapshot (503 before the first one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            scrape(port)
            return
        except (OSError, SystemExit):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
                raise SystemExit(f"no /metrics on {port}: {err}") from None
            time.sleep(0.2)


LOADER_COST = """
import json, resource, time
from collector.sources.ebpf_loader import load
t0 = time.monotonic()
load("/", 120).close()
took = time.monotonic() - t0
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the loader, its only child
print(json.dumps({"load_s": round(took, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}))
"""


def loader_cost() -> dict[str, Any]:
    """The eBPF loader child on its own: seconds to compile and load, and its peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", LOADER_COST], capture_output=True, text=True, cwd=ROOT, timeout=180, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def measure_memory(window_s: float, warmup_s: float) -> dict[str, Any]:
    """RSS of the agent and node_exporter over the window, both serving /metrics at 1 Hz."""
    from bench.ingest_bench import start_controller
    from bench.peers import free_port, node_exporter

    tmp = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    ctl, url = start_controller(tmp / "controller", hosts=10)
    (tmp / "token").write_text(TOKEN)
    port = free_port()
    cfg = {
        "interval_s": 1.0,
        "spool": {"dir": str(tmp / "spool")},
        "transport": {"url": url, "allow_http": True, "token_file": str(tmp / "token")},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
    }
    (tmp / "collector.yaml").write_text(json.dumps(cfg))
    agent = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(tmp / "collector.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        wait_metrics(port, agent)
        with node_exporter() as ne:
            time.sleep(warmup_s)
            ours: list[int] = []
            theirs: list[int] = []
            lines = {"collector": 0, "node_exporter": 0}
            end = time.monotonic() + window_s
            while time.monotonic() < end:
                lines["collector"] = scrape(port)
                lines["node_exporter"] = len([x for x in ne.scrape().splitlines() if x and x[0] != "#"])
                ours.append(rss_kb(agent.pid)["VmRSS"])
                theirs.append(rss_kb(ne.pid)["VmRSS"])
                time.sleep(1.0)
            final = rss_kb(agent.pid)
            if agent.poll() is not None:
                raise SystemExit("the agent exited during the window")
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        ctl.terminate()
        ctl.wait(timeout=15)
    return {
        "collector_rss_mb": round(max(ours) / 1024, 1),
        "collector_rss_anon_mb": round(final["RssAnon"] / 1024, 1),
        "collector_rss_file_mb": round(final["RssFile"] / 1024, 1),
        "collector_peak_rss_mb": round(final["VmHWM"] / 1024, 1),
        "node_exporter_rss_mb": round(max(theirs) / 1024, 1),
        "metrics_samples": lines,
        "window_s": window_s,
    }


def measure(cmd: list[str], warmup_s: float, window_s: float, bpf: bool) -> dict[str, Any]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        cpu0, wall0 = proc_cpu_s(proc.pid), time.monotonic()
        bpf0 = bpf_run_time_ns(proc.pid) if bpf else 0
        time.sleep(window_s)
        cpu1, wall1 = proc_cpu_s(proc.pid), time.monotonic()
        bpf1 = bpf_run_time_ns(proc.pid) if bpf else 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    wall = wall1 - wall0
    out = {
        "cpu_s": round(cpu1 - cpu0, 3),
        "wall_s": round(wall, 3),
        "share_pct": round((cpu1 - cpu0) / wall * 100, 3),
    }
    if bpf:
        out["bpf_programs_share_pct"] = round((bpf1 - bpf0) / 1e9 / wall * 100, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per collector")
    parser.add_argument(
        "--warmup", type=float, default=6.0, help="seconds before measuring (eBPF compile, first pass)"
    )
    args = parser.parse_args(argv)

    def step(msg: str) -> None:
        print(f"[collector bench] {msg}", flush=True)

    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats_path.read_text().strip() if stats_path.exists() else None
    bpf_stats = False
    if stats_before is not None and os.geteuid() == 0:
        stats_path.write_text("1\n")
        bpf_stats = True
    try:
        step(f"starting {args.processes} sleeping processes and {args.connections} loopback connections")
        with sleeping_processes(args.processes), loopback_connections(args.connections):
            pids = sum(1 for p in os.listdir("/proc") if p.isdigit())
            step(f"{pids} processes on the host; measuring the collector for {args.window:.0f} s")
            collector = measure(
                [sys.executable, "-m", "collector.cli", "sample", "--json", "--interval", "1"],
                args.warmup,
                args.window,
                bpf_stats,
            )
            step(f"collector: {collector['share_pct']}% of one core; measuring the psutil collector")
            peer = measure([sys.executable, "-c", PSUTIL_COLLECTOR, "1"], args.warmup, args.window, False)
            step(f"psutil collector: {peer['share_pct']}% of one core")
        step("memory: the agent (every source, spool, shipping, /metrics) beside node_exporter")
        memory = measure_memory(args.window, args.warmup)
        step(f"memory: {memory}")
        loader = loader_cost() if os.geteuid() == 0 else None
        step(f"eBPF loader child: {loader}")
    finally:
        if bpf_stats and stats_before is not None:
            stats_path.write_text(stats_before + "\n")

    ratio = round(peer["share_pct"] / collector["share_pct"], 2) if collector["share_pct"] > 0 else None
    met = {
        "share": collector["share_pct"] <= TARGET_SHARE_PCT,
        "ratio": ratio is not None and ratio >= TARGET_RATIO,
        "rss": memory["collector_rss_mb"] <= TARGET_RSS_MB,
    }
    result = {
        "load": {
            "extra_processes": args.processes,
            "loopback_connections": args.connections,
            "host_pids": pids,
        },
        "interval_s": 1.0,
        "collector": collector,
        "psutil_collector": peer,
        "ratio": ratio,
        "memory": memory,
        "rss_ratio_to_node_exporter": round(memory["collector_rss_mb"] / memory["node_exporter_rss_mb"], 2),
        "ebpf_loader": loader,
        "targets": {
            "share_pct_max": TARGET_SHARE_PCT,
            "ratio_min": TARGET_RATIO,
            "rss_mb_max": TARGET_RSS_MB,
        },
        "met": met,
    }
    path = write_result("collector", result)
    step(f"ratio {ratio}x; targets met: {met}; wrote {path}")
    print(json.dumps(result["collector"]))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
