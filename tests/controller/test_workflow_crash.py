"""kill -9 at every stage boundary: before and after each stage's commit, in a real controller.

The process SIGKILLs itself at a failpoint (so the moment is exact), then a fresh one
starts on the same data directory. Every run must complete with exactly one artifact
per stage and a chain whose sha256s and input ids link up.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from controller.artifacts import KINDS
from testkit.scenarios import T0, batch_for

from .conftest import COLLECTOR_TOKEN, ControllerProc, base_config

BOUNDARIES = [(kind, where) for kind in KINDS for where in ("before_commit", "after_commit")]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ingest_until_the_failpoint(doomed: ControllerProc, batch: dict[str, object]) -> None:
    """Ship the batch; the controller must then SIGKILL itself at its failpoint."""
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


@pytest.mark.parametrize(("kind", "where"), BOUNDARIES, ids=[f"{k}-{w}" for k, w in BOUNDARIES])
def test_a_kill_at_a_stage_boundary_leaves_one_complete_valid_chain(
    controller_factory: Callable[..., ControllerProc], tmp_path: Path, kind: str, where: str
) -> None:
    data = tmp_path / "data"
    doomed = controller_factory(base_config(data, workflow={"failpoint": f"{kind}:{where}"}), name="doomed")
    batch = batch_for("cpu_saturation", "node-a", shift_s=time.time() - T0 - 160)
    ingest_until_the_failpoint(doomed, batch)
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


@pytest.mark.parametrize("where", ["after_intent", "after_apply"])
def test_a_kill_between_intent_and_result_never_applies_the_action_twice(
    controller_factory: Callable[..., ControllerProc], tmp_path: Path, where: str
) -> None:
    """The culprit is a live process and the action a real renice. Killed after the intent
    (before the action) or after the action (before its result), the restarted controller
    settles the intent by probing: a change made by hand in between stays, proof that the
    action was not run again."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        time.sleep(0.1)
        data = tmp_path / "data"
        execution = {
            "dry_run": False,
            "approval_required": False,
            "allow_safe_reversible": True,
            "local_hosts": ["node-a"],
        }
        doomed = controller_factory(
            base_config(data, workflow={"failpoint": f"execution_result:{where}", "execution": execution}),
            name="doomed",
        )
        batch = batch_for("cpu_saturation", "node-a", shift_s=time.time() - T0 - 160)
        for snap in batch["snapshots"]:
            for row in snap["sources"]["processes"]["data"]["rows"]:
                if row["pid"] == 4242:
                    row.update(pid=sleeper.pid, comm="python", cgroup=None)
        ingest_until_the_failpoint(doomed, batch)
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == (10 if where == "after_apply" else 0)
        if where == "after_intent":
            os.setpriority(os.PRIO_PROCESS, sleeper.pid, 5)  # someone else's change, in between

        ctl = controller_factory(base_config(data, workflow={"execution": execution}), name="after")

        def runs() -> list[dict[str, object]]:
            found: list[dict[str, object]] = ctl.get("/api/v1/agent/workflow/runs").json()["runs"]
            return found

        wait_for(lambda: [r["status"] for r in runs()] in (["completed"], ["verifying"]), 30, "the executor")
        run_id = str(runs()[0]["run_id"])
        body = ctl.get(f"/api/v1/agent/workflow/runs/{run_id}").json()
        result = next(a for a in body["chain"] if a["kind"] == "execution_result")["payload"]
        renice = next(x for x in result["results"] if x["action"] == "renice")
        if where == "after_apply":
            assert renice["outcome"] == "settled_applied"
            assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 10
        else:
            assert renice["outcome"] == "settled_unknown"  # neither the old value nor the wanted one
            assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 5  # not run again over it
        entries = ctl.get(f"/api/v1/agent/workflow/audit?run_id={run_id}").json()["entries"]
        done = [e["kind"] for e in entries if e["kind"].startswith("execution")]
        assert done == ["execution_intent", "execution_settled"]
        (action,) = body["actions"]
        assert (
            action["outcome"] == renice["outcome"] and action["idempotency_key"] == renice["idempotency_key"]
        )
    finally:
        sleeper.kill()
        sleeper.wait()
