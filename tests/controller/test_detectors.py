"""A scenario per anomaly family: the expected hypothesis ranks first, with the right culprit."""

from __future__ import annotations

from typing import Any

import pytest

from controller.detectors import FAMILIES, Evidence, build_evidence, get_detector
from controller.detectors.base import pearson, robust_z, seasonal_baseline
from controller.workflow.analysis import STALE_CAP, detect, rank
from testkit.scenarios import FAULTS, window


def events_of(snaps: list[Any]) -> list[dict[str, Any]]:
    out = []
    for s in snaps:
        e = s.sources.get("ebpf")
        if e is not None and e.status == "ok":
            out.extend(e.data.get("events", []))
    return out


def analyse(snaps: list[Any], freshness: dict[str, str] | None = None) -> list[Any]:
    fresh = freshness or {name: "fresh" for name in snaps[-1].sources}
    ev = build_evidence("node-a", snaps, events_of(snaps), fresh)
    return rank(ev, detect(ev))


def test_every_family_has_a_scenario() -> None:
    # An anomaly alone never ranks as a run-opening cause: tests/controller/test_general.py.
    assert set(FAULTS) | {"stale_telemetry", "anomaly"} == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAULTS))
def test_scenario_ranks_the_family_first_with_its_culprit(family: str) -> None:
    hyps = analyse(window(family))
    assert hyps, f"{family}: nothing detected"
    top = hyps[0]
    assert top.family == family, [(h.family, h.confidence) for h in hyps]
    assert top.culprit["id"] == FAULTS[family][1], top.culprit
    assert 0.5 <= top.confidence <= 1.0
    assert top.expected_signals and top.supporting
    assert len(hyps) <= 5


def test_a_calm_host_yields_nothing() -> None:
    assert analyse(window(None)) == []


def test_critical_xids_are_flagged() -> None:
    top = analyse(window("gpu_xid"))[0]
    assert top.culprit["critical"] == [79] and top.confidence >= 0.9


def test_stale_telemetry_caps_confidence_and_says_so() -> None:
    snaps = window("cpu_saturation", stale=("processes",))
    freshness = {name: "fresh" for name in snaps[0].sources} | {"processes": "stale"}
    hyps = analyse(snaps, freshness)
    families = {h.family: h for h in hyps}
    assert "stale_telemetry" in families
    cpu = families["cpu_saturation"]
    assert cpu.confidence <= STALE_CAP
    assert families["stale_telemetry"].culprit["id"] == "processes"


def test_fingerprint_is_host_family_culprit() -> None:
    a = analyse(window("cpu_saturation"))[0]
    b = analyse(window("cpu_saturation"))[0]
    c = analyse(window("fd_exhaustion"))[0]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_statistics_helpers() -> None:
    flat = [10.0] * 20
    assert robust_z(flat + [10.0] * 3) == (0.0, 10.0)
    z = robust_z([10.0 + (i % 3) for i in range(20)] + [80.0] * 3)
    assert z is not None and z[0] > 20
    assert robust_z([1.0, 2.0]) is None
    pts = [(float(t), 50.0 if t % 100 < 10 else 5.0) for t in range(0, 400)]
    assert seasonal_baseline(pts[:-95], period_s=100, tolerance_s=2) == 50.0  # same phase, earlier periods
    assert seasonal_baseline(pts[:50], period_s=100, tolerance_s=2) is None  # under two periods of history
    r = pearson([float(i) for i in range(20)], [float(-i) for i in range(20)])
    assert r is not None and r < -0.99
    assert pearson([1.0] * 10, [float(i) for i in range(10)]) is None


