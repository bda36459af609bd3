"""Real kernel objects the root tests make and remove: a memory cgroup, a network namespace."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from collector.cgroups import discover_layout, parse_mountinfo


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path  # the directory
    rel: str  # the path as /proc/PID/cgroup and the cgroup source show it
    version: int

    def add_self_command(self) -> str:
        """Python code that moves the running process into this cgroup."""
        return f"open({str(self.path / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))"


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    layout = discover_layout(parse_mountinfo(Path("/proc/self/mountinfo").read_text()), Path("/sys"))
    root = layout.memory_root()
    assert root is not None, "no memory cgroup hierarchy"
    version, base = root
    name = f"incidentlab-test-{os.getpid()}-{time.monotonic_ns()}"
    path = base / name
    path.mkdir()
    try:
        if version == 1:
            # memory.limit_in_bytes on the v1 hierarchy this machine kind runs (hybrid).
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit_bytes))
        else:
            (path / "memory.max").write_text(str(limit_bytes))
            (path / "memory.swap.max").write_text("0") if (path / "memory.swap.max").exists() else None
        yield MemoryCgroup(path, "/" + name, version)
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)  # the killed process is still being reaped


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class LossyPeer:
    netns: str
    address: str


@contextmanager
def lossy_peer(drop_percent: int) -> Iterator[LossyPeer]:
    """A network namespace behind a veth pair whose input drops drop_percent% of TCP packets.

    There is no netem qdisc on this kernel; nftables' numgen random does the dropping.
    """
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"ilab{tag}", f"ilh{tag}", f"iln{tag}"
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
        run(["ip", "link", "set", ns_if, "netns", ns])
        run(["ip", "addr", "add", "10.123.0.1/30", "dev", host_if])
        run(["ip", "link", "set", host_if, "up"])
        nsexec = ["ip", "netns", "exec", ns]
        run([*nsexec, "ip", "addr", "add", "10.123.0.2/30", "dev", ns_if])
        run([*nsexec, "ip", "link", "set", ns_if, "up"])
        run([*nsexec, "ip", "link", "set", "lo", "up"])
        run([*nsexec, "nft", "add", "table", "inet", "ilab"])
        run([*nsexec, "nft", "add", "chain", "inet", "ilab", "in", "{ type filter hook input priority 0 ; }"])
        run(
            [
                *nsexec,
                "nft",
                "add",
                "rule",
                "inet",
                "ilab",
                "in",
                "meta",
                "l4proto",
                "tcp",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                str(drop_percent),
                "drop",
            ]
        )
        yield LossyPeer(ns, "10.123.0.2")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
