"""Causes over symptoms (controller/detectors/explains.py): every edge's condition, both
ways; no cycle; a symptom ranks below its cause and rides on its hypothesis; a finding
whose signal has ended decays and says it is recovering."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from controller.detectors import DETECTORS, FAMILIES, build_evidence
from controller.detectors.base import Culprit, Finding
from controller.detectors.explains import ANY_KNOWN, CONDITIONS, EDGES, GENERAL, explain
from controller.workflow.analysis import DECAY_HALF_LIFE_S, detect, rank
from controller.workflow.roles.planner import (
    Planner,  # noqa: F401 (registers the role)
    actions_for,
)
from testkit.scenarios import window


def finding(family: str, culprit: Culprit, score: float = 0.9, **kw: Any) -> Finding:
    return Finding(family, "threshold", "s", 1.0, None, 1.0, score, culprit, f"{family} here", **kw)


def tree(pid: int, comm: str = "spawner") -> Culprit:
    return Culprit("process_tree", f"{comm}[{pid}]", {"pid": pid, "comm": comm}, key=f"tree:{comm}[{pid}]")


# (edge condition, cause, a symptom it explains, a symptom it does not)
CASES: list[tuple[str, Finding, Finding, Finding]] = [
    (
        "same_tree",
        finding("runaway_forks", tree(40)),
        finding("cpu_saturation", tree(40)),
        finding("cpu_saturation", Culprit("process", "x[9]", {"pid": 9, "ppids": [3]}, key="process:x@/")),
    ),
    (
        "to_listener",
        finding("listen_queue_overflow", Culprit("socket", "0.0.0.0:8080")),
        finding("tcp_retransmit_surge", Culprit("socket", "10.0.0.7:8080")),
        finding("tcp_retransmit_surge", Culprit("socket", "10.0.0.7:5432")),
    ),
    (
        "reclaim_io",
        finding("memory_pressure", Culprit("cgroup", "/jobs/a", {"cgroup": "/jobs/a"})),
        finding(
            "io_pressure",
            Culprit("process", "kworker/u8:1-writeback[32]", {"comm": "kworker/u8:1-writeback"}),
        ),
        finding("io_pressure", Culprit("unit", "backup.service", {"cgroup": "/system.slice/backup.service"})),
    ),
    (
        "reclaim_cpu",
        finding("memory_pressure", Culprit("host", "host")),
        finding("cpu_saturation", Culprit("process", "kswapd0[80]", {"comm": "kswapd0"})),
        finding("cpu_saturation", Culprit("process", "java[81]", {"comm": "java"})),
    ),
    (
        "same_cgroup",
        finding("cgroup_cpu_throttling", Culprit("cgroup", "/kubepods/pod1", {"cgroup": "/kubepods/pod1"})),
        finding("cpu_saturation", Culprit("cgroup", "/kubepods/pod1/c1", {"cgroup": "/kubepods/pod1/c1"})),
        finding("cpu_saturation", Culprit("cgroup", "/kubepods/pod2", {"cgroup": "/kubepods/pod2"})),
    ),
    (
        "nic_loss",
        finding("nic_errors", Culprit("interface", "eth0")),
        finding("tcp_retransmit_surge", Culprit("socket", "10.0.0.7:5432")),
        None,  # type: ignore[list-item]
    ),
    (
        "ecc_xid",
        finding("gpu_ecc", Culprit("device", "GPU-a")),
        finding("gpu_xid", Culprit("device", "GPU-a", {"xids": [48]})),
        finding("gpu_xid", Culprit("device", "GPU-a", {"xids": [79]})),
    ),
    (
        "nvlink_xid",
        finding("gpu_nvlink_degradation", Culprit("device", "GPU-a")),
        finding("gpu_xid", Culprit("device", "GPU-a", {"xids": [74]})),
        finding("gpu_xid", Culprit("device", "GPU-b", {"xids": [74]})),
    ),
    (
        "holder_device",
        finding("gpu_memory_held_idle", Culprit("process", "ipykernel[8]", {"gpu": "GPU-a"})),
        finding("gpu_memory_pressure_low_util", Culprit("device", "GPU-a")),
        finding("gpu_memory_pressure_low_util", Culprit("device", "GPU-b")),
    ),
    (
        "same_owner",
        finding("input_pipeline_starvation", Culprit("process", "loader[5]", key="process:loader@/")),
        finding("cpu_saturation", Culprit("process", "loader[5]", key="process:loader@/")),
        finding("cpu_saturation", Culprit("process", "other[6]", key="process:other@/")),
    ),
    (
        "listed",
        finding("host_instability", Culprit("host", "host", {"signals": ["load1", "processes"]})),
        Finding("anomaly", "robust_z", "load1", 9.0, 0.3, None, 0.4, Culprit("signal", "load1"), "load1 up"),
        Finding(
            "anomaly", "robust_z", "psi_io_some", 9.0, 0.3, None, 0.4, Culprit("signal", "psi_io_some"), "up"
        ),
    ),
    (
        "known_stronger",
        finding("memory_pressure", Culprit("process", "leaky[7]"), score=0.8),
        finding("anomaly", Culprit("signal", "pgmajfault_per_s"), score=0.45),
        finding("anomaly", Culprit("signal", "pgmajfault_per_s"), score=0.9),
    ),
    (
        "loads_resource",
        finding("cpu_saturation", Culprit("process", "hog[8]")),
        finding("multi_resource_saturation", Culprit("host", "host", {"resources": ["cpu", "memory"]})),
        finding("multi_resource_saturation", Culprit("host", "host", {"resources": ["io", "memory"]})),
    ),
]


def test_every_edge_names_known_families_and_conditions_and_has_a_case() -> None:
    assert {e.when for e in EDGES} == set(CONDITIONS) == {c[0] for c in CASES}
    for e in EDGES:
        assert (e.cause in FAMILIES or e.cause == ANY_KNOWN) and e.symptom in FAMILIES and e.why


def test_the_edges_form_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for e in EDGES:
        for cause in [f for f in FAMILIES if f not in GENERAL] if e.cause == ANY_KNOWN else [e.cause]:
            graph.setdefault(cause, set()).add(e.symptom)

    def reaches(a: str, b: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    assert not any(reaches(f, f) for f in graph)


@pytest.mark.parametrize(("when", "cause", "yes", "no"), CASES, ids=[c[0] for c in CASES])
def test_an_edge_explains_only_the_symptom_its_condition_matches(
    when: str, cause: Finding, yes: Finding, no: Finding | None
) -> None:
    got = explain([cause, yes])
    assert got[1].cause == 0 and got[1].edge.when == when
    if no is not None:
        assert 1 not in explain([cause, no])
    assert explain([yes, cause]).get(0) is not None and 1 not in explain(
        [yes, cause]
    )  # order does not matter


def test_a_listener_overflow_outranks_the_retransmits_it_causes() -> None:
    """A full accept queue drops SYNs; the clients' retransmits are its symptom."""
    snaps = window("listen_queue_overflow")
    ev = build_evidence("h", snaps, [], {n: "fresh" for n in snaps[0].sources})
    cause = finding("listen_queue_overflow", Culprit("socket", "0.0.0.0:8080"), score=0.7)
    symptom = finding("tcp_retransmit_surge", Culprit("socket", "10.0.0.7:8080"), score=0.95)
    hyps = rank(ev, [symptom, cause])
    assert [h.family for h in hyps] == ["listen_queue_overflow", "tcp_retransmit_surge"]
    assert hyps[1].confidence <= hyps[0].confidence and hyps[1].explained_by is not None
    assert hyps[1].explained_by["fingerprint"] == hyps[0].fingerprint
    (s,) = hyps[0].symptoms
    assert s["family"] == "tcp_retransmit_surge" and s["confidence"] == 0.95 and s["why"]
    assert hyps[1].to_dict()["explained_by"]["family"] == "listen_queue_overflow"
    # The planner acts on the cause, never on its symptom.
    assert {a["for_family"] for a in _proposals(hyps)} == {"listen_queue_overflow"}


