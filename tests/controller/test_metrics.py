"""What operators alert on, at /metrics: runs by status, family, state and scope, runs awaiting
approval, each host's last batch, hosts by freshness, stage durations, build info, and
eviction counts as counters."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .conftest import served_api
from .test_fleet_api import calm_host, labelled_incident


def value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")) and not line.startswith(name + "{"):
            continue
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m is None:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m[1] or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m[2])
    return None


def test_the_operations_an_operator_alerts_on(tmp_path: Path) -> None:
    execution = {"allow_safe_reversible": True, "local_hosts": ["node-p"]}
    with served_api(tmp_path, execution=execution) as (client, rt):
        waiting = labelled_incident(rt, "cpu_saturation", "node-p", {})
        done = labelled_incident(rt, "fd_exhaustion", "node-q", {})
        calm_host(rt, "node-r", {})
        assert waiting and done
        text = client.get("/metrics").text
    assert (
        value(text, "incidentlab_runs", status="awaiting_approval", family="cpu_saturation", scope="host")
        == 1.0
    )
    assert value(text, "incidentlab_runs", status="completed", family="fd_exhaustion", state="firing") == 1.0
    assert value(text, "incidentlab_runs_awaiting_approval") == 1.0
    seen = {
        h: value(text, "incidentlab_host_last_seen_timestamp_seconds", host=h)
        for h in ("node-p", "node-q", "node-r")
    }
    assert all(t is not None and t > 0 for t in seen.values()), seen
    by = [
        value(text, "incidentlab_hosts_by_freshness", freshness=f) or 0.0
        for f in ("fresh", "stale", "missing", "unavailable")
    ]
    assert sum(by) == 3.0
    assert (value(text, "incidentlab_stage_seconds_count", kind="observation_summary") or 0) >= 2
    assert value(text, "incidentlab_build_info", version="0.1.0") == 1.0
    # Counters are counters: an eviction count only grows.
    assert "# TYPE incidentlab_hot_evicted_hosts_total counter" in text
    assert value(text, "incidentlab_hot_evicted_hosts_total") == 0.0


def test_docs_to_explore_the_api_served_from_this_process(tmp_path: Path) -> None:
    with served_api(tmp_path) as (client, _):
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        assert '"persistAuthorization": true' in page.text
        js = client.get("/docs/static/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000  # the UI itself, not a CDN link
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())  # the Authorize button
    from controller.app import create_app
    from controller.config import load_settings

    from .conftest import base_config

    off = load_settings(**base_config(tmp_path / "off", server={"allow_http": True, "docs": False}))
    app: Any = create_app(off).app  # the FastAPI app behind the ingest front door
    assert not any(getattr(r, "path", "") == "/docs" for r in app.routes)
