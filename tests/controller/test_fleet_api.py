"""The seed's fleet endpoints: fleet incidents with members, joint risk, proposed actions, HA status."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from collector.wire import validate_batch
from controller.runtime import Runtime
from testkit.scenarios import batch_for

from .conftest import COLLECTOR_TOKEN, served_api
from .test_workflow_api import OPS

Api = tuple[httpx.Client, Runtime]


def labelled_incident(rt: Runtime, family: str, host: str, labels: dict[str, str]) -> str | None:
    doc: dict[str, Any] = batch_for(family, host)
    doc["collector"] = {"host_id": host, "labels": labels}
    raw = msgspec.json.encode(doc)
    rt.hot.ingest(validate_batch(raw), raw)
    return rt.workflow.evaluate(host)


def calm_host(rt: Runtime, host: str, labels: dict[str, str]) -> None:
    doc: dict[str, Any] = batch_for(None, host)
    doc["collector"] = {"host_id": host, "labels": labels}
    raw = msgspec.json.encode(doc)
    rt.hot.ingest(validate_batch(raw), raw)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet_api(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with served_api(tmp_path, url, fleet={"min_hosts": 3}) as got:
        yield got


def test_fleet_incidents_list_their_members_and_page(fleet_api: Api) -> None:
    client, rt = fleet_api
    zone_a = {"cluster": "prod", "zone": "a"}
    for i in range(4):
        assert labelled_incident(rt, "cpu_saturation", f"web-{i}", zone_a)
    for i in range(3):
        assert labelled_incident(rt, "fd_exhaustion", f"db-{i}", {"cluster": "prod", "zone": "b"})
    calm_host(rt, "idle-1", zone_a)
    assert rt.workflow.triggers.fleet_pass() == 2
    body = client.get("/api/v1/agent/workflow/incidents", headers=OPS).json()
    assert body["count"] == 2 and body["next_cursor"] is None
    by_family = {i["family"]: i for i in body["incidents"]}
    web = by_family["cpu_saturation"]
    assert web["scope"] == "fleet" and web["host_id"] == "~fleet" and web["state"] == "firing"
    assert web["member_count"] == 4 and sorted(m["host_id"] for m in web["members"]) == [
        f"web-{i}" for i in range(4)
    ]
    assert web["live_members"] == 4 and web["culprit"]["kind"] == "service"
    assert web["pages"] is True
    # Members page through their fleet incident, not on their own.
    runs = client.get(
        "/api/v1/agent/workflow/runs", params={"scope": "host", "limit": 50}, headers=OPS
    ).json()["runs"]
    members = [r for r in runs if r["host_id"].startswith("web-")]
    assert members and all(r["fleet_run_id"] == web["run_id"] and r["pages"] is False for r in members)
    one = client.get("/api/v1/agent/workflow/incidents", params={"limit": 1}, headers=OPS).json()
    assert one["count"] == 1 and one["next_cursor"]
    two = client.get(
        "/api/v1/agent/workflow/incidents", params={"limit": 1, "cursor": one["next_cursor"]}, headers=OPS
    ).json()
    assert {one["incidents"][0]["run_id"], two["incidents"][0]["run_id"]} == {
        i["run_id"] for i in body["incidents"]
    }
    fleet_only = client.get("/api/v1/agent/workflow/runs", params={"scope": "fleet"}, headers=OPS).json()
    assert fleet_only["count"] == 2
    assert (
        client.get("/api/v1/agent/workflow/incidents", params={"state": "bogus"}, headers=OPS).status_code
        == 422
    )
    assert client.get("/api/v1/agent/workflow/incidents").status_code == 401
    collector = {"Authorization": f"Bearer {COLLECTOR_TOKEN}"}
    assert client.get("/api/v1/agent/workflow/incidents", headers=collector).status_code == 403
    # The fleet incident's chain is served like any run's.
    detail = client.get(f"/api/v1/agent/workflow/runs/{web['run_id']}", headers=OPS).json()
    assert detail["chain"][0]["kind"] == "observation_summary" and not detail["problems"]
    assert len(detail["chain"]) == 8 and detail["chain"][2]["payload"]["hypotheses"][0]["members"] == 4
    refs = detail["chain"][0]["evidence_refs"]  # the fleet window, then each member's own
    assert refs[0]["evidence_id"] == "window" and sorted(r["host_id"] for r in refs[1:]) == [
        f"web-{i}" for i in range(4)
    ]
    member = {m["host_id"]: m["run_id"] for m in web["members"]}
    assert all(r["uri"] == f"workflows/evidence/{member[r['host_id']]}/package.json#window" for r in refs[1:])
    assert len(detail["attachments"]) == 4  # each member's join


def test_joint_risk_per_host_and_label_group(fleet_api: Api) -> None:
    client, rt = fleet_api
    labelled_incident(rt, "cpu_saturation", "web-0", {"zone": "a", "node_pool": "web"})
    labelled_incident(rt, "fd_exhaustion", "web-1", {"zone": "a", "node_pool": "web"})
    labelled_incident(rt, "io_pressure", "db-0", {"zone": "b", "node_pool": "db"})
    for i in range(3):
        calm_host(rt, f"idle-{i}", {"zone": "a", "node_pool": "web"})
    body = client.get("/api/v1/agent/joint-risk", headers=OPS).json()
    hosts = {h["host_id"]: h for h in body["hosts"]}
    assert set(hosts) == {"web-0", "web-1", "db-0"}
    assert all(0 < h["risk"] <= 1 for h in hosts.values())
    assert [h["risk"] for h in body["hosts"]] == sorted((h["risk"] for h in body["hosts"]), reverse=True)
    zone_a = next(g for g in body["groups"] if g["label"] == "zone" and g["value"] == "a")
    assert zone_a["hosts_at_risk"] == 2 and zone_a["hosts_known"] == 5 and zone_a["share_at_risk"] == 0.4
    r0, r1 = hosts["web-0"]["risk"], hosts["web-1"]["risk"]
    assert zone_a["joint_risk"] == pytest.approx(1 - (1 - r0) * (1 - r1), abs=1e-3)
    assert zone_a["max_risk"] == max(r0, r1)
    assert body["fleet"]["hosts_known"] == 6 and body["fleet"]["hosts_at_risk"] == 3


def test_a_recovering_fault_weighs_half(fleet_api: Api) -> None:
    from controller.api.fleet import host_risk, joint

    assert host_risk([{"confidence": 0.8, "state": "firing"}]) == 0.8
    assert host_risk([{"confidence": 0.8, "state": "recovering"}]) == 0.4
    assert host_risk([{"confidence": 0.5, "state": "firing"}, {"confidence": 0.5, "state": "firing"}]) == 0.75
    assert host_risk([{"confidence": 7.0, "state": "firing"}]) == 1.0  # a bad number stays in range
    assert joint([]) == 0.0 and joint([0.5, 0.5]) == 0.75


def test_proposed_actions_list_every_step_awaiting_approval(tmp_path: Path) -> None:
    execution = {"allow_safe_reversible": True, "local_hosts": ["node-p"]}
    with served_api(tmp_path, execution=execution) as (client, rt):
        rt.execution.clock = rt.workflow.clock  # one clock for approvals and their expiry
        run_id = labelled_incident(rt, "cpu_saturation", "node-p", {})
        assert run_id is not None
        assert (rt.workflow.load_run(run_id) or {})["status"] == "awaiting_approval"
        body = client.get("/api/v1/agent/proposed-actions", headers=OPS).json()
        assert body["runs"] == 1 and body["count"] >= 1
        step = body["actions"][0]
        assert (
            step["run_id"] == run_id
            and step["host_id"] == "node-p"
            and step["safety_class"] == "safe_reversible"
        )
        assert len(step["plan_hash"]) == 64 and step["posture"]["dry_run"] is True
        approved = client.post(
            f"/api/v1/agent/workflow/runs/{run_id}/approve",
            json={"plan_hash": step["plan_hash"], "steps": [step["step"]]},
            headers=OPS,
        )
        assert approved.status_code == 200, approved.text
        deadline = time.monotonic() + 20  # the engine's thread takes the approved run on
        while (rt.workflow.load_run(run_id) or {})[
            "status"
        ] == "awaiting_approval" and time.monotonic() < deadline:
            time.sleep(0.05)
        after = client.get("/api/v1/agent/proposed-actions", headers=OPS).json()
        assert after == {"actions": [], "runs": 0, "count": 0}


def test_ha_status_says_who_writes(api: Api) -> None:
    client, _ = api
    body = client.get("/api/v1/ha/status", headers=OPS).json()
    assert body["mode"] == "single" and body["role"] == "leader" and body["node_id"]
    assert body["analysis"]["partitions"] == 0 and body["fleet"]["opened"] == 0
    assert client.get("/api/v1/ha/status").status_code == 401
