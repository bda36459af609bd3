"""executor -> execution_result. Under the default posture it records the dry run: what
each step would do, and that nothing ran. Issue 7 gives it actuators, intents and results."""

from __future__ import annotations

from controller.workflow.roles.base import Output, Role, StageContext, register


@register
class Executor(Role):
    kind = "execution_result"

    def compute(self, ctx: StageContext) -> Output:
        plan = ctx.previous("execution_plan").payload
        results = []
        for step in plan.get("steps", []):
            if step["decision"] == "allowed_dry_run":
                outcome = "dry_run: would run"
            elif step["decision"] == "blocked":
                outcome = f"not run: {step['reason']}"
            elif step["decision"] == "approval_required":
                outcome = "not run: awaiting approval"
            else:
                outcome = "not run: execution arrives with the governed-execution issue"
            results.append(
                {
                    "step": step["step"],
                    "action": step["action"],
                    "outcome": outcome,
                    "idempotency_key": step["idempotency_key"],
                    "changed_host": False,
                }
            )
        return Output(
            payload={
                "dry_run": plan.get("posture", {}).get("dry_run", True),
                "results": results,
                "plan_hash": plan.get("plan_hash"),
            },
            status="skipped",
            notes=["nothing changed on the host"],
        )
