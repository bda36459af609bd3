"""The workflow engine: the trigger side and the stage runner, wired to one run store.

    Triggers     (triggers.py)   the queue and worker; evaluate a host; open or attach a run
    StageRunner  (runner.py)     execute a run's stages durably; resume; replay
    RunReader    (reads.py)      stored runs, chains checked against their commits, evidence
    Decisions    (decisions.py)  approve, reject, roll back
    RunStore     (controller/store/runs.py)  every workflow table

Callers (the runtime, the API, the tests) hold one WorkflowEngine; what it answers
comes from the part that owns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from controller.actuators import host_env
from controller.artifacts import Artifact
from controller.detectors import Evidence
from controller.hotstate import HotState
from controller.store.payloads import PayloadStore
from controller.store.runs import RunRow, RunStore
from controller.workflow.decisions import Decisions
from controller.workflow.execution import ExecutionService
from controller.workflow.options import WorkflowOptions
from controller.workflow.reads import CODE_VERSION, RunReader
from controller.workflow.runner import Failpoint, StageRunner
from controller.workflow.triggers import Triggers

__all__ = ["CODE_VERSION", "Failpoint", "WorkflowEngine"]


class WorkflowEngine:
    def __init__(
        self,
        db: Engine,
        store: PayloadStore,
        hot: HotState,
        options: WorkflowOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        advisor: Any = None,
        code_version: str = CODE_VERSION,
        failpoint: Failpoint | None = None,
        execution: ExecutionService | None = None,
    ) -> None:
        self.db = db
        self.runs = RunStore(db)
        self.store = store
        self.hot = hot
        self.opts = options or WorkflowOptions()
        self.advisor = advisor
        # Without one passed in: this host's interfaces, default options (the posture still decides).
        self.execution = execution or ExecutionService(self.runs, host_env(), clock=clock)
        posture = self.opts.posture
        self.reader = RunReader(
            self.runs, store, posture=posture, code_version=code_version, clock=clock, rules=self.opts.rules
        )
        self.triggers = Triggers(self.runs, store, hot, self.opts, clock=clock, code_version=code_version)
        self.runner = StageRunner(
            runs=self.runs,
            payloads=store,
            reader=self.reader,
            execution=self.execution,
            posture=posture,
            fresh_reader=self.triggers.evidence_for,
            schedule=self.triggers.schedule,
            clock=clock,
            advisor=advisor,
            failpoint=failpoint,
        )
        self.triggers.runner = self.runner
        self.postmortems: Any = None  # the runtime's postmortem worker, when there is one
        self.notifier: Any = None  # the runtime's notifier (Alertmanager, webhooks)
        self.silences = self.triggers.silences
        self.decisions = Decisions(self.reader, self.execution, posture, self.triggers.schedule)

    @property
    def clock(self) -> Callable[[], float]:
        return self.triggers.clock

    @clock.setter
    def clock(self, fn: Callable[[], float]) -> None:
        """One clock for every part (the tests inject theirs)."""
        self.triggers.clock = self.runner.clock = self.reader.clock = fn

    # The trigger side.

    @property
    def active(self) -> Callable[[], bool]:
        return self.triggers.active

    @active.setter
    def active(self, fn: Callable[[], bool]) -> None:
        self.triggers.active = fn

    @property
    def runs_opened(self) -> int:
        return self.triggers.runs_opened

    @property
    def overflow(self) -> int:
        return self.triggers.overflow

    def notify(self, host_id: str) -> None:
        self.triggers.notify(host_id)

    def start(self) -> None:
        self.triggers.start()

    def stop(self) -> None:
        self.triggers.stop()

    def schedule(self, run_id: str, when: float | None = None) -> None:
        self.triggers.schedule(run_id, when)

    def stats(self) -> dict[str, Any]:
        out = self.triggers.stats()
        if self.postmortems is not None:
            out["postmortems"] = self.postmortems.stats()
        if self.notifier is not None:
            out["alerts"] = self.notifier.stats()
        return out

    def evaluate(self, host_id: str) -> str | None:
        return self.triggers.evaluate(host_id)

    def evidence_for(self, host_id: str) -> Evidence | None:
        return self.triggers.evidence_for(host_id)

    def record_failure(self, host_id: str, exc: BaseException) -> None:
        self.triggers.record_failure(host_id, exc)

    def failure_of(self, host_id: str) -> dict[str, Any] | None:
        return self.triggers.failure_of(host_id)

    def failing_hosts(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.triggers.failing_hosts(limit)

    def open_run(self, ev: Evidence, fp: str, family: str, culprit: dict[str, Any], confidence: float) -> str:
        return self.triggers.open_run(ev, fp, family, culprit, confidence)

    # The stage runner.

    def execute(self, run_id: str, stop_after: int | None = None) -> list[Artifact]:
        return self.runner.execute(run_id, stop_after)

    def resume(self) -> list[str]:
        ids, failed = self.runner.resume()
        self.triggers.failures += failed
        return ids

    def replay(self, run_id: str, clock: Callable[[], float] | None = None) -> list[Artifact]:
        return self.runner.replay(run_id, clock)

    def fail_run(self, run_id: str, kind: str, why: str) -> None:
        self.runner.fail_run(run_id, kind, why)

    # Reads.

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        row = self.reader.load_run(run_id)
        return dict(row) if row is not None else None

    def load_chain(self, run_id: str, replay: bool = False) -> list[Artifact]:
        return self.reader.load_chain(run_id, replay)

    def load_evidence(self, run_id: str, committed: str | None = None) -> Evidence:
        return self.reader.load_evidence(run_id, committed)

    def verified_chain(self, run_id: str) -> list[Artifact]:
        return self.reader.verified_chain(run_id)

    def integrity_problems(self, run_id: str, replay: bool = False) -> list[str]:
        return self.reader.integrity_problems(run_id, replay)

    def compute_replay(self, run_id: str, clock: Callable[[], float] | None = None) -> list[Artifact]:
        return self.reader.compute_replay(run_id, clock)

    def list_runs(self, **filters: Any) -> list[RunRow]:
        return self.runs.list_runs(**filters)

    def attachments(self, run_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.runs.read() as tx:
            return tx.attachments(run_id, limit=limit)

    def open_runs(self) -> int:
        with self.runs.read() as tx:
            return tx.open_count()
