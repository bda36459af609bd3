"""Evidence against, for every family: each names a check that speaks against it, says so
in `contradicting`, and its confidence is lower for it. Each case is the family's
scenario with one thing changed so that the check holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller.detectors import FAMILIES, build_evidence
from controller.workflow.analysis import detect, rank
from testkit.scenarios import apply, window

Tweak = Callable[[dict[str, Any], int, bool], None]


def events_of(snaps: list[Any]) -> list[dict[str, Any]]:
    """The eBPF events the snapshots carry, as ingest lifts them out of batches."""
    out: list[dict[str, Any]] = []
    for s in snaps:
        e = s.sources.get("ebpf")
        if e is not None and e.status == "ok":
            out.extend(e.data.get("events", []))
    return out


def only_fault(fn: Callable[[dict[str, Any], int], None]) -> Tweak:
    def tweak(d: dict[str, Any], i: int, faulty: bool) -> None:
        if faulty:
            fn(d, i)

    return tweak


def no_kills(d: dict[str, Any], i: int) -> None:
    apply(d, "host.vmstat.oom_kill", 0)
    apply(d, "psi.memory.some.avg10", 0.2)
    d["ebpf"]["counts"]["oom_kill"] = 0
    d["ebpf"]["events"] = []


def steady_fds(d: dict[str, Any], i: int, faulty: bool) -> None:
    rows = d["processes"]["rows"]
    if rows and rows[0].get("comm") == "conn-leaker":
        rows[0]["num_fds"] = 60_000


def spread_execs(d: dict[str, Any], i: int) -> None:
    d["ebpf"]["events"] = [
        {"type": "exec", "pid": 90_000 + i * 10 + k, "ppid": 50_000 + i * 10 + k} for k in range(8)
    ]


def quiet_path(d: dict[str, Any], i: int) -> None:
    d["sockets"]["in_rto_backoff"] = 0
    d["sockets"]["top_retrans"] = []


def idle_gpu_starved(d: dict[str, Any], i: int, faulty: bool) -> None:
    if not faulty:
        d["gpu"]["devices"][0]["utilization_pct"]["gpu"] = 2.0  # idle while the CPU was too


def no_critical(d: dict[str, Any], i: int) -> None:
    for x in d["gpu"]["xid_events"]:
        x["xid"] = 45  # preemptive cleanup: not critical


def small_holder(d: dict[str, Any], i: int) -> None:
    d["gpu"]["devices"][0]["processes"] = [{"pid": 8080, "used_bytes": 2 << 30}]  # 2.5% of 80 GiB


def replay_only(d: dict[str, Any], i: int) -> None:
    """Errors that are all replays, and no link lost: the link retried and recovered."""
    for link in d["gpu"]["devices"][0]["nvlink"]:
        link["active"] = True
        link["errors"] = {"replay": 40 * (i + 1), "recovery": 0, "crc_flit": 0, "crc_data": 0}


# family: (the tweak that makes its check against hold, the window's calm seconds)
AGAINST: dict[str, tuple[Tweak, int]] = {
    "cpu_saturation": (only_fault(lambda d, i: apply(d, "psi.cpu.some.avg10", 1.0)), 120),
    "memory_pressure": (only_fault(no_kills), 120),
    "io_pressure": (only_fault(lambda d, i: d["disk"]["devices"][0].update(util_pct=10.0)), 120),
    "fd_exhaustion": (steady_fds, 0),
    "cgroup_cpu_throttling": (
        only_fault(lambda d, i: d["cgroup"]["cgroups"][0]["cpu"].update(usage_pct=5.0)),
        120,
    ),
    "runaway_forks": (only_fault(spread_execs), 120),
    "tcp_retransmit_surge": (only_fault(quiet_path), 120),
    # The plain scenarios hold these checks already: see the next test for the other way.
    "listen_queue_overflow": (lambda d, i, f: None, 120),
    "nic_errors": (lambda d, i, f: None, 120),
    "gpu_throttling": (
        only_fault(lambda d, i: d["gpu"]["devices"][0]["utilization_pct"].update(gpu=3.0)),
        120,
    ),
    "gpu_xid": (only_fault(no_critical), 120),
    "gpu_ecc": (only_fault(lambda d, i: d["gpu"]["devices"][0]["ecc"].update(uncorrected_volatile=1)), 120),
    "gpu_memory_pressure_low_util": (lambda d, i, f: None, 0),
    "gpu_memory_held_idle": (only_fault(small_holder), 120),
    "gpu_nvlink_degradation": (only_fault(replay_only), 120),
    "input_pipeline_starvation": (idle_gpu_starved, 120),
    "network_throughput": (only_fault(quiet_path), 120),
    "multi_resource_saturation": (only_fault(lambda d, i: apply(d, "psi.cpu.some.avg10", 1.0)), 120),
    "host_instability": (only_fault(lambda d, i: apply(d, "psi.io.some.avg10", 1.0)), 120),
}


def finding_of(family: str, tweak: Tweak | None, calm_s: int, stale: tuple[str, ...] = ()) -> Any:
    snaps = window(family, calm_s=calm_s, tweak=tweak, stale=stale)
    fresh = {n: "fresh" for n in snaps[0].sources} | {n: "stale" for n in stale}
    ev = build_evidence("node-a", snaps, events_of(snaps), fresh)
    hyps = {h.family: h for h in rank(ev, detect(ev))}
    return hyps.get(family)


def test_every_family_has_a_check_against_it_here() -> None:
    # anomaly's check (only a few robust deviations out): tests/controller/test_general.py
    assert set(AGAINST) | {"stale_telemetry", "anomaly"} == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(AGAINST))
def test_the_check_against_a_family_is_said_and_lowers_its_confidence(family: str) -> None:
    tweak, calm_s = AGAINST[family]
    against = finding_of(family, tweak, calm_s)
    assert against is not None, f"{family} no longer fires with its check against it"
    assert against.contradicting, family
    plain = finding_of(family, None, 120)
    if family in ("listen_queue_overflow", "nic_errors"):
        plain = finding_of(family, only_fault(with_retransmits), 120)
    assert plain is not None and not plain.contradicting, (family, plain.contradicting if plain else None)
    assert against.confidence < plain.confidence, (against.confidence, plain.confidence)


def with_retransmits(d: dict[str, Any], i: int) -> None:
    """Clients retransmitting to the listener's port: someone waits, the losses hurt."""
    d["ebpf"]["counts"]["tcp_retransmit"] = 30
    d["ebpf"]["events"] = [{"type": "tcp_retransmit", "dport": 8080, "daddr": "10.0.0.1", "sport": 5000 + i}]


def test_stale_telemetry_with_most_sources_fresh_says_the_collector_answers() -> None:
    one = finding_of("cpu_saturation", None, 120, stale=("processes",))
    assert one is None or one.family == "cpu_saturation"
    snaps = window("cpu_saturation", stale=("processes",))
    fresh = {n: "fresh" for n in snaps[0].sources} | {"processes": "stale"}
    hyps = {
        h.family: h
        for h in rank(
            build_evidence("node-a", snaps, [], fresh), detect(build_evidence("node-a", snaps, [], fresh))
        )
    }
    assert hyps["stale_telemetry"].contradicting
    many = {n: "stale" for n in snaps[0].sources}
    ev = build_evidence("node-a", snaps, [], many)
    worse = {h.family: h for h in rank(ev, detect(ev))}["stale_telemetry"]
    assert not worse.contradicting
