"""ProcessScanner and its parsers: fixture trees for exact values, the live host for behaviour."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import probe_core
import pytest

STAT_100 = (
    "100 (my (odd) name) R 1 100 100 0 -1 4194304 500 0 7 0 4000 1000 0 0 20 0 4 0 100000 900000000 25000 0 0"
)


def test_parse_pid_stat_name_with_spaces_and_parentheses() -> None:
    s = probe_core.parse_pid_stat(STAT_100)
    assert s["comm"] == "my (odd) name"
    assert (s["pid"], s["ppid"], s["state"]) == (100, 1, "R")
    assert (s["minflt"], s["majflt"], s["utime_ticks"], s["stime_ticks"]) == (500, 7, 4000, 1000)
    assert (s["threads"], s["starttime_ticks"], s["rss_pages"]) == (4, 100000, 25000)


def test_parse_pid_stat_name_that_looks_like_fields() -> None:
    s = probe_core.parse_pid_stat("7 (a) S 1 2 3) Z 9 7 7 0 -1 0 1 0 2 0 3 4 0 0 20 0 1 0 10 0 5")
    assert s["comm"] == "a) S 1 2 3"
    assert s["state"] == "Z" and s["ppid"] == 9


@pytest.mark.parametrize(
    "text", ["", "100 my name R 1", "100 (x) R 1 2", "x (y) R " + "1 " * 30, "100 (x) RR " + "1 " * 30]
)
def test_parse_pid_stat_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_pid_stat(text)


def test_parse_pid_cgroup_hybrid_prefers_memory_hierarchy() -> None:
    text = (
        "12:memory:/kubepods/pod1/abc\n3:cpu,cpuacct:/kubepods/pod1/abc-cpu\n"
        "1:name=systemd:/x\n0::/ignored:with:colons\n"
    )
    c = probe_core.parse_pid_cgroup(text)
    assert c["primary"] == "/kubepods/pod1/abc"
    assert c["entries"][3] == {"hierarchy": "0", "controllers": "", "path": "/ignored:with:colons"}


def test_parse_pid_cgroup_v2_only_and_cpu_only() -> None:
    assert probe_core.parse_pid_cgroup("0::/system.slice/x.service\n")["primary"] == "/system.slice/x.service"
    assert probe_core.parse_pid_cgroup("3:cpu,cpuacct:/a\n0::/\n")["primary"] == "/a"
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_pid_cgroup("garbage\n")


def test_parse_smaps_rollup() -> None:
    text = "00400000-7ff ---p 00000000 00:00 0   [rollup]\nRss:  10 kB\nPss:   6 kB\nSwap:  0 kB\n"
    assert probe_core.parse_smaps_rollup(text) == {"Rss": 10240, "Pss": 6144, "Swap": 0}
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_smaps_rollup("Rss: lots kB\n")


def test_scan_fixture_totals_and_first_pass_ranking(modern_root: str) -> None:
    r = probe_core.ProcessScanner(modern_root).scan("cpu", top_n=10)
    t = r["totals"]
    assert (t["processes"], t["threads"]) == (5, 8)
    assert (t["running"], t["sleeping"], t["blocked"], t["zombies"], t["idle"]) == (1, 1, 1, 1, 1)
    assert r["interval_s"] is None  # rates need two passes
    # First pass ranks by lifetime CPU share: dd (10 s over 34.56 s) before the odd name (50 s over 234.56 s).
    assert [row["pid"] for row in r["rows"][:3]] == [400, 100, 1]
    dd = r["rows"][0]
    assert dd["rank"] == pytest.approx(1000 / 100 / (1234.56 - 1200) * 100)
    assert dd["cpu_percent"] is None


def test_scan_fixture_enriches_top_rows(modern_root: str) -> None:
    rows = {row["pid"]: row for row in probe_core.ProcessScanner(modern_root).scan("rss", top_n=5)["rows"]}
    odd = rows[100]
    assert odd["comm"] == "my (odd) name"
    assert odd["cgroup"] == "/kubepods/burstable/pod1f2e3d4c-aaaa-bbbb-cccc-000000000001/0123abcd"
    assert odd["num_fds"] == 4
    assert odd["smaps"] == {"Rss": 9800 * 1024, "Pss": 9000 * 1024, "Pss_Anon": 8000 * 1024, "Swap": 0}
    assert odd["rss_bytes"] == 25000 * os.sysconf("SC_PAGESIZE")
    assert odd["utime_s"] == pytest.approx(4000 / os.sysconf("SC_CLK_TCK"))
    assert odd["uid"] == os.stat(Path(modern_root) / "proc" / "100").st_uid
    assert rows[400]["read_bytes"] == 734003200 and rows[400]["cgroup"] == "/system.slice/backup.service"
    assert rows[300]["read_bytes"] is None and rows[300]["num_fds"] == 0  # unreadable io: None, not 0


def test_scan_without_enrich_skips_the_cold_path(modern_root: str) -> None:
    row = probe_core.ProcessScanner(modern_root).scan("rss", top_n=1, enrich=False)["rows"][0]
    assert row["pid"] == 100
    assert row["cgroup"] is None and row["num_fds"] is None and row["smaps"] is None and row["uid"] is None


def test_scan_sort_keys(modern_root: str) -> None:
    # Fresh scanners: on a second pass over an unchanging tree every rate is zero.
    def top(key: str) -> int:
        return probe_core.ProcessScanner(modern_root).scan(key, top_n=1)["rows"][0]["pid"]

    assert top("io") == 400
    assert top("fds") == 100
    assert top("majflt") == 400
    assert top("rss") == 100
    with pytest.raises(ValueError, match="unknown sort key"):
        probe_core.ProcessScanner(modern_root).scan("bogus")
    with pytest.raises(ValueError, match="top_n"):
        probe_core.ProcessScanner(modern_root).scan("cpu", top_n=10**6)


def test_scan_rates_from_two_passes_and_pid_reuse(tmp_path: Path, modern_root: str) -> None:
    root = tmp_path / "host"
    shutil.copytree(modern_root, root)
    scanner = probe_core.ProcessScanner(str(root))
    scanner.scan("io", top_n=5)
    stat = root / "proc" / "400" / "stat"
    fields = stat.read_text().split()
    fields[13] = str(int(fields[13]) + 50)  # utime +0.5 s
    fields[11] = str(int(fields[11]) + 10)  # majflt +10
    stat.write_text(" ".join(fields) + "\n")
    io = root / "proc" / "400" / "io"
    io.write_text(io.read_text().replace("read_bytes: 734003200", "read_bytes: 735051776"))
    # pid 100 is a new process with the same pid: its rates must not use the old sample.
    old = (root / "proc" / "100" / "stat").read_text()
    (root / "proc" / "100" / "stat").write_text(old.replace(" 100000 900000000", " 100500 900000000"))
    time.sleep(0.05)
    r = scanner.scan("io", top_n=5)
    dt = r["interval_s"]
    assert dt is not None and dt > 0
    rows = {row["pid"]: row for row in r["rows"]}
    dd = rows[400]
    assert dd["cpu_percent"] == pytest.approx(0.5 / dt * 100 * 100 / os.sysconf("SC_CLK_TCK"), rel=1e-6)
    assert dd["majflt_per_s"] == pytest.approx(10 / dt)
    assert dd["read_bytes_per_s"] == pytest.approx(1048576 / dt)
    assert dd["write_bytes_per_s"] == 0
    assert rows[100]["cpu_percent"] is None


def test_scan_skips_pids_that_vanish(tmp_path: Path, modern_root: str) -> None:
    root = tmp_path / "host"
    shutil.copytree(modern_root, root)
    (root / "proc" / "555").mkdir()  # listed, but its stat is gone: exited mid-scan
    (root / "proc" / "556").mkdir()
    (root / "proc" / "556" / "stat").write_text("garbage")
    r = probe_core.ProcessScanner(str(root)).scan()
    assert r["totals"]["processes"] == 5
    assert r["vanished"] == 2


def test_scanner_on_missing_root_raises() -> None:
    with pytest.raises(probe_core.ReadError):
        probe_core.ProcessScanner("/nonexistent-root")


@pytest.fixture
def cpu_hog() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_live_scan_finds_a_cpu_hog_and_counts_match_proc(cpu_hog: subprocess.Popen[bytes]) -> None:
    scanner = probe_core.ProcessScanner()
    scanner.scan()
    time.sleep(0.5)
    r = scanner.scan("cpu", top_n=5)
    row = next(row for row in r["rows"] if row["pid"] == cpu_hog.pid)
    assert row["cpu_percent"] is not None and row["cpu_percent"] > 30
    assert row["comm"] == "python" or row["comm"].startswith("python")
    assert row["uid"] == os.getuid()
    assert row["num_fds"] is not None and row["num_fds"] >= 3
    listed = sum(1 for p in os.listdir("/proc") if p.isdigit())
    assert abs(r["totals"]["processes"] - listed) <= 10


def test_cold_fields_are_reread_only_after_the_ttl(tmp_path: Path, modern_root: str) -> None:
    root = tmp_path / "host"
    shutil.copytree(modern_root, root)
    cgroup = root / "proc" / "400" / "cgroup"
    cached = probe_core.ProcessScanner(str(root), cold_ttl_s=3600)
    fresh = probe_core.ProcessScanner(str(root), cold_ttl_s=0)
    assert cached.cold_ttl_s == 3600

    def cgroup_of_400(scanner: probe_core.ProcessScanner) -> str | None:
        return next(r["cgroup"] for r in scanner.scan("cpu", top_n=5)["rows"] if r["pid"] == 400)

    for scanner in (cached, fresh):
        assert cgroup_of_400(scanner) == "/system.slice/backup.service"
    cgroup.write_text("0::/system.slice/moved.service\n")
    assert cgroup_of_400(cached) == "/system.slice/backup.service"
    assert cgroup_of_400(fresh) == "/system.slice/moved.service"
    with pytest.raises(probe_core.ProbeError, match="cold_ttl_s"):
        probe_core.ProcessScanner(str(root), cold_ttl_s=-1)


def test_live_fd_count_matches_the_fd_table(tmp_path: Path) -> None:
    files = [open(tmp_path / f"f{i}", "w") for i in range(64)]  # noqa: SIM115
    try:
        scanner = probe_core.ProcessScanner()
        rows = scanner.scan("fds", top_n=200)["rows"]
        mine = next(r for r in rows if r["pid"] == os.getpid())
        # The scan counts its own /proc listing fd, as listdir counts its own.
        assert mine["num_fds"] == len(os.listdir("/proc/self/fd"))
        assert mine["num_fds"] is not None and mine["num_fds"] >= 64
    finally:
        for f in files:
            f.close()


def test_kept_stat_files_give_fresh_readings_and_are_bounded(cpu_hog: subprocess.Popen[bytes]) -> None:
    kept = probe_core.ProcessScanner(keep_fds=100000)
    bounded = probe_core.ProcessScanner(keep_fds=5)
    kept.scan()
    bounded.scan()
    listed = sum(1 for p in os.listdir("/proc") if p.isdigit())
    assert kept.open_fds >= listed - 10
    assert bounded.open_fds == 5
    time.sleep(0.5)
    row = next(r for r in kept.scan("cpu", top_n=5)["rows"] if r["pid"] == cpu_hog.pid)
    assert row["cpu_percent"] is not None and row["cpu_percent"] > 30  # pread at 0 re-renders the file


def test_kept_stat_file_of_an_exited_process_is_dropped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    scanner = probe_core.ProcessScanner(keep_fds=100000)
    try:
        assert any(r["pid"] == child.pid for r in scanner.scan("rss", top_n=100000)["rows"])
        before = scanner.open_fds
    finally:
        child.kill()
        child.wait()
    rows = scanner.scan("rss", top_n=100000)["rows"]
    assert all(r["pid"] != child.pid for r in rows)
    assert scanner.open_fds <= before - 1
    fds = os.listdir("/proc/self/fd")
    assert len(fds) < 100000


LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
"""


