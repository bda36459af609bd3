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
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from controller import audit
from controller.actuators import ActuatorError, HostEnv, get
from controller.actuators.validate import Toolbox

log = logging.getLogger(__name__)

SELECT_INTENT = text("SELECT * FROM action_intents WHERE idempotency_key = :k")
# Claiming a key: a plain insert (a second controller's insert of the same key fails), or
# taking over an expired or unusable intent only if it is still the one that was read.
INSERT_INTENT = text(
    "INSERT INTO action_intents (idempotency_key, run_id, step, action, params, before, intent_at) "
    "VALUES (:k, :run, :step, :action, :params, :before, :at) ON CONFLICT (idempotency_key) DO NOTHING"
)
RECLAIM_INTENT = text(
    "UPDATE action_intents SET run_id = :run, step = :step, params = :params, before = :before, "
    "intent_at = :at, outcome = NULL, result = NULL, result_at = NULL, rolled_back_at = NULL, "
    "rollback_result = NULL WHERE idempotency_key = :k AND intent_at = :old"
)
SET_RESULT = text(
    "UPDATE action_intents SET outcome = :o, result = :r, result_at = :at WHERE idempotency_key = :k"
)
CLAIM_ROLLBACK = text(
    "UPDATE action_intents SET rolled_back_at = :at WHERE idempotency_key = :k AND rolled_back_at IS NULL"
)
SET_ROLLBACK = text("UPDATE action_intents SET rollback_result = :r WHERE idempotency_key = :k")
RELEASE_ROLLBACK = text(
    "UPDATE action_intents SET rolled_back_at = NULL, rollback_result = :r WHERE idempotency_key = :k"
)
INTENTS_OF = text("SELECT * FROM action_intents WHERE run_id = :run ORDER BY step")
LATEST_DECISION = text(
    "SELECT * FROM approvals WHERE run_id = :run AND plan_hash = :plan ORDER BY id DESC LIMIT 1"
)
INSERT_DECISION = text(
    "INSERT INTO approvals (run_id, plan_hash, decision, actor, reason, steps, at, expires_at) "
    "VALUES (:run, :plan, :decision, :actor, :reason, :steps, :at, :exp)"
)
SET_STATUS = text("UPDATE workflow_runs SET status = :s, updated_at = :at WHERE run_id = :run")
RESUME_AWAITING = text(
    "UPDATE workflow_runs SET status = 'running', updated_at = :at "
    "WHERE run_id = :run AND status = 'awaiting_approval'"
)
REUSABLE = ("applied", "settled_applied")
EXECUTOR = "executor"
VERIFIER = "verifier"
Failpoint = Callable[[str, str], None]


@dataclass(frozen=True)
class ExecutionOptions:
    approval_ttl_s: float = 900.0
    action_timeout_s: float = 10.0
    max_concurrent_actions: int = 2
    tool_call_budget: int = 12
    iteration_budget: int = 3
    idempotency_ttl_s: float = 86_400.0
    verify_settle_s: float = 5.0
    verify_min_samples: int = 5
    verify_deadline_s: float = 300.0
    rollback_on_not_improved: bool = True


class DecisionConflict(ActuatorError):
    """The run is no longer awaiting a decision (another one got there first)."""


