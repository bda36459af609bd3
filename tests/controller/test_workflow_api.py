"""The workflow API in process: RCA, run listing with filters and pages, a run, evidence, replay."""

from __future__ import annotations

import httpx
import msgspec

from collector.wire import validate_batch
from controller.artifacts import KINDS
from controller.runtime import Runtime
from testkit.scenarios import batch_for

from .conftest import COLLECTOR_TOKEN, OPERATOR_TOKEN

OPS = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def incident(rt: Runtime, family: str, host: str) -> str:
    raw = msgspec.json.encode(batch_for(family, host))
    rt.hot.ingest(validate_batch(raw), raw)
    run_id = rt.workflow.evaluate(host)
    assert run_id is not None
    return run_id


def test_rca_ranks_each_hosts_current_hypotheses(api: tuple[httpx.Client, Runtime]) -> None:
    client, rt = api
    incident(rt, "cpu_saturation", "node-a")
    incident(rt, "fd_exhaustion", "node-b")
    body = client.get("/api/v1/agent/rca", headers=OPS).json()
    tops = {h["host_id"]: h["hypotheses"][0]["family"] for h in body["hosts"]}
    assert tops == {"node-a": "cpu_saturation", "node-b": "fd_exhaustion"}
    one = client.get("/api/v1/agent/rca", params={"host": "node-b"}, headers=OPS).json()
    assert one["count"] == 1 and one["hosts"][0]["latest_run"]["status"] == "completed"
    assert client.get("/api/v1/agent/rca", params={"host": "nowhere"}, headers=OPS).status_code == 404
    assert client.get("/api/v1/agent/rca").status_code == 401
    assert (
        client.get("/api/v1/agent/rca", headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}"}).status_code
        == 403
    )


def test_runs_filter_by_status_host_and_time_and_page_without_gaps(api: tuple[httpx.Client, Runtime]) -> None:
    client, rt = api
    ids = []
    for i, fam in enumerate(
        ["cpu_saturation", "io_pressure", "fd_exhaustion", "runaway_forks", "nic_errors"]
    ):
        # A host each: two faults' windows replayed over the same seconds of one host would
        # interleave, and the second would read as the first family again (one run).
        ids.append(incident(rt, fam, f"node-{i}"))
    # One left open, as a run awaiting approval would be.
    with rt.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE workflow_runs SET status = 'awaiting_approval' WHERE run_id = ?", (ids[1],)
        )

    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/agent/workflow/runs", params=params, headers=OPS).json()
        assert page["count"] <= 2
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, every run exactly once

    def runs(**params: str | float) -> list[str]:
        r = client.get("/api/v1/agent/workflow/runs", params=params, headers=OPS)
        assert r.status_code == 200, r.text
        return [x["run_id"] for x in r.json()["runs"]]

    assert runs(status="awaiting_approval") == [ids[1]]
    assert runs(host="node-0") == [ids[0]] and runs(host="node-2") == [ids[2]]
    created = {
        r["run_id"]: r["created_at"]
        for r in client.get("/api/v1/agent/workflow/runs", headers=OPS).json()["runs"]
    }
    assert runs(since=created[ids[3]]) == [ids[4], ids[3]]
    assert runs(until=created[ids[1]]) == [ids[0]]
    assert runs(status="completed", host="node-3") == [ids[3]]
    assert runs(status="completed", host="node-1") == []  # awaiting approval
    assert (
        client.get("/api/v1/agent/workflow/runs", params={"status": "bogus"}, headers=OPS).status_code == 422
    )
    assert client.get("/api/v1/agent/workflow/runs", params={"cursor": "%%%"}, headers=OPS).status_code == 400
    assert client.get("/api/v1/agent/workflow/runs", params={"limit": 0}, headers=OPS).status_code == 422
    status = client.get("/api/v1/status", headers=OPS).json()
    assert status["open_runs"] == 1
    assert status["workflow"]["runs_opened"] == 5 and status["workflow"]["queue_overflow"] == 0


