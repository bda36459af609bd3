"""The bus end to end: collectors publish to a real nats-server (file storage), a real
controller process creates the stream and ingests each partition through the ledger,
exactly once in effect: a batch re-published past JetStream's duplicate window, a
controller killed and restarted, a NATS server restarted; and one hostile publisher (another
host's batch under its own subject, garbage) refused without holding anyone else back."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.bus import BusTransport, subject_for
from collector.config import BusSettings
from collector.wire import BatchKey
from testkit.nats import NatsServer, messages

from .conftest import OPERATOR_TOKEN, ControllerProc, base_config
from .test_ingest_http import batch

PARTITIONS = 4


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


def controller(tmp_path: Path, url: str) -> ControllerProc:
    bus = {"enabled": True, "servers": [url], "partitions": PARTITIONS, "ack_wait_s": 5}
    return ControllerProc(tmp_path, base_config(tmp_path / "data", bus=bus))


def publisher(url: str) -> BusTransport:
    return BusTransport(
        BusSettings(
            enabled=True, servers=[url], partitions=PARTITIONS, publish_timeout_s=5, connect_timeout_s=2
        )
    )


def status(c: ControllerProc) -> dict[str, Any]:
    got: dict[str, Any] = httpx.get(
        c.url + "/api/v1/status", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=10
    ).json()
    return got


def host_streams(c: ControllerProc, host: str) -> list[dict[str, Any]]:
    page = httpx.get(
        c.url + "/api/v1/ingest/status",
        params={"host": host},
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        timeout=10,
    ).json()
    hosts = page.get("hosts") or []
    return list(hosts[0]["streams"]) if hosts else []


def wait_for(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last: {what.__name__}")
        time.sleep(0.2)


def send(t: BusTransport, host: str, seq: int, stream: str = "s1") -> None:
    body = json.dumps(batch(seq, host=host, stream=stream)).encode()
    t.send(body, BatchKey(host, stream, seq), lost=0)


def accepted(c: ControllerProc) -> int:
    return int(((status(c).get("bus") or {}).get("counts") or {}).get("accepted", 0))


def test_collectors_on_the_bus_are_ingested_exactly_once(tmp_path: Path, nats_server: NatsServer) -> None:
    ctl = controller(tmp_path, nats_server.url).start()
    pub = publisher(nats_server.url)
    try:
        wait_for(lambda: bool((status(ctl).get("bus") or {}).get("connected")))  # it made the stream
        hosts = [f"node-{i}.dc1" for i in range(6)]
        for seq in (1, 2, 3):
            for h in hosts:
                send(pub, h, seq)
        wait_for(lambda: accepted(ctl) == 18)
        # Visible where operators look: /metrics (what alerts read) and the HA status.
        auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        wait_for(lambda: "incidentlab_bus_partition_lag{" in httpx.get(ctl.url + "/metrics", timeout=10).text)
        scraped = httpx.get(ctl.url + "/metrics", timeout=10).text
        assert 'incidentlab_bus_messages_total{outcome="accepted"} 18.0' in scraped
        assert "incidentlab_bus_connected 1.0" in scraped
        ha = httpx.get(ctl.url + "/api/v1/ha/status", headers=auth, timeout=10).json()
        assert ha["bus"]["connected"] and set(ha["bus"]["lag"]) == {str(p) for p in range(PARTITIONS)}
        for h in hosts:
            (s,) = host_streams(ctl, h)
            assert s["last_seq"] == 3 and s["accepted"] == 3 and s["duplicates"] == 0
        # The same batch again under a new message id (past JetStream's duplicate window, or a
        # wiped spool's replay): stored twice in the stream, counted once by the ledger.
        body = json.dumps(batch(3, host=hosts[0], stream="s1")).encode()
        subject = subject_for("incidentlab.batches", hosts[0], PARTITIONS)

        async def republish(js: Any) -> None:
            await js.publish(
                subject,
                gzip.compress(body),
                headers={"Nats-Msg-Id": "other-id", "Content-Encoding": "gzip", "Incidentlab-Host": hosts[0]},
            )

        from testkit.nats import _with_js, run

        run(_with_js(nats_server.url, republish))
        wait_for(lambda: (status(ctl)["bus"]["counts"] or {}).get("duplicate", 0) == 1)
        assert host_streams(ctl, hosts[0])[0]["accepted"] == 3

        # Killed and restarted: what it acknowledged is not ingested again, what came while it
        # was down is ingested once.
        ctl.kill9()
        for h in hosts:
            send(pub, h, 4)
        ctl.start()
        wait_for(lambda: accepted(ctl) == 6)  # this process's own count: the six new ones
        time.sleep(1.0)
        assert accepted(ctl) == 6
        for h in hosts:
            (s,) = host_streams(ctl, h)
            assert s["last_seq"] == 4 and s["accepted"] == 4
    finally:
        pub.close()
        ctl.stop()


def test_a_restarted_nats_server_loses_nothing(tmp_path: Path, nats_server: NatsServer) -> None:
    ctl = controller(tmp_path, nats_server.url).start()
    pub = publisher(nats_server.url)
    try:
        wait_for(lambda: bool((status(ctl).get("bus") or {}).get("connected")))
        send(pub, "node-a", 1)
        wait_for(lambda: accepted(ctl) == 1)
        nats_server.stop()
        nats_server.start()  # same port, same store
        wait_for(lambda: _sent(pub, "node-a", 2), timeout=30)
        wait_for(lambda: accepted(ctl) == 2, timeout=60)
        assert len(messages(nats_server.url)) == 2  # file storage kept the first
    finally:
        pub.close()
        ctl.stop()


def _sent(pub: BusTransport, host: str, seq: int) -> bool:
    try:
        send(pub, host, seq)
        return True
    except Exception:
        return False


def test_one_hostile_publisher_is_refused_and_holds_nobody_back(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    ctl = controller(tmp_path, nats_server.url).start()
    pub = publisher(nats_server.url)
    try:
        wait_for(lambda: bool((status(ctl).get("bus") or {}).get("connected")))
        from testkit.nats import _with_js, run

        # node-evil publishes node-good's batch under its own subject, then garbage.
        forged = json.dumps(batch(1, host="node-good", stream="x")).encode()

        async def hostile(js: Any) -> None:
            subject = subject_for("incidentlab.batches", "node-evil", PARTITIONS)
            await js.publish(
                subject, gzip.compress(forged), headers={"Content-Encoding": "gzip", "Nats-Msg-Id": "e1"}
            )
            await js.publish(
                subject, b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip", "Nats-Msg-Id": "e2"}
            )

        run(_with_js(nats_server.url, hostile))
        send(pub, "node-good", 1)
        wait_for(lambda: accepted(ctl) == 1)
        counts = status(ctl)["bus"]["counts"]
        wait_for(
            lambda: sum(v for k, v in status(ctl)["bus"]["counts"].items() if k.startswith("refused")) == 2
        )
        counts = status(ctl)["bus"]["counts"]
        assert (
            counts.get("refused_403") == 1
            and counts.get("refused_400", 0) + counts.get("refused_415", 0) == 1
        )
        assert host_streams(ctl, "node-good")[0]["stream_id"] == "s1"  # the forged stream "x" never landed
        assert host_streams(ctl, "node-evil") == []
    finally:
        pub.close()
        ctl.stop()
