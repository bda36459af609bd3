"""One fault, one run: a run's lifecycle (firing, recovering, resolved, flaps), and a
symptom's run absorbed by its cause's. The real engine, in process, fed a sample at a
time and evaluated after each, as a collector at a 1 s interval would drive it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.wire import validate_batch
from controller.config import HotStateSettings
from controller.hotstate import HotState
from controller.store.db import make_engine, migrate
from controller.store.payloads import PayloadStore
from controller.workflow.engine import WorkflowEngine
from controller.workflow.options import WorkflowOptions
from testkit.scenarios import FAULTS, T0, apply, calm

Fault = Callable[[dict[str, Any], int], None]


class Driver:
    """Feeds one snapshot a second to one host and evaluates after each."""

    def __init__(self, tmp: Path, opts: WorkflowOptions, db_url: str | None = None) -> None:
        self.t = T0
        self.db = make_engine(db_url or f"sqlite:///{tmp / 'agent' / 'workflow_runs.db'}")
        migrate(self.db)
        hot = HotState(
            HotStateSettings(samples_per_host=1000, bytes_per_host=64 << 20), clock=lambda: self.t + 0.5
        )
        self.eng = WorkflowEngine(
            self.db, PayloadStore(str(tmp / "agent")), hot, opts, clock=lambda: self.t + 0.5
        )
        self.seq = 0
        self.i = 0

    def step(self, fault: Fault | None, k: int = 0) -> str | None:
        d = calm(self.i)
        if fault is not None:
            fault(d, k)
        sources = {
            n: {"status": "ok", "path": "file", "reason": None, "data": copy.deepcopy(v)}
            for n, v in d.items()
        }
        self.seq += 1
        raw = msgspec.json.encode(
            {
                "schema": "incidentlab.batch/v1",
                "host_id": "node-a",
                "boot_id": "b",
                "stream_id": "s",
                "seq": self.seq,
                "sent_at": self.t,
                "snapshots": [{"ts": self.t, "interval_s": 1.0, "sources": sources}],
            }
        )
        self.eng.hot.ingest(validate_batch(raw), raw)
        run_id = self.eng.evaluate("node-a")
        self.t += 1.0
        self.i += 1
        return run_id

    def run(self, n: int, fault: Fault | None = None) -> list[str | None]:
        return [self.step(fault, k) for k in range(n)]

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.eng.list_runs(limit=100)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://")
    d = Driver(tmp_path, WorkflowOptions(resolve_after_clean=3), url)
    yield d
    d.db.dispose()


def cpu(d: dict[str, Any], k: int) -> None:
    FAULTS["cpu_saturation"][0](d, k)


def test_a_fault_that_ends_recovers_then_resolves_after_the_hysteresis(driver: Driver) -> None:
    driver.run(40)
    opened = {r for r in driver.run(20, cpu) if r}
    assert len(opened) == 1, opened
    (run_id,) = opened
    run = driver.eng.load_run(run_id)
    assert run is not None and run["state"] == "firing" and run["fault_started_at"] is not None
    # The fault began at the first faulty sample (40 s in); the run knows it.
    assert run["fault_started_at"] == pytest.approx(T0 + 40, abs=1.0)
    states = []
    for _ in range(12):
        driver.step(None)
        states.append((driver.eng.load_run(run_id) or {})["state"])
    # recovering as soon as an evaluation no longer finds it, resolved 3 clean evaluations later
    assert "recovering" in states and states[-1] == "resolved", states
    first_recovering = states.index("recovering")
    assert states[first_recovering : first_recovering + 3].count("recovering") >= 2
    run = driver.eng.load_run(run_id)
    assert run is not None and run["resolved_at"] is not None and run["flaps"] == 0
    from controller.api.workflow import run_summary

    summary = run_summary(run)
    assert summary["time_to_detect_s"] is not None and 0 <= summary["time_to_detect_s"] <= 10
    assert summary["time_to_resolve_s"] == pytest.approx(run["resolved_at"] - run["fault_started_at"])
    assert driver.eng.triggers.stats()["resolved"] == 1


def test_a_fault_back_within_the_attach_window_reopens_its_run_and_counts_a_flap(driver: Driver) -> None:
    driver.run(40)
    driver.run(15, cpu)
    driver.run(15)
    (first,) = [r["run_id"] for r in driver.runs()]
    assert (driver.eng.load_run(first) or {})["state"] == "resolved"
    back = {r for r in driver.run(10, cpu) if r}
    assert back == {first}, "the same fault came back: the same run"
    run = driver.eng.load_run(first)
    assert run is not None and run["state"] == "firing" and run["flaps"] == 1 and run["resolved_at"] is None
    assert len(driver.runs()) == 1
    assert any(a["detail"].get("reopened") for a in driver.eng.attachments(first))


def test_a_fault_back_after_the_attach_window_is_a_new_run(tmp_path: Path) -> None:
    d = Driver(tmp_path, WorkflowOptions(resolve_after_clean=3, attach_window_s=20))
    d.run(40)
    d.run(15, cpu)
    d.run(40)  # resolved, and unseen for longer than the window
    again = {r for r in d.run(10, cpu) if r}
    assert len(again) == 1 and len(d.runs()) == 2
    d.db.dispose()


def test_workers_that_come_and_go_keep_one_run(driver: Driver) -> None:
    """Each sample a different pair of worker pids under one parent: one fingerprint."""

    def churn(d: dict[str, Any], k: int) -> None:
        cpu(d, k)
        rows = d["processes"]["rows"]
        rows[0] = rows[0] | {"pid": 30_000 + 2 * k, "ppid": 777, "comm": "worker", "cpu_pct": 98.0}
        rows.insert(
            1,
            {"pid": 30_001 + 2 * k, "ppid": 777, "comm": "worker", "cpu_pct": 97.0, "cgroup": "/user.slice"},
        )

    driver.run(40)
    opened = {r for r in driver.run(25, churn) if r}
    assert len(opened) == 1
    run = driver.runs()[0]
    culprit = msgspec.json.decode(run["culprit"])
    assert culprit["kind"] == "process_tree" and culprit["pid"] == 777 and culprit["comms"] == {"worker": 2}
    assert run["attachments"] >= 20


def test_a_symptom_run_is_absorbed_when_its_cause_is_found(driver: Driver) -> None:
    """CPU saturation from a parent's workers opens a run; when the parent's fork storm shows,
    the storm is the cause: its run opens, and the CPU run becomes its symptom."""

    def workers(d: dict[str, Any], k: int) -> None:
        apply(d, "host.cpu.util_pct", {"user": 93, "system": 5, "idle": 1.5, "iowait": 0.5, "steal": 0})
        apply(d, "psi.cpu.some.avg10", 70.0)
        d["processes"]["rows"][:0] = [
            {"pid": 6700 + n, "ppid": 6666, "comm": "sh", "cpu_pct": 95.0, "cgroup": "/user.slice"}
            for n in range(2)
        ] + [{"pid": 6666, "ppid": 1, "comm": "forkbomb.sh", "cpu_pct": 5.0, "cgroup": "/user.slice"}]

    def storm(d: dict[str, Any], k: int) -> None:
        workers(d, k)
        apply(d, "host.cpu.forks_per_s", 800.0)
        d["ebpf"]["events"] = [
            {"type": "exec", "pid": 40_000 + k * 10 + n, "ppid": 6666, "comm": "sh"} for n in range(8)
        ]

    driver.run(40)
    first = {r for r in driver.run(5, workers) if r}
    assert len(first) == 1
    (cpu_run,) = first
    later = {r for r in driver.run(10, storm) if r}
    storm_runs = later - first
    assert len(storm_runs) == 1, later
    (storm_run,) = storm_runs
    cause = driver.eng.load_run(storm_run)
    symptom = driver.eng.load_run(cpu_run)
    assert cause is not None and cause["family"] == "runaway_forks" and cause["state"] == "firing"
    assert symptom is not None and symptom["state"] == "explained" and symptom["parent_run_id"] == storm_run
    hyps = driver.eng.load_chain(storm_run)[2].payload["hypotheses"]
    assert hyps[0]["family"] == "runaway_forks"
    assert [s["family"] for s in hyps[0]["symptoms"]] == ["cpu_saturation"]
    below = next(h for h in hyps if h["family"] == "cpu_saturation")
    assert below["explained_by"]["family"] == "runaway_forks" and below["rank"] > 1
    report = driver.eng.load_chain(storm_run)[-1].payload
    assert report["most_likely_cause"]["symptoms"][0]["family"] == "cpu_saturation"
    assert any(a["detail"].get("explains_run") == cpu_run for a in driver.eng.attachments(storm_run))
    assert driver.eng.triggers.stats()["explained"] == 1


def test_runs_not_seen_for_the_attach_window_are_swept_to_resolved(tmp_path: Path) -> None:
    d = Driver(tmp_path, WorkflowOptions(attach_window_s=30))
    d.run(40)
    d.run(10, cpu)
    (run_id,) = [r["run_id"] for r in d.runs()]
    d.t += 31  # the host went quiet: no evaluation comes to count clean
    assert d.eng.triggers.sweep() == 1
    run = d.eng.load_run(run_id)
    assert run is not None and run["state"] == "resolved" and run["resolved_at"] == run["last_seen_at"]
    assert d.eng.triggers.sweep() == 0
    d.db.dispose()


def test_a_controller_that_becomes_leader_again_reads_live_runs_afresh(driver: Driver) -> None:
    """While deposed, another leader may have resolved or explained runs: the cache of live
    runs is dropped, and the store's word taken."""
    driver.run(40)
    driver.run(10, cpu)
    (run_id,) = [r["run_id"] for r in driver.runs()]
    trig = driver.eng.triggers
    assert trig._live["node-a"][0].run_id == run_id
    with driver.eng.runs.begin() as tx:  # the other leader resolved it
        tx.set_state(run_id, state="resolved", at=driver.t, seen=driver.t, resolved=driver.t)
    trig.forget_live()
    assert trig._lives("node-a") == []


