"""Governed execution: approvals, durable intents, idempotency, settling, rollback.

The executor and verifier roles call this service; it is the only path from a plan
to a side effect. Every side effect is bracketed: the intent (idempotency key, the
live state read just before) commits first, the action runs in a bounded pool with
a timeout, the result commits after. An intent found without a result (a crash, a
timeout) is settled by probing the live state, never by running the action again;
a key seen within ``idempotency_ttl_s`` returns the earlier result.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from controller.actuators import ActuatorError, HostEnv, get
from controller.actuators.validate import Toolbox
from controller.errors import DecisionConflict
from controller.store.runs import DecisionRow, IntentRow, NewIntent, RunStore
from controller.workflow.options import ExecutionOptions

log = logging.getLogger(__name__)

REUSABLE = ("applied", "settled_applied")
EXECUTOR = "executor"
Failpoint = Callable[[str, str], None]


class ExecutionService:
    def __init__(
        self,
        runs: RunStore,
        env: HostEnv,
        options: ExecutionOptions | None = None,
        *,
        clock: Callable[[], float],
        failpoint: Failpoint | None = None,
    ) -> None:
        self.runs = runs
        self.env = env
        self.opts = options or ExecutionOptions()
        self.clock = clock
        self.failpoint = failpoint
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.opts.max_concurrent_actions, thread_name_prefix="actuator"
        )
        self._slots = threading.BoundedSemaphore(self.opts.max_concurrent_actions)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- approvals ---------------------------------------------------------------------------------

    def decision(self, run_id: str, plan_hash: str) -> DecisionRow | None:
        """The latest approval or rejection of exactly this plan, expired or not."""
        with self.runs.read() as tx:
            return tx.latest_decision(run_id, plan_hash)

    def decide(
        self,
        run_id: str,
        plan_hash: str,
        *,
        approve: bool,
        actor: str,
        reason: str,
        steps: list[int] | None,
    ) -> dict[str, Any]:
        """Record an approval or rejection and move the run on (running: the engine resumes it)."""
        now = self.clock()
        expires = now + self.opts.approval_ttl_s if approve else None
        decision = "approved" if approve else "rejected"
        with self.runs.begin() as tx:
            # First the status, conditionally: of two concurrent decisions only one moves the run.
            if not tx.resume_awaiting(run_id, at=now):
                raise DecisionConflict(f"run {run_id} is not awaiting approval (decided already?)")
            tx.insert_decision(
                run_id,
                plan_hash,
                decision=decision,
                actor=actor,
                reason=reason,
                steps=steps,
                at=now,
                expires_at=expires,
            )
            tx.audit(
                at=now,
                actor=actor,
                kind="approval" if approve else "rejection",
                run_id=run_id,
                plan_hash=plan_hash,
                detail={"reason": reason, "steps": steps, "expires_at": expires},
            )
        return {
            "run_id": run_id,
            "plan_hash": plan_hash,
            "decision": decision,
            "actor": actor,
            "reason": reason,
            "steps": steps,
            "at": now,
            "expires_at": expires,
        }

    def expire(self, run_id: str, plan_hash: str, approval: DecisionRow) -> None:
        """An approval outlived its TTL before the plan ran: back to awaiting_approval."""
        now = self.clock()
        with self.runs.begin() as tx:
            tx.set_status(run_id, status="awaiting_approval", at=now)
            tx.audit(
                at=now,
                actor="policy_gate",
                kind="approval_expired",
                run_id=run_id,
                plan_hash=plan_hash,
                detail={"approved_by": approval["actor"], "expired_at": approval["expires_at"]},
            )

    def wait_for_approval(self, run_id: str) -> None:
        with self.runs.begin() as tx:
            tx.set_status(run_id, status="awaiting_approval", at=self.clock())

    # --- side effects --------------------------------------------------------------------------------

    def toolbox(self, used_iterations: int = 0) -> Toolbox:
        return Toolbox(
            self.env,
            max_calls=self.opts.tool_call_budget,
            max_iterations=self.opts.iteration_budget,
            used_iterations=used_iterations,
        )

    def _intent(self, key: str) -> IntentRow | None:
        with self.runs.read() as tx:
            return tx.intent(key)

    def _finish(
        self, key: str, run_id: str, plan_hash: str, step: int, kind: str, result: dict[str, Any]
    ) -> None:
        now = self.clock()
        with self.runs.begin() as tx:
            tx.set_result(key, result, at=now)
            tx.audit(
                at=now,
                actor=EXECUTOR,
                kind=kind,
                run_id=run_id,
                plan_hash=plan_hash,
                step=step,
                detail={
                    "action": result["action"],
                    "outcome": result["outcome"],
                    "error": result.get("error"),
                },
            )

    def apply(
        self, run_id: str, plan_hash: str, step: dict[str, Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        """Run one allowed, approved step for real, exactly once per idempotency key."""
        key, action, index = step["idempotency_key"], step["action"], step["step"]
        base = {"step": index, "action": action, "target": step["target"], "idempotency_key": key}
        try:
            act = get(action, self.env)
            p = act.validate(params)
        except ActuatorError as exc:
            return base | {"outcome": "failed", "error": str(exc), "changed_host": False}
        now = self.clock()
        row = self._intent(key)
        if row is not None and row["intent_at"] >= now - self.opts.idempotency_ttl_s:
            before = row["before"]
            if row["result"] is None:
                # An intent without a result: the action may or may not have run. Look, do not redo.
                return self._settle(run_id, plan_hash, base, act, p, before, why="intent without a result")
            earlier: dict[str, Any] = row["result"]
            if row["run_id"] == run_id:
                return earlier | base  # this run's own result, found again on a rerun of the stage
            # A command that failed part-way may have done part of its work: never again.
            if (earlier["outcome"] in REUSABLE or earlier.get("may_have_changed")) and row[
                "rolled_back_at"
            ] is None:
                with self.runs.begin() as tx:
                    tx.audit(
                        at=now,
                        actor=EXECUTOR,
                        kind="idempotent_reuse",
                        run_id=run_id,
                        plan_hash=plan_hash,
                        step=index,
                        detail={"key": key, "earlier_run": row["run_id"]},
                    )
                return earlier | base | {"reused_from": row["run_id"]}
            # The earlier attempt failed, changed nothing, or was rolled back: act anew.
        try:
            before = act.probe(p)
        except ActuatorError as exc:
            return base | {"outcome": "failed", "error": str(exc), "changed_host": False}
        intent: NewIntent = {
            "idempotency_key": key,
            "run_id": run_id,
            "step": index,
            "action": action,
            "params": params,
            "before": before,
            "intent_at": now,
        }
        with self.runs.begin() as tx:
            claimed = tx.claim_intent(intent, replacing=row["intent_at"] if row is not None else None)
            if claimed:
                tx.audit(
                    at=now,
                    actor=EXECUTOR,
                    kind="execution_intent",
                    run_id=run_id,
                    plan_hash=plan_hash,
                    step=index,
                    detail={"action": action, "params": params, "before": before},
                )
        if not claimed:  # another controller (a deposed leader) claimed it first: never act twice
            return base | {
                "outcome": "not_run",
                "reason": "another controller holds this key",
                "changed_host": False,
            }
        if self.failpoint is not None:
            self.failpoint("execution_result", "after_intent")
        result = self._run(base, act, p, before)
        if result is None:
            return self._settle(run_id, plan_hash, base, act, p, before, why="timed out")
        if self.failpoint is not None:
            self.failpoint("execution_result", "after_apply")
        self._finish(key, run_id, plan_hash, index, "execution_result", result)
        return result

    def _run(self, base: dict[str, Any], act: Any, p: Any, before: dict[str, Any]) -> dict[str, Any] | None:
        """The action in the bounded pool; None when it outlived its timeout and a grace."""
        with self._slots:
            future = self._pool.submit(act.apply, p, before)
            try:
                applied = future.result(timeout=self.opts.action_timeout_s)
            except concurrent.futures.TimeoutError:
                if future.cancel():  # it never started: nothing happened
                    return base | {
                        "outcome": "failed",
                        "error": "timed out before it started",
                        "changed_host": False,
                    }
                try:  # started: let it finish before looking, or a probe races it
                    applied = future.result(timeout=self.opts.action_timeout_s)
                except concurrent.futures.TimeoutError:
                    return None
                except Exception as exc:
                    return base | self._failure(exc, before)
            except Exception as exc:  # ActuatorError, or a bug: recorded, never fatal to the run
                return base | self._failure(exc, before)
        return base | {
            "outcome": "applied",
            "changed_host": True,
            "before": before,
            "after": applied.after,
            "rollback": applied.rollback,
            "applied_at": self.clock(),
        }

    @staticmethod
    def _failure(exc: Exception, before: dict[str, Any]) -> dict[str, Any]:
        out = {"outcome": "failed", "error": str(exc), "changed_host": False, "before": before}
        if getattr(exc, "may_have_changed", False):
            # It ran and failed part-way (a runbook command): what it printed is kept, and the
            # step is never run again under its idempotency key.
            out |= {"changed_host": True, "may_have_changed": True, "after": getattr(exc, "after", None)}
        return out

    def _settle(
        self,
        run_id: str,
        plan_hash: str,
        base: dict[str, Any],
        act: Any,
        p: Any,
        before: dict[str, Any],
        *,
        why: str,
    ) -> dict[str, Any]:
        try:
            now_state = act.probe(p)
            state = act.settle(p, before, now_state)
        except Exception as exc:  # a probe that fails leaves the outcome unknown, not the run stuck
            now_state, state = {"error": str(exc)}, "unknown"
        result = base | {
            "outcome": f"settled_{state}",
            "settled_because": why,
            "changed_host": state == "applied",
            "before": before,
            "after": now_state,
            # Rollback data is what apply would have returned: the state before the change.
            "rollback": act.rollback_data(before) if state == "applied" else None,
            "applied_at": self.clock() if state == "applied" else None,
        }
        self._finish(base["idempotency_key"], run_id, plan_hash, base["step"], "execution_settled", result)
        return result

    def rollback(
        self,
        run_id: str,
        result: dict[str, Any],
        *,
        actor: str,
        why: str,
        plan_hash: str | None = None,
    ) -> dict[str, Any]:
        """Undo one applied step from its recorded rollback data, once (claimed in the store
        first, so the verifier and an operator cannot both do it); recorded and audited."""
        key = result["idempotency_key"]
        out: dict[str, Any] = {"step": result["step"], "action": result["action"]}
        row = self._intent(key)
        if row is None or not result.get("rollback"):
            return out | {"outcome": "no_rollback"}
        if row["rolled_back_at"] is not None:
            done: dict[str, Any] = row["rollback_result"] or {}
            return done | {"already": True}
        now = self.clock()
        with self.runs.begin() as tx:
            if not tx.claim_rollback(key, at=now):
                return out | {"outcome": "rolled_back", "already": True}
        try:
            act = get(result["action"], self.env)
            if not act.reversible:
                raise ActuatorError(f"{act.name} has no rollback")
            after = act.rollback(act.validate(row["params"]), result["rollback"])
            out |= {"outcome": "rolled_back", "state": after}
        except Exception as exc:  # recorded; the claim is released so it can be tried again
            out |= {"outcome": "rollback_failed", "error": str(exc)}
        with self.runs.begin() as tx:
            tx.finish_rollback(key, out, done=out["outcome"] == "rolled_back")
            tx.audit(
                at=self.clock(),
                actor=actor,
                kind="rollback",
                run_id=run_id,
                plan_hash=plan_hash,
                step=result["step"],
                detail={
                    "action": result["action"],
                    "outcome": out["outcome"],
                    "why": why,
                    "error": out.get("error"),
                },
            )
        # The state after goes to the audit trail's intents row, not the (capped) artifact.
        return {k: v for k, v in out.items() if k != "state"}

    def intents(self, run_id: str) -> list[IntentRow]:
        return self.runs.intents_of(run_id)
