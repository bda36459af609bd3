"""policy gate -> execution_plan: a decision per proposed step, its idempotency key, the plan hash.

Under the default posture (dry run, approval required, safe_reversible and impacting
off, destructive always proposal-only) nothing would run: read-only checks are
allowed as a dry run, everything else is blocked with the reason, or needs approval
where the posture lets it through.
"""

from __future__ import annotations

import hashlib
from typing import Any

from controller.artifacts import canonical
from controller.workflow.roles.base import Output, Posture, Role, StageContext, register


def decide(action: dict[str, Any], posture: Posture) -> tuple[str, str | None]:
    cls = action["safety_class"]
    if cls == "destructive":
        return "blocked", "destructive actions are proposal-only"
    if cls == "impacting" and action.get("rollback") is None:
        return "blocked", "an impacting action without rollback data stays a proposal"
    if cls == "impacting" and not posture.allow_impacting:
        return "blocked", "impacting actions are off (posture.allow_impacting)"
    if cls == "safe_reversible" and not posture.allow_safe_reversible:
        return "blocked", "safe_reversible actions are off (posture.allow_safe_reversible)"
    if cls == "read_only":
        return "allowed_dry_run" if posture.dry_run else "allowed", None
    if posture.approval_required:
        return "approval_required", None
    return "allowed_dry_run" if posture.dry_run else "allowed", None


@register
class PolicyGate(Role):
    kind = "execution_plan"

    def compute(self, ctx: StageContext) -> Output:
        actions = ctx.previous("remediation_proposal").payload.get("actions", [])
        fp = ctx.run["fingerprint"]
        steps = []
        for i, a in enumerate(actions):
            decision, reason = decide(a, ctx.posture)
            key = hashlib.sha256(canonical([fp, a["action"], a["parameters"]])).hexdigest()[:32]
            steps.append(
                {
                    "step": i,
                    "action": a["action"],
                    "target": a["target"],
                    "safety_class": a["safety_class"],
                    "decision": decision,
                    "reason": reason,
                    "idempotency_key": key,
                }
            )
        plan_hash = hashlib.sha256(canonical(steps)).hexdigest()
        needs = [s["step"] for s in steps if s["decision"] == "approval_required"]
        return Output(
            payload={
                "posture": {
                    "dry_run": ctx.posture.dry_run,
                    "approval_required": ctx.posture.approval_required,
                    "allow_safe_reversible": ctx.posture.allow_safe_reversible,
                    "allow_impacting": ctx.posture.allow_impacting,
                },
                "steps": steps,
                "needs_approval": needs,
                "plan_hash": plan_hash,
            },
            status="blocked" if steps and all(s["decision"] == "blocked" for s in steps) else "ok",
        )
