"""Governed execution end to end on this host: a real collector, a real controller, a CPU
hog in a cgroup of its own. The workflow proposes a CPU quota cap, a collector token cannot
approve it, a stale plan hash is refused, an operator approves through the API, the cap
applies, the verifier sees the improvement, and a rollback restores the old quota. The
audit log holds every decision, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import COLLECTOR_TOKEN, OPERATOR_TOKEN, ROOT, ControllerProc, base_config

HOST = "e2e-node"
OPS = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
CGROUP_FS = Path("/sys/fs/cgroup")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hog_cgroup() -> Iterator[tuple[str, Callable[[], None]]]:
    """/ilab-e2e-PID in the v1 cpu and memory hierarchies (this machine kind's layout), so
    the process's cgroup names the quota's cgroup, and a function that starts two busy
    processes in it (after the controller and collector have settled: their start-up
    would otherwise top the CPU table)."""
    name = f"ilab-e2e-{os.getpid()}"
    dirs = [CGROUP_FS / c / name for c in ("cpu", "memory")]
    for d in dirs:
        d.mkdir()
    join = "; ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in dirs)
    hogs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        # One per CPU: saturation must be reached whatever the machine's size.
        cmd = ["bash", "-c", f"{join}; exec sha256sum /dev/zero"]
        hogs.extend(subprocess.Popen(cmd) for _ in range(os.cpu_count() or 2))

    try:
        yield "/" + name, start
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        for d in dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


@pytest.mark.root
@pytest.mark.slow
def test_a_cpu_quota_cap_is_approved_applied_verified_and_rolled_back(
    controller_factory: Callable[..., ControllerProc],
    tmp_path: Path,
    hog_cgroup: tuple[str, Callable[[], None]],
) -> None:
    cgroup, start_hogs = hog_cgroup
    quota = CGROUP_FS / "cpu" / cgroup.lstrip("/") / "cpu.cfs_quota_us"
    assert quota.read_text().strip() == "-1"
    execution = {
        "dry_run": False,
        "allow_safe_reversible": True,
        "local_hosts": [HOST],
        "verify_settle_s": 2.0,
        "verify_min_samples": 4,
        "verify_deadline_s": 60.0,
    }
    ctl = controller_factory(
        base_config(tmp_path / "data", workflow={"window_s": 60, "execution": execution})
    )
    token = tmp_path / "token"
    token.write_text(COLLECTOR_TOKEN)
    config = tmp_path / "collector.yaml"
    config.write_text(
        json.dumps(
            {
                "interval_s": 1.0,
                "host_id": HOST,
                "enabled_sources": ["host", "psi", "processes", "cgroup"],
                "spool": {"dir": str(tmp_path / "spool")},
                "transport": {"url": ctl.url, "allow_http": True, "token_file": str(token)},
            }
        )
    )
    log = open(tmp_path / "collector.log", "wb")  # noqa: SIM115
    collector = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "--config", str(config)],
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    api = httpx.Client(base_url=ctl.url, headers=OPS, timeout=30)
    try:

        def shipped() -> bool:
            hosts = api.get("/api/v1/ingest/status").json().get("hosts", [])
            return any(h["host_id"] == HOST and h["samples"] >= 3 for h in hosts)

        wait_for(shipped, 60, "the collector to ship its first batches")
        start_hogs()

        def waiting() -> dict[str, Any] | None:
            runs = api.get("/api/v1/agent/workflow/runs", params={"status": "awaiting_approval"}).json()[
                "runs"
            ]
            return runs[0] if runs else None

        run = wait_for(waiting, 90, "a run awaiting approval")
        run_id = run["run_id"]
        # One hog per CPU: one culprit, their owner (the tree that started them, in the hog cgroup).
        culprit = run["culprit"]
        assert run["family"] == "cpu_saturation" and set(culprit["comms"]) == {"sha256sum"}, culprit
        assert culprit["cgroup"] == cgroup, culprit
        body = api.get(f"/api/v1/agent/workflow/runs/{run_id}").json()
        plan = next(a["payload"] for a in body["chain"] if a["kind"] == "execution_plan")
        cap = next(s for s in plan["steps"] if s["action"] == "cgroup_cpu_quota")
        assert cap["target"] == f"cgroup:{cgroup}" and cap["decision"] == "approval_required"
        assert quota.read_text().strip() == "-1"  # nothing before the approval

        url = f"/api/v1/agent/workflow/runs/{run_id}/approve"
        approval = {"plan_hash": plan["plan_hash"], "steps": [cap["step"]], "reason": "cap the hog"}
        denied = httpx.post(
            ctl.url + url, json=approval, headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}"}
        )
        assert denied.status_code == 403
        stale = api.post(url, json=approval | {"plan_hash": "f" * 64})
        assert stale.status_code == 409 and "stale plan" in stale.json()["detail"]
        ok = api.post(url, json=approval)
        assert ok.status_code == 200, ok.text
        assert ok.json()["actor"] == "ops" and ok.json()["expires_at"] > ok.json()["at"]
        again = api.post(url, json=approval)
        assert again.status_code == 409  # no longer awaiting approval

        def completed() -> dict[str, Any] | None:
            got = api.get(f"/api/v1/agent/workflow/runs/{run_id}").json()
            return got if got["run"]["status"] == "completed" else None

        done = wait_for(completed, 90, "the run to complete")
        period = int((CGROUP_FS / "cpu" / cgroup.lstrip("/") / "cpu.cfs_period_us").read_text())
        assert quota.read_text().strip() == str(period)  # one core
        result = next(a["payload"] for a in done["chain"] if a["kind"] == "execution_result")
        applied = {r["action"]: r for r in result["results"]}
        assert applied["cgroup_cpu_quota"]["outcome"] == "applied"
        assert applied["renice"]["outcome"] == "not_run"  # approved only the cap
        verdict = next(a["payload"] for a in done["chain"] if a["kind"] == "verification_result")
        assert verdict["verdict"] == "improved", verdict
        assert verdict["after"]["median"] < verdict["before"]["median"]

        rolled = api.post(f"/api/v1/agent/workflow/runs/{run_id}/rollback", json={"reason": "test over"})
        assert rolled.status_code == 200 and [r["outcome"] for r in rolled.json()["rollbacks"]] == [
            "rolled_back"
        ]
        assert quota.read_text().strip() == "-1"

        entries = api.get("/api/v1/agent/workflow/audit", params={"run_id": run_id}).json()["entries"]
        kinds = [e["kind"] for e in entries]
        steps = len(plan["steps"])
        assert kinds == ["gate_decision"] * steps + [
            "approval",
            "execution_intent",
            "execution_result",
            "verification",
            "rollback",
        ]
        assert [e["actor"] for e in entries[steps:]] == ["ops", "executor", "executor", "verifier", "ops"]
        assert all(e["plan_hash"] == plan["plan_hash"] for e in entries[: steps + 3])
        page = api.get("/api/v1/agent/workflow/audit", params={"run_id": run_id, "limit": 2}).json()
        assert page["count"] == 2 and page["next_cursor"] is not None
        rest = api.get(
            "/api/v1/agent/workflow/audit", params={"run_id": run_id, "cursor": page["next_cursor"]}
        ).json()
        assert [e["id"] for e in page["entries"] + rest["entries"]] == [e["id"] for e in entries]
        only = api.get("/api/v1/agent/workflow/audit", params={"kind": "approval", "actor": "ops"}).json()
        assert [e["run_id"] for e in only["entries"]] == [run_id]
    finally:
        api.close()
        collector.terminate()
        collector.wait(15)
        log.close()
