"""The binary kernel-event record format (docs/event-format.md)."""

from __future__ import annotations

import struct
from typing import Any

import probe_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

EXEC = {
    "type": "exec",
    "ts_ns": 10,
    "cpu": 1,
    "pid": 4242,
    "ppid": 1,
    "uid": 1000,
    "comm": "bash",
    "filename": "/usr/bin/ls",
}
EXIT = {
    "type": "exit",
    "ts_ns": 11,
    "cpu": 0,
    "pid": 4242,
    "ppid": 1,
    "exit_code": 256,
    "age_ns": 5_000_000,
    "comm": "ls",
}
OOM = {
    "type": "oom_kill",
    "ts_ns": 12,
    "cpu": 0,
    "pid": 77,
    "uid": 0,
    "total_vm_kb": 1 << 20,
    "anon_rss_kb": 500_000,
    "file_rss_kb": 1000,
    "shmem_rss_kb": 0,
    "oom_score_adj": -500,
    "comm": "hog",
}
TCP4 = {
    "type": "tcp_retransmit",
    "ts_ns": 13,
    "cpu": 1,
    "pid": 0,
    "family": 2,
    "sport": 40000,
    "dport": 443,
    "state": 1,
    "saddr": "10.0.0.1",
    "daddr": "10.0.0.2",
}
TCP6 = {**TCP4, "family": 10, "saddr": "fd00::1", "daddr": "fd00::2"}
RUNQ = {
    "type": "runq_latency",
    "ts_ns": 14,
    "cpu": 0,
    "interval_ns": 1_000_000_000,
    "dev": 0,
    "unit": "us",
    "slots": [0, 5, 100, 3],
}
BIO = {
    "type": "bio_latency",
    "ts_ns": 15,
    "cpu": 0,
    "interval_ns": 1_000_000_000,
    "dev": (8 << 20) | 0,
    "unit": "ns",
    "slots": [1] * 64,
}
ALL = [EXEC, EXIT, OOM, TCP4, TCP6, RUNQ, BIO]


def test_roundtrip_every_type() -> None:
    data = probe_core.encode_events(ALL)
    assert probe_core.decode_events(data) == ALL
    assert set(probe_core.EVENT_TYPES) == {e["type"] for e in ALL}


def test_header_layout_is_as_documented() -> None:
    data = probe_core.encode_events([EXIT])
    magic, version, rtype, length, ts, cpu, reserved = struct.unpack_from("<IBBHQII", data)
    assert magic == 0x56454C49 and data[:4] == b"ILEV"
    assert (version, rtype, length, ts, cpu, reserved) == (1, 2, 24 + 40, 11, 0, 0)
    assert len(data) == length
    pid, ppid, code, _res, age = struct.unpack_from("<IIiIQ", data, 24)
    assert (pid, ppid, code, age) == (4242, 1, 256, 5_000_000)
    assert data[48:64].rstrip(b"\0") == b"ls"


def test_exec_record_is_variable_length() -> None:
    short = probe_core.encode_events([{**EXEC, "filename": ""}])
    long = probe_core.encode_events([{**EXEC, "filename": "/" + "x" * 255}])
    assert len(short) == 24 + 32 and len(long) == 24 + 32 + 256


def _header(rtype: int = 2, length: int = 64, version: int = 1, magic: int = 0x56454C49) -> bytes:
    return struct.pack("<IBBHQII", magic, version, rtype, length, 0, 0, 0)


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b"\x01\x02\x03", "truncated", 0),
        (_header(magic=0xDEADBEEF) + bytes(40), "bad_magic", 0),
        (_header(version=2) + bytes(40), "unknown_version", 4),
        (_header(length=8) + bytes(40), "bad_length", 6),
        (_header(length=5000) + bytes(40), "oversized", 6),
        (_header(length=64), "truncated", 0),
        (_header(rtype=99, length=24), "unknown_type", 5),
        (_header(rtype=2, length=60) + bytes(36), "malformed", 6),
    ],
)
def test_bad_records_name_reason_and_offset(data: bytes, reason: str, offset: int) -> None:
    with pytest.raises(probe_core.DecodeError) as exc:
        probe_core.decode_events(data)
    assert exc.value.reason == reason
    assert exc.value.offset == offset
    assert f"offset {offset}" in str(exc.value)


def test_error_offset_points_into_the_second_record() -> None:
    good = probe_core.encode_events([EXIT])
    bad = bytearray(probe_core.encode_events([EXIT]))
    bad[24 + 12] = 1  # exit's reserved field
    with pytest.raises(probe_core.DecodeError) as exc:
        probe_core.decode_events(good + bytes(bad))
    assert exc.value.reason == "malformed" and exc.value.offset == len(good) + 24 + 12


