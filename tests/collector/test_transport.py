"""Transport and agent against a real loopback ingest server: acks, faults, TLS, leaders, outages."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.agent import Agent
from collector.config import CollectorSettings
from collector.errors import PermanentRejection, TransportError
from collector.sampler import Sampler
from collector.spool import HEADER, HEADER_SIZE
from collector.transport import Transport, TransportOptions, parse_retry_after
from collector.wire import BATCH_SCHEMA, BatchKey, encode, make_ack, validate_batch

from .conftest import NO_CAPS
from .ingest_server import IngestServer
from .tls_material import TestCA

KEY = BatchKey("host-a", "stream-a", 1)


def body_for(key: BatchKey) -> bytes:
    return encode(
        validate_batch(
            {
                "schema": BATCH_SCHEMA,
                "host_id": key.host_id,
                "boot_id": "boot-1",
                "stream_id": key.stream_id,
                "seq": key.seq,
                "sent_at": time.time(),
                "snapshots": [],
            }
        )
    )


OPEN: list[Transport] = []


def track(t: Transport) -> Transport:
    OPEN.append(t)
    return t


@pytest.fixture(autouse=True)
def _close_transports() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def plain(url: str, **kw: Any) -> Transport:
    opts = TransportOptions(url=url, allow_http=True, backoff_base_s=0.01, backoff_max_s=0.05, **kw)
    return track(Transport(opts))


def test_accepted_then_duplicate_both_settle() -> None:
    with IngestServer() as srv:
        t = plain(srv.url)
        assert t.send(body_for(KEY), KEY).status == "accepted"
        assert t.send(body_for(KEY), KEY).status == "duplicate"
        assert srv.seqs() == [1] and srv.received.duplicates == 1
        assert t.stats.last_latency_s is not None


def test_zstd_encoding() -> None:
    with IngestServer() as srv:
        assert plain(srv.url, encoding="zstd").send(body_for(KEY), KEY).status == "accepted"


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        (("garbage", None), "bad ack"),
        (("wrong_seq", None), "ack answers 2"),
        (("status", 500), "HTTP 500"),
        (("status", 401), "HTTP 401"),
    ],
)
def test_bad_answers_never_count_as_delivered(fault: tuple[str, Any], needle: str) -> None:
    with IngestServer() as srv:
        srv.faults.extend([fault] * 3)
        t = plain(srv.url, max_attempts=3)
        with pytest.raises(TransportError, match=needle):
            t.send(body_for(KEY), KEY)
        # The next try, with the server well again, delivers it.
        assert t.send(body_for(KEY), KEY).status in ("accepted", "duplicate")


def test_slow_server_times_out() -> None:
    with IngestServer() as srv:
        srv.faults.append(("slow", 1.5))
        t = plain(srv.url, max_attempts=1, read_timeout_s=0.3)
        with pytest.raises(TransportError, match="timed out"):
            t.send(body_for(KEY), KEY)


def test_permanent_rejection_is_raised_not_retried() -> None:
    with IngestServer() as srv:
        srv.faults.append(("reject", "$.snapshots: bad"))
        t = plain(srv.url)
        with pytest.raises(PermanentRejection, match=r"\$.snapshots: bad") as exc:
            t.send(body_for(KEY), KEY)
        assert exc.value.status_code == 400 and srv.received.posts == 1


def test_follows_the_leader_hint() -> None:
    with IngestServer() as leader, IngestServer() as follower:
        follower.faults.append(("leader", leader.url))
        t = plain(follower.url)
        assert t.send(body_for(KEY), KEY).status == "accepted"
        assert t.url == leader.url and t.stats.leader_hops == 1
        assert leader.seqs() == [1] and follower.seqs() == []


def test_a_leader_hint_that_cannot_be_reached_falls_back_to_the_configured_url() -> None:
    with IngestServer() as follower:
        gone = free_url()  # a leader that moved away, or a name its certificate does not cover
        follower.faults.append(("leader", gone))
        t = plain(follower.url)
        # Followed the hint, could not connect, went back to where it was configured to send
        # (before this, it stayed on the hint until the collector restarted).
        assert t.send(body_for(KEY), KEY).status == "accepted"
        assert t.stats.leader_hops == 1 and t.url == follower.url and follower.seqs() == [1]


def test_leader_hint_to_plain_http_is_refused_when_https_is_required(tmp_path: Path) -> None:
    ca = TestCA(tmp_path, "ca")
    srv_cert = ca.issue("server", server=True)
    with IngestServer(tls=(srv_cert.cert, srv_cert.key)) as srv:
        srv.faults.extend([("leader", "http://127.0.0.1:1")] * 2)
        t = track(
            Transport(TransportOptions(url=srv.url, ca_file=ca.path, max_attempts=2, backoff_base_s=0.01))
        )
        with pytest.raises(TransportError, match="https:// required"):
            t.send(body_for(KEY), KEY)


def test_429_waits_for_retry_after() -> None:
    slept: list[float] = []
    with IngestServer() as srv:
        srv.faults.append(("throttle", 2))
        opts = TransportOptions(url=srv.url, allow_http=True, backoff_max_s=30)
        t = track(Transport(opts, sleep=slept.append))
        assert t.send(body_for(KEY), KEY).status == "accepted"
    assert slept == [2.0]


def test_parse_retry_after() -> None:
    assert parse_retry_after("5", 0) == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None


def test_backoff_is_exponential_with_full_jitter_and_bounded() -> None:
    slept: list[float] = []
    opts = TransportOptions(
        url="http://127.0.0.1:1", allow_http=True, max_attempts=6, backoff_base_s=1, backoff_max_s=4
    )
    t = track(Transport(opts, sleep=slept.append))
    with pytest.raises(TransportError, match="not delivered after 6 attempts"):
        t.send(body_for(KEY), KEY)
    assert len(slept) == 5
    for i, s in enumerate(slept, start=1):
        assert 0 <= s <= min(4, 2**i)


def test_plain_http_is_refused_by_default() -> None:
    with pytest.raises(TransportError, match="https:// required"):
        Transport(TransportOptions(url="http://127.0.0.1:1"))


def test_bearer_token_from_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("wrong\n")
    with IngestServer(token="s3cret") as srv:
        t = plain(srv.url, token_file=token, max_attempts=1, reload_check_s=0)
        with pytest.raises(TransportError, match="HTTP 401"):
            t.send(body_for(KEY), KEY)
        token.write_text("s3cret\n")
        assert t.send(body_for(KEY), KEY).status == "accepted"


def test_mutual_tls_and_rotation_without_restart(tmp_path: Path) -> None:
    ca = TestCA(tmp_path, "ca")
    other_ca = TestCA(tmp_path, "other-ca")
    server = ca.issue("server", server=True)
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    other_ca.issue(
        "client", server=False, cert_path=cert, key_path=key
    )  # from a CA the server does not trust
    with IngestServer(tls=(server.cert, server.key), client_ca=ca.path) as srv:
        no_cert = track(Transport(TransportOptions(url=srv.url, ca_file=ca.path, max_attempts=1)))
        with pytest.raises(TransportError):
            no_cert.send(body_for(KEY), KEY)
        t = track(
            Transport(
                TransportOptions(
                    url=srv.url,
                    ca_file=ca.path,
                    cert_file=cert,
                    key_file=key,
                    max_attempts=1,
                    reload_check_s=0,
                )
            )
        )
        with pytest.raises(TransportError):
            t.send(body_for(KEY), KEY)
        time.sleep(0.01)  # a new mtime for the rotated files
        ca.issue("client", server=False, cert_path=cert, key_path=key)  # rotated in place
        assert t.send(body_for(KEY), KEY).status == "accepted"
        assert t.stats.tls_reloads >= 1
        assert srv.seqs() == [1]


def test_server_certificate_must_chain_to_the_ca(tmp_path: Path) -> None:
    ca = TestCA(tmp_path, "ca")
    rogue = TestCA(tmp_path, "rogue")
    server = rogue.issue("server", server=True)
    with IngestServer(tls=(server.cert, server.key)) as srv:
        t = track(Transport(TransportOptions(url=srv.url, ca_file=ca.path, max_attempts=1)))
        with pytest.raises(TransportError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            t.send(body_for(KEY), KEY)


# --- the agent ----------------------------------------------------------------------------------


def agent_settings(
    tmp_path: Path, url: str, transport: dict[str, Any] | None = None, **spool: Any
) -> CollectorSettings:
    return CollectorSettings.model_validate(
        {
            "interval_s": 1.0,
            "enabled_sources": ["psi", "host"],
            "spool": {"dir": tmp_path / "spool", "fsync": "always", **spool},
            "transport": {
                "url": url,
                "allow_http": True,
                "max_attempts": 1,
                "backoff_base_s": 0.01,
                **(transport or {}),
            },
        }
    )


def make_agent(settings: CollectorSettings, transport: Transport | None = None) -> Agent:
    return Agent(settings, sampler=Sampler(settings, capabilities=NO_CAPS), transport=transport)


def free_url() -> str:
    with IngestServer() as srv:
        url = srv.url
    return url  # nothing listens here any more


def test_outage_then_replay_in_order_exactly_once(tmp_path: Path) -> None:
    down = free_url()
    agent = make_agent(agent_settings(tmp_path, down))
    try:
        for _ in range(5):
            agent.sample_once()
            assert agent.ship_once() is False  # nobody answers: spooled, not lost
        assert agent.spool.acked == 0
        with IngestServer() as srv:
            agent.transport.url = srv.url
            while agent.ship_once():
                pass
            assert srv.seqs() == [1, 2, 3, 4, 5]
            first = srv.received.batches[0]
            assert first.collector is not None and srv.received.batches[1].collector is None
            last = srv.received.batches[4].agent
            assert last is not None and last["unacked_records"] == 4  # health when the batch was made
            assert agent.spool.acked == 5
    finally:
        agent.close()


def test_duplicates_after_a_lost_ack_are_not_counted_twice(tmp_path: Path) -> None:
    with IngestServer() as srv:
        agent = make_agent(agent_settings(tmp_path, srv.url))
        try:
            agent.sample_once()
            srv.faults.append(("lost_ack", None))  # the server stored it, but its ack was lost
            assert agent.ship_once() is False and agent.spool.acked == 0
            assert agent.ship_once() is True and agent.spool.acked == 1
            assert srv.seqs() == [1] and srv.received.duplicates == 1
        finally:
            agent.close()


def test_permanent_rejection_goes_to_the_dead_letter_file(tmp_path: Path) -> None:
    with IngestServer() as srv:
        agent = make_agent(agent_settings(tmp_path, srv.url))
        try:
            agent.sample_once()
            agent.sample_once()
            srv.faults.append(("reject", "$.snapshots[0]: nonsense"))
            assert agent.ship_once() is True  # settled: dead-lettered
            assert agent.ship_once() is True
            assert srv.seqs() == [2]
            assert agent.spool.stats()["dead_letters"] == 1
            agent.sample_once()
            assert agent.ship_once() is True
            assert srv.received.batches[-1].dropped["dead_letters"] == 1
        finally:
            agent.close()
    assert "nonsense" in (tmp_path / "spool" / "deadletter.log").read_text()


def test_full_spool_drops_are_counted_and_arrive(tmp_path: Path) -> None:
    settings = agent_settings(
        tmp_path,
        free_url(),
        max_bytes=1 << 20,
        segment_bytes=64 << 10,
        max_record_bytes=32 << 10,
        fsync="interval",
    )
    agent = make_agent(settings)
    try:
        for _ in range(400):  # ~5 KiB batches: 2 MiB while the controller is away
            agent.sample_once()
        evicted = agent.spool.stats()["evicted_records"]
        assert evicted > 0
        with IngestServer() as srv:
            agent.transport.url = srv.url
            while agent.ship_once():
                pass
            seqs = srv.seqs()
            assert seqs == sorted(seqs) and seqs[-1] == 400
            assert len(seqs) + evicted == 400
            # Counts are cumulative as of when each batch was made: the next batch carries them all.
            agent.spool.flush()
            agent.sample_once()
            assert agent.ship_once() is True
            assert srv.received.batches[-1].dropped["spool_evicted"] == evicted
    finally:
        agent.close()


def test_run_loop_ships_and_writes_status(tmp_path: Path) -> None:
    from collector.agent import read_status

    with IngestServer() as srv:
        settings = agent_settings(tmp_path, srv.url).model_copy(update={"interval_s": 0.2})
        agent = make_agent(settings)
        agent.run(max_samples=3)
        deadline = time.monotonic() + 5
        while len(srv.seqs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.seqs()[:2] == [1, 2]
    status = read_status(tmp_path / "spool")
    assert status["next_seq"] == 4 and status["agent"]["leader"] == srv.url


def test_corrupt_batches_leave_a_gap_the_controller_sees_and_counts(tmp_path: Path) -> None:
    agent = make_agent(agent_settings(tmp_path, free_url()))
    try:
        for _ in range(20):
            agent.sample_once()  # the controller is away: all 20 wait in the active segment
    finally:
        agent.close()
    (seg,) = (tmp_path / "spool").glob("*.seg")
    data = bytearray(seg.read_bytes())
    at, seq = 0, 1
    while at < len(data):
        _magic, length, got, _ts, _crc = HEADER.unpack_from(data, at)
        assert got == seq
        if seq == 3:
            data[at + HEADER_SIZE + length // 2] ^= 0x01  # a flipped bit in batch 3's payload
        if seq == 9:
            data[at] ^= 0x01  # and batch 9's framing broken (its magic)
        at, seq = at + HEADER_SIZE + length, seq + 1
    seg.write_bytes(bytes(data))
    with IngestServer() as srv:
        agent = make_agent(agent_settings(tmp_path, srv.url))
        try:
            while agent.ship_once():
                pass
            # The lost seqs are never sent, nothing after them is lost.
            assert srv.seqs() == [s for s in range(1, 21) if s not in (3, 9)]
            assert srv.received.invalid == []
            agent.sample_once()
            assert agent.ship_once() is True
            newest = srv.received.batches[-1]
            assert newest.seq == 21  # 3 and 9 are not reused: the controller sees a gap
            assert newest.dropped["spool_corrupt"] == 2  # and the batch after it says why
        finally:
            agent.close()


class TwinController:
    """An in-memory controller that acks every batch, and can run something mid-request."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.dropped: dict[str, int] = {}
        self.during: Any = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = json.loads(gzip.decompress(request.content))
        key = BatchKey(batch["host_id"], batch["stream_id"], batch["seq"])
        if self.during is not None:
            during, self.during = self.during, None
            during(key)  # may raise, as a dropped connection would
        if key.seq not in self.delivered:
            self.delivered.append(key.seq)
            self.dropped = batch["dropped"]
        return httpx.Response(200, content=encode(make_ack(key, "accepted")))


