"""The collector CLI in a subprocess: every source with its path, and the fallbacks proven.

Capabilities are dropped with capsh, paths turned off with force_fallback; the
collector must stay up, say ``file`` or ``unavailable`` with the right reason,
and still fill what the fallback can give.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ALL_SOURCES

COLLECTOR = [sys.executable, "-m", "collector.cli"]


def sample(*extra: str, prefix: list[str] | None = None) -> dict[str, Any]:
    cmd = [*COLLECTOR, "sample", "--once", "--json", "--interval", "1", *extra]
    if prefix:
        cmd = [*prefix, "--", "-c", " ".join(f"'{c}'" for c in cmd)]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2]
    )
    assert out.returncode == 0, out.stderr
    snapshot: dict[str, Any] = json.loads(out.stdout)
    return snapshot


def test_info_json_lists_every_source() -> None:
    out = subprocess.run(
        [*COLLECTOR, "info", "--json"], capture_output=True, text=True, timeout=120, check=True
    )
    info = json.loads(out.stdout)
    assert sorted(info["sources"]) == ALL_SOURCES
    for src in info["sources"].values():
        assert src["path"] in ("kernel", "file", "none")
        assert src["enabled"] is True
    assert info["host_id"] and info["boot_id"] and info["versions"]["probe_core"]


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("top_n: 0\nbogus: 1\n")
    out = subprocess.run(
        [*COLLECTOR, "sample", "--once", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "top_n" in out.stderr and "bogus: unknown key" in out.stderr


@pytest.mark.root
def test_sample_once_as_root_uses_the_kernel_paths() -> None:
    snap = sample()
    s = snap["sources"]
    assert sorted(s) == ALL_SOURCES
    assert snap["interval_s"] is not None
    for name in ("perf", "network", "sockets", "processes", "ebpf"):
        assert (s[name]["status"], s[name]["path"]) == ("ok", "kernel"), (name, s[name]["reason"])
    for name in ("host", "disk", "psi", "cgroup", "hardware"):
        assert s[name]["path"] == "file" and s[name]["status"] == "ok", (name, s[name]["reason"])
    assert s["gpu"]["status"] in ("ok", "unavailable")
    assert s["external"]["status"] == "unavailable"
    for entry in s.values():
        assert entry["status"] == "ok" or entry["reason"]


@pytest.mark.root
def test_without_capabilities_the_collector_falls_back_and_says_why() -> None:
    capsh = shutil.which("capsh")
    assert capsh
    with open("/proc/sys/kernel/perf_event_paranoid") as f:
        paranoid = int(f.read())
    snap = sample(prefix=[capsh, "--drop=cap_sys_admin,cap_perfmon,cap_bpf,cap_net_admin"])
    s = snap["sources"]
    perf, procs, ebpf = s["perf"], s["processes"], s["ebpf"]
    assert (perf["status"], perf["path"]) == ("fallback", "file")
    assert f"kernel.perf_event_paranoid={paranoid}" in perf["reason"]
    assert perf["data"]["context_switches_per_s"] is not None
    assert perf["data"]["cpu_migrations_per_s"] is None
    assert (procs["status"], procs["path"]) == ("fallback", "file")
    assert "CAP_NET_ADMIN" in procs["reason"]
    assert procs["data"]["rows"] and procs["data"]["delay_source"] == "schedstat"
    # A rate needs two readings: a process born between the passes (busy CI) has none yet.
    assert any(r["delay_pct"]["cpu"] is not None for r in procs["data"]["rows"])
    assert (ebpf["status"], ebpf["path"]) == ("fallback", "file")
    assert "CAP_BPF" in ebpf["reason"]
    assert ebpf["data"]["counts"]["fork"] is not None
    # Paths that need no capability stay on the kernel.
    assert s["network"]["path"] == "kernel" and s["sockets"]["path"] == "kernel"


@pytest.mark.root
def test_paths_turned_off_by_config_fall_back_with_data(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("force_fallback: [network, sockets, perf, processes, ebpf]\n")
    s = sample("--config", str(cfg))["sources"]
    for name in ("network", "sockets", "perf", "processes", "ebpf"):
        assert (s[name]["status"], s[name]["path"]) == ("fallback", "file"), name
        assert "force_fallback" in s[name]["reason"]
    assert any(i["name"] == "lo" for i in s["network"]["data"]["interfaces"])
    assert s["sockets"]["data"]["source"] == "proc" and s["sockets"]["data"]["total"] >= 0
    assert s["processes"]["data"]["rows"]
