"""The bus consumer against a real nats-server, its ingest a stand-in that answers as told:
the store away is waited out and never given up, a failing batch is given up after its
deliveries, a subject that names no host or another partition is refused, a controller that
stops leading hands its fetch back, and the stream refuses what nobody would read."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.errors import NoRespondersError
from nats.js.errors import NoStreamResponseError

from collector.bus import BusTransport, subject_for, subject_token
from collector.config import BusSettings as CollectorBus
from collector.errors import TransportError
from collector.wire import BatchKey, partition_of
from controller.bus import BusConsumer
from controller.config import BusSettings
from controller.ingest import Accepted, Answer
from testkit.nats import NatsServer, _with_js, run

PARTITIONS = 4


class Ingest:
    """Answers ``status`` for a batch holding ``marker``, ``times`` times (-1: always), else
    200; records what it saw."""

    def __init__(self, marker: bytes = b"", status: int = 200, times: int = 0) -> None:
        self.marker, self.status, self.times = marker, status, times
        self.seen: list[tuple[tuple[str, ...] | None, bytes]] = []

    def process(self, principal: Any, encoding: str | None, data: bytes, lost: int) -> Answer:
        raw = gzip.decompress(data)
        self.seen.append((principal.hosts, raw))
        if self.marker and self.marker in raw and self.times != 0:
            self.times -= 1
            return Answer(self.status, b"{}")
        return Answer(200, b"{}", accepted=Accepted("h", raw, time.time()))

    def count(self, answer: Answer) -> None:
        pass

    def rebuild(self, host_id: str, encoding: str | None, body: bytes, received_at: float) -> Accepted:
        return Accepted(host_id, gzip.decompress(body), received_at)

    def answered(self, answer: Answer) -> None:
        pass


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


def consumer(
    url: str, ingest: Ingest, leader: Callable[[], bool] = lambda: True, **extra: Any
) -> BusConsumer:
    s = BusSettings.model_validate({"enabled": True, "servers": [url], "partitions": PARTITIONS} | extra)
    everything = frozenset(range(PARTITIONS))
    c = BusConsumer(s, ingest, lambda: everything if leader() else frozenset())  # type: ignore[arg-type]
    c.start()
    wait_for(lambda: c.connected)
    return c


def wait_for(what: Callable[[], bool], timeout: float = 20.0, show: Callable[[], Any] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out: {show()}"
        time.sleep(0.05)


def publish(url: str, subject: str, headers: dict[str, str] | None = None) -> None:
    async def go(js: Any) -> None:
        await js.publish(
            subject, gzip.compress(b"{}"), headers={"Content-Encoding": "gzip", **(headers or {})}
        )

    run(_with_js(url, go))


def publisher(url: str) -> BusTransport:
    return BusTransport(CollectorBus(enabled=True, servers=[url], partitions=PARTITIONS, publish_timeout_s=2))


def test_the_store_away_is_waited_out_and_never_given_up(nats_server: NatsServer) -> None:
    ingest = Ingest(b"n", 503, 3)
    c = consumer(nats_server.url, ingest, max_deliveries=2, ack_wait_s=5)
    pub = publisher(nats_server.url)
    try:
        pub.send(b'{"n": 1}', BatchKey("node-a", "s", 1))
        wait_for(lambda: c.counts["accepted"] == 1, timeout=30)
        assert c.counts["waited_503"] == 3 and c.counts["given_up"] == 0  # past max_deliveries, still kept
    finally:
        pub.close()
        c.stop()


def test_a_batch_the_ingest_keeps_failing_on_is_given_up_not_the_partition(nats_server: NatsServer) -> None:
    ingest = Ingest(b"poison", 500, -1)
    # A delivery nats-py drops (served to a pull request it gave up on) comes back after ack_wait.
    c = consumer(nats_server.url, ingest, max_deliveries=2, ack_wait_s=5)
    pub = publisher(nats_server.url)
    try:
        pub.send(b'{"poison": 1}', BatchKey("node-a", "s", 1))
        pub.send(b'{"next": 1}', BatchKey("node-a", "s", 2))
        wait_for(  # each delivery nats-py drops costs an ack_wait: room for a few on a busy machine
            lambda: c.counts["accepted"] == 1 and c.counts["given_up"] == 1,
            timeout=60,
            show=lambda: (dict(c.counts), ingest.seen, c.last_error),
        )
        assert c.counts["retried_500"] == 1
    finally:
        pub.close()
        c.stop()


def test_a_subject_that_names_no_host_or_the_wrong_partition_is_refused(nats_server: NatsServer) -> None:
    ingest = Ingest()
    c = consumer(nats_server.url, ingest)
    try:
        star = "*"  # a glob would let one name write every host
        publish(
            nats_server.url, f"incidentlab.batches.{partition_of(star, PARTITIONS)}.{subject_token(star)}"
        )
        wrong = (partition_of("node-a", PARTITIONS) + 1) % PARTITIONS
        publish(nats_server.url, f"incidentlab.batches.{wrong}.node-a")  # node-a in another's partition
        right = subject_for("incidentlab.batches", "node-a", PARTITIONS)
        publish(nats_server.url, right, {"Incidentlab-Host": "node-b"})  # a header that disagrees
        publish(nats_server.url, right)
        wait_for(lambda: c.counts["accepted"] == 1 and c.counts["refused_subject"] == 3)
        assert [hosts for hosts, _ in ingest.seen] == [("node-a",)]
    finally:
        c.stop()


def test_the_stream_refuses_what_no_consumer_reads_and_a_host_past_its_share(nats_server: NatsServer) -> None:
    c = consumer(nats_server.url, Ingest(), max_msgs_per_host=10)
    c.stop()  # the stream is there and nobody consumes
    pub = publisher(nats_server.url)
    try:
        with pytest.raises((NoRespondersError, NoStreamResponseError)):  # no stream takes it
            publish(nats_server.url, "incidentlab.batches.x.node-a")
        for seq in range(1, 11):
            pub.send(b"{}", BatchKey("node-a", "s", seq))
        with pytest.raises(TransportError, match="refused"):
            pub.send(b"{}", BatchKey("node-a", "s", 11))  # its share is full: kept in its spool
        assert pub.send(b"{}", BatchKey("node-b", "s", 1)).status == "accepted"  # others go on
    finally:
        pub.close()


def test_a_controller_that_stops_leading_hands_its_fetch_back(nats_server: NatsServer) -> None:
    leading = [True]
    ingest = Ingest()
    c = consumer(nats_server.url, ingest, lambda: leading[0])
    pub = publisher(nats_server.url)
    try:
        pub.send(b"{}", BatchKey("node-a", "s", 1))
        wait_for(lambda: c.counts["accepted"] == 1)
        leading[0] = False
        time.sleep(0.5)
        for seq in (2, 3):
            pub.send(b"{}", BatchKey("node-a", "s", seq))
        time.sleep(1.5)
        assert c.counts["accepted"] == 1 and len(ingest.seen) == 1  # a follower ingests nothing
        c.stop()
        again = consumer(nats_server.url, ingest)  # whoever leads next gets them, once
        wait_for(lambda: again.counts["accepted"] == 2)
        again.stop()
    finally:
        pub.close()


def test_an_existing_consumer_takes_the_settings_ack_wait(nats_server: NatsServer) -> None:
    c = consumer(nats_server.url, Ingest(), ack_wait_s=30)
    c.stop()
    c = consumer(nats_server.url, Ingest(), ack_wait_s=7)
    try:
        wait_for(lambda: bool(c.pending) or True)

        async def ack_wait(js: Any) -> float:
            info = await js.consumer_info("INCIDENTLAB", "incidentlab_batches-p0")
            return float(info.config.ack_wait)

        wait_for(lambda: run(_with_js(nats_server.url, ack_wait)) == 7.0)
    finally:
        c.stop()


def test_a_partition_is_rebuilt_once_each_time_it_comes_not_on_a_reconnect(nats_server: NatsServer) -> None:
    import asyncio

    ingest = Ingest()
    first = consumer(nats_server.url, ingest)
    pub = publisher(nats_server.url)
    try:
        for seq in (1, 2, 3):
            pub.send(b'{"n": %d}' % seq, BatchKey("node-a", "s", seq))
        wait_for(lambda: first.counts["accepted"] == 3)
        wait_for(lambda: sum(first.pending.values()) == 0 and len(first.pending) == PARTITIONS)
    finally:
        first.stop()
    # The partitions come to another controller: it reads what the first acknowledged.
    comings = {"n": 1}
    rebuilt: list[Accepted] = []
    told: dict[int, list[str]] = {}
    s = BusSettings.model_validate({"enabled": True, "servers": [nats_server.url], "partitions": PARTITIONS})
    everything = frozenset(range(PARTITIONS))
    c = BusConsumer(
        s,
        ingest,  # type: ignore[arg-type]
        lambda: everything,
        window_s=600,
        rebuilt=rebuilt.append,
        rebuild_done=told.__setitem__,
        epoch=lambda p: comings["n"],
    )
    c.start()
    try:
        wait_for(lambda: c.rebuilds_done == PARTITIONS)
        assert [a.raw for a in rebuilt] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
        # Every partition says its rebuild ended (its runs continue then); node-a's names it.
        mine = partition_of("node-a", PARTITIONS)
        assert told == {p: ["node-a"] if p == mine else [] for p in range(PARTITIONS)}
        view = c.status()["rebuilt"][str(partition_of("node-a", PARTITIONS))]
        assert view["messages"] == 3 and view["hosts"] == 1 and view["progress"] == 1.0 and not view["failed"]
        # A new batch is consumed, not rebuilt; a dropped connection is not a new coming.
        pub.send(b'{"n": 4}', BatchKey("node-a", "s", 4))
        wait_for(lambda: c.counts["accepted"] == 1)
        asyncio.run_coroutine_threadsafe(c._nc.close(), c._loop).result(10)
        wait_for(lambda: c.connected and c.counts["accepted"] == 1)
        time.sleep(1.5)
        assert c.rebuilds_done == PARTITIONS and len(rebuilt) == 3
        # It goes and comes back (a new epoch): rebuilt again, the new batch included.
        comings["n"] = 2
        wait_for(lambda: c.rebuilds_done == 2 * PARTITIONS)
        assert [a.raw for a in rebuilt[3:]] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}', b'{"n": 4}']
    finally:
        pub.close()
        c.stop()


def test_how_full_the_stream_is_is_watched_and_said(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from controller import bus

    monkeypatch.setattr(bus, "STREAM_LOOK_S", 0.2)
    c = consumer(nats_server.url, Ingest(), max_bytes=1 << 20)
    try:
        body = gzip.compress(os.urandom(850_000), compresslevel=0)  # incompressible: ~850 KB stored

        async def go(js: Any) -> None:
            subject = subject_for("incidentlab.batches", "node-a", PARTITIONS)
            await js.publish(subject, body, headers={"Content-Encoding": "gzip"})

        with caplog.at_level("WARNING", logger="controller.bus"):
            run(_with_js(nats_server.url, go))
            wait_for(lambda: c.status()["stream_full"] >= 0.8, show=c.status)
            wait_for(lambda: any("raise max_bytes" in r.getMessage() for r in caplog.records))
        assert c.status()["stream_bytes"] > 800_000
    finally:
        c.stop()