def small_spool_agent(tmp_path: Path, twin: TwinController) -> Agent:
    settings = agent_settings(
        tmp_path,
        "https://controller.test",
        max_bytes=1 << 20,
        segment_bytes=64 << 10,
        max_record_bytes=32 << 10,
        fsync="interval",
    )
    t = Transport(
        TransportOptions(url="https://controller.test", max_attempts=1),
        http_transport=httpx.MockTransport(twin),
    )
    return make_agent(settings, transport=t)


@pytest.mark.parametrize("send_fails", [False, True])
def test_a_batch_in_flight_when_its_segment_is_evicted_is_not_counted_lost(
    tmp_path: Path, send_fails: bool
) -> None:
    twin = TwinController()
    agent = small_spool_agent(tmp_path, twin)

    def fill_until_evicted(key: BatchKey) -> None:
        # While batch 1 is on the wire the controller stalls and the spool fills past max_bytes.
        while agent.spool.state.evicted_through < key.seq:
            agent.sample_once()
        if send_fails:
            raise httpx.ConnectError("connection reset while the spool was evicting")

    try:
        for _ in range(5):
            agent.sample_once()
        twin.during = fill_until_evicted
        assert agent.ship_once() is (not send_fails)
        while agent.ship_once():
            pass
        total = agent.spool.next_seq - 1
        evicted = agent.spool.state.evicted_records
        assert twin.delivered[0] == 1  # the batch in flight got through (after a retry, if it failed)
        assert twin.delivered == sorted(twin.delivered)
        assert len(twin.delivered) + evicted == total  # each batch delivered or counted, never both
        agent.sample_once()
        assert agent.ship_once() is True
        assert twin.dropped["spool_evicted"] == evicted  # what the controller is told
    finally:
        agent.close()


