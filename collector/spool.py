"""A crash-safe, bounded, append-only disk spool of batches.

Layout of the spool directory::

    lock                      flock: one agent per spool
    stream                    {"stream_id": ...}: created once, kept across restarts
    acked                     {"seq": N}: every record up to N is acknowledged
    state                     eviction, corruption, dead-letter and recovery counters
    00000000000000000001.seg  segments, named by their first seq
    deadletter.log            JSON lines: permanently rejected records, with the reason

A record is a 28-byte header and the payload::

    magic u32 "ILSP" | length u32 | seq u64 | ts_ns u64 | crc32c u32 (of seq, ts_ns, payload)

seq is assigned when the record enters the spool and grows by one per record, for
ever, per stream. Durability follows the fsync policy: ``always`` fdatasyncs each
append before it returns (nothing acknowledged to the caller is lost);
``interval`` fdatasyncs once ``fsync_interval_ms`` have passed or ``fsync_bytes``
are unsynced, whichever comes first, and a background flusher bounds the time
when appends stop: a crash loses at most that window. The ``acked`` and ``state``
files are replaced atomically (temp file, fsync, rename, directory fsync).

Damage. Records are never rewritten: a damaged one stays where it is, and the spool
knows its seq as lost. Within a segment seqs only grow, but not always by one: a seq
lost to damage is never reused, and the first append after an open continues above
everything acknowledged, evicted or known lost. A reader (the scan of the active
segment at open, and ``_step`` for every segment when shipping) takes a record that
is whole, has a good CRC and a seq above the last good one; anything else at that
offset (bad magic, impossible length, a seq that does not grow, a bad CRC) makes it
resynchronise: search forward for the next offset holding such a record, and count
the seqs between the two good records as lost. Only a tail with no valid record
after it is truncated (a write a crash tore); the seqs its headers still show are
lost too, so that no seq that may already have reached the controller is reused,
and next_seq starts above them. A header is believed only within the window a real
record could have: the first record of a segment has the segment's seq, and any
other either follows the record before it or opens a later process's appends, at
max(acked, evicted, lost) + 1; a header outside it whose magic is intact still shows
that a record was begun there, so that window's top is taken.

Counting. ``state.lost`` holds the seqs counted lost, as inclusive ranges above the
persisted floor (acked or evicted). A seq is added to ``corrupt_records`` only when
it is not there yet, in the same state write, so damage found at open, found again
when read, or found again after a restart is counted exactly once; a seq already
acknowledged is never counted (the batch got through before the damage). The agent
ships ``corrupt_records`` as ``dropped.spool_corrupt``, so the gap the controller
sees in the seqs is explained. ``recovered`` counts the open-time findings by
reason (short_header, bad_magic, bad_length, bad_seq, bad_crc): a truncated tail
always, damage left in place when it loses a seq not counted before.

Eviction. When the spool is full, whole oldest segments are dropped and their
unacknowledged records counted as evicted, less those already counted lost and less
the record in flight (handed out by next_unacked, not yet acknowledged), which stays
deliverable from memory. Its seq is saved as ``evicted_pending`` with the eviction;
it is counted evicted only if it is not then acknowledged: at close, or at the next
open after a crash (pending above the persisted acked offset). Its ack is persisted
at once, before the pending mark goes, so a crash cannot count a delivered record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import probe_core

from collector.config import SpoolSettings
from collector.errors import SpoolError

MAGIC = 0x50534C49  # "ILSP" little-endian
HEADER = struct.Struct("<IIQQI")
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_SEQ_TS = struct.Struct("<QQ")
_SEQ = struct.Struct("<Q")
_NO_SEQ_ABOVE = 1 << 64  # seq is a u64: no upper bound
_crc32c = probe_core.crc32c
HEADER_SIZE = HEADER.size  # 28
_DEFAULTS = SpoolSettings()
SEG_SUFFIX = ".seg"


@dataclass(frozen=True)
class SpoolOptions:
    # The settings' knobs take their defaults from SpoolSettings, where each is declared once.
    max_bytes: int = _DEFAULTS.max_bytes
    segment_bytes: int = _DEFAULTS.segment_bytes
    max_record_bytes: int = _DEFAULTS.max_record_bytes
    fsync: Literal["always", "interval"] = _DEFAULTS.fsync
    fsync_interval_ms: int = _DEFAULTS.fsync_interval_ms
    fsync_bytes: int = _DEFAULTS.fsync_bytes
    # The acked offset is written at most this often (and on close): a crash re-sends at
    # most this window of acknowledged batches, which the receiver answers as duplicates.
    ack_persist_ms: int = 100
    dead_letter_max_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.segment_bytes > self.max_bytes // 2:
            raise SpoolError("segment_bytes must be at most half of max_bytes, so eviction frees room")
        if self.max_record_bytes + HEADER_SIZE > self.segment_bytes:
            raise SpoolError("max_record_bytes must fit in one segment")

    @classmethod
    def from_settings(cls, s: SpoolSettings) -> SpoolOptions:
        return cls(
            max_bytes=s.max_bytes,
            segment_bytes=s.segment_bytes,
            max_record_bytes=s.max_record_bytes,
            fsync=s.fsync,
            fsync_interval_ms=s.fsync_interval_ms,
            fsync_bytes=s.fsync_bytes,
        )


@dataclass
class SpoolState:
    evicted_through: int = 0
    evicted_records: int = 0
    corrupt_records: int = 0
    dead_letters: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    # Seqs counted in corrupt_records, as sorted, disjoint, inclusive [lo, hi] ranges above
    # the persisted floor: what makes each loss count once, and keeps its seq from reuse.
    lost: list[list[int]] = field(default_factory=list)
    # The record that was in flight when its segment was evicted: counted evicted unless acked.
    evicted_pending: int | None = None


@dataclass
class _Reader:
    first: int  # the segment's first seq
    fd: int
    offset: int  # where the next record starts
    next: int  # the lowest seq it may have: one above the last good one


@dataclass(frozen=True)
class Record:
    seq: int
    ts_ns: int
    payload: bytes


def check_record(buf: bytes | memoryview, offset: int, size: int, max_record: int) -> tuple[str | None, int]:
    """(problem, total length) of the record at offset: problem is None for a valid one."""
    if size - offset < HEADER_SIZE:
        return "short_header", 0
    magic, length, seq, ts_ns, crc = HEADER.unpack_from(buf, offset)
    if magic != MAGIC:
        return "bad_magic", 0
    if length > max_record or offset + HEADER_SIZE + length > size:
        return "bad_length", 0
    payload = bytes(buf[offset + HEADER_SIZE : offset + HEADER_SIZE + length])
    if probe_core.crc32c(payload, probe_core.crc32c(struct.pack("<QQ", seq, ts_ns))) != crc:
        return "bad_crc", HEADER_SIZE + length
    return None, HEADER_SIZE + length


def valid_record_at(
    buf: bytes, offset: int, after: int, below: int, max_record: int
) -> tuple[str | None, int, int]:
    """(problem, seq, total length) of the record at offset; problem is None for a whole
    record with a good CRC and after < seq < below."""
    problem, total = check_record(buf, offset, len(buf), max_record)
    if problem is not None:
        return problem, 0, total
    (seq,) = _SEQ.unpack_from(buf, offset + 8)
    if not after < seq < below:
        return "bad_seq", seq, total
    return None, seq, total


def find_record(buf: bytes, start: int, after: int, below: int, max_record: int) -> int | None:
    """Resynchronise: the first offset at or after start holding a valid record with
    after < seq < below, or None. A false match needs "ILSP", a fitting length and a
    matching CRC-32C at once: about 2**-32 per stray magic."""
    at = buf.find(_MAGIC_BYTES, start)
    while at != -1:
        if valid_record_at(buf, at, after, below, max_record)[0] is None:
            return at
        at = buf.find(_MAGIC_BYTES, at + 1)
    return None


def add_range(ranges: list[list[int]], lo: int, hi: int) -> int:
    """Add seqs lo..hi (inclusive) to sorted, disjoint ranges; returns how many were new."""
    if lo > hi:
        return 0
    known = count_in(ranges, lo, hi)
    merged: list[list[int]] = []
    for a, b in sorted([*ranges, [lo, hi]]):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    ranges[:] = merged
    return hi - lo + 1 - known


def count_in(ranges: list[list[int]], lo: int, hi: int) -> int:
    """How many seqs of lo..hi (inclusive) the ranges hold."""
    return sum(max(0, min(hi, b) - max(lo, a) + 1) for a, b in ranges)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(obj, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SpoolError(f"{path} is unreadable: {exc}") from exc


class Spool:
    def __init__(
        self, directory: Path, options: SpoolOptions | None = None, clock: Callable[[], int] = time.time_ns
    ):
        self.dir = Path(directory)
        self.opts = options or SpoolOptions()
        self._clock = clock
        self._mu = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open spool {self.dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self.dir} is in use by another process") from None
        self._fd: int | None = None
        self._reader: _Reader | None = None
        self._last: Record | None = None  # the record handed out last, until it is acknowledged
        self._closed = False
        self._stop = threading.Event()
        try:
            self._open()
        except Exception:
            os.close(self._lock_fd)
            raise
        # Syncs appends under the interval policy, and acked offsets under both.
        self._flusher = threading.Thread(target=self._flush_loop, name="spool-flusher", daemon=True)
        self._flusher.start()

    # --- opening and recovery ---------------------------------------------------------

    def _open(self) -> None:
        stream = _read_json(self.dir / "stream")
        if stream is None:
            stream = {"stream_id": uuid.uuid4().hex, "created_ns": self._clock()}
            atomic_write_json(self.dir / "stream", stream)
        self.stream_id: str = stream["stream_id"]
        acked = _read_json(self.dir / "acked")
        self.acked: int = int(acked["seq"]) if acked else 0
        self._acked_saved = self.acked
        self._ack_saved_at = 0.0
        raw = _read_json(self.dir / "state") or {}
        self.state = SpoolState(**raw)
        # A record in flight when its segment was evicted, and the process died before its ack.
        self._settle_evicted_pending()
        segments = self._segments()
        # Finish an eviction or compaction a crash interrupted.
        floor = max(self.acked, self.state.evicted_through)
        while len(segments) > 1 and segments[1] - 1 <= floor:
            (self.dir / self._seg_name(segments.pop(0))).unlink()
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._active_bytes = 0
        if segments:
            last = segments[-1]
            self.next_seq = self._recover_active(last)
            self._fd = os.open(self.dir / self._seg_name(last), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._active_first: int | None = last
            self._active_bytes = os.fstat(self._fd).st_size
        else:
            self.next_seq = floor + 1
            self._active_first = None
        self._total = self.total_bytes()
        # Above everything acknowledged, evicted or lost: no seq the controller may have seen is reused.
        self.next_seq = max(self.next_seq, floor + 1, self._max_lost() + 1)
        self._send_from = floor + 1

    def _recover_active(self, first: int) -> int:
        """Scan the active segment; returns the seq after the last one it holds or shows."""
        path = self.dir / self._seg_name(first)
        data = path.read_bytes()
        max_record = self.opts.max_record_bytes
        offset, last = 0, first - 1  # last: the seq of the last good record
        while offset < len(data):
            problem, seq, total = valid_record_at(data, offset, last, _NO_SEQ_ABOVE, max_record)
            if problem is None:
                offset, last = offset + total, seq
                continue
            found = find_record(data, offset + 1, last, _NO_SEQ_ABOVE, max_record)
            if found is not None:
                # Damage mid-segment: left in place, the seqs up to the next good record lost.
                (nxt,) = _SEQ.unpack_from(data, found + 8)
                if self._count_lost(last + 1, nxt):
                    self._note_recovered(problem)
                offset = found
                continue
            # A tail with no valid record after it: a write a crash tore (or damage at the end).
            shown = self._tail_seq(data, offset, first, last)
            self._count_lost(last + 1, shown + 1)
            self._note_recovered(problem)
            with open(path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
            return shown + 1
        return last + 1

    def _tail_seq(self, data: bytes, at: int, first: int, last: int) -> int:
        """The highest seq the headers of a tail from `at` show, following their lengths
        (`last` when none can be believed: see the module docstring for the window)."""
        ceiling = max(self.acked, self.state.evicted_through, self._max_lost())
        top = last
        while len(data) - at >= HEADER_SIZE:
            magic, length, seq, _ts, _crc = HEADER.unpack_from(data, at)
            limit = first if at == 0 else max(top, ceiling) + 1
            if top < seq <= limit:
                top = seq
            elif magic == MAGIC:
                return max(top, limit)  # a record was begun here; its seq field is damaged
            if magic != MAGIC or length > self.opts.max_record_bytes:
                break
            at += HEADER_SIZE + length
        return top

    def _note_recovered(self, problem: str) -> None:
        self.state.recovered[problem] = self.state.recovered.get(problem, 0) + 1
        self._save_state()

    def _settle_evicted_pending(self) -> None:
        pending = self.state.evicted_pending
        if pending is None:
            return
        if pending > self.acked:  # never acknowledged: its data went with the segment
            self.state.evicted_records += 1
        self.state.evicted_pending = None
        self._save_state()

    # --- lost seqs -------------------------------------------------------------------------------

    def _max_lost(self) -> int:
        return self.state.lost[-1][1] if self.state.lost else 0

    def _count_lost(self, lo: int, hi: int) -> int:
        """Count seqs lo..hi-1 as lost, less any acknowledged, evicted or counted before."""
        lo = max(lo, self.acked + 1, self.state.evicted_through + 1)
        new = add_range(self.state.lost, lo, hi - 1)
        if new:
            self.state.corrupt_records += new
            self._save_state()
        return new

    # --- naming and accounting -----------------------------------------------------------

    @staticmethod
    def _seg_name(first: int) -> str:
        return f"{first:020d}{SEG_SUFFIX}"

    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.iterdir():
            if p.name.endswith(SEG_SUFFIX) and p.name[:-4].isdigit():
                out.append(int(p.name[:-4]))
        return sorted(out)

    def _save_state(self) -> None:
        # Lost seqs at or below the persisted floor are never read again: forget them. Not the
        # in-memory acked: after a crash the reader starts again from the persisted one.
        floor = max(self._acked_saved, self.state.evicted_through)
        self.state.lost = [[max(a, floor + 1), b] for a, b in self.state.lost if b > floor]
        atomic_write_json(self.dir / "state", self.state.__dict__)

    def total_bytes(self) -> int:
        total = 0
        for first in self._segments():
            with contextlib.suppress(FileNotFoundError):
                total += (self.dir / self._seg_name(first)).stat().st_size
        return total

    # --- appending -------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Append one record; returns its seq. Durable now under ``always``, within the window otherwise."""
        return self.append_with(lambda _seq: payload)

    def append_with(self, build: Callable[[int], bytes]) -> int:
        """Append the record build(seq) makes: for payloads that carry their own seq.

        build runs under the spool's lock and must not call back into the spool. This is
        the hot path (the spool bench holds it to 70% of a bare write loop): locals, no
        copies of the payload, one writev.
        """
        opts = self.opts
        with self._mu:
            if self._closed:
                raise SpoolError("spool is closed")
            seq = self.next_seq
            payload = build(seq)
            n = len(payload)
            if n > opts.max_record_bytes:
                raise SpoolError(f"record of {n} bytes is over max_record_bytes ({opts.max_record_bytes})")
            ts = self._clock()
            crc = _crc32c(payload, _crc32c(_SEQ_TS.pack(seq, ts)))
            size = HEADER_SIZE + n
            if self._total + size > opts.max_bytes:
                self._make_room(size)
            if self._fd is None or self._active_bytes + size > opts.segment_bytes:
                self._rotate(seq)
            assert self._fd is not None
            try:
                written = os.writev(self._fd, (HEADER.pack(MAGIC, n, seq, ts, crc), payload))
            except OSError as exc:
                raise SpoolError(f"cannot write the spool: {exc.strerror}") from exc
            self._active_bytes += written
            self._total += written
            if written != size:
                raise SpoolError(f"short write to spool segment ({written} of {size} bytes)")
            self.next_seq = seq + 1
            self._unsynced += size
            if (
                opts.fsync == "always"
                or self._unsynced >= opts.fsync_bytes
                or time.monotonic() - self._last_sync >= opts.fsync_interval_ms / 1000
            ):
                self._sync()
            return seq

    def _sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fdatasync(self._fd)
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def _rotate(self, first_seq: int) -> None:
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
        path = self.dir / self._seg_name(first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._active_first = first_seq
        self._active_bytes = 0
        _fsync_dir(self.dir)  # the new segment's name must survive a crash too

    def _make_room(self, need: int) -> None:
        segments = self._segments()
        while self._total + need > self.opts.max_bytes and len(segments) > 1:
            first = segments.pop(0)
            last = segments[0] - 1
            settled = max(first - 1, self.acked, self.state.evicted_through)  # seqs above are unsettled
            lost = max(0, last - settled) - count_in(self.state.lost, settled + 1, last)
            rec = self._last
            in_flight = rec is not None and settled < rec.seq <= last
            if in_flight:
                assert rec is not None
                lost -= 1  # still deliverable from memory: counted only if never acknowledged
                self.state.evicted_pending = rec.seq
            size = (self.dir / self._seg_name(first)).stat().st_size
            # Count first, then unlink: a crash in between finishes the unlink on open.
            self.state.evicted_through = max(self.state.evicted_through, last)
            self.state.evicted_records += lost
            self._save_state()
            (self.dir / self._seg_name(first)).unlink()
            self._drop_reader(first)
            if self._last is None:  # a record handed out stays next until it is acknowledged
                self._send_from = max(self._send_from, last + 1)
            self._total -= size

    def _flush_loop(self) -> None:
        period = min(self.opts.fsync_interval_ms, self.opts.ack_persist_ms) / 1000
        while not self._stop.wait(period):
            with self._mu:
                if self._closed:
                    return
                if self._unsynced and self.opts.fsync == "interval":
                    self._sync()
                if self.acked != self._acked_saved:
                    self._persist_ack()

    def flush(self) -> None:
        """Make every append and the acked offset durable now."""
        with self._mu:
            self._sync()
            self._persist_ack()

    # --- reading and acknowledging ---------------------------------------------------------

    def next_unacked(self) -> Record | None:
        """The oldest record not yet acknowledged, skipping (and counting) corrupt ones."""
        with self._mu:
            return self._next_unacked()

    def _next_unacked(self) -> Record | None:
        while self._send_from < self.next_seq:
            if self._last is not None and self._last.seq == self._send_from:
                return self._last  # handed out before and not yet acknowledged: a retry
            rec = self._read(self._send_from)
            if rec is not None:
                self._send_from = rec.seq
                self._last = rec
                return rec
        return None

    def _drop_reader(self, first: int | None = None) -> None:
        if self._reader is not None and (first is None or self._reader.first == first):
            os.close(self._reader.fd)
            self._reader = None

    def _read(self, seq: int) -> Record | None:
        """The first record at or after seq in seq's segment, counting the seqs it skips as lost;
        None after moving _send_from past the rest of the segment (lost or evicted)."""
        segments = self._segments()
        first = max((s for s in segments if s <= seq), default=None)
        if first is None:
            self._send_from = segments[0] if segments else self.next_seq  # evicted meanwhile
            return None
        later = [s for s in segments if s > first]
        end = later[0] if later else self.next_seq  # the segment's seqs are below end
        r = self._reader
        if r is None or r.first != first or r.next > seq:
            self._drop_reader()
            fd = os.open(self.dir / self._seg_name(first), os.O_RDONLY | os.O_CLOEXEC)
            r = self._reader = _Reader(first, fd, 0, first)
        while True:
            rec = self._step(r, end)
            if rec is None:
                self._count_lost(seq, end)
                self._send_from = end
                self._drop_reader()
                return None
            if rec.seq >= seq:
                self._count_lost(seq, rec.seq)
                if self.state.lost and count_in(self.state.lost, rec.seq, rec.seq):
                    # Counted lost once (its bytes were damaged, and may read whole again if
                    # restored): the controller was told, so it is never sent as well.
                    seq = rec.seq + 1
                    continue
                return rec

    def _step(self, r: _Reader, end: int) -> Record | None:
        """The segment's next valid record (whole, good CRC, seq in [r.next, end)), after
        resynchronising over any damage at the reader's offset; None at the end of the segment.

        Skipped records are checked too: a damaged length believed unchecked could step over
        a good record. It costs reading the segment once when a reader is repositioned.
        """
        size = os.fstat(r.fd).st_size
        for _ in range(2):  # after a resynchronisation the record at the offset is valid
            head = os.pread(r.fd, HEADER_SIZE, r.offset)
            if not head:
                return None
            if len(head) == HEADER_SIZE:
                magic, length, seq, ts_ns, crc = HEADER.unpack(head)
                body_at = r.offset + HEADER_SIZE
                framed = magic == MAGIC and length <= self.opts.max_record_bytes and body_at + length <= size
                if framed and r.next <= seq < end:
                    body = os.pread(r.fd, length, body_at)
                    if _crc32c(body, _crc32c(_SEQ_TS.pack(seq, ts_ns))) == crc:
                        r.offset, r.next = body_at + length, seq + 1
                        return Record(seq, ts_ns, body)
            rest = os.pread(r.fd, size - r.offset, r.offset)
            found = find_record(rest, 1, r.next - 1, end, self.opts.max_record_bytes)
            if found is None:
                r.offset = size
                return None
            r.offset += found
        raise SpoolError(f"segment {self._seg_name(r.first)} changed while it was read")

    def ack(self, seq: int) -> None:
        """Everything up to seq is acknowledged: persisted atomically before anything is compacted."""
        with self._mu:
            self._ack(seq)

    def _ack(self, seq: int) -> None:
        if seq < self.acked:
            return
        if seq >= self.next_seq:
            raise SpoolError(f"ack of seq {seq}, but the spool has only reached {self.next_seq - 1}")
        self.acked = seq
        if self._last is not None and self._last.seq <= seq:
            self._last = None
        self._send_from = max(self._send_from, seq + 1)
        pending = self.state.evicted_pending
        if pending is not None and pending <= seq:
            # Delivered after its segment went: the ack on disk first, then the mark, so a crash
            # in between cannot count it evicted.
            self._persist_ack()
            self.state.evicted_pending = None
            self._save_state()
        elif (time.monotonic() - self._ack_saved_at) * 1000 >= self.opts.ack_persist_ms:
            self._persist_ack()

    def _persist_ack(self) -> None:
        """Write the acked offset (atomic replace), then drop segments it covers: never the other order."""
        if self._acked_saved == self.acked:
            return
        atomic_write_json(self.dir / "acked", {"seq": self.acked})
        self._acked_saved = self.acked
        self._ack_saved_at = time.monotonic()
        if self.state.lost and self.state.lost[0][0] <= self._acked_saved:
            self._save_state()  # forgets the lost seqs now acknowledged past
        self._compact()

    def _compact(self) -> None:
        segments = self._segments()
        while len(segments) > 1 and segments[1] - 1 <= self._acked_saved:
            first = segments.pop(0)
            self._drop_reader(first)
            path = self.dir / self._seg_name(first)
            self._total -= path.stat().st_size
            path.unlink()

    def dead_letter(self, record: Record, reason: str) -> None:
        """Move a permanently rejected record to deadletter.log (bounded) and acknowledge it."""
        with self._mu:
            path = self.dir / "deadletter.log"
            size = path.stat().st_size if path.exists() else 0
            entry: dict[str, Any] = {"seq": record.seq, "reason": reason, "at_ns": self._clock()}
            if size + len(record.payload) * 2 < self.opts.dead_letter_max_bytes:
                entry["payload_hex"] = record.payload.hex()
            else:
                entry["payload_hex"] = None  # over the cap: reason kept, payload dropped and said so
            with open(path, "ab") as f:
                f.write(json.dumps(entry).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self.state.dead_letters += 1
            self._save_state()
            self._ack(record.seq)

    # --- health ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._mu:
            rec = None
            with contextlib.suppress(OSError):
                rec = self._next_unacked()
            oldest_age = None if rec is None else max(0.0, (self._clock() - rec.ts_ns) / 1e9)
            return {
                "stream_id": self.stream_id,
                "next_seq": self.next_seq,
                "acked": self.acked,
                "unacked_records": self.next_seq - 1 - self.acked,
                "spool_bytes": self._total,
                "oldest_unacked_age_s": oldest_age,
                "evicted_records": self.state.evicted_records,
                "corrupt_records": self.state.corrupt_records,
                "dead_letters": self.state.dead_letters,
                "recovered": dict(self.state.recovered),
                "fsync": self.opts.fsync,
            }

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            self._closed = True
            self._sync()
            self._persist_ack()
            self._settle_evicted_pending()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._drop_reader()
        self._stop.set()
        self._flusher.join(timeout=5)
        os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
