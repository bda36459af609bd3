"""probe_core host readers on fixture trees and their parsers on literal strings."""

from __future__ import annotations

import shutil
from pathlib import Path

import probe_core
import pytest


def test_sysinfo_on_modern_fixture(modern_root: str) -> None:
    h = probe_core.sysinfo_host(modern_root)
    assert h["hostname"] == "node-a"
    assert h["kernel_release"] == "6.18.44-fixture"
    assert h["machine_id"] == "0123456789abcdef0123456789abcdef"
    assert h["boot_id"] == "0f3c2e1a-1111-4222-8333-944455556666"
    assert h["uptime_s"] == pytest.approx(1234.56)
    assert (h["load1"], h["load5"], h["load15"]) == (0.52, 0.31, 0.20)
    assert (h["runnable"], h["tasks"], h["last_pid"]) == (2, 140, 7001)
    assert h["cpu_count"] == 2
    assert h["page_size"] > 0 and h["clock_ticks"] > 0


def test_sysinfo_on_legacy_fixture_counts_cpus_from_proc_stat(legacy_root: str) -> None:
    h = probe_core.sysinfo_host(legacy_root)
    assert h["machine_id"] is None  # no /etc/machine-id in a minimal container
    assert h["cpu_count"] == 2


def test_read_cpu_legacy_kernel_with_eight_columns(legacy_root: str) -> None:
    s = probe_core.read_cpu(legacy_root)
    assert s["columns"] == 8
    assert s["total"]["user"] == 1000 and s["total"]["steal"] == 0
    assert [c["cpu"] for c in s["per_cpu"]] == [0, 1]
    assert (s["ctxt"], s["intr"], s["processes"], s["btime"]) == (987654, 123456, 4321, 1500000000)
    assert (s["procs_running"], s["procs_blocked"]) == (3, 1)


def test_read_cpu_modern_fixture_has_ten_columns(modern_root: str) -> None:
    s = probe_core.read_cpu(modern_root)
    assert s["columns"] == 10
    assert len(s["per_cpu"]) == 2
    total = s["total"]
    for key in ("user", "system", "idle"):
        # The kernel sums per-CPU nanoseconds before converting, so the total can be one tick off.
        per_cpu_sum = sum(c[key] for c in s["per_cpu"])
        assert abs(total[key] - per_cpu_sum) <= len(s["per_cpu"])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "intr 1\nctxt 2\n",  # no cpu line
        "cpu  1 2 3\nctxt 1\nbtime 1\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n",  # 3 columns
        "cpu  1 2 3 x\nctxt 1\nbtime 1\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n",
        "cpu  1 2 3 4 5 6 7 8 9 10 11\nctxt 1\n",  # too many columns
        "cpu  1 2 3 4\nbtime 1\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n",  # no ctxt
    ],
)
def test_parse_proc_stat_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_proc_stat(text)


def test_meminfo_converts_kb_and_keeps_counts(legacy_root: str) -> None:
    m = probe_core.read_meminfo(legacy_root)
    assert m["MemTotal"] == 2048000 * 1024
    assert m["HugePages_Total"] == 0
    assert m["Hugepagesize"] == 2048 * 1024
    assert list(m)[:2] == ["MemTotal", "MemFree"]  # kernel order kept


@pytest.mark.parametrize("text", ["MemTotal 100 kB\n", "MemTotal: x kB\n", "MemTotal: 1 MB\n", ""])
def test_parse_meminfo_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_meminfo(text)


def test_vmstat_has_every_counter_the_kernel_prints(modern_root: str) -> None:
    v = probe_core.read_vmstat(modern_root)
    text = (Path(modern_root) / "proc" / "vmstat").read_text()
    assert len(v) == len(text.splitlines())
    for key in ("oom_kill", "pgmajfault", "pswpin", "pswpout"):
        assert key in v


def test_vmstat_on_a_kernel_without_oom_kill_reports_it_absent(legacy_root: str) -> None:
    v = probe_core.read_vmstat(legacy_root)
    assert "oom_kill" not in v  # Linux < 4.13: absent, not zero
    assert v["pgmajfault"] == 42


def test_parse_vmstat_rejects_negative_and_garbage() -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_vmstat("nr_free_pages -5\n")
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_vmstat("nr_free_pages 5 6\n")


def test_pressure_present(modern_root: str) -> None:
    p = probe_core.read_pressure(modern_root)
    assert p["available"] is True and p["reason"] is None
    for res in ("cpu", "memory", "io"):
        value = p[res]
        assert value is not None and value["some"] is not None
    assert "irq" not in p  # absent irq file is simply not listed


def test_pressure_absent_is_none_never_zero(legacy_root: str) -> None:
    p = probe_core.read_pressure(legacy_root)
    assert p["available"] is False
    assert p["cpu"] is None and p["memory"] is None and p["io"] is None
    assert p["reason"] is not None and "PSI not available" in p["reason"]
    assert set(p["absent"]) == {"cpu", "memory", "io"}