def test_a_batch_the_controller_keeps_failing_on_goes_to_the_dead_letters(tmp_path: Path) -> None:
    with IngestServer() as srv:
        agent = make_agent(agent_settings(tmp_path, srv.url, transport={"dead_letter_after_500": 3}))
        try:
            agent.sample_once()
            agent.sample_once()
            srv.faults.extend([("status", 500)] * 3)  # the controller fails on batch 1, every time
            assert [agent.ship_once() for _ in range(3)] == [False, False, True]
            assert agent.ship_once() is True  # the stream moves on
            assert srv.seqs() == [2]
            assert agent.spool.stats()["dead_letters"] == 1
            agent.sample_once()
            assert agent.ship_once() is True
            assert srv.received.batches[-1].dropped["dead_letters"] == 1
        finally:
            agent.close()
    (line,) = (tmp_path / "spool" / "deadletter.log").read_text().splitlines()
    entry = json.loads(line)
    assert entry["seq"] == 1
    assert entry["reason"] == "controller answered HTTP 500 3 times: injected"


def test_delivery_failures_are_logged_at_most_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    agent = make_agent(agent_settings(tmp_path, free_url()))
    try:
        agent.sample_once()
        with caplog.at_level(logging.WARNING, logger="collector.agent"):
            for _ in range(5):
                assert agent.ship_once() is False
            lines = [r.getMessage() for r in caplog.records if r.name == "collector.agent"]
            assert len(lines) == 1 and "cannot deliver (1 failed attempts so far" in lines[0]
            with IngestServer() as srv:
                agent.transport.url = srv.url
                assert agent.ship_once() is True
            lines = [r.getMessage() for r in caplog.records if r.name == "collector.agent"]
            assert lines[-1] == "delivering again after 5 failed attempts"
    finally:
        agent.close()
