"""Silences and maintenance windows through the API (controller/workflow/silences.py):
created, listed and expired with an audit entry each; a run that opens under one, and a
live run when one is made, say so; refused with the field named when bad; never deleted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from controller.runtime import Runtime
from controller.workflow.silences import MAX_ACTIVE

from .conftest import COLLECTOR_TOKEN
from .test_workflow_api import OPS, incident

Api = tuple[httpx.Client, Runtime]
URL = "/api/v1/agent/silences"


def now(rt: Runtime) -> float:
    return rt.workflow.clock()


def silence(client: httpx.Client, rt: Runtime, **body: Any) -> httpx.Response:
    body.setdefault("ends_at", now(rt) + 3600)
    body.setdefault("comment", "known: the nightly reindex")
    return client.post(URL, json=body, headers=OPS)


def run_of(rt: Runtime, run_id: str) -> dict[str, Any]:
    row = rt.workflow.load_run(run_id)
    assert row is not None
    return dict(row)


def test_a_run_that_opens_under_a_silence_says_so_and_is_still_analysed(api: Api) -> None:
    client, rt = api
    made = silence(client, rt, hosts=["batch-*"], families=["cpu_saturation"])
    assert made.status_code == 201, made.text
    sil = made.json()
    assert sil["kind"] == "silence" and sil["hosts"] == ["batch-*"] and sil["created_by"]
    quiet = run_of(rt, incident(rt, "cpu_saturation", "batch-1"))
    assert quiet["silenced_by"] == sil["silence_id"] and quiet["status"] == "completed"
    shown = client.get(f"/api/v1/agent/workflow/runs/{quiet['run_id']}", headers=OPS).json()["run"]
    assert shown["silenced_by"] == sil["silence_id"]
    assert run_of(rt, incident(rt, "cpu_saturation", "web-1"))["silenced_by"] is None  # another host
    assert run_of(rt, incident(rt, "fd_exhaustion", "batch-2"))["silenced_by"] is None  # another family


def test_a_maintenance_window_covers_every_family_on_its_hosts(api: Api) -> None:
    client, rt = api
    made = silence(client, rt, kind="maintenance", hosts=["node-7"])
    assert made.status_code == 201, made.text
    for fam in ("io_pressure",):
        assert run_of(rt, incident(rt, fam, "node-7"))["silenced_by"] == made.json()["silence_id"]


def test_a_new_silence_covers_the_live_runs_it_matches(api: Api) -> None:
    client, rt = api
    live = incident(rt, "cpu_saturation", "node-a")
    other = incident(rt, "cpu_saturation", "node-b")
    made = silence(client, rt, hosts=["node-a"]).json()
    assert run_of(rt, live)["silenced_by"] == made["silence_id"]
    assert run_of(rt, other)["silenced_by"] is None
    audit = client.get("/api/v1/agent/workflow/audit", params={"kind": "silence_created"}, headers=OPS).json()
    entry = audit["entries"][-1]
    assert entry["detail"]["silence_id"] == made["silence_id"] and entry["detail"]["runs"] == [live]


def test_listed_expired_and_audited_never_deleted(api: Api) -> None:
    client, rt = api
    sil = silence(client, rt, families=["io_pressure"]).json()
    later = silence(client, rt, hosts=["x"], starts_at=now(rt) + 600).json()  # to come: listed as active
    active = client.get(URL, headers=OPS).json()
    assert {s["silence_id"] for s in active["silences"]} == {sil["silence_id"], later["silence_id"]}
    path = f"{URL}/{sil['silence_id']}/expire"
    done = client.post(path, json={"reason": "reindex finished"}, headers=OPS)
    assert done.status_code == 200 and done.json()["expired_at"] is not None and done.json()["expired_by"]
    assert client.post(path, json={"reason": "again"}, headers=OPS).status_code == 409
    assert [s["silence_id"] for s in client.get(URL, headers=OPS).json()["silences"]] == [later["silence_id"]]
    everything = client.get(URL, params={"state": "all"}, headers=OPS).json()
    assert everything["count"] == 2  # expired, still there
    kinds = [e["kind"] for e in client.get("/api/v1/agent/workflow/audit", headers=OPS).json()["entries"]]
    assert kinds.count("silence_created") == 2 and kinds.count("silence_expired") == 1
    # An expired silence silences nothing new.
    assert run_of(rt, incident(rt, "io_pressure", "node-c"))["silenced_by"] is None
    assert client.post(f"{URL}/sil-nope/expire", json={"reason": "x"}, headers=OPS).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "silence"),  # matches everything
        ({"kind": "maintenance"}, "maintenance"),  # no hosts
        ({"kind": "maintenance", "hosts": ["a"], "families": ["io_pressure"]}, "maintenance"),
        ({"families": ["cpu_saturaton"]}, "families"),
        ({"hosts": ["bad host"]}, "hosts"),
        ({"hosts": ["a"], "ends_at": float("nan")}, "ends_at"),
        ({"hosts": ["a"], "ends_at": 1.0}, "ends_at"),  # in the past
        ({"hosts": ["a"], "comment": ""}, "comment"),
        ({"hosts": ["a"], "extra": 1}, "extra"),
        ({"hosts": ["a"] * 257}, "hosts"),
    ],
)
def test_a_bad_silence_is_refused_naming_what(api: Api, body: dict[str, Any], field: str) -> None:
    client, rt = api
    got = client.post(URL, content=_json(body, rt), headers=OPS | {"content-type": "application/json"})
    assert got.status_code in (400, 422), got.text
    assert field in got.text
    assert client.get(URL, params={"state": "all"}, headers=OPS).json()["count"] == 0


def _json(body: dict[str, Any], rt: Runtime) -> str:
    import json

    body = {"ends_at": now(rt) + 3600, "comment": "c"} | body
    return json.dumps(body, allow_nan=True)


def test_too_long_a_silence_and_too_many_are_refused(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    client, rt = api
    long = silence(client, rt, hosts=["a"], ends_at=now(rt) + 100 * 86_400)
    assert long.status_code == 400 and "at most 90 days" in long.text
    monkeypatch.setattr("controller.workflow.silences.MAX_ACTIVE", 2)
    assert silence(client, rt, hosts=["a"]).status_code == 201
    assert silence(client, rt, hosts=["b"]).status_code == 201
    full = silence(client, rt, hosts=["c"])
    assert full.status_code == 409 and "2 silences are active" in full.text
    assert MAX_ACTIVE == 1000


def test_only_writers_silence(api: Api) -> None:
    client, rt = api
    collector = {"Authorization": f"Bearer {COLLECTOR_TOKEN}"}
    body = {"hosts": ["a"], "ends_at": now(rt) + 60, "comment": "c"}
    assert client.post(URL, json=body).status_code == 401
    assert client.post(URL, json=body, headers=collector).status_code == 403
    assert client.get(URL, headers=collector).status_code == 403
