"""Kubernetes in plans: Deployment actions proposed from the culprit's workload, the node
named by the host's label (never its host id), and restart_pod runnable only where an
operator opted in."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.config import ExecutionSettings
from controller.workflow.options import posture_from
from controller.workflow.roles.base import Posture
from controller.workflow.roles.planner import actions_for
from controller.workflow.roles.policy_gate import CLUSTER_ACTIONS, decide

POD = {"kind": "pod", "id": "0b1c2d3e-aaaa-bbbb-cccc-000000000042", "workload": "shop/Deployment/api"}


def hyp(family: str, culprit: dict[str, Any]) -> dict[str, Any]:
    return {"family": family, "culprit": culprit, "rank": 1}


def by_name(acts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["action"]: a for a in acts}


def test_deployment_actions_come_from_the_workload_and_the_node_from_its_label() -> None:
    mem = by_name(actions_for(hyp("memory_pressure", POD), "3d1219c7c4c5", {"node": "node-1"}))
    assert mem["restart_deployment"]["parameters"] == {"namespace": "shop", "name": "api"}
    restart = mem["restart_deployment"]
    assert restart["safety_class"] == "impacting" and restart["rollback"] is None
    assert mem["restart_pod"]["parameters"] == {"uid": POD["id"], "node": "node-1"}
    cpu = by_name(actions_for(hyp("cpu_saturation", POD), "3d1219c7c4c5", {"node": "node-1"}))
    assert cpu["scale_deployment"]["parameters"] == {"namespace": "shop", "name": "api", "by": 1}
    assert "restart_deployment" not in cpu
    # No node label: no action that names a node (the host id is a machine id, not a node).
    assert "restart_pod" not in by_name(actions_for(hyp("memory_pressure", POD), "3d1219c7c4c5"))
    bare = POD | {"workload": "ops/Pod/debug"}  # nothing would bring it back
    assert "restart_pod" not in by_name(actions_for(hyp("memory_pressure", bare), "h", {"node": "n"}))
    job = POD | {"workload": "batch/Job/nightly"}
    assert "restart_pod" not in by_name(actions_for(hyp("memory_pressure", job), "h", {"node": "n"}))
    stateful = POD | {"workload": "db/StatefulSet/pg"}
    assert not {"restart_deployment", "scale_deployment"} & set(
        by_name(actions_for(hyp("memory_pressure", stateful), "h", {"node": "n"}))
    )
    gpu = by_name(actions_for(hyp("gpu_xid", {"kind": "device", "id": "GPU-a"}), "h", {"node": "gpu-7"}))
    assert (
        gpu["cordon_and_taint"]["parameters"]["node"] == "gpu-7"
        and gpu["cordon_and_taint"]["target"] == "node:gpu-7"
    )
    assert "cordon_and_taint" not in by_name(
        actions_for(hyp("gpu_xid", {"kind": "device", "id": "GPU-a"}), "h")
    )
    assert {"restart_deployment", "scale_deployment"} <= set(CLUSTER_ACTIONS)


def test_restart_pod_runs_only_where_an_operator_opted_in() -> None:
    act = by_name(actions_for(hyp("memory_pressure", POD), "h", {"node": "node-1"}))["restart_pod"]
    assert decide(act, Posture(allow_impacting=True)) == (
        "blocked",
        "an impacting action without rollback data stays a proposal",
    )
    opted = Posture(allow_impacting=True, allow_without_rollback=("restart_pod",))
    assert decide(act, opted) == ("approval_required", None)
    assert decide(act, Posture(allow_without_rollback=("restart_pod",)))[1] == (
        "impacting actions are off (posture.allow_impacting)"
    )
    with pytest.raises(ValidationError):
        ExecutionSettings.model_validate({"allow_without_rollback": ["sigkill"]})  # only self-healing ones
    posture = posture_from(ExecutionSettings(allow_without_rollback=["restart_pod"]), [])
    assert posture.allow_without_rollback == ("restart_pod",)
    assert posture.public()["allow_without_rollback"] == ["restart_pod"]
    assert "allow_without_rollback" not in Posture().public()  # older plans hash as they did
    restart = by_name(actions_for(hyp("memory_pressure", POD), "h", {"node": "node-1"}))["restart_deployment"]
    assert decide(restart, Posture(allow_impacting=True))[0] == "blocked"
    both = Posture(allow_impacting=True, allow_without_rollback=("restart_pod", "restart_deployment"))
    assert decide(restart, both) == ("approval_required", None)
