"""executor -> execution_result: each step of the plan, run or not, and why.

Blocked steps and steps the operator did not approve are recorded as not run. Read-
only validation runs its checks under the run's tool-call and iteration budgets. In
a dry run every other step says what it would do and reads the live state it would
change; otherwise the execution service applies it, exactly once per idempotency key.
"""

from __future__ import annotations

from typing import Any

from controller.actuators import ActuatorError, get
from controller.actuators.validate import BudgetExhausted, Toolbox, checks_for
from controller.artifacts import PAYLOAD_CAPS, canonical
from controller.workflow.roles.base import Output, Role, StageContext, register


def validate(box: Toolbox, step: dict[str, Any]) -> dict[str, Any]:
    params = step["parameters"]
    if not box.iteration():
        return {"outcome": "not_run", "reason": "iteration budget spent"}
    answers = []
    try:
        for tool, args in checks_for(params.get("family", ""), params.get("culprit") or {}):
            answers.append(box.call(tool, **args) | {"tool": tool})
    except BudgetExhausted as exc:
        answers.append({"error": str(exc)})
    gone = any(a.get("tool") == "process_exists" and a.get("exists") is False for a in answers)
    return {
        "outcome": "validated",
        "still_present": not gone,
        "checks": answers,
        "tool_calls": len(box.calls),
        "iterations": box.iterations,
    }


def dry_run(ctx: StageContext, step: dict[str, Any]) -> dict[str, Any]:
    try:
        act = get(step["action"], ctx.actions.env)
        p = act.validate(step["parameters"])
        out: dict[str, Any] = {"outcome": "dry_run", "would": act.describe(p)}
        try:
            out["state_now"] = act.probe(p)  # reads only
        except ActuatorError as exc:
            out["state_now"] = {"error": str(exc)}
        return out
    except ActuatorError as exc:
        return {"outcome": "failed", "error": str(exc)}


def approved(ctx: StageContext, step: dict[str, Any]) -> tuple[bool, str]:
    a = ctx.approval
    if a is None:
        return False, "not approved"
    if a["decision"] != "approved":
        return False, f"rejected by {a['actor']}: {a['reason']}"
    if a["steps"] is not None and step["step"] not in a["steps"]:
        return False, f"not among the steps {a['actor']} approved"
    return True, f"approved by {a['actor']}"


STATE_FIELDS = ("checks", "state_now", "before", "after")


def fit(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Live-state snapshots are the bulky part of a result: past the payload cap they give
    way (the action_intents table keeps them), outcomes and rollback data never do."""
    if len(canonical(results)) <= PAYLOAD_CAPS["execution_result"] - 1024:
        return results
    return [{k: v for k, v in r.items() if k not in STATE_FIELDS} | {"trimmed": True} for r in results]


@register
class Executor(Role):
    kind = "execution_result"

    def compute(self, ctx: StageContext) -> Output:
        plan = ctx.previous("execution_plan").payload
        # The stricter of the posture the plan was approved under and the one in force now.
        dry = ctx.posture.dry_run or bool(plan.get("posture", {}).get("dry_run", True))
        # A replay never acts and never reads live state: it reuses what the run recorded.
        recorded = getattr(ctx.actions, "recorded_results", None)
        results = []
        box = ctx.actions.toolbox() if ctx.actions is not None and recorded is None else None
        for step in plan.get("steps", []):
            base = {
                "step": step["step"],
                "action": step["action"],
                "target": step["target"],
                "idempotency_key": step["idempotency_key"],
                "changed_host": False,
            }
            decision = step["decision"]
            if recorded is not None:
                results.append(
                    recorded.get(step["idempotency_key"])
                    or base | {"outcome": "not_run", "reason": "a replay never acts"}
                )
                continue
            if ctx.actions is None:
                results.append(base | {"outcome": "not_run", "reason": "no execution service"})
                continue
            if decision == "blocked":
                results.append(base | {"outcome": "not_run", "reason": step["reason"]})
                continue
            if step["action"] == "validate_state":
                assert box is not None
                results.append(base | validate(box, step))
                continue
            if decision == "approval_required":
                ok, why = approved(ctx, step)
                if not ok:
                    results.append(base | {"outcome": "not_run", "reason": why})
                    continue
                base["approval"] = why
            if dry or decision == "allowed_dry_run":
                results.append(base | dry_run(ctx, step))
                continue
            results.append(
                base | ctx.actions.apply(ctx.run["run_id"], plan["plan_hash"], step, step["parameters"])
            )
        results = fit(results)
        changed = any(r.get("changed_host") for r in results)
        return Output(
            payload={
                "dry_run": dry,
                "results": results,
                "plan_hash": plan.get("plan_hash"),
                "changed_host": changed,
            },
            status="ok" if changed or any(r["outcome"] == "validated" for r in results) else "skipped",
            notes=[] if changed else ["nothing changed on the host"],
        )