def test_a_clean_never_overtakes_the_trigger_before_it(driver: Driver) -> None:
    """A worker's trigger, then its cleans: counted in that order, however long the engine
    was busy (cleans first would resolve the run, then the old trigger re-open it)."""
    driver.run(40)
    driver.run(10, cpu)
    (run_id,) = [r["run_id"] for r in driver.runs()]
    trig = driver.eng.triggers
    firing_window = trig.evidence_for("node-a")
    trig.notify("node-a", firing_window)
    for _ in range(5):
        trig.notify_clean("node-a")
    trig.drain()
    run = driver.eng.load_run(run_id)
    assert run is not None and run["state"] == "resolved" and run["flaps"] == 0
    assert trig.stats()["reopened"] == 0


def test_a_clean_older_than_a_later_trigger_is_dropped(driver: Driver) -> None:
    driver.run(40)
    driver.run(10, cpu)
    (run_id,) = [r["run_id"] for r in driver.runs()]
    trig = driver.eng.triggers
    for _ in range(3):
        trig.notify_clean("node-a")  # from before the fault showed again
    trig.notify("node-a", trig.evidence_for("node-a"))
    trig.drain()
    run = driver.eng.load_run(run_id)
    assert run is not None and run["state"] == "firing"
    assert trig.stats()["queued"] == 0


