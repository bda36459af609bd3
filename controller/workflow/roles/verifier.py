"""verifier -> verification_result. Nothing ran, so there is nothing to verify: skipped, dry_run."""

from __future__ import annotations

from controller.workflow.roles.base import Output, Role, StageContext, register


@register
class Verifier(Role):
    kind = "verification_result"

    def compute(self, ctx: StageContext) -> Output:
        result = ctx.previous("execution_result").payload
        changed = any(r.get("changed_host") for r in result.get("results", []))
        return Output(
            payload={
                "verdict": "skipped",
                "reason": "dry_run" if not changed else "verification not built",
                "compared_signals": [],
            },
            status="skipped",
        )
