"""An operator's decisions on a run: approve or reject its plan, roll back what it did.

The rules live here, not in the routes: a decision names the plan it was read from
(a plan that changed since needs a new one), approves only steps that need approval,
and acts on a chain whose every hash was recomputed. A rollback undoes each applied
step that has rollback data, once, and only where this controller can reach the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.artifacts import Artifact, ArtifactTampered
from controller.errors import Conflict, Invalid, UnknownRun
from controller.workflow.execution import ExecutionService
from controller.workflow.reads import RunReader
from controller.workflow.roles import Posture
from controller.workflow.roles.policy_gate import CLUSTER_ACTIONS


class Decisions:
    def __init__(
        self,
        reader: RunReader,
        execution: ExecutionService,
        posture: Posture,
        schedule: Callable[[str, float | None], None],
    ) -> None:
        self.reader = reader
        self.execution = execution
        self.posture = posture
        self.schedule = schedule

    def _verified(self, run_id: str) -> list[Artifact]:
        """The chain a decision acts on, every hash recomputed: refused if any differs."""
        try:
            return self.reader.verified_chain(run_id)
        except ArtifactTampered as exc:
            raise Conflict(f"refused: {exc}") from exc

    def _plan(self, run_id: str) -> dict[str, Any]:
        """The plan awaiting a decision, from the verified chain (ArtifactTampered if not)."""
        run = self.reader.load_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        plan = next((a.payload for a in self._verified(run_id) if a.kind == "execution_plan"), None)
        if run["status"] != "awaiting_approval" or plan is None:
            raise Conflict(f"run {run_id} is {run['status']}, not awaiting approval")
        return plan

    def _decide(self, run_id: str, plan_hash: str, **kw: Any) -> dict[str, Any]:
        decision = self.execution.decide(run_id, plan_hash, **kw)
        self.schedule(run_id, None)  # the run resumes at the executor
        return decision

    def approve(
        self, run_id: str, plan_hash: str, *, steps: list[int] | None, actor: str, reason: str
    ) -> dict[str, Any]:
        plan = self._plan(run_id)
        if plan_hash != plan["plan_hash"]:
            raise Conflict(
                f"stale plan: the approval names {plan_hash[:12]}..., the plan is {plan['plan_hash'][:12]}..."
            )
        if steps is not None and not set(steps) <= set(plan["needs_approval"]):
            raise Invalid("steps", f"only steps {plan['needs_approval']} need approval")
        return self._decide(run_id, plan["plan_hash"], approve=True, actor=actor, reason=reason, steps=steps)

    def reject(self, run_id: str, plan_hash: str | None, *, actor: str, reason: str) -> dict[str, Any]:
        plan = self._plan(run_id)
        if plan_hash is not None and plan_hash != plan["plan_hash"]:
            raise Conflict("stale plan: the rejection names another plan hash")
        return self._decide(run_id, plan["plan_hash"], approve=False, actor=actor, reason=reason, steps=None)

    def rollback(self, run_id: str, *, actor: str, reason: str) -> list[dict[str, Any]]:
        run = self.reader.load_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        chain = self._verified(run_id)
        results = next((a.payload["results"] for a in chain if a.kind == "execution_result"), None)
        plan = next((a.payload for a in chain if a.kind == "execution_plan"), None)
        if results is None or plan is None:
            raise Conflict(f"run {run_id} has executed nothing")
        local = run["host_id"] in self.posture.local_hosts
        done = []
        for r in results:
            if not (r.get("changed_host") and r.get("rollback")):
                continue
            if not local and r["action"] not in CLUSTER_ACTIONS:
                why = f"host {run['host_id']} is not reachable from this controller"
                done.append({"step": r["step"], "action": r["action"], "outcome": "not_run", "reason": why})
                continue
            done.append(
                self.execution.rollback(run_id, r, actor=actor, why=reason, plan_hash=plan["plan_hash"])
            )
        return done