def test_a_failed_run_takes_no_sighting_of_its_family(driver: Driver) -> None:
    driver.run(40)
    driver.run(10, cpu)
    (first,) = [r["run_id"] for r in driver.runs()]
    with driver.eng.runs.begin() as tx:
        tx.fail_run(first, at=driver.t)

    def other(d: dict[str, Any], k: int) -> None:  # the same fault, another process on top
        cpu(d, k)
        d["processes"]["rows"][0] |= {"pid": 5150, "comm": "miner-2"}

    opened = {r for r in driver.run(5, other) if r}
    assert opened and first not in opened


def test_an_explained_run_is_not_taken_back_by_its_own_fingerprint(driver: Driver) -> None:
    driver.run(40)
    with driver.eng.runs.begin() as tx:
        tx.insert_runs(
            [
                {
                    "run_id": "run-symptom",
                    "workflow_id": "wf",
                    "incident_id": "inc",
                    "correlation_id": "corr",
                    "host_id": "node-a",
                    "fingerprint": "fp-symptom",
                    "family": "cpu_saturation",
                    "culprit": "{}",
                    "confidence": 0.9,
                    "status": "completed",
                    "stage": 8,
                    "attachments": 0,
                    "created_at": driver.t,
                    "updated_at": driver.t,
                    "closed_at": driver.t,
                    "code_version": "t",
                    "evidence_sha256": None,
                    "state": "explained",
                    "fault_started_at": driver.t,
                    "last_seen_at": driver.t,
                    "resolved_at": None,
                    "flaps": 0,
                    "parent_run_id": "run-cause",
                    "silenced_by": None,
                    "scope": "host",
                    "fleet_run_id": None,
                }
            ]
        )
        assert tx.open_run_of("fp-symptom", since=driver.t - 10) is None
        # A stale cache cannot move it either.
        tx.set_state("run-symptom", state="firing", at=driver.t, seen=driver.t, resolved=None)
    assert (driver.eng.load_run("run-symptom") or {})["state"] == "explained"


THROTTLED = "/kubepods/burstable/pod" + FAULTS["cgroup_cpu_throttling"][1] + "/" + "c" * 64


def changed(driver: Driver, run_id: str, key: str, params: dict[str, Any], before: dict[str, Any]) -> None:
    """A cgroup_cpu_quota the executor applied for run_id, as the store records it."""
    with driver.eng.runs.begin() as tx:
        tx.claim_intent(
            {
                "idempotency_key": key,
                "run_id": run_id,
                "step": 3,
                "action": "cgroup_cpu_quota",
                "params": params,
                "before": before,
                "intent_at": driver.t,
            }
        )
        tx.set_result(key, {"outcome": "applied", "step": 3}, at=driver.t)


