"""policy gate -> execution_plan: a decision per proposed step, its idempotency key, the plan hash.

Only this code decides what may run; a model's or a rule's proposal is an input.
Per step, in order: an unknown action or parameters its actuator refuses are
blocked; destructive actions are always proposal-only; an impacting action without
rollback data stays a proposal (unless the posture opts in: ``allow_without_rollback``,
or a runbook command listed in ``execution.commands``, whose listing is the opt-in,
recorded in the plan's posture); classes the posture turns off are blocked; a step
for a host this controller cannot reach is blocked; read-only validation is allowed
(also in a dry run); the rest needs approval when the posture says so, and is a dry
run when dry_run is on. The plan hash covers every step, so an approval binds to
exactly this plan.
"""

from __future__ import annotations

import hashlib
from typing import Any

from controller.actuators import ACTUATORS, ActuatorError, HostEnv
from controller.artifacts import canonical
from controller.workflow.roles.base import Output, Posture, Role, StageContext, register

VALIDATE = "validate_state"
CLUSTER_ACTIONS = (
    "restart_pod",
    "cordon_and_taint",
    "pause_rollout",
    "restart_deployment",
    "scale_deployment",
)  # act through the Kubernetes API, from anywhere
COMMAND = "run_command"  # a runbook command: listing it in execution.commands is the opt-in


def _from_anywhere(action: dict[str, Any], posture: Posture) -> bool:
    if action["action"] == COMMAND:
        rule = posture.command((action.get("parameters") or {}).get("command"))
        return rule is not None and rule.scope == "cluster"
    return action["action"] in CLUSTER_ACTIONS


def decide(action: dict[str, Any], posture: Posture, host_id: str = "") -> tuple[str, str | None]:
    name, cls = action["action"], action["safety_class"]
    if name != VALIDATE:
        known = ACTUATORS.get(name)
        if known is None:
            return "blocked", f"no actuator {name!r}"
        if known.safety_class != cls:
            return "blocked", f"{name} is {known.safety_class}, not {cls} as proposed"
        try:
            known(HostEnv(commands=posture.commands)).validate(action["parameters"])
        except ActuatorError as exc:
            return "blocked", str(exc)
        if name == COMMAND:
            rule = posture.command(action["parameters"].get("command"))
            if rule is None or action.get("for_family") not in rule.for_families:
                listed = ", ".join(rule.for_families if rule else [])
                return "blocked", f"run_command is listed for {listed}, not {action.get('for_family')}"
    elif cls != "read_only":
        return "blocked", "validation must be read_only"
    if cls == "destructive":
        return "blocked", "destructive actions are proposal-only"
    reversible = name in ACTUATORS and ACTUATORS[name].reversible
    opted_in = name in posture.allow_without_rollback or name == COMMAND
    if cls == "impacting" and (action.get("rollback") is None or not reversible) and not opted_in:
        return "blocked", "an impacting action without rollback data stays a proposal"
    if cls == "impacting" and not posture.allow_impacting:
        return "blocked", "impacting actions are off (posture.allow_impacting)"
    if cls == "safe_reversible" and not posture.allow_safe_reversible:
        return "blocked", "safe_reversible actions are off (posture.allow_safe_reversible)"
    if not _from_anywhere(action, posture) and host_id not in posture.local_hosts:
        return "blocked", f"host {host_id} is not reachable from this controller (execution.local_hosts)"
    if cls == "read_only":
        return "allowed", None
    if posture.approval_required:
        return "approval_required", None
    return "allowed_dry_run" if posture.dry_run else "allowed", None


def plan_hash_of(posture: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """The hash an approval binds to; approval and execution recompute it from the stored plan."""
    return hashlib.sha256(canonical({"posture": posture, "steps": steps})).hexdigest()


def idempotency_key(fingerprint: str, action: dict[str, Any]) -> str:
    return hashlib.sha256(canonical([fingerprint, action["action"], action["parameters"]])).hexdigest()[:32]


@register
class PolicyGate(Role):
    kind = "execution_plan"

    def compute(self, ctx: StageContext) -> Output:
        actions = ctx.previous("remediation_proposal").payload.get("actions", [])
        fp, host = ctx.run["fingerprint"], ctx.run["host_id"]
        steps = []
        for i, a in enumerate(actions):
            decision, reason = decide(a, ctx.posture, host)
            steps.append(
                {
                    "step": i,
                    "action": a["action"],
                    "target": a["target"],
                    "parameters": a["parameters"],
                    "safety_class": a["safety_class"],
                    "decision": decision,
                    "reason": reason,
                    "idempotency_key": idempotency_key(fp, a),
                    "reversible": a.get("rollback") is not None,
                }
            )
        posture = ctx.posture.public() | {"host_reachable": host in ctx.posture.local_hosts}
        if "commands" in posture:  # the plan records the runbook commands its steps name, no more
            named = {s["parameters"].get("command") for s in steps if s["action"] == COMMAND}
            posture["commands"] = [c for c in posture["commands"] if c["name"] in named]
            if not posture["commands"]:
                del posture["commands"]
        # The posture is in the hash: an approval of a dry-run plan never approves a live one.
        plan_hash = plan_hash_of(posture, steps)
        needs = [s["step"] for s in steps if s["decision"] == "approval_required"]
        return Output(
            payload={
                "posture": posture,
                "steps": steps,
                "needs_approval": needs,
                "plan_hash": plan_hash,
            },
            status="blocked" if steps and all(s["decision"] == "blocked" for s in steps) else "ok",
        )
