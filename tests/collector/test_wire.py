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
    raw_or_none,
    validate_ack,
    validate_batch,
    validate_envelope,
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


# --- the rules a hostile batch met (issue 12) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        ({"host_id": "host\n"}, "$.host_id"),  # `$` let a trailing newline through
        ({"host_id": "a/../../etc/passwd"}, "$.host_id"),
        ({"dropped": {"Bad Name": 1}}, "$.dropped"),
        ({"dropped": {f"k{i}": 1 for i in range(40)}}, "$.dropped"),
        ({"events": [{"type": 5}]}, "$.events[0].type"),
        ({"events": [{"type": "exec", "ppid": [1]}]}, "$.events[0].ppid"),
        ({"agent": {"blob": "x" * (65 << 10)}}, "$.agent"),
    ],
)
def test_hostile_fields_are_refused_by_name(mutate: dict[str, Any], field: str) -> None:
    for body in (batch(**mutate), msgspec.json.encode(batch(**mutate))):
        with pytest.raises(WireError) as exc:
            validate_batch(body)
        assert exc.value.field == field


@pytest.mark.parametrize(
    ("raw", "field", "needle"),
    [
        (b'"data": {}', "$.snapshots[0].sources.host.data.x", "number out of range"),
        (b'"data": {}', "$.snapshots[0].sources.host.data.x", "integer out of range"),
        (b'"data": {}', "$.snapshots[0].sources.host.data.x", "invalid UTF-8"),
        (b'"data": {}', "$.snapshots[0].sources.host.data", "must be an object"),
    ],
)
def test_the_envelope_checks_what_it_keeps_raw(raw: bytes, field: str, needle: str) -> None:
    value = {
        "number out of range": b'"data": {"x": 1e999}',
        "integer out of range": b'"data": {"x": 18446744073709551616}',
        "invalid UTF-8": b'"data": {"x": "\xc0\xaf"}',
        "must be an object": b'"data": [1, 2]',
    }[needle]
    body = msgspec.json.encode(batch()).replace(b'"data":{}', value.replace(b": ", b":"))
    with pytest.raises(WireError) as exc:
        validate_envelope(body)
    assert exc.value.field == field and needle in str(exc.value), exc.value
    with pytest.raises(WireError) as exc:  # the full decode refuses the same (msgspec names it its way)
        validate_batch(body)
    assert exc.value.field.startswith("$.snapshots[0].sources")


def test_depth_and_value_count_are_bounded() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    body = msgspec.json.encode(batch(agent={"deep": deep}))
    with pytest.raises(WireError, match="nested deeper than 32"):
        validate_envelope(body)
    many = msgspec.json.encode(batch(events=[{"type": "x", "v": list(range(1000))}] * 10))
    with pytest.raises(WireError, match="more than 5000 values"):
        validate_envelope(many, Limits(max_nodes=5000))
    assert validate_envelope(many).host_id  # the defaults take it


def test_the_envelope_keeps_raw_copies_and_validates_the_same() -> None:
    body = msgspec.json.encode(batch(agent={"a": 1}, collector=None))
    env = validate_envelope(body)
    assert raw_or_none(env.agent) == b'{"a":1}' and raw_or_none(env.collector) is None
    assert [bytes(e) for e in env.events] == [b'{"type":"exec","pid":1}']