def test_parse_nofile_limit() -> None:
    assert probe_core.parse_nofile_limit(LIMITS) == 1024
    assert probe_core.parse_nofile_limit(LIMITS.replace("1024 ", "unlimited")) is None


@pytest.mark.parametrize(
    "text",
    ["", "Max cpu time  unlimited  unlimited  seconds\n", "Max open files\n", "Max open files  lots  x\n"],
)
def test_parse_nofile_limit_rejects_garbage(text: str) -> None:
    with pytest.raises(probe_core.ParseError):
        probe_core.parse_nofile_limit(text)


def test_live_fd_holders_rank_an_idle_hoarder_and_leave_scan_rates_alone(
    tmp_path: Path, cpu_hog: subprocess.Popen[bytes]
) -> None:
    # A sleeping child with 3,000 open files: nowhere near the CPU-ranked rows.
    code = (
        "import resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (4000, 4000))\n"
        f"fs = [open({str(tmp_path / 'f')!r}, 'w') for _ in range(3000)]\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    hoarder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert hoarder.stdout is not None and hoarder.stdout.readline() == b"ready\n"
        scanner = probe_core.ProcessScanner()
        scanner.scan("cpu", top_n=3)
        time.sleep(0.3)
        holders = scanner.fd_holders(3)
        assert len(holders) <= 3
        top = holders[0]
        assert top["pid"] == hoarder.pid and top["comm"].startswith("python")
        assert top["num_fds"] == len(os.listdir(f"/proc/{hoarder.pid}/fd")) and top["num_fds"] >= 3000
        assert top["fd_limit"] == 4000
        # fd_holders did not reset the previous pass: the hog still gets a rate.
        row = next(r for r in scanner.scan("cpu", top_n=3)["rows"] if r["pid"] == cpu_hog.pid)
        assert row["cpu_percent"] is not None and row["cpu_percent"] > 30
        assert scanner.fd_holders(0) == []
    finally:
        hoarder.kill()
        hoarder.wait()
        assert hoarder.stdout is not None
        hoarder.stdout.close()