def test_an_idle_fd_hoarder_near_its_limit_is_found_through_fd_holders() -> None:
    """900 of 1,024 files, below the absolute threshold and absent from the CPU-ranked
    rows: only the fd_holders walk sees it, and its own limit makes it urgent."""
    snaps = window(None)
    for i, snap in enumerate(snaps[-10:]):
        procs = snap.sources["processes"].data
        procs["fd_holders"] = [
            {
                "pid": 4242,
                "comm": "idle-leaker",
                "num_fds": 880 + 2 * i,
                "fd_limit": 1024,
                "fd_pct": round(100 * (880 + 2 * i) / 1024, 2),
            },
            {"pid": 1, "comm": "systemd", "num_fds": 120, "fd_limit": 524288, "fd_pct": 0.02},
        ]
    assert all(r["comm"] != "idle-leaker" for s in snaps for r in s.sources["processes"].data["rows"])
    top = analyse(snaps)[0]
    assert top.family == "fd_exhaustion"
    assert top.culprit["id"] == "idle-leaker[4242]" and top.culprit["fd_limit"] == 1024
    assert top.confidence >= 0.9


def test_fd_holders_far_from_their_limit_are_not_an_incident() -> None:
    snaps = window(None)
    for snap in snaps:
        snap.sources["processes"].data["fd_holders"] = [
            {"pid": 7, "comm": "nginx", "num_fds": 4000, "fd_limit": 65536, "fd_pct": 6.1}
        ]
    assert analyse(snaps) == []


def _ev(**series: list[float]) -> Evidence:
    pts = {name: [(float(i), v) for i, v in enumerate(values)] for name, values in series.items()}
    return Evidence("node-a", 0.0, 30.0, 31, series=pts)


def test_fd_growth_from_a_small_baseline_is_found_just_past_twice_the_floor() -> None:
    """The robust z is only computed once the latest count could be growth (2 x 1,000)."""
    grown = get_detector("fd_exhaustion")(_ev(max_process_fds=[1000.0] * 20 + [2100.0] * 3))
    assert [(f.method, f.value) for f in grown] == [("robust_z", 2100.0)]
    assert get_detector("fd_exhaustion")(_ev(max_process_fds=[900.0] * 20 + [1990.0] * 3)) == []


def test_retransmit_and_fork_detectors_read_their_tail_before_the_window() -> None:
    tcp = get_detector("tcp_retransmit_surge")
    flat = [0.0] * 28
    # Sockets in RTO backoff alone are a finding, with the robust z of a flat window.
    backoff = tcp(_ev(ebpf_tcp_retransmit=flat + [0.0] * 3, tcp_in_rto_backoff=flat + [6.0] * 3))
    assert [(f.method, f.baseline) for f in backoff] == [("robust_z", 0.0)]
    assert tcp(_ev(ebpf_tcp_retransmit=flat + [9.0] * 3, tcp_in_rto_backoff=flat + [4.0] * 3)) == []
    forks = get_detector("runaway_forks")
    assert forks(_ev(forks_per_s=[1.0] * 28 + [60.0] * 3))[0].method == "robust_z"
    assert forks(_ev(forks_per_s=[55.0] * 28 + [60.0] * 3)) == []  # high, but no surge over its window
    assert forks(_ev(forks_per_s=[1.0] * 28 + [49.0] * 3)) == []


def test_throttling_that_ended_with_its_cgroup_is_no_fault() -> None:
    """The throttled cgroup is gone (its workload ended) in the newest sample: the series'
    recent mean still lags above the threshold, but nobody is throttled, so nothing fires
    (it used to fire with the host as culprit and open a run for a fault already over)."""

    def gone(d: dict[str, Any], i: int, faulty: bool) -> None:
        if i == 120 + 29:  # the last second: the cgroup has been removed
            d["cgroup"]["cgroups"] = []

    assert "cgroup_cpu_throttling" in [h.family for h in analyse(window("cgroup_cpu_throttling"))]
    hyps = analyse(window("cgroup_cpu_throttling", tweak=gone))
    assert "cgroup_cpu_throttling" not in [h.family for h in hyps], [(h.family, h.culprit) for h in hyps]
