"""Somebody gets told: runs and fleet incidents as alerts to Alertmanager and to webhooks.

The engine tells the notifier when a run opens (``firing``), waits for an operator
(``awaiting_approval``, with the link to approve it), joins a fleet incident or becomes a
symptom of another run (``absorbed``: its page is ended, the fleet incident or cause
pages for it) and resolves (``resolved``). Telling is an append to a bounded queue (past
``queue_max``: dropped and counted); one sender thread delivers each notice to every
target with bounded retries and counts what failed. Nothing on the workflow's path
waits for a target.

- **Alertmanager** (its v2 API, ``POST /api/v2/alerts``): one alert per paging run,
  labelled ``alertname`` (IncidentlabRun, or IncidentlabFleetIncident), run_id, family,
  host, scope and cluster and zone where the host has them; routing, grouping, silences
  and inhibition are the ones Alertmanager users already run. A live alert is sent again
  every ``resend_s`` with ``endsAt`` three periods ahead, as Prometheus does, so one this
  controller stops sending (it died) resolves by itself; a resolved or absorbed run is
  sent with ``endsAt`` now.
- **Webhooks**: a Slack-compatible body (``text``, plus ``incidentlab`` with the facts),
  signed: ``X-Incidentlab-Timestamp`` and ``X-Incidentlab-Signature: sha256=<hex of
  HMAC-SHA256(secret, timestamp + "." + body)>``, as Stripe and Slack sign theirs.

A run pages unless it is a symptom of another (explained), silenced, or a member of a
fleet incident (which pages for it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import httpx

from controller.config import AlertSettings
from controller.errors import ConfigError

log = logging.getLogger(__name__)
NoticeKind = Literal["firing", "awaiting_approval", "absorbed", "resolved"]
NOTICE_KINDS: tuple[str, ...] = get_args(NoticeKind)
RESEND_BATCH = 1000  # live alerts re-sent to Alertmanager per period (the most recent first)
SIGNATURE = "X-Incidentlab-Signature"
TIMESTAMP = "X-Incidentlab-Timestamp"


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    run: Mapping[str, Any]  # the run's row (culprit as JSON text or decoded)
    at: float


def pages(run: Mapping[str, Any]) -> bool:
    """Whether a run pages on its own: not a symptom, not silenced, not in a fleet incident."""
    return run.get("state") != "explained" and not run.get("silenced_by") and not run.get("fleet_run_id")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _culprit(run: Mapping[str, Any]) -> dict[str, Any]:
    c = run.get("culprit") or {}
    if isinstance(c, str):
        try:
            c = json.loads(c)
        except ValueError:
            c = {}
    return c if isinstance(c, dict) else {}


def run_url(external_url: str | None, run_id: str) -> str:
    return f"{(external_url or '').rstrip('/')}/api/v1/agent/workflow/runs/{run_id}"


def summary_of(n: Notice) -> str:
    run, c = n.run, _culprit(n.run)
    what = f"{run.get('family')} on {c.get('id') or run.get('host_id')}"
    where = "the fleet" if run.get("scope") == "fleet" else f"host {run.get('host_id')}"
    head = {
        "firing": f"{what} ({where})",
        "awaiting_approval": f"{what} ({where}) awaits an operator's approval",
        "absorbed": f"{what} ({where}) now pages through "
        + (f"fleet incident {run.get('fleet_run_id')}" if run.get("fleet_run_id") else "its cause's run"),
        "resolved": f"resolved: {what} ({where})",
    }[n.kind]
    return head


def alertmanager_alert(
    n: Notice, *, external_url: str | None, resend_s: float, labels: Mapping[str, str]
) -> dict[str, Any]:
    """One Alertmanager v2 alert (postableAlert) for a notice."""
    run = n.run
    fleet = run.get("scope") == "fleet"
    out_labels = {
        "alertname": "IncidentlabFleetIncident" if fleet else "IncidentlabRun",
        "run_id": str(run["run_id"]),
        "family": str(run.get("family")),
        "host": str(run.get("host_id")),
        "scope": "fleet" if fleet else "host",
    } | {k: v for k, v in labels.items() if k in ("cluster", "zone", "region", "node_pool")}
    started = run.get("fault_started_at") or run.get("created_at") or n.at
    ended = n.kind in ("resolved", "absorbed")
    end = (run.get("resolved_at") or n.at) if n.kind == "resolved" else n.at
    annotations = {
        "summary": summary_of(n),
        "confidence": f"{float(run.get('confidence') or 0):.2f}",
        "run_url": run_url(external_url, str(run["run_id"])),
    }
    if n.kind == "awaiting_approval":
        annotations["awaiting_approval"] = "true"
        annotations["approve_url"] = run_url(external_url, str(run["run_id"])) + "/approve"
    return {
        "labels": out_labels,
        "annotations": annotations,
        "startsAt": _iso(min(float(started), n.at)),
        "endsAt": _iso(end if ended else n.at + 3 * resend_s),
        "generatorURL": run_url(external_url, str(run["run_id"])),
    }


def webhook_body(n: Notice, *, external_url: str | None) -> dict[str, Any]:
    """A Slack-compatible message (``text``) with the facts beside it (``incidentlab``)."""
    run = n.run
    icon = {
        "firing": ":rotating_light:",
        "awaiting_approval": ":raised_hand:",
        "absorbed": ":link:",
        "resolved": ":white_check_mark:",
    }[n.kind]
    url = run_url(external_url, str(run["run_id"]))
    return {
        "text": f"{icon} {summary_of(n)} <{url}|{run['run_id']}>",
        "incidentlab": {
            "kind": n.kind,
            "at": n.at,
            "run_id": run["run_id"],
            "scope": run.get("scope", "host"),
            "family": run.get("family"),
            "host_id": run.get("host_id"),
            "culprit": _culprit(run),
            "confidence": run.get("confidence"),
            "state": run.get("state"),
            "fault_started_at": run.get("fault_started_at"),
            "resolved_at": run.get("resolved_at"),
            "fleet_run_id": run.get("fleet_run_id"),
            "url": url,
        },
    }


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _secret(path: Path | None) -> bytes | None:
    """A webhook's HMAC key, or ConfigError naming the file: the controller does not start
    with a key it cannot read."""
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"workflow.alerts.webhooks: cannot read secret_file {path}: {exc.strerror}"
        ) from None
    if not key:
        raise ConfigError(f"workflow.alerts.webhooks: secret_file {path} is empty")
    return key


class Notifier:
    def __init__(
        self,
        settings: AlertSettings,
        *,
        clock: Callable[[], float] = time.time,
        external_url: str | None = None,
        labels_of: Callable[[str], Mapping[str, str]] = lambda host: {},
        live: Callable[[int], list[Mapping[str, Any]]] | None = None,
        load: Callable[[str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.s = settings
        self.clock = clock
        self.external_url = settings.external_url or external_url
        self.labels_of = labels_of
        self.live = live  # the paging live runs, for Alertmanager's re-sends
        self.load = load  # a run's row as it is when its notice goes out
        self._secrets = {w.url: _secret(w.secret_file) for w in settings.webhooks}
        self._queue: deque[tuple[NoticeKind, str, float]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=settings.timeout_s)
        self.counts: dict[str, dict[str, int]] = {}
        self.dropped = 0
        self.last_error: str | None = None
        self._resent_at = 0.0
        # Whether this controller re-sends the live alerts (replicas sharing the fleet: the
        # leader alone; each still tells of the runs it moves).
        self.resends: Callable[[], bool] = lambda: True

    @property
    def enabled(self) -> bool:
        return bool(self.s.alertmanager_urls or self.s.webhooks)

    def tell(self, kind: str, run_id: str) -> None:
        """A notice about a run, delivered later (as the run is then). Never blocks."""
        if kind not in NOTICE_KINDS:
            raise ValueError(f"no notice kind {kind!r}; known: {', '.join(NOTICE_KINDS)}")
        if not self.enabled:
            return
        with self._lock:
            if len(self._queue) >= self.s.queue_max:
                self.dropped += 1
                return
            self._queue.append((kind, run_id, self.clock()))  # type: ignore[arg-type]
        self._wake.set()

    def notices(self, asked: list[tuple[NoticeKind, str, float]]) -> list[Notice]:
        """The notices to send for what was told: a run that does not page is told only that
        its page ended (absorbed)."""
        out = []
        for kind, run_id, at in asked:
            run = self.load(run_id) if self.load is not None else None
            if run is None:
                continue
            if kind == "absorbed" or pages(run):
                out.append(Notice(kind, dict(run), at))
        return out

    # --- delivery --------------------------------------------------------------------------------

    def _count(self, target: str, what: str) -> None:
        c = self.counts.setdefault(target, {"sent": 0, "failed": 0, "retries": 0})
        c[what] += 1

    def _post(self, target: str, url: str, body: bytes, headers: dict[str, str]) -> bool:
        for attempt in range(self.s.max_attempts):
            if attempt:
                self._count(target, "retries")
                if self._stop.wait(min(self.s.backoff_s * 2 ** (attempt - 1), 30.0)):
                    break
            try:
                r = self._http.post(url, content=body, headers={"Content-Type": "application/json"} | headers)
            except httpx.HTTPError as exc:
                self.last_error = f"{target}: {type(exc).__name__}: {exc}"[:300]
                continue
            if r.status_code < 300:
                self._count(target, "sent")
                return True
            self.last_error = f"{target}: HTTP {r.status_code} {r.text[:200]}"
            if r.status_code < 500 and r.status_code != 429:
                break  # refused: sending it again cannot help
        self._count(target, "failed")
        log.warning("a notice could not be delivered: %s", self.last_error)
        return False

    def deliver(self, notices: list[Notice]) -> None:
        """Send notices to every target (the sender thread's body; tests call it directly)."""
        if not notices:
            return
        self._alertmanager(notices)
        for hook in self.s.webhooks:
            secret = self._secrets.get(hook.url)
            for n in notices:
                body = json.dumps(webhook_body(n, external_url=self.external_url), sort_keys=True).encode()
                headers = {}
                if secret:
                    ts = str(int(self.clock()))
                    headers = {TIMESTAMP: ts, SIGNATURE: sign(secret, ts, body)}
                self._post(hook.url, str(hook.url), body, headers)

    def resend(self) -> int:
        """Alertmanager forgets an alert not sent again before its endsAt: the live ones, again."""
        if not self.s.alertmanager_urls or self.live is None:
            return 0
        now = self.clock()
        notices = [
            Notice("awaiting_approval" if r.get("status") == "awaiting_approval" else "firing", r, now)
            for r in self.live(RESEND_BATCH)
            if pages(r)
        ]
        if notices:
            self._alertmanager(notices)
        return len(notices)

    def _alertmanager(self, notices: list[Notice]) -> None:
        for base in self.s.alertmanager_urls:
            alerts = [
                alertmanager_alert(
                    n,
                    external_url=self.external_url,
                    resend_s=self.s.resend_s,
                    labels=self.labels_of(str(n.run.get("host_id"))),
                )
                for n in notices
            ]
            self._post(base, base.rstrip("/") + "/api/v2/alerts", json.dumps(alerts).encode(), {})

    def start(self) -> None:
        if self._thread is not None or not self.enabled:
            return
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.s.timeout_s + 2)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                asked = list(self._queue)
                self._queue.clear()
            try:
                self.deliver(self.notices(asked))
                if self.resends() and self.clock() - self._resent_at >= self.s.resend_s:
                    self._resent_at = self.clock()
                    self.resend()
            except Exception:  # a target's surprise must not end the telling of the others
                log.exception("the notifier's pass failed")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        return {
            "targets": len(self.s.alertmanager_urls) + len(self.s.webhooks),
            "queued": queued,
            "dropped": self.dropped,
            "per_target": {k: dict(v) for k, v in self.counts.items()},
            "last_error": self.last_error,
        }
