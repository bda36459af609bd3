"""The batch and ack contracts: every refusal names its field."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from collector.errors import AckMismatch, WireError
from collector.wire import (
    ACK_SCHEMA,
    BATCH_SCHEMA,
    BatchKey,
    Limits,
    encode,
    make_ack,
    validate_ack,
    validate_batch,
)


def batch(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": BATCH_SCHEMA,
        "host_id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
        "boot_id": "901ffad7-060d-406c-a36b-7ee4de8f2c6b",
        "stream_id": "a" * 32,
        "seq": 7,
        "sent_at": time.time(),
        "snapshots": [
            {
                "ts": time.time(),
                "interval_s": 1.0,
                "sources": {
                    "host": {"status": "ok", "path": "file", "reason": None, "duration_s": 0.001, "data": {}}
                },
            }
        ],
        "events": [{"type": "exec", "pid": 1}],
        "dropped": {"spool_evicted": 0},
    }
    return base | kw


def test_roundtrip_from_bytes_and_dict() -> None:
    b = validate_batch(batch())
    again = validate_batch(msgspec.json.encode(b))
    assert again == b
    assert again.snapshots[0].sources["host"].status == "ok"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        ({"seq": "7"}, "$.seq"),
        ({"seq": -1}, "$.seq"),
        ({"schema": "incidentlab.batch/v2"}, "$.schema"),
        ({"host_id": ""}, "$.host_id"),
        ({"stream_id": "bad id with spaces"}, "$.stream_id"),
        ({"sent_at": float("nan")}, "$.sent_at"),
        ({"dropped": {"spool_evicted": -3}}, "$.dropped.spool_evicted"),
        ({"unexpected": 1}, "$.unexpected"),
        (
            {"snapshots": [{"ts": 1.0, "interval_s": None, "sources": {"x": {"status": "great"}}}]},
            "$.snapshots[0].sources[...].status",
        ),
        ({"snapshots": [{"ts": 1.0, "interval_s": None}]}, "$.snapshots[0].sources"),
    ],
)
def test_refusals_name_the_field(mutate: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError) as exc:
        validate_batch(batch(**mutate))
    assert exc.value.field == field


def test_missing_top_level_field() -> None:
    b = batch()
    del b["seq"]
    with pytest.raises(WireError) as exc:
        validate_batch(msgspec.json.encode(b))
    assert exc.value.field == "$.seq"


def test_limits() -> None:
    many = batch(snapshots=batch()["snapshots"] * 3)
    with pytest.raises(WireError, match="3 snapshots, over the limit of 2"):
        validate_batch(many, Limits(max_snapshots=2))
    with pytest.raises(WireError, match="events"):
        validate_batch(batch(events=[{}] * 5), Limits(max_events=4))


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"[]", b"null", b'{"schema": 1}'])
def test_garbage_bodies(body: bytes) -> None:
    with pytest.raises(WireError):
        validate_batch(body)


def test_ack_must_answer_the_batch_sent() -> None:
    key = BatchKey("h1", "s1", 9)
    ack = validate_ack(encode(make_ack(key, "accepted")), key)
    assert ack.status == "accepted" and ack.schema == ACK_SCHEMA
    for other in (BatchKey("h2", "s1", 9), BatchKey("h1", "s2", 9), BatchKey("h1", "s1", 10)):
        with pytest.raises(AckMismatch):
            validate_ack(encode(make_ack(other, "accepted")), key)
    with pytest.raises(WireError, match="status"):
        validate_ack(
            {"schema": ACK_SCHEMA, "host_id": "h1", "stream_id": "s1", "seq": 9, "status": "maybe"}, key
        )
    with pytest.raises(WireError, match="not valid JSON"):
        validate_ack(b"<html>502 Bad Gateway</html>", key)
    with pytest.raises(WireError, match="schema"):
        validate_ack({"schema": "x", "host_id": "h1", "stream_id": "s1", "seq": 9, "status": "accepted"}, key)
