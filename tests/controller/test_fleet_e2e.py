"""A fleet incident end to end: a real controller process with its defaults (analysis
workers, the engine's own correlator pass), recorded windows posted over HTTP as collectors
would, labels in their CollectorInfo; the incident, its members and the GPU-free fleet
endpoints read back through the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from testkit.fleet import recorded
from tests.controller.conftest import ControllerProc, base_config
from tests.controller.test_ingest_http import gz, post


def test_one_fault_on_three_hosts_is_one_fleet_incident_through_http(
    controller_factory: Callable[..., ControllerProc], tmp_path: Any
) -> None:
    cfg = base_config(
        tmp_path / "data",
        workflow={"enabled": True, "fleet": {"min_hosts": 3, "evaluate_every_s": 1.0}},
    )
    ctl = controller_factory(cfg)
    hosts = ["node-1", "node-2", "node-3"]
    # The recorded window shifted to end now, so every sample is in the controller's past.
    plays = {h: recorded("cpu_workers_cgroup", 0.0) for h in hosts}
    span = max(s["ts"] for s in plays["node-1"])
    start = time.time() - span - 1
    for h, snaps in plays.items():
        for seq, snap in enumerate(snaps, 1):
            snap["ts"] += start
            doc: dict[str, Any] = {
                "schema": "incidentlab.batch/v1",
                "host_id": h,
                "boot_id": "b",
                "stream_id": f"s-{h}",
                "seq": seq,
                "sent_at": snap["ts"],
                "snapshots": [snap],
            }
            if seq == 1:
                doc["collector"] = {"host_id": h, "labels": {"cluster": "prod", "zone": "a"}}
            r = post(ctl, gz(doc))
            assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = ctl.get("/api/v1/agent/workflow/incidents").json()
        if body["count"] and body["incidents"][0]["member_count"] == 3:
            break
        time.sleep(0.5)
    assert body.get("count") == 1, body
    inc = body["incidents"][0]
    assert inc["family"] == "cpu_saturation" and inc["culprit"]["service"] == "cgroup:/ilab-workers"
    assert sorted(m["host_id"] for m in inc["members"]) == hosts
    assert inc["culprit"]["group"] == {"cluster": "prod", "zone": "a"}
    risk = ctl.get("/api/v1/agent/joint-risk").json()
    zone = next(g for g in risk["groups"] if g["label"] == "zone")
    assert zone["value"] == "a" and zone["hosts_at_risk"] == 3 and zone["hosts_known"] == 3
    ha = ctl.get("/api/v1/ha/status").json()
    assert ha["analysis"]["partitions"] >= 1 and ha["fleet"]["opened"] == 1 and ha["fleet"]["joined"] == 3
