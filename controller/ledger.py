"""Exactly-once in effect: a durable dedupe ledger per (host, stream).

Per stream: a watermark W (every seq <= W was received) and a window of the seqs
received above it. A seq <= W or in the window is a duplicate. The window is
bounded (``dedupe_window``): when it overflows, W jumps over the oldest hole and
the seqs skipped are counted as given up (a batch that late is answered
duplicate, never double counted). A seq past max_seq + 1 opens a gap, counted
and accepted; ``missing_seqs()`` is every seq below max_seq never received, and the
collector's own loss counters (spool eviction and corruption, dead letters) say
how many of them it knows it lost.

A gap is refused when, accepted, the seqs missing from a stream with history would
pass the loss the collector reports (its cumulative spool eviction, corruption and
dead letters, as of sending: the X-Incidentlab-Lost header, or the batch's own
counts) by more than the window: a flood of far-ahead seqs, stepping or not, would
otherwise move the window past every real batch still to come, and each would be
answered duplicate and dropped. A collector that lost batches says so, and its gap
is taken. (One that lies about its losses cannot be told from one that does not:
tokens bound to hosts keep a token from writing any other host's stream.)
The stream's row is written and committed before the ack goes out,
so a replay after a restart is still recognised. Streams live in memory (bounded,
least recently used first out) and are loaded from the store on a miss.

``record(..., wait=False)`` is the event loop's: it never waits, for the ledger's lock,
a stream not in memory or the store's write lock (controller/store/streams.py), and
answers None, having changed nothing, when it would have to; the caller then records
the batch on its pool.
"""

from __future__ import annotations

import json
import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import msgspec
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from collector.wire import BatchKey
from controller.errors import SeqRefused, StoreError
from controller.store import repo
from controller.store.streams import StreamWriter

Verdict = Literal["accepted", "duplicate", "refused"]
# The collector's cumulative counts of batches it made and will never deliver.
LOSS_KEYS = ("spool_evicted", "spool_corrupt", "dead_letters")
_ENC = msgspec.json.Encoder()
_SORTED = msgspec.json.Encoder(order="sorted")


def reported_loss(dropped: dict[str, int]) -> int:
    return sum(int(dropped.get(k, 0)) for k in LOSS_KEYS)


# What a record may change (StreamLedger.state): every stored column but the stream's
# identity, in the store's order (the window third).
_STATE = repo.STREAM_COLUMNS[2:]
_get_state = operator.attrgetter(*_STATE)


