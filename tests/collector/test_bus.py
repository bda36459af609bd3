"""The bus: batches published to a real NATS JetStream server (started here, file storage).
A batch published twice is stored once; the spool moves only on the PubAck; no stream,
the wrong stream, a server that goes away and comes back, a batch too large for it."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collector.agent import Agent
from collector.bus import BusTransport, msg_id, subject_for, subject_token
from collector.config import BusSettings, CollectorSettings
from collector.errors import TooLargeForBus, TransportError
from collector.sampler import Sampler
from collector.wire import BatchKey, partition_of
from testkit.nats import NatsServer, add_stream, messages
from tests.collector.conftest import NO_CAPS


@pytest.fixture
def nats_server(tmp_path: Path) -> Any:
    with NatsServer(tmp_path / "nats") as server:
        yield server


def bus(url: str, **extra: Any) -> BusSettings:
    return BusSettings.model_validate({"enabled": True, "servers": [url], "publish_timeout_s": 2, **extra})


def test_hosts_map_to_stable_partitions_and_safe_subjects() -> None:
    digest = hashlib.sha256(b"node-a").digest()
    assert partition_of("node-a", 64) == int.from_bytes(digest[:8], "big") % 64  # any language can
    assert partition_of("node-a", 64) == 4  # and it never changes: a change moves every host
    spread = [0] * 16
    for i in range(16_000):
        spread[partition_of(f"gpu-node-{i:05d}.dc1.example", 16)] += 1
    assert min(spread) > 800 and max(spread) < 1200  # even, within 20%
    # Names one character apart spread too (CRC-32 put node-0..node-5 in one of four).
    assert len({partition_of(f"node-{i}.dc1", 4) for i in range(6)}) >= 3
    assert subject_token("a.b*c>d%e f") == "a%2Eb%2Ac%3Ed%25e%20f"
    subject = subject_for("incidentlab.batches", "node.a", 8)
    assert subject == f"incidentlab.batches.{partition_of('node.a', 8)}.node%2Ea"
    assert subject.count(".") == 3  # one token for the host, however many dots its id has
    assert msg_id(BatchKey("h", "s1", 7)) == "h:s1:7"


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="nats:// or tls://"):
        BusSettings(servers=["http://127.0.0.1:4222"])
    with pytest.raises(ValidationError, match="not both"):
        BusSettings(creds_file=Path("/a"), token_file=Path("/b"))
    assert CollectorSettings().bus.enabled is False  # HTTPS stays the default


def test_a_batch_published_twice_is_stored_once(nats_server: NatsServer) -> None:
    add_stream(nats_server.url)
    t = BusTransport(bus(nats_server.url))
    try:
        key = BatchKey("node.a", "stream-1", 1)
        first = t.send(b'{"batch": 1}', key, lost=0)
        again = t.send(b'{"batch": 1}', key, lost=0)  # a crash before the PubAck, say
        assert (first.status, again.status) == ("accepted", "duplicate")
        assert (first.seq, first.stream_id, first.host_id) == (1, "stream-1", "node.a")
        t.send(b'{"batch": 2}', BatchKey("node.a", "stream-1", 2))
        (one, two) = messages(nats_server.url)
        assert (
            one.headers["Nats-Msg-Id"] == "node.a:stream-1:1" and one.headers["Incidentlab-Host"] == "node.a"
        )
        assert one.headers["X-Incidentlab-Lost"] == "0"
        assert (
            gzip.decompress(one.data) == b'{"batch": 1}' and two.headers["Nats-Msg-Id"] == "node.a:stream-1:2"
        )
        assert one.subject == subject_for("incidentlab.batches", "node.a", 64)
        assert t.stats.accepted == 2 and t.stats.duplicates == 1
    finally:
        t.close()


def test_no_stream_or_the_wrong_one_is_a_retry_not_a_loss(nats_server: NatsServer) -> None:
    t = BusTransport(bus(nats_server.url))
    try:
        with pytest.raises(TransportError, match="not published"):
            t.send(b"{}", BatchKey("h", "s", 1))  # nothing stores the subject yet: no responders
        add_stream(nats_server.url, name="OTHER")  # the subjects land in another stream
        with pytest.raises(TransportError, match="refused"):
            t.send(b"{}", BatchKey("h", "s", 1))
        assert messages(nats_server.url, "OTHER") == []  # the expected-stream check stopped it
    finally:
        t.close()


def test_a_batch_larger_than_the_server_takes_is_a_permanent_rejection(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "small", max_payload=4096) as server:
        add_stream(server.url)
        t = BusTransport(bus(server.url))
        try:
            noise = bytes(range(256)) * 64 + __import__("os").urandom(8192)  # gzip cannot shrink it
            with pytest.raises(TooLargeForBus, match="refused by the bus"):
                t.send(noise, BatchKey("h", "s", 1))
            assert t.send(b"{}", BatchKey("h", "s", 2)).status == "accepted"  # the next one goes
        finally:
            t.close()


def agent_on_bus(tmp_path: Path, url: str) -> Agent:
    settings = CollectorSettings.model_validate(
        {
            "interval_s": 1.0,
            "enabled_sources": ["psi", "host"],
            "spool": {"dir": tmp_path / "spool", "fsync": "always"},
            "bus": {"enabled": True, "servers": [url], "publish_timeout_s": 1, "connect_timeout_s": 1},
        }
    )
    return Agent(settings, sampler=Sampler(settings, capabilities=NO_CAPS))


def test_an_outage_spools_and_a_restarted_server_catches_up_in_order(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    agent = agent_on_bus(tmp_path, server.url)
    try:
        add_stream(server.url)
        for _ in range(3):
            agent.sample_once()
            assert agent.ship_once() is True
        server.stop()  # the bus goes away: file storage keeps what it took
        for _ in range(3):
            agent.sample_once()
            assert agent.ship_once() is False  # not acked: spooled, not lost
        assert agent.spool.acked == 3
        server.start()
        while agent.ship_once():
            pass
        assert agent.spool.acked == 6
        ids = [m.headers["Nats-Msg-Id"] for m in messages(server.url)]
        host = agent.sampler.info().host_id
        assert ids == [f"{host}:{agent.spool.stream_id}:{seq}" for seq in range(1, 7)]  # in order, once each
    finally:
        agent.close()
        server.stop()


def test_the_agent_on_https_alone_never_touches_the_bus(tmp_path: Path) -> None:
    from collector.agent import delivery
    from collector.transport import Transport

    settings = CollectorSettings.model_validate(
        {"transport": {"url": "http://127.0.0.1:9", "allow_http": True}, "spool": {"dir": tmp_path / "s"}}
    )
    t = delivery(settings)
    assert isinstance(t, Transport)
    t.close()


def test_another_publisher_cannot_make_a_hosts_batch_a_duplicate(nats_server: NatsServer) -> None:
    from testkit.nats import _with_js, run

    add_stream(nats_server.url)

    async def squat(js: Any) -> None:  # a hostile publisher takes node-b's next message id
        await js.publish("incidentlab.batches.0.node-evil", b"x", headers={"Nats-Msg-Id": "node-b:s:1"})

    run(_with_js(nats_server.url, squat))
    t = BusTransport(bus(nats_server.url))
    try:
        with pytest.raises(TransportError, match="message id was taken"):
            t.send(b'{"b": 1}', BatchKey("node-b", "s", 1))
        assert t.stats.bad_acks == 1  # not acked: the spool keeps it until the window passes
        assert t.send(b'{"b": 2}', BatchKey("node-b", "s", 2)).status == "accepted"
    finally:
        t.close()


def test_unreadable_credentials_and_an_absent_server_say_which(tmp_path: Path) -> None:
    missing = BusTransport(
        bus("nats://127.0.0.1:9", token_file=str(tmp_path / "no-token"), connect_timeout_s=0.5)
    )
    try:
        with pytest.raises(TransportError, match="cannot read the bus credentials"):
            missing.send(b"{}", BatchKey("h", "s", 1))
    finally:
        missing.close()
    away = BusTransport(bus("nats://127.0.0.1:9", connect_timeout_s=0.5))
    try:
        with pytest.raises(TransportError, match=r"cannot reach the bus at nats://127\.0\.0\.1:9"):
            away.send(b"{}", BatchKey("h", "s", 1))
    finally:
        away.close()
