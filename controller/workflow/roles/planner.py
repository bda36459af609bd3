"""planner -> remediation_proposal: actions from a catalogue mapped to the hypotheses.

Each action names its target, parameters, safety class, the effect expected, and
the rollback data, or why there is none. The planner proposes only: the policy gate
decides, and only controller code runs anything.
"""

from __future__ import annotations

from typing import Any

from controller.workflow.roles.base import Output, Role, StageContext, register

SAFETY_CLASSES = ("read_only", "safe_reversible", "impacting", "destructive")


def _pid(culprit: dict[str, Any]) -> int | None:
    pid = culprit.get("pid")
    return pid if isinstance(pid, int) else None


def actions_for(h: dict[str, Any], host_id: str = "") -> list[dict[str, Any]]:
    fam, c = h["family"], h["culprit"]
    pid, cgroup = _pid(c), c.get("cgroup")
    if cgroup is None and c.get("kind") == "cgroup":
        cgroup = c.get("id")
    comm = c.get("comm")
    check = {
        "action": "validate_state",
        "target": c.get("id"),
        "parameters": {
            "family": fam,
            "culprit": {k: c.get(k) for k in ("kind", "id", "pid", "comm", "cgroup")},
        },
        "safety_class": "read_only",
        "expected_effect": "confirm the culprit is still the cause",
        "rollback": None,
        "rollback_none_reason": "reads only",
    }
    acts: list[dict[str, Any]] = [check]
    if fam in ("cpu_saturation", "input_pipeline_starvation", "runaway_forks") and pid:
        acts.append(
            {
                "action": "renice",
                "target": f"pid:{pid}",
                "parameters": {"pid": pid, "comm": comm, "nice": 10},
                "safety_class": "safe_reversible",
                "expected_effect": "other work gets the CPU back",
                "rollback": {"restore": "previous nice value, read before the change"},
            }
        )
    if fam in ("cpu_saturation", "cgroup_cpu_throttling") and cgroup:
        quota = c.get("quota_cores")
        params = {
            "cgroup": cgroup,
            "cores": 1.0 if fam == "cpu_saturation" else max(0.01, round((quota or 0.5) * 2, 2)),
        }
        acts.append(
            {
                "action": "cgroup_cpu_quota",
                "target": f"cgroup:{cgroup}",
                "parameters": params,
                "safety_class": "safe_reversible",
                "expected_effect": "cap the hog" if fam == "cpu_saturation" else "end the throttling",
                "rollback": {"restore": "previous cpu.max or cpu.cfs_quota_us"},
            }
        )
    if fam == "memory_pressure" and cgroup:
        acts.append(
            {
                "action": "cgroup_memory_soft_limit",
                "target": f"cgroup:{cgroup}",
                "parameters": {"cgroup": cgroup},
                "safety_class": "safe_reversible",
                "expected_effect": "reclaim from the culprit first",
                "rollback": {"restore": "previous memory.high or memory.soft_limit_in_bytes"},
            }
        )
    if fam == "io_pressure" and pid:
        acts.append(
            {
                "action": "ionice",
                "target": f"pid:{pid}",
                "parameters": {"pid": pid, "comm": comm, "class": "idle"},
                "safety_class": "safe_reversible",
                "expected_effect": "other IO gets the disk back",
                "rollback": {"restore": "previous IO class and priority"},
            }
        )
    if fam in ("fd_exhaustion", "memory_pressure", "cpu_saturation") and pid and not c.get("oom_victim"):
        acts.append(
            {
                "action": "sigterm",
                "target": f"pid:{pid}",
                "parameters": {"pid": pid, "comm": comm},
                "safety_class": "impacting",
                "expected_effect": "the process exits and frees what it holds",
                "rollback": None,
                "rollback_none_reason": "a stopped process cannot be un-stopped",
            }
        )
    if fam == "runaway_forks" and pid:
        acts.append(
            {
                "action": "sigkill",
                "target": f"pid:{pid}",
                "parameters": {"pid": pid, "comm": comm},
                "safety_class": "destructive",
                "expected_effect": "the fork loop stops",
                "rollback": None,
                "rollback_none_reason": "a killed process cannot be restored",
            }
        )
    if fam == "runaway_forks" and cgroup and cgroup != "/":
        acts.append(
            {
                "action": "cgroup_freeze",
                "target": f"cgroup:{cgroup}",
                "parameters": {"cgroup": cgroup},
                "safety_class": "impacting",
                "expected_effect": "the fork loop pauses with everything it started",
                "rollback": {"undo": "thaw the cgroup"},
            }
        )
    if fam == "memory_pressure" and not cgroup:
        acts.append(
            {
                "action": "drop_page_cache",
                "target": "host",
                "parameters": {"what": 1},
                "safety_class": "impacting",
                "expected_effect": "free clean page cache at once; it refills as files are read",
                "rollback": None,
                "rollback_none_reason": "a dropped cache cannot be put back",
            }
        )
    if c.get("kind") == "pod" and fam in ("memory_pressure", "cpu_saturation", "cgroup_cpu_throttling"):
        acts.append(
            {
                "action": "restart_pod",
                "target": f"pod:{c.get('id')}",
                "parameters": {"uid": c.get("id"), "node": host_id},
                "safety_class": "impacting",
                "expected_effect": "the pod's controller starts a fresh replica",
                "rollback": None,
                "rollback_none_reason": "a deleted pod is replaced, not restored",
            }
        )
    if fam in ("gpu_xid", "gpu_ecc") and c.get("kind") == "device":
        acts.append(
            {
                "action": "cordon_and_taint",
                "target": f"node:{host_id}",
                "parameters": {"node": host_id, "value": fam.replace("_", "-")},
                "safety_class": "impacting",
                "expected_effect": "no new work lands on the faulty GPU",
                "rollback": {"undo": "uncordon and remove the taint"},
            }
        )
    return acts


@register
class Planner(Role):
    kind = "remediation_proposal"

    def compute(self, ctx: StageContext) -> Output:
        hyps = ctx.previous("root_cause_hypothesis").payload.get("hypotheses", [])
        proposals = []
        for h in hyps[:2]:
            for a in actions_for(h, ctx.run["host_id"]):
                proposals.append({"for_family": h["family"], "for_rank": h["rank"], **a})
        return Output(
            payload={"actions": proposals[:8]},
            status="ok" if hyps else "skipped",
            notes=[] if hyps else ["no hypothesis to act on"],
        )
