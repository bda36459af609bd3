"""Every recorded window (testkit/windows/manifest.json), replayed sample by sample through
the real engine as bench/rca_bench.py does: one run per fault, naming the family and the
owner; symptoms on the cause; a fault that ended resolves; a flapping fault is one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.rca_bench import manifest, replay

WINDOWS = manifest()


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_a_recorded_fault_is_one_run_naming_its_family_and_owner(name: str, tmp_path: Path) -> None:
    r = replay(name, WINDOWS[name], tmp_path)
    assert r["runs_per_fault"] == 1, r
    assert r["top1"] and r["culprit_ok"], r
    within = WINDOWS[name].get("detect_within", 15)
    assert r["time_to_detect_samples"] is not None and r["time_to_detect_samples"] <= within, r
    assert r["top1_share_during_fault"] >= 0.9, r


def test_a_listen_overflow_carries_its_retransmits_as_a_symptom(tmp_path: Path) -> None:
    r = replay("listen_queue_overflow", WINDOWS["listen_queue_overflow"], tmp_path)
    assert "tcp_retransmit_surge" in r["symptoms"] and r["runs_per_fault"] == 1


def test_a_fault_that_stopped_halfway_resolves_within_the_hysteresis(tmp_path: Path) -> None:
    r = replay("cpu_stops_halfway", WINDOWS["cpu_stops_halfway"], tmp_path)
    # The 5-sample busy mean trails the end, then 3 clean evaluations resolve it.
    assert (
        r["resolved"] and r["time_to_resolve_samples"] is not None and r["time_to_resolve_samples"] <= 12
    ), r


def test_a_flapping_fault_is_one_run_with_its_flap_counted(tmp_path: Path) -> None:
    r = replay("cpu_flaps", WINDOWS["cpu_flaps"], tmp_path)
    assert r["runs_per_fault"] == 1 and r["flaps"] == 1, r
    # firing, recovering, resolved; back (a flap): firing again; and resolved at the end.
    assert r["states"][:4] == ["firing", "recovering", "resolved", "firing"], r["states"]
