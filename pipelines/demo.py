"""make demo: a controller and a collector on this host, a real fault, a postmortem.

Starts a controller (SQLite and payloads under ./data/demo) and a collector shipping
to it every second, lets the host be calm for a moment, then starts two CPU hogs in a
cgroup of their own (or plain processes without root), waits for the workflow to
carry the incident to its incident_report, stops everything it started, writes the
postmortem (papermill and nbconvert) and prints a summary and the paths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from pipelines.errors import PipelineError
from pipelines.report import find_browser, render

ROOT = Path(__file__).resolve().parents[1]
CGROUP = "ilab-demo"
MARKER = ".incidentlab-demo"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise PipelineError(f"timed out after {timeout:.0f} s waiting for {what}")


class Fault:
    """A CPU hog per CPU, in a cgroup of their own where the host lets us make one.
    Niced (the controller and collector keep running) and bounded in time (timeout 300),
    so even a demo killed outright leaves nothing spinning for long."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs: list[Path] = []

    def start(self) -> str:
        join = ""
        if os.geteuid() == 0:
            for controller in ("cpu", "memory"):
                base = Path("/sys/fs/cgroup") / controller
                if base.is_dir():  # a v1 hierarchy; on v2 the unified tree takes the cgroup
                    self.dirs.append(base / CGROUP)
            if not self.dirs and (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
                self.dirs.append(Path("/sys/fs/cgroup") / CGROUP)
            for d in self.dirs:
                d.mkdir(exist_ok=True)
            join = "; ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in self.dirs) + "; "
        n = os.cpu_count() or 2
        for _ in range(n):
            cmd = f"{join}exec timeout 300 nice -n 19 sha256sum /dev/zero"
            # A process group each: stop() kills timeout and the hog under it together.
            self.procs.append(subprocess.Popen(["bash", "-c", cmd], start_new_session=True))
        where = f" in cgroup /{CGROUP}" if self.dirs else ""
        return f"{n} CPU hogs (sha256sum, one per CPU){where}"

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT)


def stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def approve(api: httpx.Client, run_id: str) -> None:
    """As an operator would: approve only the step that caps the hogs' cgroup (the renices
    stay unapproved), or every step that needs approval where there is no such step."""
    body = api.get(f"/api/v1/agent/workflow/runs/{run_id}").json()
    plan = next(a["payload"] for a in body["chain"] if a["kind"] == "execution_plan")
    waiting = [s for s in plan["steps"] if s["step"] in plan["needs_approval"]]
    capped = [s["step"] for s in waiting if s["action"] == "cgroup_cpu_quota"]
    steps = capped or None
    answer = api.post(
        f"/api/v1/agent/workflow/runs/{run_id}/approve",
        json={
            "plan_hash": plan["plan_hash"],
            "steps": steps,
            "reason": "demo: cap the hogs' cgroup, leave the processes alone",
        },
    )
    if answer.status_code != 200:
        raise PipelineError(f"approving {run_id}: {answer.status_code} {answer.text[:300]}")
    which = ", ".join(f"{s['step']} ({s['action']})" for s in waiting if steps is None or s["step"] in steps)
    say(f"approved step(s) {which} as {answer.json()['actor']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=ROOT / "data" / "demo", help="where the demo keeps everything"
    )
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds, start to incident report, at most")
    args = ap.parse_args(argv)
    began = time.monotonic()
    # SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C: the finally below stops what started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data: Path = args.data.resolve()
    if data.exists():
        if not (data / MARKER).exists():
            raise PipelineError(f"{data} exists and is not a demo directory: refusing to delete it")
        shutil.rmtree(data)  # a demo starts from nothing
    data.mkdir(parents=True)
    (data / MARKER).write_text("made by make demo; deleted by the next one\n")
    operator, collector_token = secrets.token_hex(16), secrets.token_hex(16)
    for name, secret in (("collector.token", collector_token), ("operator.token", operator)):
        fd = os.open(data / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (data / "controller.yaml").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": port,
                "data_dir": str(data),
                "server": {"allow_http": True},  # loopback only
                "auth": {
                    "tokens": [
                        {
                            "name": "demo-collector",
                            "role": "collector",
                            "token_file": str(data / "collector.token"),
                        },
                        {
                            "name": "demo-operator",
                            "role": "operator",
                            "token_file": str(data / "operator.token"),
                        },
                    ]
                },
                "workflow": {
                    "window_s": 60,
                    # The demo lets this host be changed, one approved step at a time, so its
                    # postmortem shows an approval, a change, its verification and the end.
                    "execution": {
                        "dry_run": False,
                        "allow_safe_reversible": True,
                        "approval_required": True,
                        "verify_settle_s": 2.0,
                        "verify_min_samples": 3,
                    },
                },
            }
        )
    )
    (data / "collector.yaml").write_text(
        json.dumps(
            {
                "interval_s": 1.0,
                "enabled_sources": ["host", "psi", "processes", "cgroup", "disk", "network"],
                "spool": {"dir": str(data / "spool")},
                "transport": {"url": url, "allow_http": True, "token_file": str(data / "collector.token")},
            }
        )
    )
    ctl = agent = None
    fault = Fault()
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}, timeout=10)
    try:
        say(f"starting the controller on {url} (data in {data})")
        ctl = start(
            [sys.executable, "-m", "controller.cli", "serve", "--config", str(data / "controller.yaml")],
            data / "controller.log",
        )

        def ready() -> bool:
            if ctl is not None and ctl.poll() is not None:
                raise PipelineError(f"the controller exited; see {data / 'controller.log'}")
            try:
                return httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait(ready, 60, "the controller")
        say("starting the collector (a sample a second)")
        agent = start(
            [sys.executable, "-m", "collector.cli", "run", "--config", str(data / "collector.yaml")],
            data / "collector.log",
        )

        def shipped() -> int:
            hosts = api.get("/api/v1/ingest/status").json()["hosts"]
            return sum(h["samples"] for h in hosts)

        wait(lambda: shipped() >= 5, 60, "the first samples")

        def calm() -> bool:
            hosts = api.get("/api/v1/agent/rca").json()["hosts"]
            return bool(hosts) and all(not h["hypotheses"] for h in hosts)

        say(f"baseline: {shipped()} samples shipped; waiting for the host to be calm")
        wait(calm, 60, "a calm baseline (something else is loading this host)", every=1.0)
        say("calm; injecting the fault")
        injected_at = time.time()
        what = fault.start()
        say(f"fault: {what}")

        def settled(statuses: tuple[str, ...]) -> Callable[[], dict[str, Any] | None]:
            def check() -> dict[str, Any] | None:
                runs = api.get("/api/v1/agent/workflow/runs", params={"since": injected_at}).json()["runs"]
                for r in runs:
                    if r["status"] in statuses:
                        return dict(r)
                if runs:
                    say(
                        f"run {runs[0]['run_id']}: {runs[0]['family']}, "
                        f"stage {runs[0]['stage']}/8, {runs[0]['status']}"
                    )
                return None

            return check

        def left() -> float:
            return max(10.0, float(args.timeout) - (time.monotonic() - began))

        run = wait(settled(("awaiting_approval", "completed")), left(), "the plan", every=2.0)
        if run["status"] == "awaiting_approval":
            approve(api, run["run_id"])
            run = wait(settled(("completed",)), left(), "the change and its verification", every=2.0)
        say(f"run {run['run_id']} reached its incident report; ending the fault")
        fault.stop()
        run_id = run["run_id"]

        def resolved() -> bool:
            return bool(api.get(f"/api/v1/agent/workflow/runs/{run_id}").json()["run"]["state"] == "resolved")

        try:
            wait(resolved, 45, "the fault to be seen ending", every=1.0)
            say("the fault has ended (resolved)")
        except PipelineError as exc:  # the postmortem says it was not resolved when written
            say(f"{exc}; writing the postmortem anyway")
        body = api.get(f"/api/v1/agent/workflow/runs/{run_id}").json()
    finally:
        fault.stop()
        stop(agent)
        stop(ctl)
        api.close()
        say("stopped the fault, the collector and the controller")
    say("writing the postmortem (papermill, nbconvert)")
    try:
        find_browser()
        pdf = True
    except PipelineError as exc:
        say(f"HTML only: {exc}")
        pdf = False
    report = render(run["run_id"], str(data), data / "reports", pdf=pdf)
    final = next(a["payload"] for a in body["chain"] if a["kind"] == "incident_report")
    cause = final["most_likely_cause"] or {}
    print()
    print(f"incident   {run['run_id']} on {run['host_id']}")
    culprit = cause.get("culprit") or {}
    held = ", ".join(f"{c} x{n}" for c, n in (culprit.get("comms") or {}).items())
    print(
        f"cause      {cause.get('family')}: {culprit.get('kind')} {culprit.get('id')}"
        + (f" ({held})" if held and culprit.get("kind") != "process" else "")
        + f" (confidence {cause.get('confidence')})"
    )
    print(f"summary    {cause.get('summary')}")
    sev = cause.get("severity") or {}
    print(f"severity   {sev.get('level')}: {sev.get('why')}")
    print("actions    " + ", ".join(f"{a['action']}: {a['outcome']}" for a in final["actions"]))
    print(f"verdict    {final['verification']['verdict']} ({final['verification']['reason']})")
    print(f"report     {report.html}")
    if report.pdf is not None:
        print(f"pdf        {report.pdf}")
    elif report.pdf_error:
        print(f"pdf        not printed: {report.pdf_error}")
    print(f"notebook   {report.notebook}")
    print(f"store      {data / 'agent' / 'workflow_runs.db'}")
    print(f"took       {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except PipelineError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
