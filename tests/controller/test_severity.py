"""Severity apart from confidence: a certain cause that hurts no one is low severity; one
that stalls tasks, kills processes or fails a GPU job is high or critical."""

from __future__ import annotations

from typing import Any

from controller.detectors import build_evidence
from controller.workflow.analysis import detect, rank
from testkit.scenarios import apply, window


def top(family: str, tweak: Any = None) -> Any:
    snaps = window(family, tweak=tweak)
    events = [
        e for s in snaps for e in (s.sources["ebpf"].data.get("events", []) if "ebpf" in s.sources else [])
    ]
    ev = build_evidence("node-a", snaps, events, {n: "fresh" for n in snaps[0].sources})
    return {h.family: h for h in rank(ev, detect(ev))}[family]


def idle_psi(d: dict[str, Any], i: int, faulty: bool) -> None:
    if faulty:
        apply(d, "psi.cpu.some.avg10", 0.5)


def test_a_cpu_hog_nobody_waits_for_is_low_severity_whatever_the_confidence() -> None:
    hog = top("cpu_saturation", idle_psi)
    assert hog.confidence >= 0.5 and hog.severity is not None
    assert hog.severity["level"] == "low" and "PSI cpu some 0%" in hog.severity["why"]
    contended = top("cpu_saturation")  # PSI cpu some 72%: tasks wait
    assert contended.severity is not None and contended.severity["level"] in ("high", "critical")
    assert contended.severity["score"] > hog.severity["score"]


def test_oom_kills_are_at_least_high_and_a_critical_xid_is_critical() -> None:
    mem = top("memory_pressure")
    assert mem.severity is not None and mem.severity["level"] in ("high", "critical")
    assert "OOM-killed" in mem.severity["why"]
    xid = top("gpu_xid")
    assert xid.severity is not None and xid.severity["level"] == "critical"


def test_every_hypothesis_carries_its_severity() -> None:
    for family in ("io_pressure", "fd_exhaustion", "listen_queue_overflow", "nic_errors", "gpu_ecc"):
        h = top(family)
        d = h.to_dict()["severity"]
        assert d["level"] in ("low", "medium", "high", "critical") and 0 <= d["score"] <= 1 and d["why"]
