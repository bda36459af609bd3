"""The disk spool: order, durability of the acked offset, recovery, eviction, dead letters."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.errors import SpoolError
from collector.spool import HEADER_SIZE, Record, Spool, SpoolOptions

SMALL = SpoolOptions(max_bytes=4096, segment_bytes=1024, max_record_bytes=512, fsync="always")


def drain(spool: Spool) -> list[Record]:
    out = []
    while (rec := spool.next_unacked()) is not None:
        out.append(rec)
        spool.ack(rec.seq)
    return out


def test_append_read_ack_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        seqs = [sp.append(f"r{i}".encode()) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        first = sp.next_unacked()
        assert first is not None and first.payload == b"r0"
        assert sp.next_unacked() == first  # a retry gets the same record until it is acked
        assert [r.payload for r in drain(sp)] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
        assert sp.next_unacked() is None


def test_stream_id_seq_and_ack_survive_a_restart(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        stream = sp.stream_id
        for i in range(4):
            sp.append(b"x%d" % i)
        sp.ack(2)
    with Spool(tmp_path, SMALL) as sp:
        assert sp.stream_id == stream
        rec = sp.next_unacked()
        assert rec is not None and rec.seq == 3 and rec.payload == b"x2"
        assert sp.append(b"next") == 5


def test_second_opener_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, SMALL)


def test_segments_rotate_and_compact_after_acks(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for _ in range(20):
            sp.append(b"y" * 200)
        segs = sorted(p.name for p in tmp_path.glob("*.seg"))
        assert len(segs) > 3
        drain(sp)
        sp.flush()  # acked offsets are persisted lazily; segments go once the offset is on disk
        assert len(list(tmp_path.glob("*.seg"))) == 1  # the active one stays
        assert sp.stats()["unacked_records"] == 0


def test_full_spool_evicts_oldest_segments_and_counts(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for _ in range(40):
            sp.append(b"z" * 300)
        stats = sp.stats()
        assert stats["spool_bytes"] <= SMALL.max_bytes
        assert stats["evicted_records"] > 0
        kept = drain(sp)
        assert kept[-1].seq == 40
        assert len(kept) + stats["evicted_records"] == 40
    with Spool(tmp_path, SMALL) as sp:
        assert sp.stats()["evicted_records"] == stats["evicted_records"]  # persisted


def test_eviction_counts_only_unacked_records(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for _ in range(8):
            sp.append(b"a" * 300)
        sp.ack(8)
        for _ in range(30):
            sp.append(b"b" * 300)
        kept = drain(sp)
        assert len(kept) + sp.state.evicted_records == 30


def test_record_limits_and_bad_acks(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        with pytest.raises(SpoolError, match="max_record_bytes"):
            sp.append(b"q" * 513)
        sp.append(b"ok")
        with pytest.raises(SpoolError, match="only reached 1"):
            sp.ack(2)
    with pytest.raises(SpoolError, match="half of max_bytes"):
        SpoolOptions(max_bytes=1000, segment_bytes=600)


def test_dead_letter_keeps_the_reason_and_moves_on(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        sp.append(b"bad batch")
        sp.append(b"good batch")
        rec = sp.next_unacked()
        assert rec is not None
        sp.dead_letter(rec, "HTTP 400: $.seq: expected int")
        nxt = sp.next_unacked()
        assert nxt is not None and nxt.payload == b"good batch"
        assert sp.stats()["dead_letters"] == 1
    (line,) = (tmp_path / "deadletter.log").read_text().splitlines()
    entry = json.loads(line)
    assert entry["seq"] == 1 and "expected int" in entry["reason"]
    assert bytes.fromhex(entry["payload_hex"]) == b"bad batch"


def test_torn_tail_is_truncated_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for i in range(3):
            sp.append(b"rec%d" % i)
    seg = next(tmp_path.glob("*.seg"))
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])  # the last record lost its last bytes mid-write
    with Spool(tmp_path, SMALL) as sp:
        assert sp.state.recovered == {"bad_length": 1}
        assert [r.payload for r in drain(sp)] == [b"rec0", b"rec1"]
        assert sp.append(b"again") == 3


def test_short_header_and_garbage_tails(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        sp.append(b"one")
    seg = next(tmp_path.glob("*.seg"))
    seg.write_bytes(seg.read_bytes() + b"\x49\x4c")
    with Spool(tmp_path, SMALL) as sp:
        assert sp.state.recovered == {"short_header": 1}
    seg.write_bytes(seg.read_bytes() + b"\x00" * 40)
    with Spool(tmp_path, SMALL) as sp:
        assert sp.state.recovered == {"short_header": 1, "bad_magic": 1}
        assert [r.payload for r in drain(sp)] == [b"one"]


def test_corrupt_record_in_an_older_segment_is_skipped_never_shipped(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for i in range(12):
            sp.append(bytes([65 + i]) * 200)
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[HEADER_SIZE + 5] ^= 0xFF  # payload of the first record
    first.write_bytes(bytes(data))
    with Spool(tmp_path, SMALL) as sp:
        got = drain(sp)
        assert [r.seq for r in got] == list(range(2, 13))
        assert all(r.payload == bytes([65 + r.seq - 1]) * 200 for r in got)
        assert sp.stats()["corrupt_records"] == 1


def test_interval_policy_flushes_in_the_background(tmp_path: Path) -> None:
    opts = SpoolOptions(
        max_bytes=1 << 20,
        segment_bytes=1 << 18,
        max_record_bytes=1 << 16,
        fsync="interval",
        fsync_interval_ms=50,
        fsync_bytes=1 << 30,
    )
    with Spool(tmp_path, opts) as sp:
        sp.append(b"x")
        assert sp._unsynced > 0
        time.sleep(0.3)
        assert sp._unsynced == 0


payloads = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12)
RECOVERY = SpoolOptions(max_bytes=1 << 20, segment_bytes=1 << 18, max_record_bytes=1024, fsync="always")


def _write(directory: Path, records: list[bytes]) -> Path:
    with Spool(directory, RECOVERY) as sp:
        for r in records:
            sp.append(r)
    return next(directory.glob("*.seg"))


def _read_all(directory: Path) -> tuple[list[bytes], dict[str, int]]:
    with Spool(directory, RECOVERY) as sp:
        return [r.payload for r in drain(sp)], dict(sp.state.recovered)


@settings(max_examples=150, deadline=None)
@given(records=payloads, cut=st.integers(min_value=0))
def test_any_truncation_leaves_a_clean_prefix(records: list[bytes], cut: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        seg = _write(Path(d), records)
        data = seg.read_bytes()
        at = cut % (len(data) + 1)
        seg.write_bytes(data[:at])
        got, recovered = _read_all(Path(d))
        assert got == records[: len(got)]
        boundaries = {0}
        pos = 0
        for r in records:
            pos += HEADER_SIZE + len(r)
            boundaries.add(pos)
        assert (recovered == {}) == (at in boundaries)  # a cut inside a record is always detected


@settings(max_examples=300, deadline=None)
@given(records=payloads, where=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_bit_flip_is_detected(records: list[bytes], where: int, bit: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        seg = _write(Path(d), records)
        data = bytearray(seg.read_bytes())
        pos = where % len(data)
        data[pos] ^= 1 << bit
        seg.write_bytes(bytes(data))
        got, recovered = _read_all(Path(d))
        assert sum(recovered.values()) == 1  # detected, with a reason
        assert got == records[: len(got)]  # nothing corrupt is ever read back
        # Everything before the damaged record survives.
        start = 0
        damaged = 0
        for i, r in enumerate(records):
            if start <= pos < start + HEADER_SIZE + len(r):
                damaged = i
                break
            start += HEADER_SIZE + len(r)
        assert len(got) == damaged


def test_files_are_private(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        sp.append(b"secret")
    assert oct(next(tmp_path.glob("*.seg")).stat().st_mode & 0o777) == "0o600"
    assert os.path.exists(tmp_path / "stream")