UNCAPPED = {"version": 1, "quota_us": None, "period_us": 100_000}


def test_the_effect_our_own_change_is_made_to_have_opens_no_run(driver: Driver) -> None:
    """A CPU quota the controller set throttles the cgroup it capped, at that cap: the change
    working. It is attached once to the run that made the change and opens no run that
    would take the original fault over as its symptom; once the change is rolled back,
    throttling there is a fault of its own again."""
    from controller.workflow.triggers import UNDONE_GRACE_S
    from testkit.scenarios import cgroup_cpu_throttling

    driver.run(40)
    (cpu_run,) = {r for r in driver.run(5, cpu) if r}
    changed(driver, cpu_run, "k-quota", {"cgroup": THROTTLED, "cores": 0.5}, UNCAPPED)
    driver.run(10, cgroup_cpu_throttling)
    assert [r["run_id"] for r in driver.runs()] == [cpu_run]  # no run of its own
    effects = [
        a["detail"]["expected_effect"]
        for a in driver.eng.attachments(cpu_run)
        if "expected_effect" in a["detail"]
    ]
    assert len(effects) == 1 and effects[0]["family"] == "cgroup_cpu_throttling"  # attached once
    assert effects[0]["action"] == "cgroup_cpu_quota" and driver.eng.stats()["expected_effects"] == 1
    symptom = driver.eng.load_run(cpu_run)
    assert symptom is not None and symptom["state"] != "explained"
    with driver.eng.runs.begin() as tx:
        assert tx.claim_rollback("k-quota", at=driver.t)
        tx.finish_rollback("k-quota", {"outcome": "rolled_back"}, done=True)
    # Just undone, the window's newest samples still show what it did: still no run.
    assert not {r for r in driver.run(3, cgroup_cpu_throttling) if r} - {cpu_run}
    driver.t += UNDONE_GRACE_S
    later = {r for r in driver.run(5, cgroup_cpu_throttling) if r}
    assert len(later - {cpu_run}) == 1, later  # the quota is gone: throttling is a fault again


@pytest.mark.parametrize(
    ("params", "before", "why"),
    [
        ({"cgroup": "/another", "cores": 0.5}, UNCAPPED, "another cgroup"),
        (
            {"cgroup": THROTTLED, "cores": 0.5},
            {"quota_us": 20_000, "period_us": 100_000},
            "it raised the quota",
        ),
        ({"cgroup": THROTTLED, "cores": 0.8}, UNCAPPED, "the cap is not ours (someone changed it since)"),
    ],
)
def test_a_change_explains_only_the_effect_it_was_made_to_have(
    driver: Driver, params: dict[str, Any], before: dict[str, Any], why: str
) -> None:
    from testkit.scenarios import cgroup_cpu_throttling

    driver.run(40)
    (cpu_run,) = {r for r in driver.run(5, cpu) if r}
    changed(driver, cpu_run, "k-quota", params, before)
    opened = {r for r in driver.run(10, cgroup_cpu_throttling) if r} - {cpu_run}
    assert len(opened) == 1, why  # throttling there is a fault: a run of its own
    assert driver.eng.stats()["expected_effects"] == 0, why


def test_a_change_on_another_host_or_past_the_hour_explains_nothing(driver: Driver) -> None:
    from controller.workflow.triggers import EXPECTED_EFFECT_S, expected_effect

    culprit = {"kind": "cgroup", "id": THROTTLED, "quota_cores": 0.5}
    row: Any = {
        "action": "cgroup_cpu_quota",
        "params": {"cgroup": THROTTLED, "cores": 0.5},
        "before": UNCAPPED,
    }
    assert expected_effect("cgroup_cpu_throttling", culprit, row)
    assert not expected_effect("cpu_saturation", culprit, row)  # not what a quota brings about
    assert not expected_effect("cgroup_cpu_throttling", culprit, row | {"action": "renice"})
    driver.run(40)
    (cpu_run,) = {r for r in driver.run(5, cpu) if r}
    changed(driver, cpu_run, "k-old", {"cgroup": THROTTLED, "cores": 0.5}, UNCAPPED)
    driver.t += EXPECTED_EFFECT_S + 1  # an hour on, the cap is a fault if it hurts
    with driver.eng.runs.read() as tx:
        assert tx.standing_changes("node-a", ["cgroup_cpu_quota"], since=driver.t - EXPECTED_EFFECT_S) == []
        assert len(tx.standing_changes("node-a", ["cgroup_cpu_quota"], since=0)) == 1
        assert tx.standing_changes("node-b", ["cgroup_cpu_quota"], since=0) == []  # another host's