@dataclass
class StreamLedger:
    host_id: str
    stream_id: str
    boot_id: str = ""
    watermark: int = 0
    window: set[int] = field(default_factory=set)
    max_seq: int = 0
    accepted: int = 0
    duplicates: int = 0
    gaps: int = 0
    missing: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # in memory: far-ahead seqs refused since this controller loaded the stream

    def state(self) -> tuple[Any, ...]:
        """What a record may change, to put back when its commit fails (cheaper than a copy)."""
        values = _get_state(self)
        return (*values[:2], set(values[2]), *values[3:])  # the window is changed in place

    def restore(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(_STATE, state, strict=True):
            setattr(self, name, value)

    def missing_seqs(self) -> int:
        """Seqs below max_seq never received: holes still in the window and those given up on."""
        return (self.max_seq - self.watermark) - len(self.window) + self.missing

    def row(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "stream_id": self.stream_id,
            "boot_id": self.boot_id,
            "watermark": self.watermark,
            "window": _ENC.encode(sorted(self.window)).decode() if self.window else "[]",
            "max_seq": self.max_seq,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "missing": self.missing,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "dropped": _SORTED.encode(self.dropped).decode() if self.dropped else "{}",
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StreamLedger:
        return cls(
            host_id=row["host_id"],
            stream_id=row["stream_id"],
            boot_id=row["boot_id"],
            watermark=row["watermark"],
            window=set(json.loads(row["window"])),
            max_seq=row["max_seq"],
            accepted=row["accepted"],
            duplicates=row["duplicates"],
            gaps=row["gaps"],
            missing=row["missing"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            dropped=json.loads(row["dropped"]),
        )


def observe(s: StreamLedger, seq: int, window_max: int, loss: int | None = None) -> Verdict:
    """Pure: update one stream's ledger for seq; the caller persists before acking.
    ``loss`` is the collector's cumulative reported loss; None skips the gap check."""
    if seq <= s.watermark or seq in s.window:
        s.duplicates += 1
        return "duplicate"
    if loss is not None and s.accepted and seq > s.max_seq + 1:
        unexplained = s.missing_seqs() + (seq - s.max_seq - 1) - loss
        if unexplained > window_max:
            s.refused += 1
            return "refused"
    if seq > s.max_seq + 1:
        s.gaps += 1
    s.max_seq = max(s.max_seq, seq)
    s.window.add(seq)
    s.accepted += 1
    while s.watermark + 1 in s.window:
        s.watermark += 1
        s.window.discard(s.watermark)
    while len(s.window) > window_max:
        lowest = min(s.window)
        s.missing += lowest - s.watermark - 1
        s.watermark = lowest
        s.window.discard(lowest)
        while s.watermark + 1 in s.window:
            s.watermark += 1
            s.window.discard(s.watermark)
    return "accepted"


class Ledger:
    def __init__(
        self,
        engine: Engine,
        window: int,
        max_streams: int,
        clock: Callable[[], float] = time.time,
        writer: StreamWriter | None = None,
    ) -> None:
        self._engine = engine
        self._writer = writer or StreamWriter(engine)
        self._window = window
        self._max_streams = max_streams
        self._clock = clock
        self._streams: OrderedDict[tuple[str, str], StreamLedger] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def _get(self, host_id: str, stream_id: str) -> StreamLedger:
        key = (host_id, stream_id)
        s = self._streams.get(key)
        if s is not None:
            self._streams.move_to_end(key)
            return s
        try:
            with self._engine.connect() as conn:
                row = repo.get_stream(conn, host_id=host_id, stream_id=stream_id)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the ingest ledger: {exc}") from exc
        s = StreamLedger.from_row(row) if row else StreamLedger(host_id, stream_id)
        self._streams[key] = s
        while len(self._streams) > self._max_streams:
            self._streams.popitem(last=False)  # its row stays in the store
            self.evicted += 1
        return s

    @overload
    def record(
        self, key: BatchKey, boot_id: str, dropped: dict[str, int], lost_now: int = 0
    ) -> Literal["accepted", "duplicate"]: ...

    @overload
    def record(
        self, key: BatchKey, boot_id: str, dropped: dict[str, int], lost_now: int = 0, *, wait: bool
    ) -> Literal["accepted", "duplicate"] | None: ...

    def record(
        self, key: BatchKey, boot_id: str, dropped: dict[str, int], lost_now: int = 0, *, wait: bool = True
    ) -> Literal["accepted", "duplicate"] | None:
        """Duplicate, or accepted and committed to the store: only then may the ack say so.
        Without ``wait``: None, nothing changed, when that would mean waiting."""
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            if not wait and (key.host_id, key.stream_id) not in self._streams:
                return None  # loading it is a read of the store
            s = self._get(key.host_id, key.stream_id)
            before = s.state()
            lost = max(reported_loss(dropped), lost_now)
            verdict = observe(s, key.seq, self._window, lost)
            if verdict == "refused":
                raise SeqRefused(
                    f"seq {key.seq} is {key.seq - s.max_seq - 1} past this stream's last seq {s.max_seq}, "
                    f"which would leave {s.missing_seqs() + key.seq - s.max_seq - 1} seqs missing against "
                    f"{lost} the collector reports lost: more than the dedupe window ({self._window}) "
                    "unexplained; accepted, it would make the stream's next batches duplicates"
                )
            if verdict == "duplicate":
                return "duplicate"
            now = self._clock()
            s.first_seen = s.first_seen or now
            s.last_seen = now
            s.boot_id = boot_id
            s.dropped = dropped
            try:
                if wait:
                    self._writer.save(s.row())
                elif not self._writer.try_save(s.row()):
                    s.restore(before)  # as if never seen
                    return None
            except StoreError:
                s.restore(before)  # not durable: not accepted
                raise
            return "accepted"
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._writer.close()

    def reload(self) -> None:
        """Forget what is in memory (a new leader reads the store afresh)."""
        with self._lock:
            self._streams.clear()

    def forget(self, hosts: Callable[[str], bool]) -> None:
        """Forget the streams of these hosts: their partition moved, and whoever owns it next
        (this controller again, later) reads them from the store, never from a stale copy."""
        with self._lock:
            for key in [k for k in self._streams if hosts(k[0])]:
                del self._streams[key]

    def snapshot(self) -> list[StreamLedger]:
        with self._lock:
            return list(self._streams.values())
