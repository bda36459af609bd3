"""Synthetic telemetry windows shaped like the collector's snapshots, one per anomaly family.

Each scenario is a calm baseline followed by the fault, built with the same field
names the collector's sources emit, so the detectors read them through the same
evidence code as real batches. GPU scenarios can only be synthetic here (no GPU).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgspec

from collector.wire import Snapshot, validate_batch

T0 = 1_800_000_000.0
POD = "1f2e3d4c-aaaa-bbbb-cccc-000000000001"


def calm(i: int) -> dict[str, Any]:
    """One second of a healthy 2-CPU host."""
    wobble = (i % 5) * 0.4
    return {
        "host": {
            "cpu": {
                "util_pct": {"user": 8 + wobble, "system": 3, "idle": 88 - wobble, "iowait": 1, "steal": 0},
                "procs_running": 1,
                "procs_blocked": 0,
                "forks_per_s": 3 + (i % 3),
            },
            "load": [0.3, 0.3, 0.2],
            "memory": {"MemTotal": 24 << 30, "MemAvailable": 18 << 30},
            "vmstat": {"oom_kill": 0},
            "vmstat_rates": {"pswpin_per_s": 0, "pswpout_per_s": 0, "pgmajfault_per_s": 0},
        },
        "psi": {
            r: {
                "some": {"avg10": 0.5, "avg60": 0.4, "avg300": 0.3},
                "full": {"avg10": 0.0, "avg60": 0, "avg300": 0},
            }
            for r in ("cpu", "memory", "io")
        },
        "disk": {"devices": [{"name": "vda", "util_pct": 4.0, "read_await_ms": 0.5, "write_await_ms": 1.0}]},
        "network": {
            "interfaces": [
                {"name": "eth0", "operstate": "UP", "rates": {"rx_errors_per_s": 0, "rx_dropped_per_s": 0}},
                {"name": "lo", "operstate": "UNKNOWN", "rates": {}},
            ]
        },
        "sockets": {"in_rto_backoff": 0, "listeners_near_backlog": [], "top_retrans": []},
        "processes": {
            "totals": {"processes": 120},
            "rows": [
                {
                    "pid": 900,
                    "comm": "api-server",
                    "cpu_pct": 6.0,
                    "rss_bytes": 400 << 20,
                    "num_fds": 120,
                    "cgroup": "/system.slice/api.service",
                    "pod_uid": None,
                    "read_bytes_per_s": 0,
                    "write_bytes_per_s": 0,
                },
                {
                    "pid": 901,
                    "comm": "worker",
                    "cpu_pct": 2.0,
                    "rss_bytes": 200 << 20,
                    "num_fds": 40,
                    "cgroup": "/system.slice/worker.service",
                    "pod_uid": None,
                },
            ],
        },
        "cgroup": {"cgroups": []},
        "ebpf": {"counts": {"tcp_retransmit": 0 + (i % 2), "exec": 2, "exit": 2}, "events": []},
    }


def apply(d: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def cpu_saturation(d: dict[str, Any], i: int) -> None:
    apply(d, "host.cpu.util_pct", {"user": 92, "system": 6, "idle": 1.5, "iowait": 0.5, "steal": 0})
    apply(d, "host.cpu.procs_running", 9)
    apply(d, "psi.cpu.some.avg10", 72.0)
    d["processes"]["rows"].insert(
        0,
        {
            "pid": 4242,
            "comm": "cryptominer",
            "cpu_pct": 185.0,
            "rss_bytes": 30 << 20,
            "num_fds": 8,
            "cgroup": "/user.slice",
            "pod_uid": None,
        },
    )


def memory_pressure(d: dict[str, Any], i: int) -> None:
    apply(d, "host.memory.MemAvailable", (24 << 30) // 100)
    apply(d, "psi.memory.some.avg10", 35.0)
    apply(d, "host.vmstat.oom_kill", 1)
    d["ebpf"]["counts"]["oom_kill"] = 1 if i == 0 else 0
    if i == 0:
        d["ebpf"]["events"] = [
            {"type": "oom_kill", "pid": 5151, "comm": "leaky-cache", "anon_rss_kb": 9_000_000}
        ]


def io_pressure(d: dict[str, Any], i: int) -> None:
    apply(d, "psi.io.some.avg10", 65.0)
    apply(d, "host.cpu.util_pct", {"user": 5, "system": 4, "idle": 46, "iowait": 45, "steal": 0})
    d["disk"]["devices"] = [{"name": "nvme0n1", "util_pct": 99.5, "read_await_ms": 40, "write_await_ms": 120}]
    d["processes"]["rows"].insert(
        0,
        {
            "pid": 7070,
            "comm": "backup",
            "cpu_pct": 3.0,
            "rss_bytes": 50 << 20,
            "num_fds": 12,
            "write_bytes_per_s": 900 << 20,
            "read_bytes_per_s": 0,
            "cgroup": "/system.slice/backup.service",
        },
    )


def fd_exhaustion(d: dict[str, Any], i: int) -> None:
    d["processes"]["rows"].insert(
        0,
        {
            "pid": 3131,
            "comm": "conn-leaker",
            "cpu_pct": 1.0,
            "rss_bytes": 80 << 20,
            "num_fds": 60_000 + 500 * i,
            "cgroup": "/system.slice/leaker.service",
        },
    )


def cgroup_cpu_throttling(d: dict[str, Any], i: int) -> None:
    d["cgroup"]["cgroups"] = [
        {
            "path": f"/kubepods/burstable/pod{POD}/" + "c" * 64,
            "kubernetes": {"pod_uid": POD, "container_id": "c" * 64, "qos": "burstable"},
            "cpu": {"quota_cores": 0.5, "throttled_periods_pct": 78.0, "usage_pct": 50.0},
            "memory": {"oom_kill": 0},
        },
    ]


def runaway_forks(d: dict[str, Any], i: int) -> None:
    apply(d, "host.cpu.forks_per_s", 800.0)
    d["ebpf"]["events"] = [
        {"type": "exec", "pid": 20_000 + i * 10 + k, "ppid": 6666, "comm": "sh"} for k in range(8)
    ]
    d["processes"]["rows"].insert(
        0, {"pid": 6666, "comm": "forkbomb.sh", "cpu_pct": 60.0, "rss_bytes": 5 << 20, "num_fds": 4}
    )


def tcp_retransmit_surge(d: dict[str, Any], i: int) -> None:
    d["ebpf"]["counts"]["tcp_retransmit"] = 240
    d["sockets"]["in_rto_backoff"] = 12
    d["sockets"]["top_retrans"] = [
        {"saddr": "10.0.0.5", "sport": 40000, "daddr": "10.0.9.9", "dport": 5432, "total_retrans": 900 + i}
    ]


def listen_queue_overflow(d: dict[str, Any], i: int) -> None:
    d["sockets"]["listeners_near_backlog"] = [
        {"saddr": "0.0.0.0", "sport": 8080, "rqueue": 128, "backlog": 128}
    ]


def nic_errors(d: dict[str, Any], i: int) -> None:
    d["network"]["interfaces"][0]["rates"] = {"rx_errors_per_s": 40.0, "rx_dropped_per_s": 80.0}


def network_throughput(d: dict[str, Any], i: int) -> None:
    """eth0 carrying 450 MB/s, a few sockets backing off behind it."""
    d["network"]["interfaces"][0]["rates"] = {"rx_bytes_per_s": 450e6, "tx_bytes_per_s": 20e6}
    d["sockets"]["in_rto_backoff"] = 3


def multi_resource_saturation(d: dict[str, Any], i: int) -> None:
    """CPU, memory and the disk near their limits, none past what its own family fires on."""
    apply(d, "host.cpu.util_pct", {"user": 78, "system": 7, "idle": 14, "iowait": 1, "steal": 0})
    apply(d, "host.memory.MemAvailable", int(0.08 * (24 << 30)))
    d["disk"]["devices"][0]["util_pct"] = 84.0
    apply(d, "psi.cpu.some.avg10", 15.0)  # tasks wait a little: near, not past, the line


def host_instability(d: dict[str, Any], i: int) -> None:
    """Signals no family reads as a fault moving together: faults, load, tasks, execs, latency."""
    apply(d, "host.vmstat_rates.pgmajfault_per_s", 400)
    apply(d, "host.load", [9.0, 5.0, 2.0])
    apply(d, "host.cpu.procs_blocked", 6)
    d["processes"]["totals"]["processes"] = 900
    d["disk"]["devices"][0]["write_await_ms"] = 180.0
    d["ebpf"]["counts"]["exec"] = 90
    apply(d, "psi.io.some.avg10", 12.0)  # the blocked tasks wait on IO


def _gpu(util: float, mem_pct: float, reasons: list[str], ecc: int = 0) -> dict[str, Any]:
    total = 80 << 30
    return {
        "driver": "550.54.15",
        "devices": [
            {
                "index": 0,
                "uuid": "GPU-aaaa",
                "name": "NVIDIA H100",
                "utilization_pct": {"gpu": util, "memory": 30},
                "memory": {"total": total, "used": int(total * mem_pct / 100)},
                "temperature_c": 70,
                "throttle_reasons": reasons,
                "ecc": {"uncorrected_volatile": ecc},
                "processes": [{"pid": 8080, "used_bytes": int(total * mem_pct / 100)}],
            }
        ],
        "xid_events": [],
    }


def calm_gpu(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(95.0, 60.0, [])


def gpu_throttling(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(97.0, 60.0, ["hw_thermal_slowdown", "sw_thermal_slowdown"])
    d["gpu"]["devices"][0]["temperature_c"] = 91


def gpu_xid(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(0.0, 60.0, [])
    if i == 0:
        d["gpu"]["xid_events"] = [{"xid": 79, "device_uuid": "GPU-aaaa", "count": 1, "pid": None}]


def gpu_ecc(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(95.0, 60.0, [], ecc=2 + i)


def gpu_memory_pressure_low_util(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(4.0, 97.0, [])


def _links(errors: int, down: bool) -> list[dict[str, Any]]:
    ok = {"replay": 0, "recovery": 0, "crc_flit": 0, "crc_data": 0}
    return [
        {"link": 0, "active": True, "errors": ok},
        {"link": 1, "active": not down, "errors": ok | {"crc_flit": errors, "replay": errors // 2}},
    ]


def calm_nvlink(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(95.0, 60.0, [])
    d["gpu"]["devices"][0]["nvlink"] = _links(0, False)


def gpu_nvlink_degradation(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(60.0, 60.0, [])
    d["gpu"]["devices"][0]["nvlink"] = _links(40 * (i + 1), i >= 5)


def gpu_memory_held_idle(d: dict[str, Any], i: int) -> None:
    d["gpu"] = _gpu(0.0, 40.0, [])
    d["processes"]["rows"].append(
        {"pid": 8080, "comm": "ipykernel", "cpu_pct": 0.0, "rss_bytes": 3 << 30, "num_fds": 40}
    )


def input_pipeline_starvation(d: dict[str, Any], i: int) -> None:
    apply(d, "host.cpu.util_pct", {"user": 90, "system": 7, "idle": 2.5, "iowait": 0.5, "steal": 0})
    d["gpu"] = _gpu(12.0 - (i % 3), 60.0, [])
    d["processes"]["rows"].insert(
        0, {"pid": 5555, "comm": "dataloader", "cpu_pct": 190.0, "rss_bytes": 2 << 30, "num_fds": 64}
    )


FAULTS: dict[str, tuple[Callable[[dict[str, Any], int], None], str]] = {
    # family: (fault, the culprit id the analysis must name)
    "cpu_saturation": (cpu_saturation, "cryptominer[4242]"),
    "memory_pressure": (memory_pressure, "leaky-cache[5151]"),
    "io_pressure": (io_pressure, "backup.service"),
    "fd_exhaustion": (fd_exhaustion, "conn-leaker[3131]"),
    "cgroup_cpu_throttling": (cgroup_cpu_throttling, POD),
    "runaway_forks": (runaway_forks, "forkbomb.sh[6666]"),
    "tcp_retransmit_surge": (tcp_retransmit_surge, "10.0.9.9:5432"),
    "listen_queue_overflow": (listen_queue_overflow, "0.0.0.0:8080"),
    "nic_errors": (nic_errors, "eth0"),
    "network_throughput": (network_throughput, "eth0"),
    "multi_resource_saturation": (multi_resource_saturation, "host"),
    "host_instability": (host_instability, "host"),
    "gpu_throttling": (gpu_throttling, "GPU-aaaa"),
    "gpu_xid": (gpu_xid, "GPU-aaaa"),
    "gpu_ecc": (gpu_ecc, "GPU-aaaa"),
    "gpu_memory_pressure_low_util": (gpu_memory_pressure_low_util, "GPU-aaaa"),
    "gpu_memory_held_idle": (gpu_memory_held_idle, "ipykernel[8080]"),
    "gpu_nvlink_degradation": (gpu_nvlink_degradation, "GPU-aaaa"),
    "input_pipeline_starvation": (input_pipeline_starvation, "dataloader[5555]"),
}


# Faults that take longer than 30 s to show: a GPU is idle only after a minute of nothing.
FAULT_S = {"gpu_memory_held_idle": 75}


def window(
    family: str | None,
    calm_s: int = 120,
    fault_s: int | None = None,
    stale: tuple[str, ...] = (),
    tweak: Callable[[dict[str, Any], int, bool], None] | None = None,
) -> list[Snapshot]:
    """calm_s seconds of baseline, then fault_s seconds of the family's fault (30, or what
    FAULT_S says the family needs to show), as Snapshots; ``tweak(data, i, faulty)``
    changes each second after that (a test's variation)."""
    if fault_s is None:
        fault_s = FAULT_S.get(family or "", 30)
    gpu_scenario = family is not None and (family.startswith("gpu") or family == "input_pipeline_starvation")
    snaps = []
    for i in range(calm_s + fault_s):
        d = calm(i)
        if gpu_scenario:
            calm_nvlink(d, i) if family == "gpu_nvlink_degradation" else calm_gpu(d, i)
        if family is not None and i >= calm_s:
            FAULTS[family][0](d, i - calm_s)
        if tweak is not None:
            tweak(d, i, i >= calm_s)
        sources = {}
        for name, data in d.items():
            status = "error" if name in stale and i >= calm_s else "ok"
            sources[name] = {
                "status": status,
                "path": "file",
                "reason": None if status == "ok" else "injected",
                "data": copy.deepcopy(data) if status == "ok" else {},
            }
        snaps.append({"ts": T0 + i, "interval_s": 1.0, "sources": sources})
    return validate_batch(batch_doc(snaps, stream_id="s", sent_at=T0)).snapshots


def batch_doc(
    snapshots: list[Any],
    host_id: str = "node-a",
    seq: int = 1,
    stream_id: str = "",
    sent_at: float | None = None,
) -> dict[str, Any]:
    """A wire batch (plain JSON) of snapshots (dicts, or Snapshots made plain here)."""
    snaps = [s if isinstance(s, dict) else msgspec.to_builtins(s) for s in snapshots]
    return {
        "schema": "incidentlab.batch/v1",
        "host_id": host_id,
        "boot_id": "b",
        "stream_id": stream_id or f"s-{host_id}",
        "seq": seq,
        "sent_at": snaps[-1]["ts"] if sent_at is None else sent_at,
        "snapshots": snaps,
    }


def batch_for(
    family: str | None,
    host_id: str = "node-a",
    seq: int = 1,
    shift_s: float = 0.0,
    stale: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A wire batch (plain JSON) carrying the scenario's window for ``host_id``, ``shift_s`` later."""
    snaps = [msgspec.to_builtins(s) for s in window(family, stale=stale)]
    for s in snaps:
        s["ts"] += shift_s
    return batch_doc(snaps, host_id, seq)
