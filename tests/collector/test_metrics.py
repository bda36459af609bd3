"""The collector's /metrics: Prometheus text from its latest snapshot (node_exporter's names
where the quantity is the same), valid for Prometheus' own parser, bounded, escaped; served
on its own thread once per snapshot; the agent serves it when metrics.enabled."""

from __future__ import annotations

import copy
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import MAX_SERIES, MetricsServer, render
from testkit.store import snapshots

from .test_transport import agent_settings, make_agent

HEALTH = {"spool_bytes": 4096, "unacked_records": 2, "oldest_unacked_age_s": 1.5, "retries": 3, "bad_acks": 0}


def families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def value(fams: dict[str, Any], name: str, **labels: str) -> float:
    fam = fams[name]
    for s in fam.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no {name} with {labels}: {[s.labels for s in fam.samples]}")


def test_a_recorded_snapshot_in_node_exporter_names() -> None:
    snap = snapshots("cpu_saturation")[-1]
    text = render(snap, HEALTH, "node-7", seq=42)
    fams = families(text)  # Prometheus' own parser takes every line
    mem = snap["sources"]["host"]["data"]["memory"]
    assert value(fams, "node_memory_MemAvailable_bytes") == mem["MemAvailable"]
    assert value(fams, "node_memory_Active_anon_bytes") == mem["Active(anon)"]
    assert value(fams, "node_load1") == snap["sources"]["host"]["data"]["load"][0]
    assert value(fams, "node_procs_running") == 5
    lo = next(i for i in snap["sources"]["network"]["data"]["interfaces"] if i["name"] == "lo")
    # The parser strips _total from a counter family's name; its samples keep it.
    assert value(fams, "node_network_receive_bytes", device="lo") == lo["counters"]["rx_bytes"]
    assert fams["node_network_receive_bytes"].type == "counter"
    assert value(fams, "incidentlab_cpu_utilization_ratio", mode="user") == pytest.approx(0.9901)
    assert value(fams, "incidentlab_pressure_avg10_ratio", resource="cpu", kind="some") == pytest.approx(
        0.0179
    )
    assert value(fams, "incidentlab_source_up", source="gpu") == 0  # unavailable on this host
    assert value(fams, "incidentlab_source_up", source="network", path="kernel", status="ok") == 1
    assert value(fams, "incidentlab_collector_snapshots") == 42  # a counter: the parser drops _total
    assert value(fams, "node_memory_HugePages_Total") == mem["HugePages_Total"]  # a count, no _bytes
    assert value(fams, "incidentlab_collector_unacked_records") == 2
    assert value(fams, "incidentlab_collector_retries") == 3
    assert value(fams, "incidentlab_process_cpu_ratio", comm="sha256sum") > 0.9
    assert len(text) < 200_000


def test_hostile_values_are_escaped_skipped_or_cut() -> None:
    snap: dict[str, Any] = {
        "ts": 1.0,
        "sources": {
            "network": {
                "status": "ok",
                "path": "kernel",
                "data": {
                    "interfaces": [
                        {"name": 'ev"il\\\nname', "counters": {"rx_bytes": 1, "tx_bytes": "lots"}},
                        {"name": None, "counters": {"rx_bytes": 5}},
                        "not a dict",
                    ]
                },
            },
            "host": {
                "status": "ok",
                "path": "file",
                "data": {"load": [float("nan"), float("inf")], "cpu": []},
            },
            "psi": {"status": "ok", "path": "file", "data": {"cpu": "garbage"}},
            "cgroup": {"status": "error", "path": "none", "data": {}},
        },
    }
    fams = families(render(snap, {}, "h"))
    (sample,) = fams["node_network_receive_bytes"].samples  # a nameless interface is left out
    assert sample.labels["device"] == 'ev"il\\\nname'  # escaped on the wire, intact after parsing
    assert "node_network_transmit_bytes" not in fams  # not a number: no sample
    assert str(value(fams, "node_load1")) == "nan" and value(fams, "node_load5") == float("inf")
    assert value(fams, "incidentlab_source_up", source="cgroup") == 0
    # A host with far more series than anyone scrapes: cut, and the cut said.
    big = copy.deepcopy(snap)
    big["sources"]["network"]["data"]["interfaces"] = [
        {"name": f"veth{i}", "counters": {"rx_bytes": i}} for i in range(MAX_SERIES + 100)
    ]
    cut = families(render(big, {}, "h"))
    assert value(cut, "incidentlab_collector_metrics_cut") > 0
    assert value(cut, "incidentlab_source_up", source="network") == 1  # the collector's own come first
    assert sum(len(f.samples) for f in cut.values()) <= MAX_SERIES + 1


def get(url: str, timeout: float = 5) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_the_server_answers_metrics_only_and_renders_once_per_snapshot() -> None:
    latest: list[Any] = [None]
    calls = {"n": 0}

    def source() -> Any:
        calls["n"] += 1
        return latest[0]

    srv = MetricsServer("127.0.0.1", 0, source, "node-7", timeout_s=1.0)
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        assert get(base + "/metrics")[0] == 503  # no snapshot yet
        snap = snapshots("cpu_saturation")[-1]
        latest[0] = (1, snap, HEALTH)
        code, ctype, body = get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4") and b"node_load1" in body
        assert get(base + "/metrics?x=1")[2] == body
        assert srv._cache is not None and srv._cache[0] == 1
        first = srv._cache[1]
        get(base + "/metrics")
        assert srv._cache[1] is first  # the same snapshot: rendered once
        assert get(base + "/")[0] == 404 and get(base + "/metrics/../etc")[0] == 404
        # A client that connects and says nothing holds only its own thread, briefly.
        with socket.create_connection(("127.0.0.1", srv.port)):
            t0 = time.monotonic()
            assert get(base + "/metrics")[0] == 200
            assert time.monotonic() - t0 < 2
    finally:
        srv.stop()


def test_the_agent_serves_its_latest_snapshot(tmp_path: Path) -> None:
    from collector.config import CollectorSettings

    settings = agent_settings(tmp_path, "http://127.0.0.1:9")
    settings = CollectorSettings.model_validate(
        json.loads(settings.model_dump_json())
        | {"metrics": {"enabled": True, "host": "127.0.0.1", "port": 0}}
    )
    agent = make_agent(settings)
    try:
        agent.start_metrics()
        assert agent.metrics is not None
        url = f"http://127.0.0.1:{agent.metrics.port}/metrics"
        assert get(url)[0] == 503
        agent.sample_once()
        code, _, body = get(url)
        assert code == 200 and "node_load1" in families(body)
        assert b"incidentlab_collector_snapshots_total 1" in body
    finally:
        agent.close()
    with pytest.raises(urllib.error.URLError, match="refused"):  # closed with the agent
        urllib.request.urlopen(url, timeout=2)


def test_a_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    from collector.config import CollectorSettings
    from collector.errors import CollectorError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = agent_settings(tmp_path, "http://127.0.0.1:9")
        settings = CollectorSettings.model_validate(
            json.loads(settings.model_dump_json())
            | {"metrics": {"enabled": True, "host": "127.0.0.1", "port": port}}
        )
        agent = make_agent(settings)
        try:
            with pytest.raises(CollectorError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
                agent.start_metrics()
        finally:
            agent.close()
