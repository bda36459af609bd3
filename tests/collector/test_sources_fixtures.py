"""Sources on fixture hosts: exact values, the file paths, and honest unavailability."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector.sources import SourceContext
from collector.sources.cgroup import CgroupSource
from collector.sources.disk import DiskSource
from collector.sources.hardware import HardwareSource, parse_cpuinfo
from collector.sources.host import HostSource, cpu_shares
from collector.sources.network import NetworkSource, diff_links
from collector.sources.perf import PerfSource
from collector.sources.processes import ProcessesSource, parse_schedstat
from collector.sources.psi import PsiSource
from collector.sources.sockets import SocketsSource

from .conftest import NO_CAPS, context_for, settings_for


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ctx_with_clock(root: Path, clock: FakeClock, **kw: object) -> SourceContext:
    return SourceContext(settings=settings_for(root, **kw), capabilities=NO_CAPS, clock=clock)


def bump_proc_stat(root: Path, user: int, idle: int) -> None:
    stat = root / "proc" / "stat"
    lines = stat.read_text().splitlines()
    f = lines[0].split()
    f[1] = str(int(f[1]) + user)
    f[4] = str(int(f[4]) + idle)
    lines[0] = " ".join(f)
    stat.write_text("\n".join(lines) + "\n")


def test_cpu_shares_exclude_guest_from_the_total() -> None:
    prev = dict.fromkeys(
        ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice"), 0
    )
    cur = prev | {"user": 30, "idle": 70, "guest": 10}
    shares = cpu_shares(prev, cur)
    assert shares is not None
    assert shares["user"] == 30.0 and shares["idle"] == 70.0 and shares["guest"] == 10.0
    assert cpu_shares(cur, prev) is None  # counters went backwards


def test_host_source_rates_from_two_samples(modern_host: Path) -> None:
    clock = FakeClock()
    src = HostSource(ctx_with_clock(modern_host, clock))
    first = src.sample()
    assert first.status == "ok" and first.path == "file"
    assert first.data["cpu"]["util_pct"] is None and first.data["cpu"]["ctxt_per_s"] is None
    assert first.data["hostname"] == "node-a"
    assert "oom_kill" in first.data["vmstat"]
    bump_proc_stat(modern_host, user=25, idle=75)
    clock.t += 2.0
    second = src.sample()
    util = second.data["cpu"]["util_pct"]
    assert util["user"] == 25.0 and util["idle"] == 75.0
    assert second.data["cpu"]["ctxt_per_s"] == 0.0
    assert second.data["memory"]["MemTotal"] > 0


def test_psi_unavailable_on_a_kernel_without_it(legacy_host: Path) -> None:
    src = PsiSource(context_for(legacy_host))
    assert src.plan().path == "none"
    r = src.sample()
    assert r.status == "unavailable" and r.path == "none"
    assert r.reason is not None and "PSI not available" in r.reason
    assert r.data == {}


def test_psi_stall_share(modern_host: Path) -> None:
    clock = FakeClock()
    src = PsiSource(ctx_with_clock(modern_host, clock))
    src.sample()
    cpu = modern_host / "proc" / "pressure" / "cpu"
    some = cpu.read_text().splitlines()[0]
    total = int(some.split("total=")[1])
    cpu.write_text(cpu.read_text().replace(f"total={total}", f"total={total + 250_000}", 1))
    clock.t += 1.0
    r = src.sample()
    assert r.data["cpu"]["some"]["stall_pct"] == 25.0


def test_disk_fallback_names_why(legacy_host: Path) -> None:
    r = DiskSource(context_for(legacy_host)).sample()
    assert r.status == "fallback" and r.path == "file"
    assert r.reason is not None and "sys/block" in r.reason
    assert {d["name"] for d in r.data["devices"]} == {"sda", "sda1"}


def test_disk_rates_and_utilisation(modern_host: Path) -> None:
    clock = FakeClock()
    src = DiskSource(ctx_with_clock(modern_host, clock))
    src.sample()
    stat = modern_host / "sys" / "block" / "vda" / "stat"
    f = [int(x) for x in stat.read_text().split()]
    f[0] += 100  # reads
    f[2] += 800  # sectors read
    f[3] += 50  # read ms
    f[9] += 500  # io_time_ms
    stat.write_text(" ".join(map(str, f)) + "\n")
    clock.t += 1.0
    r = src.sample()
    vda = next(d for d in r.data["devices"] if d["name"] == "vda")
    assert vda["reads_per_s"] == 100 and vda["read_bytes_per_s"] == 800 * 512
    assert vda["util_pct"] == 50.0 and vda["read_await_ms"] == 0.5
    assert vda["scheduler"] == "mq-deadline"
    assert "loop0" in r.data["never_used"]


def test_network_file_fallback_with_sysfs_and_change_detection(modern_host: Path) -> None:
    for name in ("lo", "eth0"):
        d = modern_host / "sys" / "class" / "net" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "operstate").write_text("up\n")
        (d / "mtu").write_text("1500\n")
        (d / "carrier").write_text("1\n")
        (d / "carrier_changes").write_text("2\n")
    net = modern_host / "proc" / "net" / "dev"
    if "eth0" not in net.read_text():
        net.write_text(net.read_text() + "  eth0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n")
    src = NetworkSource(context_for(modern_host, force_fallback=["network"]))
    assert src.plan().path == "file"
    first = src.sample()
    assert first.status == "fallback" and "force_fallback" in (first.reason or "")
    eth0 = next(i for i in first.data["interfaces"] if i["name"] == "eth0")
    assert eth0["operstate"] == "UP" and eth0["mtu"] == 1500 and eth0["carrier"] is True
    (modern_host / "sys" / "class" / "net" / "eth0" / "mtu").write_text("9000\n")
    (modern_host / "sys" / "class" / "net" / "eth0" / "carrier_changes").write_text("4\n")
    second = src.sample()
    changes = {(c["interface"], c["field"]): (c["old"], c["new"]) for c in second.data["changes"]}
    assert changes[("eth0", "mtu")] == (1500, 9000)
    assert changes[("eth0", "carrier_changes")] == (2, 4)


def test_diff_links_sees_interfaces_come_and_go() -> None:
    prev = {"a": {"name": "a", "mtu": 1500}}
    changes = diff_links(prev, [{"name": "b", "mtu": 1500}])
    assert {"interface": "b", "field": "present", "old": False, "new": True} in changes
    assert {"interface": "a", "field": "present", "old": True, "new": False} in changes


def test_sockets_fallback_on_a_fixture(modern_host: Path) -> None:
    text = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "proc_net_tcp"
    (modern_host / "proc" / "net" / "tcp").write_text(text.read_text())
    src = SocketsSource(context_for(modern_host, force_fallback=["sockets"]))
    r = src.sample()
    assert r.status == "fallback" and r.path == "file"
    assert r.data["source"] == "proc" and r.data["states"]["LISTEN"] == 1
    assert r.data["listeners_near_backlog"][0]["backlog"] is None


def test_perf_forced_fallback_uses_proc(modern_host: Path) -> None:
    src = PerfSource(context_for(modern_host, force_fallback=["perf"]))
    assert src.plan().path == "file"
    r = src.sample()
    assert r.status == "fallback"
    assert r.data["cpu_migrations_per_s"] is None


def test_processes_fallback_reads_schedstat(modern_host: Path) -> None:
    task = modern_host / "proc" / "400" / "task"
    for tid, wait in (("400", 1_000_000), ("401", 2_000_000)):
        (task / tid).mkdir(parents=True)
        (task / tid / "schedstat").write_text(f"5000 {wait} 7\n")
    clock = FakeClock()
    src = ProcessesSource(ctx_with_clock(modern_host, clock, force_fallback=["processes"]))
    assert src.plan().path == "file"
    first = src.sample()
    assert first.status == "fallback" and first.data["delay_source"] == "schedstat"
    (task / "401" / "schedstat").write_text("5000 12000000 9\n")
    clock.t += 1.0
    second = src.sample()
    dd = next(r for r in second.data["rows"] if r["pid"] == 400)
    assert dd["delay_pct"]["cpu"] == 1.0  # 10 ms of run-queue wait in 1 s
    assert dd["delay_pct"]["blkio"] is None
    odd = next(r for r in second.data["rows"] if r["pid"] == 100)
    assert odd["pod_uid"] == "1f2e3d4c-aaaa-bbbb-cccc-000000000001" and odd["container_id"] is None
    assert odd["smaps"]["Pss"] == 9000 * 1024
    assert second.data["totals"]["processes"] == 5


def test_processes_fd_holders_rank_by_open_files_at_most_every_interval(modern_host: Path) -> None:
    fd_dir = modern_host / "proc" / "100" / "fd"
    fd_dir.mkdir(exist_ok=True)
    for i in range(40):
        (fd_dir / str(i)).touch()
    (modern_host / "proc" / "100" / "limits").write_text(
        "Limit  Soft Limit  Hard Limit  Units\nMax open files      50      4096      files\n"
    )
    clock = FakeClock()
    src = ProcessesSource(ctx_with_clock(modern_host, clock, fd_scan_interval_s=30.0, fd_holders=2))
    first = src.sample().data
    top = first["fd_holders"][0]
    assert top["pid"] == 100 and top["num_fds"] == 40 and top["fd_limit"] == 50 and top["fd_pct"] == 80.0
    assert len(first["fd_holders"]) <= 2 and first["fd_holders_age_s"] == 0.0
    for i in range(40, 45):
        (fd_dir / str(i)).touch()
    clock.t += 10
    held = src.sample().data
    assert held["fd_holders"][0]["num_fds"] == 40 and held["fd_holders_age_s"] == 10.0  # not re-walked yet
    clock.t += 20
    assert src.sample().data["fd_holders"][0]["num_fds"] == 45
    off = ProcessesSource(ctx_with_clock(modern_host, clock, fd_holders=0)).sample().data
    assert off["fd_holders"] == []


def test_processes_io_top_ranks_by_io_rate_over_its_own_interval(modern_host: Path) -> None:
    io = modern_host / "proc" / "100" / "io"
    text = io.read_text()

    def set_written(n: int) -> None:
        io.write_text(
            "\n".join(
                f"write_bytes: {n}" if line.startswith("write_bytes") else line for line in text.splitlines()
            )
            + "\n"
        )

    set_written(0)
    clock = FakeClock()
    src = ProcessesSource(ctx_with_clock(modern_host, clock, io_scan_interval_s=10.0, io_top=3))
    first = src.sample().data
    assert first["io_top"] == [] and first["io_top_age_s"] == 0.0  # one pass: no rate yet
    set_written(50 << 20)
    clock.t += 10
    time.sleep(0.2)  # the scanner times its passes with the monotonic clock
    top = src.sample().data["io_top"]
    assert top[0]["pid"] == 100 and top[0]["write_bytes_per_s"] > 0
    assert len(top) <= 3


def test_parse_schedstat() -> None:
    assert parse_schedstat("123 456 7\n") == (123, 456)
    with pytest.raises(ValueError, match="malformed"):
        parse_schedstat("123")


def test_hardware_inventory_and_refresh(modern_host: Path) -> None:
    (modern_host / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nphysical id\t: 0\ncore id\t: 0\n\n"
        "processor\t: 1\nmodel name\t: Test CPU @ 2.0GHz\nphysical id\t: 0\ncore id\t: 1\n"
    )
    node = modern_host / "sys" / "devices" / "system" / "node" / "node0"
    node.mkdir(parents=True)
    (node / "cpulist").write_text("0-1\n")
    (node / "meminfo").write_text("Node 0 MemTotal:       24576000 kB\n")
    gpu = modern_host / "sys" / "bus" / "pci" / "devices" / "0000:3b:00.0"
    gpu.mkdir(parents=True)
    (gpu / "class").write_text("0x030200\n")
    (gpu / "vendor").write_text("0x10de\n")
    (gpu / "device").write_text("0x2330\n")
    (gpu / "numa_node").write_text("0\n")
    clock = FakeClock()
    src = HardwareSource(ctx_with_clock(modern_host, clock))
    r = src.sample()
    assert r.data["cpu"] == {"model": "Test CPU @ 2.0GHz", "sockets": 1, "cores": 2, "threads": 2}
    assert r.data["numa_nodes"] == [{"node": 0, "cpus": "0-1", "mem_total_bytes": 24576000 * 1024}]
    assert r.data["gpus"] == [
        {"pci_bus_id": "0000:3b:00.0", "vendor": "nvidia", "device": "0x2330", "numa_node": 0}
    ]
    assert {b["name"] for b in r.data["block_devices"]} == {"loop0", "vda"}
    clock.t += 10
    assert src.sample().data == {"unchanged": True, "age_s": 10.0}
    clock.t += 300
    assert src.sample().data["unchanged"] is False


def test_parse_cpuinfo_without_topology() -> None:
    assert parse_cpuinfo("processor : 0\nprocessor : 1\n") == {
        "model": None,
        "sockets": 1,
        "cores": 2,
        "threads": 2,
    }


def _mountinfo(root: Path, lines: list[str]) -> None:
    self_dir = root / "proc" / "self"
    self_dir.mkdir(parents=True, exist_ok=True)
    (self_dir / "mountinfo").write_text("\n".join(lines) + "\n")


def test_cgroup_v2_fixture(modern_host: Path) -> None:
    _mountinfo(modern_host, ["30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"])
    cg = modern_host / "sys" / "fs" / "cgroup"
    cg.mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpu io memory pids\n")
    pod = (
        "kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-pod1f2e3d4c_aaaa_bbbb_cccc_000000000001.slice"
    )
    leaf = cg / pod / ("cri-containerd-" + "ab" * 32 + ".scope")
    leaf.mkdir(parents=True)
    other = cg / "system.slice" / "idle.service"
    other.mkdir(parents=True)
    for d, mem in ((leaf, 900 << 20), (other, 1 << 20)):
        (d / "memory.current").write_text(f"{mem}\n")
        (d / "memory.max").write_text("max\n" if d == other else f"{1 << 30}\n")
        (d / "memory.high").write_text("max\n")
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n")
        (d / "cpu.stat").write_text(
            "usage_usec 1000000\nnr_periods 100\nnr_throttled 10\nthrottled_usec 50000\n"
        )
        (d / "cpu.max").write_text("50000 100000\n")
        (d / "io.stat").write_text("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
        (d / "pids.current").write_text("7\n")
        (d / "pids.max").write_text("max\n")
        (d / "cgroup.procs").write_text("11\n12\n13\n")
        (d / "memory.pressure").write_text(
            "some avg10=12.50 avg60=1.00 avg300=0.10 total=1\nfull avg10=0 avg60=0 avg300=0 total=0\n"
        )
    clock = FakeClock()
    src = CgroupSource(ctx_with_clock(modern_host, clock))
    assert src.plan().path == "file"
    src.sample()
    (leaf / "cpu.stat").write_text(
        "usage_usec 1500000\nnr_periods 200\nnr_throttled 60\nthrottled_usec 250000\n"
    )
    clock.t += 1.0
    r = src.sample()
    assert r.data["mode"] == "v2" and r.data["leaves"] == 2
    top = r.data["cgroups"][0]
    assert top["path"] == "/" + str(leaf.relative_to(cg))
    assert top["kubernetes"] == {
        "pod_uid": "1f2e3d4c-aaaa-bbbb-cccc-000000000001",
        "container_id": "ab" * 32,
        "qos": "burstable",
    }
    assert top["memory"] == {
        "current": 900 << 20,
        "max": 1 << 30,
        "high": None,
        "oom": 2,
        "oom_kill": 1,
        "high_events": 0,
        "limit_hits": 3,
    }
    assert top["cpu"]["usage_pct"] == 50.0
    assert top["cpu"]["quota_cores"] == 0.5
    assert top["cpu"]["throttled_periods_pct"] == 50.0
    assert top["cpu"]["throttled_pct"] == 20.0
    assert top["pids"] == {"current": 7, "max": None}
    assert top["procs"] == 3  # processes, where pids.current counts threads
    assert top["pressure_some_avg10"]["memory"] == 12.5


def test_cgroup_v1_hybrid_fixture(modern_host: Path) -> None:
    _mountinfo(
        modern_host,
        [
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
            "33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
            "34 31 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
            "35 31 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd",
        ],
    )
    cg = modern_host / "sys" / "fs" / "cgroup"
    mem = cg / "memory" / "batch" / "job1"
    cpu = cg / "cpu,cpuacct" / "batch" / "job1"
    mem.mkdir(parents=True)
    cpu.mkdir(parents=True)
    (cg / "unified").mkdir()
    (mem / "memory.usage_in_bytes").write_text(f"{200 << 20}\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (mem / "memory.failcnt").write_text("4\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (cpu / "cpuacct.usage").write_text("1000000000\n")
    (cpu / "cpu.stat").write_text("nr_periods 10\nnr_throttled 5\nthrottled_time 100000000\n")
    (cpu / "cpu.cfs_quota_us").write_text("200000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (mem / "cgroup.procs").write_text("501\n502\n")
    r = CgroupSource(context_for(modern_host)).sample()
    assert r.data["mode"] == "hybrid" and r.data["memory_hierarchy"] == "v1"
    row = r.data["cgroups"][0]
    assert row["path"] == "/batch/job1"
    assert row["procs"] == 2 and row["pids"]["current"] is None  # no pids hierarchy mounted
    assert row["memory"]["max"] is None  # LONG_MAX rounded to a page means no limit
    assert row["memory"]["oom_kill"] == 3 and row["memory"]["limit_hits"] == 4
    assert row["cpu"]["quota_cores"] == 2.0


def test_cgroup_v1_separate_cpu_tree_finds_a_cgroup_only_cpu_has(modern_host: Path) -> None:
    # As on this build machine: cpu, cpuacct and memory each mounted alone, and a quota set on a
    # cgroup that exists only in the cpu tree (its processes sit elsewhere in the memory tree).
    _mountinfo(
        modern_host,
        [
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
            "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
            "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct",
            "34 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
        ],
    )
    cg = modern_host / "sys" / "fs" / "cgroup"
    mem = cg / "memory" / "sandbox" / "a"
    capped = cg / "cpu" / "capped"
    idle = cg / "cpu" / "idle"
    for d in (mem, capped, idle, cg / "cpuacct"):
        d.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text(f"{50 << 20}\n")
    (capped / "cpu.cfs_quota_us").write_text("20000\n")
    (capped / "cpu.cfs_period_us").write_text("100000\n")
    (idle / "cpu.cfs_quota_us").write_text("-1\n")
    for d in (capped, idle):
        (d / "cpu.stat").write_text("nr_periods 100\nnr_throttled 0\nthrottled_time 0\n")
    clock = FakeClock()
    src = CgroupSource(ctx_with_clock(modern_host, clock))
    src.sample()
    (capped / "cpu.stat").write_text("nr_periods 110\nnr_throttled 9\nthrottled_time 700000000\n")
    (idle / "cpu.stat").write_text("nr_periods 100\nnr_throttled 0\nthrottled_time 0\n")
    clock.t += 1.0
    r = src.sample()
    rows = {row["path"]: row for row in r.data["cgroups"]}
    assert "/sandbox/a" in rows and r.data["leaves"] == 3
    cpu = rows["/capped"]["cpu"]
    assert cpu["quota_cores"] == 0.2
    assert cpu["throttled_periods_pct"] == 90.0 and cpu["throttled_pct"] == 70.0
    assert rows["/capped"]["memory"]["current"] is None  # not in the memory tree


def test_cgroup_unavailable_without_a_memory_hierarchy(modern_host: Path) -> None:
    _mountinfo(modern_host, ["35 31 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd"])
    src = CgroupSource(context_for(modern_host))
    assert src.plan().path == "none"
    r = src.sample()
    assert r.status == "unavailable"


def test_cgroup_live_host_reports_its_layout() -> None:
    r = CgroupSource(context_for(Path("/"))).sample()
    assert r.status == "ok"
    assert r.data["mode"] in ("v1", "v2", "hybrid")
    assert r.data["leaves"] >= 1
