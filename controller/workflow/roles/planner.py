"""planner -> remediation_proposal: actions from a catalogue mapped to the hypotheses.

Each action names its target, parameters, safety class, the effect expected, and
the rollback data, or why there is none. The safety class is the one the action's
actuator declares (controller.actuators); validate_state has no actuator (it reads
through the read-only toolbox), so its read_only class is declared here. The planner
proposes only: the policy gate decides, and only controller code runs anything.
"""

from __future__ import annotations

from typing import Any

from controller.actuators import ACTUATORS
from controller.actuators.command import render
from controller.config import CommandSettings
from controller.workflow.roles import fleet
from controller.workflow.roles.base import Output, Role, StageContext, register

MEMBER_ACTIONS_MAX = 4  # per-process steps for a culprit with many members (the heaviest first)
MAX_COMMANDS = 2  # runbook commands per run: each is recorded whole in the plan


def _pid(culprit: dict[str, Any]) -> int | None:
    pid = culprit.get("pid")
    return pid if isinstance(pid, int) else None


def _workers(culprit: dict[str, Any], family: str) -> list[tuple[int, Any]]:
    """(pid, comm) of the processes a per-process action acts on: the process itself; for an
    owner with members (a tree, a cgroup, a unit), its heaviest members, not its parent (a
    fork storm's parent is the one exception: it is what forks)."""
    kind, pid = culprit.get("kind"), _pid(culprit)
    if pid and (kind in ("process", "pod", None) or (kind == "process_tree" and family == "runaway_forks")):
        return [(pid, culprit.get("comm"))]
    if kind in ("process", None):
        return []
    comms = list(culprit.get("comms") or {})
    comm = comms[0] if len(comms) == 1 else None
    pids = [p for p in culprit.get("pids") or [] if isinstance(p, int) and not isinstance(p, bool)]
    return [(p, comm) for p in pids[:MEMBER_ACTIONS_MAX]]


def _act(
    name: str,
    target: str,
    parameters: dict[str, Any],
    *,
    expected_effect: str,
    rollback: dict[str, Any] | None,
    rollback_none_reason: str | None = None,
) -> dict[str, Any]:
    """One proposed action, its safety class read from its actuator; the keys in the
    order the artifacts have always had them (plan hashes and artifact digests cover it)."""
    act: dict[str, Any] = {
        "action": name,
        "target": target,
        "parameters": parameters,
        "safety_class": ACTUATORS[name].safety_class,
        "expected_effect": expected_effect,
        "rollback": rollback,
    }
    if rollback_none_reason is not None:
        act["rollback_none_reason"] = rollback_none_reason
    return act


def _deployment(culprit: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the Deployment the culprit's pod belongs to (its ``workload``,
    as the collector names it: <namespace>/Deployment/<name>), or None."""
    workload = culprit.get("workload")
    parts = workload.split("/") if isinstance(workload, str) else []
    return (parts[0], parts[2]) if len(parts) == 3 and parts[1] == "Deployment" else None


def command_values(h: dict[str, Any], host_id: str, labels: dict[str, str]) -> dict[str, object]:
    """What a runbook command's placeholders stand for in this hypothesis (absent: unknown)."""
    c = h["culprit"]
    workload = str(c.get("workload") or "").split("/")
    values: dict[str, object] = {
        "host_id": host_id,
        "node": labels.get("node"),
        "namespace": c.get("namespace"),
        "pod": c.get("pod"),
        "container": c.get("container"),
        "workload_kind": workload[1] if len(workload) == 3 else None,
        "workload": workload[2] if len(workload) == 3 else None,
        "pid": _pid(c),
        "comm": c.get("comm"),
        "cgroup": c.get("cgroup") or (c.get("id") if c.get("kind") == "cgroup" else None),
        "family": h["family"],
    }
    return {k: v for k, v in values.items() if v is not None}


def command_actions(
    h: dict[str, Any], host_id: str, labels: dict[str, str], commands: tuple[CommandSettings, ...]
) -> list[dict[str, Any]]:
    """The runbook commands listed for this family, filled in; one whose placeholders have no
    safe value here (no pod on a bare host, a comm with a space) is not proposed."""
    values = command_values(h, host_id, labels)
    acts = []
    for rule in commands:
        argv = render(rule.argv, values) if h["family"] in rule.for_families else None
        if argv is None:
            continue
        effect = rule.expected_effect or f"the runbook command {rule.name} mitigates {h['family']}"
        acts.append(
            _act(
                "run_command",
                f"command:{rule.name}",
                {"command": rule.name, "argv": argv, "rule": rule.digest()},
                expected_effect=effect,
                rollback=None,
                rollback_none_reason="a command's effect cannot be read back or undone by the controller",
            )
        )
    return acts


