"""Somebody gets told (controller/workflow/notify.py): alerts to a real Alertmanager (Debian's,
started here), signed webhooks with bounded retries, what pages and what does not, and the
engine telling it as runs open, join a fleet incident and resolve."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.peers import free_port
from controller.config import AlertSettings, WebhookTarget
from controller.workflow.notify import (
    SIGNATURE,
    TIMESTAMP,
    Notice,
    Notifier,
    alertmanager_alert,
    pages,
    webhook_body,
)
from testkit.fleet import Fleet, Playback, recorded
from testkit.scenarios import T0

RUN: dict[str, Any] = {
    "run_id": "run-0123456789abcdef",
    "host_id": "node-7",
    "family": "cpu_saturation",
    "culprit": json.dumps({"kind": "cgroup", "id": "/jobs/etl", "service": "cgroup:/jobs/etl"}),
    "confidence": 0.91,
    "scope": "host",
    "state": "firing",
    "status": "completed",
    "created_at": 1_800_000_030.0,
    "fault_started_at": 1_800_000_000.0,
    "resolved_at": None,
    "silenced_by": None,
    "fleet_run_id": None,
}


def test_what_pages() -> None:
    assert pages(RUN)
    assert not pages(RUN | {"state": "explained"})
    assert not pages(RUN | {"silenced_by": "sil-1"})
    assert not pages(RUN | {"fleet_run_id": "run-fleet"})


def test_an_alert_for_alertmanager() -> None:
    n = Notice("firing", RUN, 1_800_000_040.0)
    a = alertmanager_alert(
        n, external_url="https://ctl:8443/", resend_s=60, labels={"zone": "a", "team": "x"}
    )
    assert a["labels"] == {
        "alertname": "IncidentlabRun",
        "run_id": RUN["run_id"],
        "family": "cpu_saturation",
        "host": "node-7",
        "scope": "host",
        "zone": "a",
    }
    assert (
        a["startsAt"] == "2027-01-15T08:00:00Z" and a["endsAt"] == "2027-01-15T08:03:40Z"
    )  # three periods on
    assert a["generatorURL"] == f"https://ctl:8443/api/v1/agent/workflow/runs/{RUN['run_id']}"
    assert "cpu_saturation on /jobs/etl (host node-7)" in a["annotations"]["summary"]
    waiting = alertmanager_alert(
        Notice("awaiting_approval", RUN, 1_800_000_040.0), external_url=None, resend_s=60, labels={}
    )
    assert waiting["annotations"]["awaiting_approval"] == "true" and waiting["annotations"][
        "approve_url"
    ].endswith("/approve")
    done = alertmanager_alert(
        Notice("resolved", RUN | {"resolved_at": 1_800_000_090.0}, 1_800_000_095.0),
        external_url=None,
        resend_s=60,
        labels={},
    )
    assert done["endsAt"] == "2027-01-15T08:01:30Z"
    fleet = alertmanager_alert(
        Notice("firing", RUN | {"scope": "fleet", "host_id": "~fleet"}, 1.8e9),
        external_url=None,
        resend_s=60,
        labels={},
    )
    assert fleet["labels"]["alertname"] == "IncidentlabFleetIncident"


class Capture:
    """A webhook receiver that answers as told (status codes in order, then 200)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.got: list[tuple[dict[str, str], bytes]] = []
        cap = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                cap.got.append((dict(self.headers), body))
                code = cap.answers.pop(0) if cap.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def notifier(tmp: Path, hooks: list[str], **kw: Any) -> Notifier:
    secret = tmp / "secret"
    secret.write_text("s3cret-key\n")
    s = AlertSettings(
        webhooks=[WebhookTarget(url=u, secret_file=secret) for u in hooks], backoff_s=0.01, **kw
    )
    rows = {RUN["run_id"]: RUN, "run-silenced": RUN | {"run_id": "run-silenced", "silenced_by": "s1"}}
    return Notifier(s, clock=lambda: 1_800_000_040.0, external_url="https://ctl", load=rows.get)


def test_a_webhook_is_signed_and_retried_and_failures_are_counted(tmp_path: Path) -> None:
    ok, flaky, refused = Capture(), Capture([500, 503]), Capture([400])
    try:
        n = notifier(tmp_path, [ok.url, flaky.url, refused.url, "http://127.0.0.1:9/none"])
        n.deliver(n.notices([("firing", RUN["run_id"], 1_800_000_040.0)]))
        headers, body = ok.got[0]
        want = hmac.new(b"s3cret-key", headers[TIMESTAMP].encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE] == f"sha256={want}"
        doc = json.loads(body)
        assert doc["text"].startswith(":rotating_light: cpu_saturation on /jobs/etl (host node-7)")
        assert doc["incidentlab"]["kind"] == "firing" and doc["incidentlab"]["url"].startswith("https://ctl/")
        assert len(flaky.got) == 3 and len(refused.got) == 1  # 5xx retried; a 4xx is not
        stats = n.stats()["per_target"]
        assert stats[flaky.url] == {"sent": 1, "failed": 0, "retries": 2}
        assert stats[refused.url]["failed"] == 1 and stats["http://127.0.0.1:9/none"] == {
            "sent": 0,
            "failed": 1,
            "retries": 2,
        }
        assert n.stats()["last_error"]
        # A silenced run is not told; unknown kinds are refused; the queue is bounded.
        assert n.notices([("firing", "run-silenced", 1.0), ("firing", "run-gone", 1.0)]) == []
        with pytest.raises(ValueError, match="notice kind"):
            n.tell("exploded", RUN["run_id"])
        small = notifier(tmp_path, [ok.url], queue_max=2)
        for _ in range(3):
            small.tell("firing", RUN["run_id"])
        assert small.stats()["queued"] == 2 and small.stats()["dropped"] == 1
        n.stop()
        small.stop()
    finally:
        for c in (ok, flaky, refused):
            c.close()