def test_semantic_checks() -> None:
    tcp = bytearray(probe_core.encode_events([TCP4]))
    struct.pack_into("<H", tcp, 24 + 4, 7)  # family 7
    with pytest.raises(probe_core.DecodeError, match="address family"):
        probe_core.decode_events(bytes(tcp))
    hist = bytearray(probe_core.encode_events([RUNQ]))
    hist[24 + 13] = 0  # zero slots
    with pytest.raises(probe_core.DecodeError, match="slot count"):
        probe_core.decode_events(bytes(hist))
    hist = bytearray(probe_core.encode_events([RUNQ]))
    hist[24 + 12] = 9  # unit
    with pytest.raises(probe_core.DecodeError, match="unit"):
        probe_core.decode_events(bytes(hist))
    ex = bytearray(probe_core.encode_events([EXEC]))
    struct.pack_into("<H", ex, 24 + 12, 300)
    with pytest.raises(probe_core.DecodeError, match="filename length"):
        probe_core.decode_events(bytes(ex))


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({**EXEC, "comm": "x" * 17}, "comm"),
        ({**EXEC, "filename": "x" * 257}, "filename"),
        ({**EXEC, "pid": -1}, "pid"),
        ({**EXEC, "pid": 1 << 32}, "pid"),
        ({**EXEC, "pid": "1"}, "pid"),
        ({**EXEC, "pid": True}, "pid"),
        ({k: v for k, v in EXEC.items() if k != "uid"}, "uid"),
        ({**EXEC, "type": "nope"}, "unknown event type"),
        ({**TCP4, "family": 3}, "family"),
        ({**TCP4, "saddr": "fd00::1"}, "saddr"),
        ({**RUNQ, "slots": []}, "slots"),
        ({**RUNQ, "slots": [0] * 65}, "slots"),
        ({**RUNQ, "slots": [-1]}, "slots"),
        ({**RUNQ, "unit": "ms"}, "unit"),
        ({**OOM, "oom_score_adj": 1001}, "oom_score_adj"),
    ],
)
def test_encode_refuses_what_the_format_cannot_carry(event: dict[str, Any], match: str) -> None:
    with pytest.raises(probe_core.EncodeError, match=match):
        probe_core.encode_events([event])


def test_encode_refuses_non_dicts() -> None:
    with pytest.raises(probe_core.EncodeError):
        probe_core.encode_events(["exec"])  # type: ignore[list-item]


def test_empty_input_is_no_events() -> None:
    assert probe_core.decode_events(b"") == []
    assert probe_core.encode_events([]) == b""


comm = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=15)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
events = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("exec"),
            "ts_ns": u64,
            "cpu": u32,
            "pid": u32,
            "ppid": u32,
            "uid": u32,
            "comm": comm,
            "filename": st.text(alphabet="abc/._-", max_size=256),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("exit"),
            "ts_ns": u64,
            "cpu": u32,
            "pid": u32,
            "ppid": u32,
            "exit_code": st.integers(min_value=-(2**31), max_value=2**31 - 1),
            "age_ns": u64,
            "comm": comm,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["runq_latency", "bio_latency"]),
            "ts_ns": u64,
            "cpu": u32,
            "interval_ns": u64,
            "dev": u32,
            "unit": st.sampled_from(["ns", "us"]),
            "slots": st.lists(u64, min_size=1, max_size=64),
        }
    ),
)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(events, max_size=8))
def test_roundtrip_property(batch: list[dict[str, Any]]) -> None:
    data = probe_core.encode_events(batch)
    assert probe_core.decode_events(data) == batch
    assert probe_core.encode_events(probe_core.decode_events(data)) == data


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(events, min_size=1, max_size=4), cut=st.integers(min_value=1))
def test_every_truncation_is_detected(batch: list[dict[str, Any]], cut: int) -> None:
    sizes = [len(probe_core.encode_events([e])) for e in batch]
    boundaries = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    data = probe_core.encode_events(batch)
    end = 1 + cut % (len(data) - 1)
    if end in boundaries:
        # A cut between records leaves whole records: the decoder returns them.
        assert probe_core.decode_events(data[:end]) == batch[: boundaries.index(end)]
        return
    with pytest.raises(probe_core.DecodeError) as exc:
        probe_core.decode_events(data[:end])
    assert exc.value.reason == "truncated"
    assert exc.value.offset == max(b for b in boundaries if b < end)


@settings(max_examples=1000, deadline=None)
@given(garbage=st.binary(max_size=512))
def test_garbage_only_raises_decode_error(garbage: bytes) -> None:
    try:
        out = probe_core.decode_events(garbage)
    except probe_core.DecodeError as exc:
        assert 0 <= exc.offset <= len(garbage)
        return
    assert probe_core.encode_events(out) == garbage


@settings(max_examples=500, deadline=None)
@given(batch=st.lists(events, min_size=1, max_size=4), pos=st.integers(min_value=0), bit=st.integers(0, 7))
def test_bit_flips_decode_or_fail_cleanly(batch: list[dict[str, Any]], pos: int, bit: int) -> None:
    data = bytearray(probe_core.encode_events(batch))
    data[pos % len(data)] ^= 1 << bit
    try:
        out = probe_core.decode_events(bytes(data))
    except probe_core.DecodeError as exc:
        assert 0 <= exc.offset < len(data)
        return
    # A flip in a payload value decodes to a different but well-formed event.
    assert len(out) == len(batch)