def actions_for(
    h: dict[str, Any],
    host_id: str = "",
    labels: dict[str, str] | None = None,
    commands: tuple[CommandSettings, ...] = (),
) -> list[dict[str, Any]]:
    """The proposals for one hypothesis. Kubernetes actions name the node by the host's
    ``node`` label (the Node object's name, which the collector reads), never by host id;
    without one they are not proposed."""
    fam, c = h["family"], h["culprit"]
    node = (labels or {}).get("node")
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
    workers = _workers(c, fam)
    for wpid, wcomm in (
        workers if fam in ("cpu_saturation", "input_pipeline_starvation", "runaway_forks") else []
    ):
        acts.append(
            _act(
                "renice",
                f"pid:{wpid}",
                {"pid": wpid, "comm": wcomm, "nice": 10},
                expected_effect="other work gets the CPU back",
                rollback={"restore": "previous nice value, read before the change"},
            )
        )
    if fam in ("cpu_saturation", "cgroup_cpu_throttling") and cgroup:
        quota = c.get("quota_cores")
        params = {
            "cgroup": cgroup,
            "cores": 1.0 if fam == "cpu_saturation" else max(0.01, round((quota or 0.5) * 2, 2)),
        }
        acts.append(
            _act(
                "cgroup_cpu_quota",
                f"cgroup:{cgroup}",
                params,
                expected_effect="cap the hog" if fam == "cpu_saturation" else "end the throttling",
                rollback={"restore": "previous cpu.max or cpu.cfs_quota_us"},
            )
        )
    if fam == "memory_pressure" and cgroup:
        acts.append(
            _act(
                "cgroup_memory_soft_limit",
                f"cgroup:{cgroup}",
                {"cgroup": cgroup},
                expected_effect="reclaim from the culprit first",
                rollback={"restore": "previous memory.high or memory.soft_limit_in_bytes"},
            )
        )
    for wpid, wcomm in workers if fam == "io_pressure" else []:
        acts.append(
            _act(
                "ionice",
                f"pid:{wpid}",
                {"pid": wpid, "comm": wcomm, "class": "idle"},
                expected_effect="other IO gets the disk back",
                rollback={"restore": "previous IO class and priority"},
            )
        )
    # Ending one worker of an owner with many ends nothing: only a lone process is stopped.
    single = c.get("kind") in ("process", "pod", None)
    if (
        fam in ("fd_exhaustion", "memory_pressure", "cpu_saturation")
        and pid
        and single
        and not c.get("oom_victim")
    ):
        acts.append(
            _act(
                "sigterm",
                f"pid:{pid}",
                {"pid": pid, "comm": comm},
                expected_effect="the process exits and frees what it holds",
                rollback=None,
                rollback_none_reason="a stopped process cannot be un-stopped",
            )
        )
    if fam == "runaway_forks" and pid:
        acts.append(
            _act(
                "sigkill",
                f"pid:{pid}",
                {"pid": pid, "comm": comm},
                expected_effect="the fork loop stops",
                rollback=None,
                rollback_none_reason="a killed process cannot be restored",
            )
        )
    if fam == "runaway_forks" and cgroup and cgroup != "/":
        acts.append(
            _act(
                "cgroup_freeze",
                f"cgroup:{cgroup}",
                {"cgroup": cgroup},
                expected_effect="the fork loop pauses with everything it started",
                rollback={"undo": "thaw the cgroup"},
            )
        )
    if fam == "memory_pressure" and not cgroup:
        acts.append(
            _act(
                "drop_page_cache",
                "host",
                {"what": 1},
                expected_effect="free clean page cache at once; it refills as files are read",
                rollback=None,
                rollback_none_reason="a dropped cache cannot be put back",
            )
        )
    deployment = _deployment(c)
    if deployment is not None and fam == "memory_pressure":
        ns, name = deployment
        acts.append(
            _act(
                "restart_deployment",
                f"deployment:{ns}/{name}",
                {"namespace": ns, "name": name},
                expected_effect="fresh pods by the Deployment's own rollout, memory given back",
                rollback=None,
                rollback_none_reason="a restart cannot be undone (restoring the annotation restarts again)",
            )
        )
    if deployment is not None and fam in ("cpu_saturation", "cgroup_cpu_throttling"):
        ns, name = deployment
        acts.append(
            _act(
                "scale_deployment",
                f"deployment:{ns}/{name}",
                {"namespace": ns, "name": name, "by": 1},
                expected_effect="one more replica shares the load",
                rollback={"restore": "the previous replica count"},
            )
        )
    # Only a pod a controller replaces (not a bare pod, not a Job's, which would not come back).
    owner_kind = str(c.get("workload") or "").split("/")[1:2]
    replaced = owner_kind in (["Deployment"], ["ReplicaSet"], ["StatefulSet"])
    if (
        c.get("kind") == "pod"
        and node
        and replaced
        and fam in ("memory_pressure", "cpu_saturation", "cgroup_cpu_throttling")
    ):
        acts.append(
            _act(
                "restart_pod",
                f"pod:{c.get('id')}",
                {"uid": c.get("id"), "node": node},
                expected_effect="the pod's controller starts a fresh replica",
                rollback=None,
                rollback_none_reason="a deleted pod is replaced, not restored",
            )
        )
    if fam in ("gpu_xid", "gpu_ecc") and c.get("kind") == "device" and node:
        acts.append(
            _act(
                "cordon_and_taint",
                f"node:{node}",
                {"node": node, "value": fam.replace("_", "-")},
                expected_effect="no new work lands on the faulty GPU",
                rollback={"undo": "uncordon and remove the taint"},
            )
        )
    return acts + command_actions(h, host_id, labels or {}, commands)


@register
class Planner(Role):
    kind = "remediation_proposal"

    def compute(self, ctx: StageContext) -> Output:
        if fleet.is_fleet(ctx):
            return fleet.proposals(ctx)
        hyps = ctx.previous("root_cause_hypothesis").payload.get("hypotheses", [])
        proposals = []
        # A symptom (explained by a cause above it) is not acted on: its cause is.
        commands = 0
        for h in [h for h in hyps if not h.get("explained_by")][:2]:
            for a in actions_for(h, ctx.run["host_id"], ctx.evidence.labels, ctx.posture.commands):
                if a["action"] == "run_command":
                    commands += 1
                    if commands > MAX_COMMANDS:
                        continue  # the proposal and the plan stay within their size caps
                proposals.append({"for_family": h["family"], "for_rank": h["rank"], **a})
        return Output(
            payload={"actions": proposals[:8]},
            status="ok" if hyps else "skipped",
            notes=[] if hyps else ["no hypothesis to act on"],
        )