def test_body_for_a_webhook_when_it_resolves() -> None:
    body = webhook_body(Notice("resolved", RUN | {"resolved_at": 1.8e9 + 90}, 1.8e9 + 95), external_url=None)
    assert body["text"].startswith(":white_check_mark: resolved: cpu_saturation")
    assert body["incidentlab"]["resolved_at"] == 1.8e9 + 90


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip(
            "no Alertmanager here (Debian's prometheus-alertmanager: scripts/ensure-system.sh installs it)"
        )
    cfg = tmp_path / "am.yml"
    cfg.write_text("route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("alertmanager did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.root  # CI installs Alertmanager (scripts/ensure-system.sh): there a skip fails
def test_a_real_alertmanager_takes_the_alert_and_its_resolution(alertmanager: str) -> None:
    now = time.time()
    live = RUN | {"created_at": now - 10, "fault_started_at": now - 40}
    rows = {RUN["run_id"]: live}
    n = Notifier(
        AlertSettings(alertmanager_urls=[alertmanager]),
        external_url="https://ctl",
        labels_of=lambda host: {"zone": "a"},
        load=rows.get,
        live=lambda limit: [live],
    )
    n.deliver(n.notices([("firing", RUN["run_id"], now)]))
    alerts = httpx.get(alertmanager + "/api/v2/alerts").json()
    (a,) = alerts
    assert a["labels"]["alertname"] == "IncidentlabRun" and a["labels"]["zone"] == "a"
    assert a["labels"]["run_id"] == RUN["run_id"] and a["status"]["state"] == "active"
    assert a["generatorURL"].startswith("https://ctl/api/v1/agent/workflow/runs/")
    assert n.resend() == 1  # still live: sent again, the same alert
    assert len(httpx.get(alertmanager + "/api/v2/alerts").json()) == 1
    rows[RUN["run_id"]] = live | {"state": "resolved", "resolved_at": time.time()}
    n.deliver(n.notices([("resolved", RUN["run_id"], time.time())]))
    # Its endsAt now: Alertmanager holds it active no longer.
    assert httpx.get(alertmanager + "/api/v2/alerts", params={"active": "true"}).json() == []
    assert n.stats()["per_target"][alertmanager]["sent"] == 3
    n.stop()


def test_the_engine_tells_as_runs_open_join_a_fleet_incident_and_resolve(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, min_hosts=3)
    told: list[tuple[str, str]] = []
    fleet.eng.triggers.on_event = lambda kind, run_id: told.append((kind, run_id))
    fleet.eng.runner.on_event = lambda kind, run_id: told.append((kind, run_id))
    hosts = [f"node-{i}" for i in range(3)]
    play = Playback(
        {h: recorded("cpu_stops_halfway", T0 + i) for i, h in enumerate(hosts)},
        {h: {"cluster": "prod", "zone": "a"} for h in hosts},
    )
    for step in range(125):
        fleet.t = T0 + step
        play.feed(fleet)
        fleet.eng.triggers.fleet_pass()
    runs = {r["run_id"]: r for r in fleet.runs()}
    # The fault tails off (its top culprit changes as it ends): still one fleet incident.
    (fid,) = [r for r in runs if runs[r]["scope"] == "fleet"]
    members = [r for r in runs if runs[r]["scope"] == "host"]
    assert {(k, r) for k, r in told if r in members and k == "firing"} == {("firing", m) for m in members}
    assert {r for k, r in told if k == "absorbed"} == set(members)  # the fleet incident pages for them
    assert ("firing", fid) in told and ("resolved", fid) in told
    assert told.index(("firing", fid)) < told.index(("resolved", fid))
    fleet.db.dispose()


def test_a_webhook_secret_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    from controller.errors import ConfigError

    hook = [WebhookTarget(url="https://hooks.example/x", secret_file=tmp_path / "missing.key")]
    with pytest.raises(ConfigError, match="cannot read secret_file"):
        Notifier(AlertSettings(webhooks=hook))
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        Notifier(
            AlertSettings(
                webhooks=[WebhookTarget(url="https://hooks.example/x", secret_file=tmp_path / "empty.key")]
            )
        )
