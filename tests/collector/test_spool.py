"""The disk spool: order, durability of the acked offset, recovery, eviction, dead letters."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.errors import SpoolError
from collector.spool import HEADER, HEADER_SIZE, Record, Spool, SpoolOptions

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
        # The torn record's header still reads seq 3: it may have gone out before the crash
        # (interval policy), so 3 is never reused, and its loss is counted.
        assert sp.append(b"again") == 4
        assert sp.state.corrupt_records == 1


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
        start = 0
        damaged = 0
        for i, r in enumerate(records):
            if start <= pos < start + HEADER_SIZE + len(r):
                damaged = i
                break
            start += HEADER_SIZE + len(r)
        with Spool(Path(d), RECOVERY) as sp:
            got = [r.payload for r in drain(sp)]
            assert sum(sp.state.recovered.values()) == 1  # detected, with a reason
            # Only the damaged record is lost: the rest, after it too, survive; nothing corrupt
            # is read back, the loss is counted once and its seq is not reused.
            assert got == records[:damaged] + records[damaged + 1 :]
            assert sp.state.corrupt_records == 1
            assert sp.append(b"next") == len(records) + 1


def test_files_are_private(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        sp.append(b"secret")
    assert oct(next(tmp_path.glob("*.seg")).stat().st_mode & 0o777) == "0o600"
    assert os.path.exists(tmp_path / "stream")


# --- damage in the active segment, framing breaks, seqs never reused ------------------------------

ONE_SEGMENT = SpoolOptions(max_bytes=1 << 20, segment_bytes=1 << 18, max_record_bytes=1024, fsync="always")


def frames(seg: Path) -> list[tuple[int, int, int]]:
    """(offset, payload length, seq) of every record of an undamaged segment."""
    data = seg.read_bytes()
    out, at = [], 0
    while at < len(data):
        _magic, length, seq, _ts, _crc = HEADER.unpack_from(data, at)
        out.append((at, length, seq))
        at += HEADER_SIZE + length
    return out


def spool_of(directory: Path, n: int, opts: SpoolOptions = ONE_SEGMENT) -> Path:
    with Spool(directory, opts) as sp:
        for i in range(n):
            sp.append(b"batch %02d " % (i + 1) + b"." * 100)
    segs = sorted(directory.glob("*.seg"))
    return segs[-1]


def payload_of(seq: int) -> bytes:
    return b"batch %02d " % seq + b"." * 100


def damage(seg: Path, at: int, new: bytes) -> None:
    data = bytearray(seg.read_bytes())
    data[at : at + len(new)] = new
    seg.write_bytes(bytes(data))


def flip(seg: Path, at: int) -> None:
    data = bytearray(seg.read_bytes())
    data[at] ^= 0xFF
    seg.write_bytes(bytes(data))


def test_a_record_counted_lost_is_never_sent_even_if_its_bytes_are_restored(tmp_path: Path) -> None:
    """Found by the damage property: a flipped length byte, counted lost at open, then the
    same byte flipped back; the record read whole again and was delivered as well."""
    seg = spool_of(tmp_path, 4)
    at, _length, seq = frames(seg)[2]
    flip(seg, at + 4)  # the length field of record 3
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert sp.state.corrupt_records == 1
    flip(seg, at + 4)  # restored (a backup put back, a repaired sector)
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert [r.seq for r in drain(sp)] == [1, 2, 4] and sp.state.corrupt_records == 1
        assert seq == 3


def test_corrupt_record_in_the_active_segment_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 20)
    at, _length, seq = frames(seg)[2]
    assert seq == 3
    flip(seg, at + HEADER_SIZE + 4)  # a byte of record 3's payload: framing intact, CRC fails
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert sp.state.recovered == {"bad_crc": 1}
        assert sp.state.corrupt_records == 1  # what the agent ships as dropped.spool_corrupt
        got = drain(sp)
        assert [r.seq for r in got] == [1, 2, *range(4, 21)]
        assert all(r.payload == payload_of(r.seq) for r in got)
        assert sp.append(b"after") == 21  # no seq is reused
        assert sp.state.corrupt_records == 1


@pytest.mark.parametrize(
    ("what", "lost"),
    [
        ("magic", [5]),
        ("length_too_big", [5]),
        ("length_shorter", [5]),
        ("seq_backwards", [5]),
        ("zeros_over_5_to_7", [5, 6, 7]),
        ("garbage_after_4", []),
    ],
)
def test_a_framing_break_mid_segment_resynchronises(tmp_path: Path, what: str, lost: list[int]) -> None:
    seg = spool_of(tmp_path, 20)
    fr = frames(seg)
    at5 = fr[4][0]
    if what == "magic":
        flip(seg, at5)
    elif what == "length_too_big":
        damage(seg, at5 + 4, struct.pack("<I", 1 << 30))
    elif what == "length_shorter":
        damage(seg, at5 + 4, struct.pack("<I", 3))
    elif what == "seq_backwards":
        damage(seg, at5 + 8, struct.pack("<Q", 2))
    elif what == "zeros_over_5_to_7":
        damage(seg, at5 + 10, b"\0" * (fr[6][0] - at5 + 20))
    else:  # stray bytes between records 4 and 5, say from a write that failed half way and was retried
        data = seg.read_bytes()
        seg.write_bytes(data[:at5] + b"ILSP\x10\x00\x00\x00junk" + data[at5:])
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert sp.state.corrupt_records == len(lost)
        got = drain(sp)
        assert [r.seq for r in got] == [s for s in range(1, 21) if s not in lost]
        assert all(r.payload == payload_of(r.seq) for r in got)
        assert sp.append(b"after") == 21
        assert sp.state.corrupt_records == len(lost)


def test_a_torn_tail_after_damage_is_still_truncated(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 10)
    fr = frames(seg)
    flip(seg, fr[3][0] + HEADER_SIZE + 1)  # record 4 corrupt
    seg.write_bytes(seg.read_bytes()[:-7])  # and record 10 torn mid-write
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert sp.state.recovered == {"bad_crc": 1, "bad_length": 1}
        assert [r.seq for r in drain(sp)] == [1, 2, 3, 5, 6, 7, 8, 9]
        assert sp.state.corrupt_records == 2  # 4 and the torn 10, whose header still reads
        assert sp.append(b"x") == 11
    assert seg.stat().st_size == fr[9][0] + HEADER_SIZE + 1  # the torn bytes went, record 11 came


def test_a_corrupt_last_record_burns_its_seq(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 6)
    flip(seg, frames(seg)[5][0] + HEADER_SIZE + 2)
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert [r.seq for r in drain(sp)] == [1, 2, 3, 4, 5]
        assert sp.state.corrupt_records == 1
        assert sp.append(b"x") == 7


def test_a_damaged_seq_field_in_the_last_record_still_burns_its_seq(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 6)
    damage(seg, frames(seg)[5][0] + 8, struct.pack("<Q", 1 << 40))  # seq 6 reads as 2**40
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert [r.seq for r in drain(sp)] == [1, 2, 3, 4, 5]
        assert sp.state.corrupt_records == 1
        assert sp.append(b"x") == 7  # a damaged header is not believed: no jump to 2**40


def test_damage_is_counted_once_however_often_the_spool_reopens(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 20)
    flip(seg, frames(seg)[2][0] + HEADER_SIZE + 4)
    for _ in range(3):
        with Spool(tmp_path, ONE_SEGMENT) as sp:
            rec = sp.next_unacked()
            assert rec is not None and rec.seq == 1  # nothing acknowledged yet: the damage stays ahead
            assert sp.state.corrupt_records == 1 and sp.state.recovered == {"bad_crc": 1}
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        got = drain(sp)
        assert len(got) == 19 and sp.state.corrupt_records == 1
    with Spool(tmp_path, ONE_SEGMENT) as sp:  # acknowledged past it: nothing more to count
        assert drain(sp) == [] and sp.state.corrupt_records == 1
        assert sp.state.lost == []  # and nothing left to remember
        assert sp.append(b"more") == 21


def test_a_corrupt_record_read_later_is_counted_once_across_restarts(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for i in range(12):
            sp.append(bytes([65 + i]) * 200)
    first = sorted(tmp_path.glob("*.seg"))[0]
    flip(first, HEADER_SIZE + 5)  # record 1, in an older segment: found when read
    for _ in range(3):
        with Spool(tmp_path, SMALL) as sp:
            rec = sp.next_unacked()
            assert rec is not None and rec.seq == 2  # read, not acknowledged: shutdown in flight
            assert sp.state.corrupt_records == 1


def test_reads_cross_seq_gaps_left_by_recovery_from_a_fresh_reader(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 12)
    fr = frames(seg)
    damage(seg, fr[3][0] + 3, b"\xee" * (fr[5][0] - fr[3][0] - 3))  # 4 and 5 gone, 6 intact
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        for _ in range(4):
            sp.append(b"later")  # 13..16, in the same segment after the damage
        sp.ack(2)
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        got = drain(sp)
        assert [r.seq for r in got] == [3, *range(6, 17)]
        assert sp.state.corrupt_records == 2


def test_damage_in_acknowledged_records_costs_nothing(tmp_path: Path) -> None:
    seg = spool_of(tmp_path, 8)
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        sp.ack(5)
    flip(seg, frames(seg)[2][0] + HEADER_SIZE + 1)  # record 3: already delivered
    with Spool(tmp_path, ONE_SEGMENT) as sp:
        assert sp.state.corrupt_records == 0
        assert [r.seq for r in drain(sp)] == [6, 7, 8]


# --- eviction while a record is in flight ------------------------------------------------------------

# SMALL holds three 300-byte records a segment and four segments: the 13th append evicts 1..3.
BIG = b"e" * 300


def evict_with_one_in_flight(sp: Spool) -> Record:
    for _ in range(12):
        sp.append(BIG)
    rec = sp.next_unacked()
    assert rec is not None and rec.seq == 1  # handed to the transport, its answer not back yet
    sp.append(BIG)  # the spool is full: the segment holding 1..3 goes
    assert not (tmp := sp.dir / "00000000000000000001.seg").exists(), tmp
    return rec


def test_eviction_spares_the_record_in_flight_when_its_send_succeeds(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        rec = evict_with_one_in_flight(sp)
        assert sp.state.evicted_records == 2  # 2 and 3: 1 is still deliverable from memory
        sp.ack(rec.seq)  # delivered
        delivered = [rec.seq] + [r.seq for r in drain(sp)]
        assert delivered == [1, *range(4, 14)]
        assert len(delivered) + sp.state.evicted_records == 13
    with Spool(tmp_path, SMALL) as sp:
        assert sp.state.evicted_records == 2


def test_eviction_keeps_the_record_in_flight_when_its_send_fails(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        rec = evict_with_one_in_flight(sp)
        retry = sp.next_unacked()  # the send failed: the shipper asks again
        assert retry == rec  # the same record, from memory, though its segment is gone
        assert sp.state.evicted_records == 2
        sp.ack(retry.seq)
        rest = drain(sp)
        assert [r.seq for r in rest] == list(range(4, 14))
        assert 1 + len(rest) + sp.state.evicted_records == 13


def test_a_record_handed_out_stays_deliverable_through_several_evictions(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        rec = evict_with_one_in_flight(sp)
        for _ in range(3):
            sp.append(BIG)  # 14..16: the segment holding 4..6 goes too, 1 still unanswered
        assert not (tmp_path / "00000000000000000004.seg").exists()
        assert sp.state.evicted_records == 5  # 2, 3 and 4..6
        assert sp.stats()["oldest_unacked_age_s"] is not None
        assert sp.next_unacked() == rec
        sp.ack(rec.seq)
        rest = drain(sp)
        assert [r.seq for r in rest] == list(range(7, 17))
        assert 1 + len(rest) + sp.state.evicted_records == 16


def test_an_evicted_record_in_flight_never_acknowledged_is_counted_at_close(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        evict_with_one_in_flight(sp)
        assert sp.state.evicted_records == 2
    with Spool(tmp_path, SMALL) as sp:
        assert sp.state.evicted_records == 3
        assert [r.seq for r in drain(sp)] == list(range(4, 14))


def test_an_evicted_record_in_flight_is_counted_after_a_crash_unless_acknowledged(tmp_path: Path) -> None:
    live, crashed, crashed_after_ack = tmp_path / "live", tmp_path / "crash1", tmp_path / "crash2"
    with Spool(live, SMALL) as sp:
        rec = evict_with_one_in_flight(sp)
        shutil.copytree(live, crashed)  # what the disk holds if the process died now (kill -9)
        sp.ack(rec.seq)
        shutil.copytree(live, crashed_after_ack)
    with Spool(crashed, SMALL) as sp:
        assert sp.state.evicted_records == 3  # never acknowledged: lost to the eviction
        assert [r.seq for r in drain(sp)] == list(range(4, 14))
    with Spool(crashed_after_ack, SMALL) as sp:
        assert sp.state.evicted_records == 2  # delivered before the crash: not counted
        assert [r.seq for r in drain(sp)] == list(range(4, 14))


def test_eviction_does_not_count_records_already_counted_corrupt(tmp_path: Path) -> None:
    with Spool(tmp_path, SMALL) as sp:
        for _ in range(6):
            sp.append(BIG)
    first = sorted(tmp_path.glob("*.seg"))[0]
    flip(first, frames(first)[1][0] + HEADER_SIZE + 10)  # record 2
    with Spool(tmp_path, SMALL) as sp:
        one = sp.next_unacked()
        assert one is not None and one.seq == 1
        sp.ack(1)
        three = sp.next_unacked()
        assert three is not None and three.seq == 3 and sp.state.corrupt_records == 1
        for _ in range(7):
            sp.append(BIG)  # 13 in all: the first segment (1, 2, 3) goes while 3 is in flight
        assert sp.state.evicted_records == 0  # 1 delivered, 2 counted corrupt, 3 still deliverable
        sp.ack(3)
        rest = drain(sp)
        assert [r.seq for r in rest] == list(range(4, 14))
        assert 2 + len(rest) + sp.state.evicted_records + sp.state.corrupt_records == 13


MULTI = SpoolOptions(max_bytes=1 << 20, segment_bytes=1024, max_record_bytes=512, fsync="always")
damages = st.lists(
    st.tuples(
        st.integers(min_value=0),  # which segment
        st.integers(min_value=0),  # where
        st.one_of(st.binary(min_size=1, max_size=48), st.none()),  # bytes written over it, or a cut
    ),
    min_size=1,
    max_size=4,
)


def _hurt(directory: Path, hurt: list[tuple[int, int, bytes | None]]) -> None:
    segs = sorted(directory.glob("*.seg"))
    for which, where, new in hurt:
        seg = segs[which % len(segs)]
        data = bytearray(seg.read_bytes())
        if not data:
            continue
        at = where % len(data)
        if new is None:
            del data[at:]
        else:
            data[at : at + len(new)] = new
        seg.write_bytes(bytes(data))


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=30),
    before=damages,
    between=damages,
    first_take=st.integers(min_value=0, max_value=30),
    more=st.integers(min_value=0, max_value=5),
)
def test_damage_anywhere_is_never_read_and_every_seq_is_delivered_or_counted_once(
    records: list[bytes],
    before: list[tuple[int, int, bytes | None]],
    between: list[tuple[int, int, bytes | None]],
    first_take: int,
    more: int,
) -> None:
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        written = {}
        with Spool(directory, MULTI) as sp:
            for r in records:
                written[sp.append(r)] = r
        _hurt(directory, before)
        delivered: list[int] = []
        with Spool(directory, MULTI) as sp:
            for _ in range(first_take):
                rec = sp.next_unacked()
                if rec is None:
                    break
                assert rec.payload == written[rec.seq]  # nothing damaged is ever read back
                delivered.append(rec.seq)
                sp.ack(rec.seq)
        _hurt(directory, between)  # more damage while the agent is down
        with Spool(directory, MULTI) as sp:
            for i in range(more):
                written[sp.append(b"more %d" % i)] = b"more %d" % i
            for rec in drain(sp):
                assert rec.payload == written[rec.seq]
                delivered.append(rec.seq)
            assert delivered == sorted(set(delivered))  # in order, none twice
            # The controller's view: every seq below next_seq arrived once or is counted lost once.
            assert len(delivered) + sp.state.corrupt_records == sp.next_seq - 1
            assert sp.next_seq <= len(records) + more + 2
