"""probe_core on the live host, checked against psutil read at the same moment.

Monotonic counters are bracketed: probe_core before <= psutil <= probe_core after.
"""

from __future__ import annotations

import os
import time

import probe_core
import psutil
import pytest

TCK = os.sysconf("SC_CLK_TCK")


def test_sysinfo_matches_host() -> None:
    h = probe_core.sysinfo_host()
    assert h["hostname"] == os.uname().nodename
    assert h["kernel_release"] == os.uname().release
    assert h["cpu_count"] == psutil.cpu_count()
    assert h["page_size"] == os.sysconf("SC_PAGESIZE") and h["clock_ticks"] == TCK
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert h["boot_id"] == f.read().strip()
    assert abs((time.time() - h["uptime_s"]) - psutil.boot_time()) < 2
    load = os.getloadavg()
    assert abs(h["load1"] - load[0]) < 1.0


def test_cpu_times_bracket_psutil() -> None:
    before = probe_core.read_cpu()
    ps = psutil.cpu_times()
    per = psutil.cpu_times(percpu=True)
    after = probe_core.read_cpu()
    for key in ("user", "system", "idle", "iowait", "softirq", "steal"):
        value = getattr(ps, key) * TCK
        lo, hi = before["total"][key], after["total"][key]
        assert lo - 1 <= value <= hi + 1, key
    assert len(per) == len(after["per_cpu"])
    assert before["btime"] == round(psutil.boot_time())


def test_ctxt_and_forks_bracket_psutil() -> None:
    before = probe_core.read_cpu()
    stats = psutil.cpu_stats()
    after = probe_core.read_cpu()
    assert before["ctxt"] <= stats.ctx_switches <= after["ctxt"]
    assert before["intr"] <= stats.interrupts <= after["intr"]


def test_meminfo_matches_psutil() -> None:
    m = probe_core.read_meminfo()
    vm = psutil.virtual_memory()
    assert m["MemTotal"] == vm.total
    assert abs(m["MemAvailable"] - vm.available) < 256 << 20
    sw = psutil.swap_memory()
    assert m["SwapTotal"] == sw.total


def test_vmstat_counters_bracket_psutil_swap() -> None:
    before = probe_core.read_vmstat()
    sw = psutil.swap_memory()
    after = probe_core.read_vmstat()
    page = os.sysconf("SC_PAGESIZE")
    assert before["pswpin"] * page <= sw.sin <= after["pswpin"] * page
    assert "oom_kill" in after and "pgmajfault" in after


def test_pressure_live_is_present_on_this_kernel() -> None:
    p = probe_core.read_pressure()
    if not os.path.exists("/proc/pressure/cpu"):
        assert p["available"] is False
        return
    assert p["available"] is True
    cpu = p["cpu"]
    assert cpu is not None and cpu["some"] is not None and cpu["some"]["total_us"] >= 0


def test_diskstats_bracket_psutil() -> None:
    before = {d["name"]: d for d in probe_core.read_diskstats()["devices"]}
    ps = psutil.disk_io_counters(perdisk=True)
    after = {d["name"]: d for d in probe_core.read_diskstats()["devices"]}
    common = set(before) & set(ps)
    assert common, "no block device seen by both"
    for name in common:
        b, a, p = before[name], after[name], ps[name]
        assert b["reads_completed"] <= p.read_count <= a["reads_completed"]
        assert b["writes_completed"] <= p.write_count <= a["writes_completed"]
        assert b["sectors_read"] * 512 <= p.read_bytes <= a["sectors_read"] * 512


def test_net_dev_brackets_psutil() -> None:
    before = {d["interface"]: d for d in probe_core.read_net_dev()}
    ps = psutil.net_io_counters(pernic=True)
    after = {d["interface"]: d for d in probe_core.read_net_dev()}
    assert set(before) == set(ps)
    for name, p in ps.items():
        assert before[name]["rx_bytes"] <= p.bytes_recv <= after[name]["rx_bytes"]
        assert before[name]["tx_packets"] <= p.packets_sent <= after[name]["tx_packets"]
        assert before[name]["rx_drop"] <= p.dropin <= after[name]["rx_drop"]


def test_netstat_live_has_the_counters_detectors_use() -> None:
    n = probe_core.read_netstat()
    assert n["Tcp"]["RetransSegs"] >= 0
    assert n["TcpExt"]["ListenOverflows"] >= 0 and n["TcpExt"]["ListenDrops"] >= 0


@pytest.mark.root
def test_process_rows_match_psutil() -> None:
    scanner = probe_core.ProcessScanner()
    rows = scanner.scan("rss", top_n=10)["rows"]
    for row in rows:
        try:
            p = psutil.Process(row["pid"])
            with p.oneshot():
                mem, times, name = p.memory_info(), p.cpu_times(), p.name()
                fds = p.num_fds()
        except psutil.Error:
            continue
        assert name.startswith(row["comm"][:15])
        assert abs(mem.rss - row["rss_bytes"]) < 16 << 20
        assert row["utime_s"] <= times.user + 0.5
        assert row["num_fds"] is not None and abs(row["num_fds"] - fds) <= 5