def test_parse_pressure_cpu_without_full_line() -> None:
    # Linux 4.20 .. 5.12 print only "some" for cpu.
    f = probe_core.parse_pressure("some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n")
    assert f["full"] is None
    assert f["some"] == {"avg10": 1.5, "avg60": 0.25, "avg300": 0.0, "total_us": 12345}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "some avg10=1 avg60=2 avg300=3\n",
        "half avg10=1 avg60=2 avg300=3 total=4\n",
        "some avg10=x avg60=2 avg300=3 total=4\n",
    ],
)
def test_parse_pressure_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_pressure(text)


def test_diskstats_from_sys_block_with_queue_attributes(modern_root: str) -> None:
    d = probe_core.read_diskstats(modern_root)
    assert d["source"] == "sys" and d["reason"] is None
    names = [dev["name"] for dev in d["devices"]]
    assert names == ["loop0", "vda"]
    vda = d["devices"][1]
    assert (vda["major"], vda["minor"]) == (254, 0)
    assert vda["scheduler"] == "mq-deadline"
    assert vda["rotational"] is True  # virtio disks report rotational=1
    assert vda["nr_requests"] is not None
    stat = (Path(modern_root) / "sys/block/vda/stat").read_text().split()
    assert vda["reads_completed"] == int(stat[0]) and vda["sectors_written"] == int(stat[6])


def test_diskstats_without_queue_attributes(modern_root: str) -> None:
    d = probe_core.read_diskstats(modern_root, queue_attrs=False)
    vda = d["devices"][1]
    assert vda["name"] == "vda" and vda["major"] == 254
    assert vda["scheduler"] is None and vda["rotational"] is None and vda["nr_requests"] is None


def test_diskstats_falls_back_to_proc_and_old_field_count(legacy_root: str) -> None:
    d = probe_core.read_diskstats(legacy_root)
    assert d["source"] == "proc"
    assert d["reason"] is not None and "sys/block" in d["reason"]
    sda = d["devices"][0]
    assert sda["name"] == "sda" and sda["io_time_ms"] == 700 and sda["weighted_io_time_ms"] == 900
    # Linux < 4.18 has no discard or flush columns: absent, not zero.
    assert sda["discards_completed"] is None and sda["flush_time_ms"] is None
    assert sda["scheduler"] is None and sda["rotational"] is None


def test_diskstats_empty_sys_block_falls_back(tmp_path: Path, legacy_root: str) -> None:
    root = tmp_path / "host"
    shutil.copytree(legacy_root, root)
    (root / "sys" / "block").mkdir(parents=True)
    d = probe_core.read_diskstats(str(root))
    assert d["source"] == "proc"
    assert d["reason"] is not None and "lists no block devices" in d["reason"]


@pytest.mark.parametrize(
    "text", ["8 0 sda 1 2 3\n", "8 x sda 1 2 3 4 5 6 7 8 9 10 11\n", "8 0 sda 1 2 3 4 5 6 7 8 9 10 11 12\n"]
)
def test_parse_diskstats_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_diskstats(text)


def test_parse_scheduler_variants(tmp_path: Path, legacy_root: str) -> None:
    root = tmp_path / "host"
    shutil.copytree(legacy_root, root)
    q = root / "sys" / "block" / "sda" / "queue"
    q.mkdir(parents=True)
    (root / "sys/block/sda/stat").write_text("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n")
    (q / "scheduler").write_text("none\n")
    (q / "rotational").write_text("1\n")
    d = probe_core.read_diskstats(str(root))
    assert d["source"] == "sys"
    sda = d["devices"][0]
    assert sda["scheduler"] == "none" and sda["rotational"] is True and sda["flush_time_ms"] == 17


def test_net_dev(legacy_root: str) -> None:
    devs = {d["interface"]: d for d in probe_core.read_net_dev(legacy_root)}
    assert set(devs) == {"lo", "eth0"}
    eth0 = devs["eth0"]
    assert eth0["rx_bytes"] == 12345678  # the name touching the first number still parses
    assert (eth0["rx_errs"], eth0["rx_drop"], eth0["rx_multicast"], eth0["tx_drop"]) == (2, 5, 3, 1)


def test_parse_net_dev_rejects_short_lines() -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_net_dev("eth0: 1 2 3\n")


def test_netstat_merges_snmp_and_netstat(modern_root: str) -> None:
    n = probe_core.read_netstat(modern_root)
    assert "RetransSegs" in n["Tcp"]
    assert "ListenOverflows" in n["TcpExt"] and "ListenDrops" in n["TcpExt"]


def test_netstat_without_proc_net_netstat_and_negative_values(legacy_root: str) -> None:
    n = probe_core.read_netstat(legacy_root)
    assert n["Tcp"]["MaxConn"] == -1
    assert n["Tcp"]["RetransSegs"] == 77
    assert "TcpExt" not in n


@pytest.mark.parametrize(
    "text",
    ["Tcp: A B\nTcp: 1\n", "Tcp: A B\nUdp: 1 2\n", "Tcp: A B\n", "Tcp: A\nTcp: x\n"],
)
def test_parse_netstat_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_netstat(text)


def test_missing_root_raises_read_error_with_errno() -> None:
    with pytest.raises(probe_core.ReadError) as exc:
        probe_core.read_cpu("/nonexistent-root")
    assert exc.value.errno == 2
    assert exc.value.filename == "/nonexistent-root/proc/stat"
    assert isinstance(exc.value, OSError) and isinstance(exc.value, probe_core.ProbeError)