def test_a_run_its_chain_and_its_evidence(api: tuple[httpx.Client, Runtime]) -> None:
    client, rt = api
    run_id = incident(rt, "tcp_retransmit_surge", "node-a")
    body = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()
    assert body["run"]["family"] == "tcp_retransmit_surge" and body["problems"] == []
    assert [a["kind"] for a in body["chain"]] == list(KINDS)
    assert [m["sha256"] for m in body["manifest"]["artifacts"]] == [a["sha256"] for a in body["chain"]]
    assert body["replay"] is None and body["attachments"] == []
    package = client.get(f"/api/v1/agent/workflow/evidence/{run_id}", headers=OPS).json()
    assert package["manifest"] == body["manifest"] and package["window"]["host_id"] == "node-a"
    assert client.get("/api/v1/agent/workflow/runs/run-nope", headers=OPS).status_code == 404
    assert client.get("/api/v1/agent/workflow/evidence/run-nope", headers=OPS).status_code == 404


def test_replay_with_a_fixed_clock_is_deterministic_and_recorded(api: tuple[httpx.Client, Runtime]) -> None:
    client, rt = api
    run_id = incident(rt, "memory_pressure", "node-a")
    url = f"/api/v1/agent/workflow/runs/{run_id}/replay"
    assert client.post(url, json={"clock": 1_800_001_000.0}).status_code == 401
    first = client.post(url, json={"clock": 1_800_001_000.0}, headers=OPS).json()
    second = client.post(url, json={"clock": 1_800_001_000.0}, headers=OPS).json()
    assert [a["sha256"] for a in first["chain"]] == [a["sha256"] for a in second["chain"]]
    assert first["problems"] == [] and first["changed"] == []
    assert [a["replay"]["replay_of"] for a in first["chain"]] == list(first["replay_of"].values())
    other = client.post(url, json={"clock": 1_800_002_000.0}, headers=OPS).json()
    assert [a["sha256"] for a in other["chain"]] != [a["sha256"] for a in first["chain"]]
    stored = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()
    assert [a["sha256"] for a in stored["replay"]["chain"]] == [a["sha256"] for a in other["chain"]]
    assert client.post("/api/v1/agent/workflow/runs/run-nope/replay", json={}, headers=OPS).status_code == 404


def test_replaying_a_run_that_went_on_being_seen_reports_no_change(api: tuple[httpx.Client, Runtime]) -> None:
    """Sightings attached and the lifecycle moving after the report are not conclusions: a
    replay of the unchanged run must not call them changes."""
    client, rt = api
    run_id = incident(rt, "io_pressure", "node-a")
    assert rt.workflow.evaluate("node-a") == run_id  # a second sighting attaches
    run = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()
    assert run["run"]["attachments"] == 1 and run["run"]["state"] == "firing"
    report = next(a for a in run["chain"] if a["kind"] == "incident_report")["payload"]
    assert report["at_report"]["attachments"] == 0 and report["time_to_detect_s"] is not None
    replayed = client.post(f"/api/v1/agent/workflow/runs/{run_id}/replay", json={}, headers=OPS).json()
    assert replayed["changed"] == [], replayed["changed"]
    again = next(a for a in replayed["chain"] if a["kind"] == "incident_report")["payload"]
    assert again["at_report"]["attachments"] == 1  # what the run is now, kept apart
    from workbench.frames import diff_frame

    assert diff_frame(run["chain"], replayed["chain"]).query("kind == 'incident_report'").empty


def test_a_corrupt_stored_artifact_is_named_in_the_error(api: tuple[httpx.Client, Runtime]) -> None:
    client, rt = api
    run_id = incident(rt, "nic_errors", "node-a")
    key = f"workflows/messages/{run_id}/02-root_cause_hypothesis.json"
    rt.workflow.store.put(key, b'{"schema_version": "incidentlab.artifact/v1", "trunc')
    r = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS)
    assert r.status_code == 500 and key in r.json()["detail"]
