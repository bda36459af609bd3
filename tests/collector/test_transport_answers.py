"""How the transport reads 5xx answers, against an in-memory controller (httpx.MockTransport):
a rejected ack is permanent whatever the status, and a batch the controller keeps failing
on with HTTP 500 goes to the dead letters instead of blocking the stream for ever."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from collector.errors import PermanentRejection, TransportError
from collector.transport import Transport, TransportOptions
from collector.wire import BatchKey, encode, make_ack

A = BatchKey("host-a", "stream-a", 1)
B = BatchKey("host-a", "stream-a", 2)

Answer = Callable[[BatchKey], httpx.Response]


def ack(key: BatchKey, status: str, code: int = 200, **kw: Any) -> httpx.Response:
    return httpx.Response(code, content=encode(make_ack(key, status, **kw)))  # type: ignore[arg-type]


def detail(code: int, text: str = "boom") -> httpx.Response:
    return httpx.Response(code, json={"detail": text})


class Controller:
    """Answers each post with the next scripted answer (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.posts: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = json.loads(gzip.decompress(request.content))
        key = BatchKey(batch["host_id"], batch["stream_id"], batch["seq"])
        self.posts.append(key.seq)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(key)


OPEN: list[Transport] = []


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def transport(controller: Controller, **kw: Any) -> Transport:
    opts = TransportOptions(url="https://controller.test", **{"max_attempts": 1, **kw})
    t = Transport(opts, http_transport=httpx.MockTransport(controller), sleep=lambda _s: None)
    OPEN.append(t)
    return t


def body(key: BatchKey) -> bytes:
    return json.dumps({"host_id": key.host_id, "stream_id": key.stream_id, "seq": key.seq}).encode()


def send(t: Transport, key: BatchKey) -> str:
    """What one send() came to: the ack status, 'retry' or 'permanent: <message>'."""
    try:
        return t.send(body(key), key).status
    except PermanentRejection as exc:
        return f"permanent: {exc}"
    except TransportError:
        return "retry"


@pytest.mark.parametrize("code", [500, 502, 503, 504, 507])
def test_a_rejected_ack_for_this_batch_is_permanent_whatever_the_5xx(code: int) -> None:
    ctl = Controller(lambda k: ack(k, "rejected", code, reason="$.snapshots[0]: poison"))
    t = transport(ctl, max_attempts=5)
    with pytest.raises(PermanentRejection, match=r"poison") as exc:
        t.send(body(A), A)
    assert exc.value.status_code == code and ctl.posts == [1]  # not retried


def test_a_5xx_rejected_ack_for_another_batch_is_not_permanent() -> None:
    ctl = Controller(lambda k: ack(BatchKey(k.host_id, k.stream_id, k.seq + 1), "rejected", 500))
    assert send(transport(ctl, max_attempts=3, dead_letter_after_500=0), A) == "retry"
    assert ctl.posts == [1, 1, 1]


def test_a_503_rejected_ack_naming_a_leader_is_followed_not_dead_lettered() -> None:
    leader = "https://leader.test"
    ctl = Controller(
        lambda k: ack(k, "rejected", 503, reason="follower", leader=leader), lambda k: ack(k, "accepted")
    )
    t = transport(ctl)
    assert send(t, A) == "accepted" and t.url == leader


def test_a_batch_answered_500_too_often_goes_to_the_dead_letters() -> None:
    ctl = Controller(lambda _k: detail(500, "ingest crashed on this batch"))
    t = transport(ctl, max_attempts=2, dead_letter_after_500=5)
    # Counted across send() calls: the shipper's own retries are further attempts.
    assert [send(t, A) for _ in range(2)] == ["retry", "retry"]
    assert send(t, A) == "permanent: controller answered HTTP 500 5 times: ingest crashed on this batch"
    assert ctl.posts == [1] * 5


def test_the_default_is_twenty_500s() -> None:
    ctl = Controller(lambda _k: detail(500))
    t = transport(ctl)
    outcomes = [send(t, A) for _ in range(20)]
    assert outcomes[:19] == ["retry"] * 19
    assert outcomes[19] == "permanent: controller answered HTTP 500 20 times: boom"


@pytest.mark.parametrize("code", [502, 503, 504])
def test_unavailable_is_retried_for_ever(code: int) -> None:
    ctl = Controller(lambda _k: detail(code))
    t = transport(ctl, max_attempts=10, dead_letter_after_500=3)
    assert {send(t, A) for _ in range(10)} == {"retry"}  # 100 attempts, never dead-lettered


def test_zero_turns_the_500_limit_off() -> None:
    ctl = Controller(lambda _k: detail(500))
    t = transport(ctl, max_attempts=25, dead_letter_after_500=0)
    assert {send(t, A) for _ in range(4)} == {"retry"}


def test_the_500_count_restarts_when_another_record_is_sent() -> None:
    ctl = Controller(lambda _k: detail(500))
    t = transport(ctl, dead_letter_after_500=3)
    assert [send(t, A), send(t, A), send(t, B), send(t, A), send(t, A)] == ["retry"] * 5
    assert send(t, A).startswith("permanent: controller answered HTTP 500 3 times")


def test_the_500_count_restarts_when_the_record_settles() -> None:
    answers: list[Answer] = [lambda _k: detail(500)] * 2 + [lambda k: ack(k, "duplicate")]
    ctl = Controller(*answers, lambda _k: detail(500))
    t = transport(ctl, dead_letter_after_500=3)
    assert [send(t, A) for _ in range(3)] == ["retry", "retry", "duplicate"]
    assert [send(t, A) for _ in range(2)] == ["retry", "retry"]  # a fresh count


def test_the_500s_must_be_consecutive() -> None:
    ctl = Controller(
        *([lambda _k: detail(500)] * 2),
        lambda _k: detail(502),
        *([lambda _k: detail(500)] * 2),
        lambda k: ack(k, "accepted"),
    )
    t = transport(ctl, dead_letter_after_500=3)
    assert [send(t, A) for _ in range(6)] == ["retry"] * 5 + ["accepted"]


def test_the_detail_of_a_500_that_is_not_json_is_its_text() -> None:
    ctl = Controller(lambda _k: httpx.Response(500, text="Internal Server Error\n"))
    t = transport(ctl, dead_letter_after_500=1)
    assert send(t, A) == "permanent: controller answered HTTP 500 1 times: Internal Server Error"


def test_413_is_permanent_no_retry_makes_a_batch_smaller() -> None:
    """A 413 carries no ack (the body was never read); retried for ever, it stalled the stream."""
    ctl = Controller(lambda _k: detail(413, "body over the ingest limit"))
    result = send(transport(ctl, max_attempts=5), A)
    assert result.startswith("permanent: rejected with HTTP 413") and "over the ingest limit" in result
    assert ctl.posts == [1]


def test_the_loss_now_travels_in_a_header() -> None:
    seen: list[str | None] = []

    def answer(key: BatchKey) -> httpx.Response:
        return ack(key, "accepted")

    ctl = Controller(answer)

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Incidentlab-Lost"))
        return ctl(request)

    t = Transport(
        TransportOptions(url="https://controller.test", max_attempts=1),
        http_transport=httpx.MockTransport(record),
        sleep=lambda _s: None,
    )
    OPEN.append(t)
    t.send(body(A), A, lost=23_137)
    t.send(body(B), B)
    assert seen == ["23137", None]
