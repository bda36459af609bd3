"""sock_diag, /proc/net/tcp, taskstats and capget: the netlink and syscall paths of probe_core."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import probe_core
import pytest

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
PROC_NET_TCP = (TEXT / "proc_net_tcp").read_text()
PROC_NET_TCP6 = (TEXT / "proc_net_tcp6").read_text()


def test_parse_proc_net_tcp_summary() -> None:
    s = probe_core.parse_proc_net_tcp(PROC_NET_TCP, family=4, top_n=5)
    assert s["source"] == "proc"
    assert s["total"] == 3 and s["malformed"] == 1
    assert s["states"]["LISTEN"] == 1 and s["states"]["ESTABLISHED"] == 1 and s["states"]["TIME_WAIT"] == 1
    (listener,) = s["listeners_near_backlog"]  # backlog unknown in /proc: any queued connection
    assert listener["saddr"] == "127.0.0.1" and listener["sport"] == 8080
    assert listener["rqueue"] == 5 and listener["backlog"] is None and listener["wqueue"] is None
    (est,) = s["top_retrans"]
    assert est["retransmits"] == 3 and est["total_retrans"] is None  # no tcp_info in /proc
    assert est["uid"] == 1000 and est["dport"] == 50000
    assert s["rqueue_bytes"] == 0x20 and s["wqueue_bytes"] == 0x10
    assert s["in_rto_backoff"] == 1


def test_parse_proc_net_tcp6_addresses() -> None:
    s = probe_core.parse_proc_net_tcp(PROC_NET_TCP6, family=6)
    assert s["total"] == 1 and s["states"]["LISTEN"] == 1
    assert s["listeners_near_backlog"] == []


def test_parse_proc_net_tcp_argument_checks() -> None:
    with pytest.raises(ValueError, match="family"):
        probe_core.parse_proc_net_tcp(PROC_NET_TCP, family=5)
    with pytest.raises(ValueError, match="backlog_ratio"):
        probe_core.parse_proc_net_tcp(PROC_NET_TCP, backlog_ratio=0)


@pytest.fixture
def full_listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A listener with backlog 4 and 5 connections it never accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    clients = []
    for _ in range(5):
        c = socket.socket()
        c.settimeout(2)
        c.connect(("127.0.0.1", port))
        clients.append(c)
    try:
        yield port, clients
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_sock_diag_sees_a_listener_at_its_backlog(full_listener: tuple[int, list[socket.socket]]) -> None:
    port, _ = full_listener
    s = probe_core.sock_diag_tcp(top_n=50, backlog_ratio=0.8)
    assert s["source"] == "sock_diag" and s["malformed"] == 0
    mine = [x for x in s["listeners_near_backlog"] if x["sport"] == port]
    assert len(mine) == 1
    assert mine[0]["backlog"] == 4 and mine[0]["rqueue"] == 5
    assert s["states"]["ESTABLISHED"] >= 10  # both ends of each connection


def test_proc_fallback_sees_the_same_listener(full_listener: tuple[int, list[socket.socket]]) -> None:
    port, _ = full_listener
    s = probe_core.read_proc_net_tcp(top_n=50)
    mine = [x for x in s["listeners_near_backlog"] if x["sport"] == port]
    assert len(mine) == 1
    assert mine[0]["rqueue"] == 5 and mine[0]["backlog"] is None


def test_one_dump_and_per_family_dumps_agree(full_listener: tuple[int, list[socket.socket]]) -> None:
    port, _ = full_listener
    for per_family in (False, True):
        s = probe_core.sock_diag_tcp(top_n=50, per_family=per_family)
        mine = [x for x in s["listeners_near_backlog"] if x["sport"] == port]
        assert len(mine) == 1 and mine[0]["backlog"] == 4, per_family
        assert s["states"]["ESTABLISHED"] >= 10


def test_sock_diag_and_proc_agree_on_totals() -> None:
    a = probe_core.sock_diag_tcp()
    b = probe_core.read_proc_net_tcp()
    c = probe_core.sock_diag_tcp()
    # Sockets come and go between reads: bracket by the two kernel reads.
    assert min(a["states"]["LISTEN"], c["states"]["LISTEN"]) <= b["states"]["LISTEN"]
    assert b["states"]["LISTEN"] <= max(a["states"]["LISTEN"], c["states"]["LISTEN"])


def test_sock_diag_reports_tcp_info_on_established_sockets(
    full_listener: tuple[int, list[socket.socket]],
) -> None:
    port, clients = full_listener
    clients[0].sendall(b"x" * 1000)  # unread by the server: its receive queue holds it
    s = probe_core.sock_diag_tcp(top_n=100)
    queued = [x for x in s["top_rqueue"] if x["sport"] == port]
    assert queued and queued[0]["rqueue"] == 1000
    assert queued[0]["total_retrans"] is not None and queued[0]["rtt_us"] is not None


def test_capget_matches_proc_status() -> None:
    caps = probe_core.capget()
    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert caps["effective"] == int(status["CapEff"], 16)
    assert caps["permitted"] == int(status["CapPrm"], 16)
    assert caps["inheritable"] == int(status["CapInh"], 16)


@pytest.mark.root
def test_taskstats_for_this_process_and_a_missing_one() -> None:
    ts = probe_core.Taskstats()
    assert ts.family_id > 0
    mine = ts.tgid(os.getpid())
    assert mine is not None
    assert mine["pid"] == os.getpid() and mine["version"] >= 8
    assert mine["cpu_run_real_ns"] > 0 and mine["voluntary_switches"] > 0
    assert ts.tgid(2**22 + 12345) is None  # past pid_max: gone, not an error


_NO_NET_ADMIN = """
import json, probe_core
try:
    probe_core.Taskstats().tgid(1)
    print(json.dumps({"ok": True}))
except probe_core.ReadError as exc:
    print(json.dumps({"errno": exc.errno, "text": str(exc)}))
"""


@pytest.mark.root
def test_taskstats_without_cap_net_admin_is_refused_with_eperm() -> None:
    capsh = shutil.which("capsh")
    assert capsh
    out = subprocess.run(
        [capsh, "--drop=cap_net_admin", "--", "-c", f"exec {sys.executable} -c '{_NO_NET_ADMIN}'"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result.get("errno") == 1, result  # EPERM
    assert "taskstats" in result["text"]
