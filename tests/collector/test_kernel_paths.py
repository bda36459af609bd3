"""Every kernel path for real, as root: the test makes the events it expects.

eBPF sees a process it spawns exec and exit with its status, a process it
OOM-kills in a small memory cgroup, and TCP retransmits it provokes by dropping
packets on a veth pair into a network namespace. The cgroup, host and sockets
sources see the same events through their own paths.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.config import CollectorSettings
from collector.info import detect_capabilities
from collector.sources import SourceContext
from collector.sources.cgroup import CgroupSource
from collector.sources.ebpf import EbpfSource
from collector.sources.host import HostSource
from collector.sources.network import NetworkSource
from collector.sources.perf import PerfSource
from collector.sources.processes import ProcessesSource
from collector.sources.sockets import SocketsSource
from testkit.kernel_fixtures import lossy_peer, memory_cgroup

pytestmark = pytest.mark.root

# A TCP sink inside the lossy namespace: accepts one connection and reads it dry.
SINK = (
    "import socket; s = socket.socket(); s.bind(('10.123.0.2', 9000)); s.listen(); c, _ = s.accept()\n"
    "while c.recv(65536): pass"
)


@pytest.fixture(scope="module")
def ctx() -> SourceContext:
    settings = CollectorSettings(interval_s=1.0)
    return SourceContext(settings=settings, capabilities=detect_capabilities(settings))


@pytest.fixture(scope="module")
def ebpf(ctx: SourceContext) -> Iterator[EbpfSource]:
    src = EbpfSource(ctx)
    assert src.plan().path == "kernel", src.plan().reason
    src.sample()  # drain whatever happened before this test module
    yield src
    src.close()


def drain_until(
    src: EbpfSource, match: Any, timeout: float = 5.0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Samples until an event matches; returns every event seen and the last sample's data."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = src.sample()
        assert r.status == "ok", r.reason
        data = r.data
        seen += data["events"]
        if any(match(e) for e in seen):
            return seen, data
        time.sleep(0.1)
    return seen, data


def test_exec_and_exit_with_status(ebpf: EbpfSource) -> None:
    child = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
    child.wait()
    events, data = drain_until(ebpf, lambda e: e["type"] == "exit" and e["pid"] == child.pid)
    execs = [e for e in events if e["type"] == "exec" and e["pid"] == child.pid]
    exits = [e for e in events if e["type"] == "exit" and e["pid"] == child.pid]
    assert execs and exits, events
    assert execs[0]["filename"].endswith("sh") and execs[0]["ppid"] == os.getpid() and execs[0]["uid"] == 0
    assert exits[0]["exit_code"] == 7 << 8
    assert exits[0]["ppid"] == os.getpid()
    assert 0 < exits[0]["age_ns"] < 10 * 1e9
    assert data["dropped"]["undecodable"] == 0


def test_killed_process_has_unknown_exit_status(ebpf: EbpfSource) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    child.kill()
    child.wait()
    events, _ = drain_until(ebpf, lambda e: e["type"] == "exit" and e["pid"] == child.pid)
    (exit_event,) = [e for e in events if e["type"] == "exit" and e["pid"] == child.pid]
    assert exit_event["exit_code"] == -1  # SIGKILL never reaches exit_group


def test_runqueue_histogram_counts(ebpf: EbpfSource) -> None:
    time.sleep(0.3)
    hists = ebpf.sample().data["histograms"]
    runq = next(h for h in hists if h["type"] == "runq_latency")
    assert sum(runq["slots"]) > 0 and runq["unit"] == "us" and runq["interval_ns"] > 0


def test_block_io_histogram(ebpf: EbpfSource, tmp_path: Path) -> None:
    target = Path("/var/tmp") / f"incidentlab-bio-{os.getpid()}"
    try:
        with open(target, "wb") as f:
            f.write(os.urandom(4 << 20))
            f.flush()
            os.fsync(f.fileno())
    finally:
        target.unlink(missing_ok=True)
    hists = ebpf.sample().data["histograms"]
    bio = [h for h in hists if h["type"] == "bio_latency"]
    assert bio and all(sum(h["slots"]) > 0 and h["dev"] > 0 for h in bio)


def test_oom_kill_is_seen_by_ebpf_cgroup_and_host(ebpf: EbpfSource, ctx: SourceContext) -> None:
    host = HostSource(ctx)
    before = host.sample().data["vmstat"]["oom_kill"]
    with memory_cgroup(64 << 20) as cg:
        child = subprocess.Popen([sys.executable, "-c", f"{cg.add_self_command()}; a = bytearray(1 << 30)"])
        assert child.wait(timeout=60) == -9  # SIGKILL from the OOM killer
        events, _ = drain_until(ebpf, lambda e: e["type"] == "oom_kill" and e["pid"] == child.pid)
        ooms = [e for e in events if e["type"] == "oom_kill" and e["pid"] == child.pid]
        assert ooms, events
        assert ooms[0]["comm"].startswith("python")
        assert ooms[0]["anon_rss_kb"] > 0
        cgroups = CgroupSource(ctx).sample().data["cgroups"]
        mine = next((c for c in cgroups if c["path"] == cg.rel), None)
        if mine is None:
            # Not among the heaviest now that its process is gone: read it directly.
            text = (cg.path / ("memory.oom_control" if cg.version == 1 else "memory.events")).read_text()
            assert "oom_kill 1" in text
        else:
            assert mine["memory"]["oom_kill"] >= 1
    assert host.sample().data["vmstat"]["oom_kill"] >= before + 1


def test_tcp_retransmits_seen_by_ebpf_sockets_and_netstat(ebpf: EbpfSource, ctx: SourceContext) -> None:
    with lossy_peer(drop_percent=30) as peer:
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                peer.netns,
                sys.executable,
                "-c",
                "import socket; s = socket.socket(); s.bind(('10.123.0.2', 9000)); s.listen()\n"
                "c, _ = s.accept()\n"
                "while c.recv(65536): pass",
            ],
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = socket.create_connection((peer.address, 9000), timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            sockets = SocketsSource(ctx)
            with contextlib.closing(client):
                # Under 30% loss the RTO backoff can stall a send for many seconds: a stall
                # means retransmits are under way, which is all this test needs.
                client.settimeout(1.0)
                end = time.monotonic() + 2
                while time.monotonic() < end:
                    try:
                        client.sendall(b"x" * 16384)
                    except TimeoutError:
                        break
                top = sockets.sample().data["top_retrans"]
        finally:
            server.kill()
            server.wait()
        events, _ = drain_until(ebpf, lambda e: e["type"] == "tcp_retransmit" and e["daddr"] == peer.address)
    retrans = [e for e in events if e["type"] == "tcp_retransmit" and e["daddr"] == peer.address]
    assert retrans and retrans[0]["dport"] == 9000 and retrans[0]["family"] == 2
    assert any(s["daddr"] == peer.address and (s["total_retrans"] or 0) > 0 for s in top), top


def test_kernel_paths_are_the_ones_used(ctx: SourceContext) -> None:
    for cls in (PerfSource, NetworkSource, SocketsSource, ProcessesSource):
        src = cls(ctx)
        try:
            assert src.plan().path == "kernel", (cls.name, src.plan().reason)
            src.sample()
            r = src.sample()
            assert r.status == "ok" and r.path == "kernel", (cls.name, r.reason)
        finally:
            src.close()