class ExecutionService:
    def __init__(
        self,
        db: Engine,
        env: HostEnv,
        options: ExecutionOptions | None = None,
        *,
        clock: Callable[[], float],
        failpoint: Failpoint | None = None,
    ) -> None:
        self.db = db
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

    def decision(self, run_id: str, plan_hash: str) -> dict[str, Any] | None:
        """The latest approval or rejection of exactly this plan, expired or not."""
        with self.db.connect() as conn:
            row = conn.execute(LATEST_DECISION, {"run": run_id, "plan": plan_hash}).first()
        if row is None:
            return None
        d = dict(row._mapping)
        d["steps"] = json.loads(d["steps"]) if d["steps"] else None
        return d

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
        with self.db.begin() as conn:
            # First the status, conditionally: of two concurrent decisions only one moves the run.
            if conn.execute(RESUME_AWAITING, {"at": now, "run": run_id}).rowcount != 1:
                raise DecisionConflict(f"run {run_id} is not awaiting approval (decided already?)")
            conn.execute(
                INSERT_DECISION,
                {
                    "run": run_id,
                    "plan": plan_hash,
                    "decision": "approved" if approve else "rejected",
                    "actor": actor,
                    "reason": reason,
                    "steps": json.dumps(sorted(steps)) if steps is not None else None,
                    "at": now,
                    "exp": expires,
                },
            )
            audit.record(
                conn,
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
            "decision": "approved" if approve else "rejected",
            "actor": actor,
            "reason": reason,
            "steps": steps,
            "at": now,
            "expires_at": expires,
        }

    def expire(self, run_id: str, plan_hash: str, approval: dict[str, Any]) -> None:
        """An approval outlived its TTL before the plan ran: back to awaiting_approval."""
        now = self.clock()
        with self.db.begin() as conn:
            conn.execute(SET_STATUS, {"s": "awaiting_approval", "at": now, "run": run_id})
            audit.record(
                conn,
                at=now,
                actor="policy_gate",
                kind="approval_expired",
                run_id=run_id,
                plan_hash=plan_hash,
                detail={"approved_by": approval["actor"], "expired_at": approval["expires_at"]},
            )

    def wait_for_approval(self, run_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(SET_STATUS, {"s": "awaiting_approval", "at": self.clock(), "run": run_id})

    # --- side effects --------------------------------------------------------------------------------

    def toolbox(self, used_iterations: int = 0) -> Toolbox:
        return Toolbox(
            self.env,
            max_calls=self.opts.tool_call_budget,
            max_iterations=self.opts.iteration_budget,
            used_iterations=used_iterations,
        )

    def _intent(self, key: str) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            row = conn.execute(SELECT_INTENT, {"k": key}).first()
        return dict(row._mapping) if row else None

    def _finish(
        self, key: str, run_id: str, plan_hash: str, step: int, kind: str, result: dict[str, Any]
    ) -> None:
        now = self.clock()
        with self.db.begin() as conn:
            conn.execute(
                SET_RESULT,
                {"o": result["outcome"], "r": json.dumps(result, default=str), "at": now, "k": key},
            )
            audit.record(
                conn,
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
            before = json.loads(row["before"])
            if row["result"] is None:
                # An intent without a result: the action may or may not have run. Look, do not redo.
                return self._settle(run_id, plan_hash, base, act, p, before, why="intent without a result")
            earlier: dict[str, Any] = json.loads(row["result"])
            if row["run_id"] == run_id:
                return earlier | base  # this run's own result, found again on a rerun of the stage
            if earlier["outcome"] in REUSABLE and row["rolled_back_at"] is None:
                with self.db.begin() as conn:
                    audit.record(
                        conn,
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
        intent = {
            "k": key,
            "run": run_id,
            "step": index,
            "action": action,
            "params": json.dumps(params, sort_keys=True),
            "before": json.dumps(before, default=str),
            "at": now,
        }
        with self.db.begin() as conn:
            if row is None:
                claimed = conn.execute(INSERT_INTENT, intent).rowcount == 1
            else:
                claimed = conn.execute(RECLAIM_INTENT, intent | {"old": row["intent_at"]}).rowcount == 1
            if claimed:
                audit.record(
                    conn,
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
                    return base | {
                        "outcome": "failed",
                        "error": str(exc),
                        "changed_host": False,
                        "before": before,
                    }
            except Exception as exc:  # ActuatorError, or a bug: recorded, never fatal to the run
                return base | {
                    "outcome": "failed",
                    "error": str(exc),
                    "changed_host": False,
                    "before": before,
                }
        return base | {
            "outcome": "applied",
            "changed_host": True,
            "before": before,
            "after": applied.after,
            "rollback": applied.rollback,
            "applied_at": self.clock(),
        }

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
            done: dict[str, Any] = json.loads(row["rollback_result"] or "{}")
            return done | {"already": True}
        now = self.clock()
        with self.db.begin() as conn:
            if conn.execute(CLAIM_ROLLBACK, {"at": now, "k": key}).rowcount != 1:
                return out | {"outcome": "rolled_back", "already": True}
        try:
            act = get(result["action"], self.env)
            if not act.reversible:
                raise ActuatorError(f"{act.name} has no rollback")
            after = act.rollback(act.validate(json.loads(row["params"])), result["rollback"])
            out |= {"outcome": "rolled_back", "state": after}
        except Exception as exc:  # recorded; the claim is released so it can be tried again
            out |= {"outcome": "rollback_failed", "error": str(exc)}
        with self.db.begin() as conn:
            encoded = json.dumps(out, default=str)
            if out["outcome"] == "rolled_back":
                conn.execute(SET_ROLLBACK, {"r": encoded, "k": key})
            else:
                conn.execute(RELEASE_ROLLBACK, {"r": encoded, "k": key})
            audit.record(
                conn,
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

    def intents(self, run_id: str) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(INTENTS_OF, {"run": run_id})]
        for r in rows:
            for k in ("params", "before", "result", "rollback_result"):
                r[k] = json.loads(r[k]) if r[k] else None
        return rows
