"""Governed execution in the engine: defaults that block, approvals bound to the plan hash
with a TTL, exactly-once side effects by idempotency key, verification, rollback, and an
append-only audit log that holds every decision in order. The side effects are real:
the culprit is a live process and the action a real renice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from collector.wire import validate_batch
from controller.actuators import host_env
from controller.artifacts import KINDS, verify_chain
from controller.config import HotStateSettings
from controller.hotstate import HotState
from controller.store.db import make_engine, migrate
from controller.store.payloads import PayloadStore
from controller.store.runs import RunStore
from controller.workflow.engine import WorkflowEngine
from controller.workflow.execution import ExecutionService
from controller.workflow.options import ExecutionOptions, WorkflowOptions
from controller.workflow.roles import Posture
from controller.workflow.roles.policy_gate import decide
from testkit.scenarios import T0, batch_for

HOST = "node-a"
OPEN = Posture(dry_run=False, approval_required=True, allow_safe_reversible=True, local_hosts=(HOST,))


class Clock:
    """Moves 1 ms a call; tests jump it to cross settle times and TTLs."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    time.sleep(0.1)
    yield p
    p.kill()
    p.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'agent' / 'workflow_runs.db'}")
    else:
        engine = make_engine(
            request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://")
        )
    migrate(engine)
    yield engine
    engine.dispose()


def make(db: Engine, tmp_path: Path, posture: Posture, clock: Clock, **opts: Any) -> WorkflowEngine:
    hot = HotState(HotStateSettings(samples_per_host=2000, bytes_per_host=64 << 20), clock=lambda: clock.t)
    service = ExecutionService(
        RunStore(db),
        host_env(),
        ExecutionOptions(verify_settle_s=1.0, verify_min_samples=3, verify_deadline_s=60.0, **opts),
        clock=clock,
    )
    return WorkflowEngine(
        db,
        PayloadStore(str(tmp_path / "agent")),
        hot,
        WorkflowOptions(posture=posture, attach_window_s=0.0),
        clock=clock,
        execution=service,
    )


def feed(
    eng: WorkflowEngine, family: str | None, shift_s: float, culprit: subprocess.Popen[bytes], seq: int
) -> None:
    """The scenario's window with its culprit replaced by a live process."""
    batch = batch_for(family, HOST, seq=seq, shift_s=shift_s)
    comm = Path(f"/proc/{culprit.pid}/comm").read_text().strip()
    for snap in batch["snapshots"]:
        for row in snap["sources"]["processes"]["data"]["rows"]:
            if row["pid"] in (4242, 6666, 3131):  # the scenarios' culprits
                row.update(pid=culprit.pid, comm=comm, cgroup=None)
    raw = msgspec.json.encode(batch)
    eng.hot.ingest(validate_batch(raw), raw)


def awaiting(eng: WorkflowEngine, sleeper: subprocess.Popen[bytes]) -> tuple[str, dict[str, Any]]:
    """A cpu_saturation run on the live sleeper, parked for approval: its id and plan."""
    feed(eng, "cpu_saturation", 0, sleeper, 1)
    run_id = eng.evaluate(HOST)
    assert run_id is not None
    return run_id, eng.load_chain(run_id)[4].payload


def nice(p: subprocess.Popen[bytes]) -> int:
    return os.getpriority(os.PRIO_PROCESS, p.pid)


def kinds(db: Engine, run_id: str) -> list[tuple[str, str | None]]:
    return [
        (e["kind"], e["detail"].get("action")) for e in RunStore(db).audit_entries(run_id=run_id, limit=1000)
    ]


@pytest.mark.parametrize("family", ["cpu_saturation", "runaway_forks", "fd_exhaustion"])
def test_the_default_posture_changes_nothing_whatever_the_proposal(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes], family: str
) -> None:
    clock = Clock(T0 + 151)
    eng = make(db, tmp_path, Posture(local_hosts=(HOST,)), clock)
    feed(eng, family, 0, sleeper, 1)
    before = nice(sleeper)
    run_id = eng.evaluate(HOST)
    assert run_id is not None
    run = eng.load_run(run_id)
    assert run is not None and run["status"] == "completed"
    chain = eng.load_chain(run_id)
    plan, result, verdict = (a.payload for a in chain[4:7])
    proposed = {s["action"] for s in plan["steps"]}
    assert "validate_state" in proposed and proposed & {"renice", "sigterm", "sigkill"}
    for s in plan["steps"]:
        expected = "allowed" if s["safety_class"] == "read_only" else "blocked"
        assert s["decision"] == expected, s
    assert not result["changed_host"] and all(not r["changed_host"] for r in result["results"])
    assert verdict["verdict"] == "skipped" and verdict["reason"] == "dry_run"
    assert nice(sleeper) == before and sleeper.poll() is None
    assert eng.execution.intents(run_id) == []
    gate = [e for e in RunStore(db).audit_entries(run_id=run_id) if e["kind"] == "gate_decision"]
    assert len(gate) == len(plan["steps"])
    assert not any(k in ("execution_intent", "execution_result") for k, _ in kinds(db, run_id))