def _proposals(hyps: list[Any]) -> list[dict[str, Any]]:
    out = []
    for h in [h.to_dict() for h in hyps if h.explained_by is None][:2]:
        out += [{"for_family": h["family"], **a} for a in actions_for(h, "h")]
    return out


def test_a_finding_whose_signal_ended_decays_and_is_recovering() -> None:
    ev = build_evidence("h", window(None), [], {})
    live = finding("memory_pressure", Culprit("cgroup", "/a"), last_active=ev.end)
    old = finding("memory_pressure", Culprit("cgroup", "/b"), last_active=ev.end - 15 - DECAY_HALF_LIFE_S)
    hyps = {h.culprit["id"]: h for h in rank(ev, [live, old])}
    assert hyps["/a"].state == "active" and hyps["/a"].age_s == 0
    assert hyps["/b"].state == "recovering" and hyps["/b"].age_s == pytest.approx(15 + DECAY_HALF_LIFE_S)
    assert hyps["/b"].confidence == pytest.approx(hyps["/a"].confidence / 2, abs=0.01)


def test_oom_kills_that_stopped_leave_a_recovering_hypothesis() -> None:
    """The window still holds the kills (its totals do), but nothing has shown the fault
    since: the hypothesis says so and no longer ranks at full confidence."""
    snaps = window("memory_pressure", calm_s=120, fault_s=1)
    # The one kill is 1 s into the fault; 60 s of calm follow.
    calm_after = window(None, calm_s=181, fault_s=0)[121:]
    tail = [msgspec.structs.replace(s, ts=snaps[-1].ts + 1 + i) for i, s in enumerate(calm_after)]
    ev = build_evidence("h", snaps + tail, [], {n: "fresh" for n in snaps[0].sources})
    hyps = [h for h in rank(ev, detect(ev)) if h.family == "memory_pressure"]
    assert hyps and hyps[0].state == "recovering" and hyps[0].age_s >= 59 and hyps[0].confidence < 0.5


def test_every_detector_still_registers() -> None:
    assert set(DETECTORS) | GENERAL == set(FAMILIES) and not set(DETECTORS) & GENERAL


def test_a_cause_that_ended_explains_no_symptom_still_live() -> None:
    """One OOM kill 90 s ago keeps memory pressure in the window, recovering: it must not
    hide IO saturation that is live now (capped below its decayed confidence)."""
    ev = build_evidence("h", window(None), [], {})
    old_cause = finding("memory_pressure", Culprit("host", "host"), last_active=ev.end - 90)
    live_io = finding("io_pressure", Culprit("device", "vda"), score=0.95)
    hyps = {h.family: h for h in rank(ev, [old_cause, live_io])}
    assert hyps["io_pressure"].explained_by is None and hyps["io_pressure"].rank == 1
    assert hyps["memory_pressure"].state == "recovering" and not hyps["memory_pressure"].symptoms
