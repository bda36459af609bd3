"""The stage runner: execute a run's stages in order, each durably; resume; replay.

Durability (DESIGN.md): for each stage the artifact JSON is written to the payload
store first, then its metadata row and the run's new stage count commit in one
transaction. On start every running run resumes at its first stage without a
committed artifact; an artifact file written by a stage that never committed is
simply overwritten by the rerun (the ids are deterministic).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from controller import artifacts
from controller.artifacts import KINDS, Artifact
from controller.detectors import Evidence
from controller.errors import StoreError, UnknownRun
from controller.store.payloads import PayloadStore
from controller.store.runs import ArtifactRow, RunRow, RunStore, RunTx
from controller.workflow.execution import ExecutionService
from controller.workflow.reads import RunReader, after_key, evidence_key, message_key
from controller.workflow.roles import NotReady, Posture, StageContext, role_for

log = logging.getLogger(__name__)
# Stages that act on or read the live host: a failure there may be the moment, not the inputs.
LIVE_STAGES = ("execution_result", "verification_result")
# Called with (stage kind, "before_commit" | "after_commit"): the crash tests kill here.
Failpoint = Callable[[str, str], None]
# A host's samples newer than a time, as evidence (None: none yet): the verifier's input.
FreshReader = Callable[[str, float], Evidence | None]
Scheduler = Callable[[str, float | None], None]


def artifact_row(run_id: str, art: Artifact, key: str, *, replay: bool, at: float) -> ArtifactRow:
    return {
        "artifact_id": art.artifact_id,
        "run_id": run_id,
        "stage_index": art.stage_index,
        "kind": art.kind,
        "status": art.status,
        "sha256": art.sha256,
        "path": key,
        "replay": replay,
        "created_at": at,
    }


@dataclass
class StageRunner:
    runs: RunStore
    payloads: PayloadStore
    reader: RunReader
    execution: ExecutionService
    posture: Posture
    fresh_reader: FreshReader
    schedule: Scheduler
    clock: Callable[[], float]
    advisor: Any = None
    failpoint: Failpoint | None = None
    # Told of each run whose stages completed (its postmortem may be made then).
    on_ended: Callable[[str, str], None] | None = None
    # Told what somebody should hear of: (kind, run_id) (controller/workflow/notify.py).
    on_event: Callable[[str, str], None] | None = None
    # Told how long each committed stage took: (kind, seconds) (the /metrics histogram).
    on_stage: Callable[[str, float], None] | None = None

    def __post_init__(self) -> None:
        self._after: dict[str, Evidence] = {}  # run_id -> the window the verifier last read

    def fail_run(self, run_id: str, kind: str, why: str) -> None:
        """A run that cannot go on (its stored chain changed, or a stage cannot be computed):
        failed, and said so in the audit log, so neither the engine nor a restart retries it."""
        now = self.clock()
        with self.runs.begin() as tx:
            tx.fail_run(run_id, at=now)
            tx.audit(at=now, actor="engine", kind=kind, run_id=run_id, detail={"why": why[:2000]})

    def execute(self, run_id: str, stop_after: int | None = None) -> list[Artifact]:
        """Run the stages a run has not committed yet, in order, each durably. Stops at the
        executor while the plan awaits a decision, and at the verifier while it waits for
        fresh samples (the run is scheduled again)."""
        run = self.reader.load_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        if run["status"] in ("completed", "failed"):
            return self.reader.load_chain(run_id)
        try:
            ev = self.reader.load_evidence(run_id, run.get("evidence_sha256"))
            chain = self.reader.verified_chain(run_id)
        except artifacts.ArtifactTampered as exc:
            log.error("%s: the run is failed, nothing more of it runs", exc)
            self.fail_run(run_id, "integrity_failure", str(exc))
            raise
        with self.runs.read() as tx:
            memory = tx.memory(run["fingerprint"])
        for index in range(len(chain), len(KINDS)):
            if stop_after is not None and index > stop_after:
                break
            approval = None
            if KINDS[index] == "execution_result":
                wait, approval = self._approval_gate(run_id, chain[-1])
                if wait:
                    return chain
            ctx = StageContext(
                run=dict(run),
                evidence=ev,
                chain=chain,
                clock=self.clock,
                code_version=self.reader.code_version,
                posture=self.posture,
                memory=dict(memory) if memory is not None else None,
                advisor=self.advisor,
                actions=self.execution,
                approval=approval,
                fresh=functools.partial(self._fresh, run_id, run["host_id"]),
                rules=self.reader.rules.for_host(run["host_id"], ev.labels),
            )
            try:
                art = role_for(KINDS[index]).run(ctx)
            except NotReady as wait:
                with self.runs.begin() as tx:
                    tx.set_status(run_id, status="verifying", at=self.clock())
                self.schedule(run_id, wait.retry_at)
                return chain
            except (StoreError, OSError):
                raise  # the store or the host hiccupped: resume tries the stage again
            except Exception as exc:
                if KINDS[index] not in LIVE_STAGES:
                    # A pure stage fails the same way on the same inputs: end the run, say why.
                    self.fail_run(run_id, "stage_failure", f"{KINDS[index]}: {type(exc).__name__}: {exc}")
                raise
            self.commit(run, art, chain, ev)
            chain = [*chain, art]
        return chain

    def _approval_gate(self, run_id: str, plan_art: Artifact) -> tuple[bool, dict[str, Any] | None]:
        """(wait, the operator's decision on this plan); wait: the run is parked until one comes."""
        plan = plan_art.payload
        if not plan.get("needs_approval"):
            return False, None
        decision = self.execution.decision(run_id, plan["plan_hash"])
        if decision is None:
            self.execution.wait_for_approval(run_id)
            if self.on_event is not None:
                self.on_event("awaiting_approval", run_id)
            return True, None
        # Expiry counts only before anything ran: a stage rerun after a crash finishes what began.
        started = bool(self.execution.intents(run_id))
        expires = decision["expires_at"]  # set on every approval
        if (
            decision["decision"] == "approved"
            and expires is not None
            and expires < self.clock()
            and not started
        ):
            self.execution.expire(run_id, plan["plan_hash"], decision)
            return True, None
        return False, dict(decision)

    def _fresh(self, run_id: str, host_id: str, since: float) -> Evidence | None:
        ev = self.fresh_reader(host_id, since)
        if ev is not None:
            self._after[run_id] = ev
        return ev

    def commit(self, run: RunRow, art: Artifact, chain: list[Artifact], ev: Evidence | None = None) -> None:
        run_id = run["run_id"]
        key = message_key(run_id, art)
        after = self._after.pop(run_id, None)
        if art.kind == "verification_result" and after is not None:
            self.payloads.put(after_key(run_id), msgspec.json.encode(after.to_dict(), order="sorted"))
        self.payloads.put(key, artifacts.encode(art))  # the payload first
        now = self.clock()
        final = art.kind == KINDS[-1]
        if final:  # the package too, so a committed final stage always has one
            self.write_package(run_id, [*chain, art], ev)
        if self.failpoint is not None:
            self.failpoint(art.kind, "before_commit")
        with self.runs.begin() as tx:  # then the metadata and the stage, in one transaction
            tx.insert_artifacts([artifact_row(run_id, art, key, replay=False, at=now)])
            _audit_stage(tx, run_id, art, now)
            closed = now if final else None
            tx.advance_run(
                run_id,
                stage=art.stage_index + 1,
                status="completed" if final else "running",
                at=now,
                closed=closed,
            )
            if final:
                resolution = {
                    "actions": art.payload.get("actions", []),
                    "verification": art.payload.get("verification"),
                    "run_id": run_id,
                }
                tx.remember(run, resolution=resolution, at=now)
        if self.failpoint is not None:
            self.failpoint(art.kind, "after_commit")
        if self.on_stage is not None:
            self.on_stage(art.kind, max(0.0, art.finished_at - art.started_at))
        if final and self.on_ended is not None:
            self.on_ended(run_id, "completed")

    def write_package(self, run_id: str, chain: list[Artifact], ev: Evidence | None = None) -> None:
        """The evidence package: the chain, its manifest, and the evidence its refs point at."""
        package = {
            "run_id": run_id,
            "manifest": artifacts.manifest(chain),
            "chain": [msgspec.to_builtins(a) for a in chain],
            "window": (ev or self.reader.load_evidence(run_id)).to_dict(),
        }
        self.payloads.put(evidence_key(run_id), msgspec.json.encode(package, order="sorted"))

    def resume(self, owns: Callable[[str], bool] | None = None) -> tuple[list[str], int]:
        """Finish every run a crash or stop left running (with ``owns``: of the hosts this
        controller owns): (their ids, how many failed again)."""
        with self.runs.read() as tx:
            ids = tx.running_ids(owns)
        failed = 0
        for run_id in ids:
            try:
                self.execute(run_id)
            except Exception:  # a broken run must not keep the others from resuming
                failed += 1
                log.exception("resuming run %s failed", run_id)
        return ids, failed

    def replay(self, run_id: str, clock: Callable[[], float] | None = None) -> list[Artifact]:
        """Re-run every stage from the stored evidence with the current code; stored apart
        (the latest replay of a run replaces the one before), each artifact carrying
        replay_of. Same inputs and clock: same sha256s."""
        chain = self.reader.compute_replay(run_id, clock)
        rows = []
        for art in chain:
            key = message_key(run_id, art, replay=True)
            self.payloads.put(key, artifacts.encode(art))
            rows.append(artifact_row(run_id, art, key, replay=True, at=art.finished_at))
        with self.runs.begin() as tx:
            tx.forget_replay(run_id)
            tx.insert_artifacts(rows)
        return chain


def _audit_stage(tx: RunTx, run_id: str, art: Artifact, now: float) -> None:
    """Gate decisions and verdicts enter the audit log with the artifact that holds them."""
    if art.kind == "execution_plan":
        for step in art.payload.get("steps", []):
            detail = {k: step[k] for k in ("action", "target", "safety_class", "decision", "reason")}
            tx.audit(
                at=now,
                actor="policy_gate",
                kind="gate_decision",
                run_id=run_id,
                plan_hash=art.payload["plan_hash"],
                step=step["step"],
                detail=detail,
            )
    elif art.kind == "verification_result" and art.payload.get("verdict") != "skipped":
        tx.audit(
            at=now,
            actor="verifier",
            kind="verification",
            run_id=run_id,
            detail={"verdict": art.payload.get("verdict"), "reason": art.payload.get("reason")},
        )