@pytest.mark.parametrize(
    ("cls", "rollback", "posture", "decision"),
    [
        (
            "destructive",
            None,
            Posture(allow_impacting=True, allow_safe_reversible=True, local_hosts=(HOST,)),
            "blocked",
        ),
        ("impacting", None, Posture(allow_impacting=True, local_hosts=(HOST,)), "blocked"),
        (
            "impacting",
            {"undo": "thaw"},
            Posture(allow_impacting=True, local_hosts=(HOST,)),
            "approval_required",
        ),
        ("safe_reversible", {"r": 1}, Posture(allow_safe_reversible=True, local_hosts=()), "blocked"),
        (
            "safe_reversible",
            {"r": 1},
            Posture(allow_safe_reversible=True, approval_required=False, local_hosts=(HOST,)),
            "allowed_dry_run",
        ),
        (
            "safe_reversible",
            {"r": 1},
            Posture(allow_safe_reversible=True, approval_required=False, dry_run=False, local_hosts=(HOST,)),
            "allowed",
        ),
    ],
)
def test_gate_decisions(cls: str, rollback: Any, posture: Posture, decision: str) -> None:
    action = {
        "destructive": ("sigkill", {"pid": 99, "comm": "x"}),
        "impacting": ("cgroup_freeze", {"cgroup": "/a"}) if rollback else ("sigterm", {"pid": 99}),
        "safe_reversible": ("renice", {"pid": 99, "nice": 10}),
    }[cls]
    a = {"action": action[0], "parameters": action[1], "safety_class": cls, "rollback": rollback}
    assert decide(a, posture, HOST)[0] == decision


def test_the_gate_refuses_unknown_actions_bad_parameters_and_a_wrong_class() -> None:
    p = Posture(allow_safe_reversible=True, allow_impacting=True, local_hosts=(HOST,))
    unknown = {"action": "reboot", "parameters": {}, "safety_class": "impacting", "rollback": {"x": 1}}
    assert decide(unknown, p, HOST) == ("blocked", "no actuator 'reboot'")
    bad = {
        "action": "renice",
        "parameters": {"pid": 99, "nice": 99},
        "safety_class": "safe_reversible",
        "rollback": {},
    }
    assert decide(bad, p, HOST)[0] == "blocked" and "bad parameters" in str(decide(bad, p, HOST)[1])
    lying = {
        "action": "sigkill",
        "parameters": {"pid": 99},
        "safety_class": "safe_reversible",
        "rollback": {},
    }
    assert decide(lying, p, HOST) == ("blocked", "sigkill is destructive, not safe_reversible as proposed")


