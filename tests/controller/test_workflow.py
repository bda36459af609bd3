"""The workflow engine in process: a chain per incident, attachment of repeats, memory, replay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import text

from collector.wire import validate_batch
from controller.artifacts import CHAIN_CAP, KINDS, encode, verify_chain
from controller.config import HotStateSettings
from controller.hotstate import HotState
from controller.store.db import make_engine, migrate
from controller.store.payloads import PayloadStore
from controller.workflow.engine import WorkflowEngine
from controller.workflow.options import WorkflowOptions
from testkit.scenarios import window


class Clock:
    def __init__(self, t: float = 1_800_000_500.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkflowEngine]:
    if request.param == "sqlite":
        db = make_engine(f"sqlite:///{tmp_path / 'agent' / 'workflow_runs.db'}")
    else:
        db = make_engine(request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://"))
    migrate(db)
    hot = HotState(
        HotStateSettings(samples_per_host=1000, bytes_per_host=64 << 20), clock=lambda: 1_800_000_160.0
    )
    eng = WorkflowEngine(db, PayloadStore(str(tmp_path / "agent")), hot, WorkflowOptions(), clock=Clock())
    yield eng
    db.dispose()


def feed(eng: WorkflowEngine, family: str | None, stale: tuple[str, ...] = ()) -> None:
    snaps = window(family, stale=stale)
    obj = {
        "schema": "incidentlab.batch/v1",
        "host_id": "node-a",
        "boot_id": "b",
        "stream_id": "s",
        "seq": 1,
        "sent_at": snaps[-1].ts,
        "snapshots": [msgspec.to_builtins(s) for s in snaps],
    }
    raw = msgspec.json.encode(obj)
    eng.hot.ingest(validate_batch(raw), raw)


def test_an_incident_becomes_a_complete_valid_chain(engine: WorkflowEngine, tmp_path: Path) -> None:
    feed(engine, "cpu_saturation")
    run_id = engine.evaluate("node-a")
    assert run_id is not None
    run = engine.load_run(run_id)
    assert (
        run is not None
        and run["status"] == "completed"
        and run["stage"] == 8
        and run["family"] == "cpu_saturation"
    )
    chain = engine.load_chain(run_id)
    assert [a.kind for a in chain] == list(KINDS)
    assert verify_chain(chain) == []
    assert sum(len(encode(a)) for a in chain) < CHAIN_CAP
    hyp = chain[2].payload["hypotheses"][0]
    assert hyp["family"] == "cpu_saturation" and hyp["culprit"]["id"] == "cryptominer[4242]"
    plan = chain[4].payload
    assert all(s["decision"] in ("blocked", "allowed_dry_run") for s in plan["steps"])  # the default posture
    assert chain[5].status == "skipped" and not any(r["changed_host"] for r in chain[5].payload["results"])
    assert chain[6].payload == {"verdict": "skipped", "reason": "dry_run", "compared_signals": []}
    report = chain[7].payload
    assert report["most_likely_cause"]["family"] == "cpu_saturation"
    messages = sorted(p.name for p in (tmp_path / "agent" / "workflows" / "messages" / run_id).iterdir())
    assert messages == [f"{i:02d}-{k}.json" for i, k in enumerate(KINDS)]
    package = json.loads(
        (tmp_path / "agent" / "workflows" / "evidence" / run_id / "package.json").read_text()
    )
    assert package["manifest"]["artifacts"][0]["sha256"] == chain[0].sha256
    assert package["window"]["host_id"] == "node-a" and "cpu_busy_pct" in package["window"]["series"]


def test_repeats_within_the_window_attach_and_are_recorded(engine: WorkflowEngine) -> None:
    feed(engine, "fd_exhaustion")
    run_id = engine.evaluate("node-a")
    assert run_id is not None and engine.load_run(run_id)["status"] == "completed"  # type: ignore[index]
    # The fault is still there on the next batches: the same incident, not new runs.
    assert engine.evaluate("node-a") == run_id
    assert engine.evaluate("node-a") == run_id
    run = engine.load_run(run_id)
    assert run is not None and run["attachments"] == 2 and engine.runs_opened == 1
    assert len(engine.attachments(run_id)) == 2


def test_a_run_awaiting_approval_takes_sightings_too(engine: WorkflowEngine) -> None:
    feed(engine, "fd_exhaustion")
    run_id = engine.evaluate("node-a")
    with engine.db.begin() as conn:
        conn.execute(
            text("UPDATE workflow_runs SET status = 'awaiting_approval' WHERE run_id = :r"), {"r": run_id}
        )
    assert engine.evaluate("node-a") == run_id and engine.runs_opened == 1


def test_incident_memory_is_consulted_the_next_time(engine: WorkflowEngine) -> None:
    feed(engine, "io_pressure")
    first = engine.evaluate("node-a")
    assert isinstance(engine.clock, Clock)
    engine.clock.t += engine.opts.attach_window_s + 1  # unseen for the window: the next sighting is new
    second = engine.evaluate("node-a")
    assert first and second and first != second
    memory = engine.load_chain(second)[2].payload["memory"]
    assert memory["seen_before"] is True and memory["occurrences"] == 1 and memory["last_run_id"] == first


def test_a_calm_host_opens_nothing(engine: WorkflowEngine) -> None:
    feed(engine, None)
    assert engine.evaluate("node-a") is None and engine.runs_opened == 0


def test_stale_telemetry_degrades_the_observation_and_caps_confidence(engine: WorkflowEngine) -> None:
    feed(engine, "cpu_saturation", stale=("processes",))
    engine.hot._clock = lambda: 1_800_000_160.0 + 60  # processes last answered 60 s before "now": stale
    run_id = engine.evaluate("node-a")
    assert run_id is not None
    chain = engine.load_chain(run_id)
    assert chain[0].status == "degraded" and "processes" in chain[0].payload["missing"]
    cpu = next(h for h in chain[2].payload["hypotheses"] if h["family"] == "cpu_saturation")
    assert cpu["confidence"] <= 0.6
    assert chain[0].uncertainty.freshness in ("mixed", "stale")


def test_replay_is_deterministic_with_an_injected_clock(engine: WorkflowEngine) -> None:
    feed(engine, "tcp_retransmit_surge")
    run_id = engine.evaluate("node-a")
    assert run_id is not None
    original = engine.load_chain(run_id)
    engine.clock = Clock(5.0)
    first = engine.replay(run_id)
    engine.clock = Clock(5.0)
    second = engine.replay(run_id)
    assert [a.sha256 for a in first] == [a.sha256 for a in second]
    assert [a.replay.replay_of for a in first] == [a.artifact_id for a in original]
    assert verify_chain(first) == []
    assert first[2].payload["hypotheses"] == original[2].payload["hypotheses"]


def test_resume_finishes_a_run_left_half_done(engine: WorkflowEngine) -> None:
    feed(engine, "memory_pressure")
    ev = engine.evidence_for("node-a")
    assert ev is not None
    run_id = engine.open_run(ev, "fp-mem", "memory_pressure", {}, 0.9)
    engine.execute(run_id, stop_after=3)  # as if the process died after committing stage 3
    assert engine.load_run(run_id)["stage"] == 4  # type: ignore[index]
    assert engine.resume() == [run_id]
    chain = engine.load_chain(run_id)
    assert [a.kind for a in chain] == list(KINDS) and verify_chain(chain) == []


def test_trigger_queue_is_bounded_and_deduplicated(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    migrate(db)
    eng = WorkflowEngine(
        db, PayloadStore(str(tmp_path)), HotState(HotStateSettings()), WorkflowOptions(queue_max=2)
    )
    for host in ("a", "a", "b", "c", "d"):
        eng.notify(host)
    assert eng.stats()["queued"] == 2 and eng.overflow == 2
