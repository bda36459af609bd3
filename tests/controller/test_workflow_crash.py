"""kill -9 at every stage boundary: before and after each stage's commit, in a real controller.

The process SIGKILLs itself at a failpoint (so the moment is exact), then a fresh one
starts on the same data directory. Every run must complete with exactly one artifact
per stage and a chain whose sha256s and input ids link up.
"""

from __future__ import annotations

import gzip
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from controller.artifacts import KINDS

from .conftest import COLLECTOR_TOKEN, ControllerProc, base_config
from .scenarios import T0, batch_for

BOUNDARIES = [(kind, where) for kind in KINDS for where in ("before_commit", "after_commit")]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(("kind", "where"), BOUNDARIES, ids=[f"{k}-{w}" for k, w in BOUNDARIES])
def test_a_kill_at_a_stage_boundary_leaves_one_complete_valid_chain(
    controller_factory: Callable[..., ControllerProc], tmp_path: Path, kind: str, where: str
) -> None:
    data = tmp_path / "data"
    doomed = controller_factory(base_config(data, workflow={"failpoint": f"{kind}:{where}"}), name="doomed")
    batch = batch_for("cpu_saturation", "node-a", shift_s=time.time() - T0 - 160)
    r = httpx.post(
        doomed.url + "/api/v1/ingest",
        content=gzip.compress(msgspec.json.encode(batch)),
        headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert doomed.proc is not None
    wait_for(lambda: doomed.proc is not None and doomed.proc.poll() is not None, 30, "the failpoint")
    assert doomed.proc.returncode == -9
    assert "failpoint" in doomed.log.read_text()

    ctl = controller_factory(base_config(data), name="after")

    def completed() -> list[dict[str, object]]:
        runs: list[dict[str, object]] = ctl.get("/api/v1/agent/workflow/runs").json()["runs"]
        return runs

    wait_for(lambda: [r["status"] for r in completed()] == ["completed"], 30, "the run to complete")
    run_id = str(completed()[0]["run_id"])
    body = ctl.get(f"/api/v1/agent/workflow/runs/{run_id}").json()
    assert [a["kind"] for a in body["chain"]] == list(KINDS)
    assert body["problems"] == []
    for prev, art in zip(body["chain"], body["chain"][1:], strict=False):
        assert prev["artifact_id"] in art["input_artifact_ids"]
    with sqlite3.connect(data / "agent" / "workflow_runs.db") as db:
        rows = db.execute("SELECT stage_index FROM workflow_artifacts WHERE NOT replay").fetchall()
        memory = db.execute("SELECT occurrences, last_run_id FROM incident_memory").fetchall()
    assert Counter(r[0] for r in rows) == Counter(range(len(KINDS)))
    assert memory == [(1, run_id)]
    messages = data / "agent" / "workflows" / "messages" / run_id
    assert sorted(p.name for p in messages.iterdir()) == [f"{i:02d}-{k}.json" for i, k in enumerate(KINDS)]
    package = ctl.get(f"/api/v1/agent/workflow/evidence/{run_id}").json()
    assert package["manifest"] == body["manifest"]