def test_approval_runs_the_plan_once_verifies_and_the_audit_holds_it_all_in_order(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    clock = Clock(T0 + 151)
    eng = make(db, tmp_path, OPEN, clock)
    feed(eng, "cpu_saturation", 0, sleeper, 1)
    original = nice(sleeper)
    run_id = eng.evaluate(HOST)
    assert run_id is not None
    run = eng.load_run(run_id)
    assert run is not None and run["status"] == "awaiting_approval" and run["stage"] == 5
    assert nice(sleeper) == original  # nothing before the approval
    plan = eng.load_chain(run_id)[4].payload
    renice = next(s for s in plan["steps"] if s["action"] == "renice")
    assert plan["needs_approval"] == [renice["step"]]

    # An approval of another plan does not count: the run keeps waiting.
    eng.execution.decide(run_id, "0" * 64, approve=True, actor="mallory", reason="", steps=None)
    eng.execute(run_id)
    assert (eng.load_run(run_id) or {})["status"] == "awaiting_approval"

    eng.execution.decide(run_id, plan["plan_hash"], approve=True, actor="alice", reason="go", steps=None)
    eng.execute(run_id)
    assert nice(sleeper) == 10
    run = eng.load_run(run_id)
    assert run is not None and run["status"] == "verifying" and run["stage"] == 6  # no fresh samples yet
    result = eng.load_chain(run_id)[5].payload
    applied = next(r for r in result["results"] if r["action"] == "renice")
    assert applied["outcome"] == "applied" and applied["approval"] == "approved by alice"
    assert applied["before"]["nice"] == original and applied["after"]["nice"] == 10

    # Calm samples after the change: the verifier compares and says improved.
    clock.t = T0 + 400
    feed(eng, None, 250, sleeper, 2)
    eng.execute(run_id)
    chain = eng.load_chain(run_id)
    assert [a.kind for a in chain] == list(KINDS) and verify_chain(chain) == []
    verdict = chain[6].payload
    assert verdict["verdict"] == "improved" and verdict["target_signal"] == "cpu_busy_pct", verdict
    assert verdict["rollbacks"] == []
    report = chain[7].payload
    assert {"action": "renice", "outcome": "applied"} in report["actions"]
    assert report["verification"]["verdict"] == "improved"

    assert kinds(db, run_id) == (
        [("gate_decision", s["action"]) for s in plan["steps"]]
        + [
            ("approval", None),
            ("approval", None),
            ("execution_intent", "renice"),
            ("execution_result", "renice"),
        ]
        + [("verification", None)]
    )
    entries = RunStore(db).audit_entries(run_id=run_id)
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert entries[len(plan["steps"]) + 1]["actor"] == "alice"
    assert {e["plan_hash"] for e in entries if e["kind"] == "gate_decision"} == {plan["plan_hash"]}

    # Replay acts on nothing and reproduces the recorded execution and verdict.
    nice_now = nice(sleeper)
    replayed = eng.replay(run_id, clock=lambda: T0 + 999)
    assert replayed[5].payload["results"] == result["results"] and replayed[6].payload == verdict
    assert nice(sleeper) == nice_now and len(eng.execution.intents(run_id)) == 1


def test_not_improved_rolls_back(db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    clock = Clock(T0 + 151)
    eng = make(db, tmp_path, OPEN, clock)
    original = nice(sleeper)
    run_id, plan = awaiting(eng, sleeper)
    eng.execution.decide(run_id, plan["plan_hash"], approve=True, actor="alice", reason="", steps=None)
    eng.execute(run_id)
    assert nice(sleeper) == 10
    # Still saturated after the change: the scenario's 30 s of fault land just after it.
    clock.t = T0 + 183
    feed(eng, "cpu_saturation", 33, sleeper, 2)
    eng.execute(run_id)
    verdict = eng.load_chain(run_id)[6].payload
    assert verdict["verdict"] == "not_improved"
    assert [r["outcome"] for r in verdict["rollbacks"]] == ["rolled_back"]
    assert nice(sleeper) == original
    assert ("rollback", "renice") in kinds(db, run_id)
    # Claimed once: a second rollback (an operator's, say) does nothing and says so.
    result = next(r for r in eng.load_chain(run_id)[5].payload["results"] if r["action"] == "renice")
    os.setpriority(os.PRIO_PROCESS, sleeper.pid, 4)
    again = eng.execution.rollback(run_id, result, actor="ops", why="again")
    assert again["already"] is True and nice(sleeper) == 4
    assert [k for k, _ in kinds(db, run_id)].count("rollback") == 1


def test_too_few_samples_by_the_deadline_is_inconclusive(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    clock = Clock(T0 + 151)
    eng = make(db, tmp_path, OPEN, clock)
    run_id, plan = awaiting(eng, sleeper)
    eng.execution.decide(run_id, plan["plan_hash"], approve=True, actor="alice", reason="", steps=None)
    eng.execute(run_id)
    clock.t += 120  # past verify_deadline_s with no sample since the action
    eng.execute(run_id)
    verdict = eng.load_chain(run_id)[6].payload
    assert verdict["verdict"] == "inconclusive" and "0 sample(s)" in verdict["reason"]
    assert verdict["rollbacks"] == []


def test_an_expired_approval_sends_the_run_back_to_waiting(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    clock = Clock(T0 + 151)
    eng = make(db, tmp_path, OPEN, clock, approval_ttl_s=60.0)
    original = nice(sleeper)
    run_id, plan = awaiting(eng, sleeper)
    eng.execution.decide(run_id, plan["plan_hash"], approve=True, actor="alice", reason="", steps=None)
    clock.t += 61
    eng.execute(run_id)
    run = eng.load_run(run_id)
    assert run is not None and run["status"] == "awaiting_approval" and run["stage"] == 5
    assert nice(sleeper) == original
    assert kinds(db, run_id)[-1] == ("approval_expired", None)


def test_a_rejection_completes_the_run_with_nothing_run(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    clock = Clock(T0 + 151)
    eng = make(db, tmp_path, OPEN, clock)
    original = nice(sleeper)
    run_id, plan = awaiting(eng, sleeper)
    eng.execution.decide(run_id, plan["plan_hash"], approve=False, actor="bob", reason="not now", steps=None)
    chain = eng.execute(run_id)
    assert (eng.load_run(run_id) or {})["status"] == "completed" and len(chain) == 8
    renice = next(r for r in chain[5].payload["results"] if r["action"] == "renice")
    assert renice["outcome"] == "not_run" and renice["reason"] == "rejected by bob: not now"
    assert nice(sleeper) == original


def test_a_reused_idempotency_key_returns_the_earlier_result(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    clock = Clock(T0 + 151)
    posture = Posture(dry_run=False, approval_required=False, allow_safe_reversible=True, local_hosts=(HOST,))
    eng = make(db, tmp_path, posture, clock)
    feed(eng, "cpu_saturation", 0, sleeper, 1)
    first = eng.evaluate(HOST)
    assert first is not None and nice(sleeper) == 10
    os.setpriority(os.PRIO_PROCESS, sleeper.pid, 3)  # someone changes it back by hand
    clock.t += 5
    second = eng.evaluate(HOST)  # the same shape again (attach window 0): a new run, the same key
    assert second is not None and second != first
    keys = {r["idempotency_key"] for r in eng.load_chain(first)[5].payload["results"]}
    again = next(r for r in eng.load_chain(second)[5].payload["results"] if r["action"] == "renice")
    assert again["idempotency_key"] in keys
    assert again["outcome"] == "applied" and again["reused_from"] == first
    assert nice(sleeper) == 3  # not applied a second time
    assert ("idempotent_reuse", None) in kinds(db, second)
    assert not any(k == "execution_intent" for k, _ in kinds(db, second))


def test_an_intent_without_a_result_is_settled_by_probing_not_rerun(
    db: Engine, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """The in-process half of the crash test (test_workflow_crash kills a real controller)."""
    clock = Clock(T0 + 151)
    posture = Posture(dry_run=False, approval_required=False, allow_safe_reversible=True, local_hosts=(HOST,))
    eng = make(db, tmp_path, posture, clock)

    class Crash(Exception):
        pass

    def crash(kind: str, where: str) -> None:
        if where == "after_intent":
            os.setpriority(os.PRIO_PROCESS, sleeper.pid, 10)  # the action ran; the result was never written
            raise Crash

    eng.execution.failpoint = crash
    feed(eng, "cpu_saturation", 0, sleeper, 1)
    with pytest.raises(Crash):
        eng.evaluate(HOST)
    eng.execution.failpoint = None
    (run_id,) = eng.resume()
    renice = next(r for r in eng.load_chain(run_id)[5].payload["results"] if r["action"] == "renice")
    assert renice["outcome"] == "settled_applied" and renice["settled_because"] == "intent without a result"
    assert renice["rollback"]["value"] == 0 and renice["rollback"]["pid"] == sleeper.pid
    assert renice["rollback"]["start_time"] is not None
    assert [k for k, _ in kinds(db, run_id) if k.startswith("execution")] == [
        "execution_intent",
        "execution_settled",
    ]


def test_the_audit_log_is_append_only(db: Engine, tmp_path: Path) -> None:
    with RunStore(db).begin() as tx:
        tx.audit(at=1.0, actor="alice", kind="approval", run_id="r1")
    for sql in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), db.begin() as conn:
            conn.execute(text(sql))
    assert [e["actor"] for e in RunStore(db).audit_entries()] == ["alice"]
    with pytest.raises(ValueError, match="unknown audit kind"), RunStore(db).begin() as tx:
        tx.audit(at=1.0, actor="x", kind="whatever")


def test_the_verifier_compares_against_the_samples_since_the_fault_began() -> None:
    """Detected within seconds, the run's last ten samples are half calm: the change is
    measured against the faulty ones alone (at least three of them), else the last ten."""
    from types import SimpleNamespace

    from controller.detectors.evidence import Evidence
    from controller.workflow.roles.verifier import during_fault

    points = [(float(t), 2.0) for t in range(6)] + [(float(t), 98.0) for t in range(6, 10)]
    ev = Evidence("h", 0.0, 9.0, 10, series={"cpu_busy_pct": points})
    ctx: Any = SimpleNamespace(evidence=ev, run={"fault_started_at": 6.0})
    assert during_fault(ctx, "cpu_busy_pct") == [98.0] * 4
    ctx.run["fault_started_at"] = 8.5  # one faulty sample: too few to stand alone
    assert during_fault(ctx, "cpu_busy_pct") == [v for _, v in points]
    ctx.run["fault_started_at"] = None
    assert during_fault(ctx, "cpu_busy_pct") == [v for _, v in points]
    assert during_fault(ctx, "missing") == []
