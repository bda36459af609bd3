"""Ingest: the door every batch comes through, and everything it refuses.

Two halves. ``admit`` looks at the headers alone, before a byte of the body is read:
the bearer token and its role, leadership (a follower answers 503 with the leader's
URL). ``process`` runs on the bytes, off the event loop (the ASGI layer hands it to a
bounded pool): Content-Encoding (gzip or zstd, decompressed under a hard cap: a bomb
is 413, not an out-of-memory); the strict JSON check and one-pass validation through
collector.wire (400 naming the field); the token's host binding (403); the clock
(a snapshot or sent_at further ahead of this controller's clock than
``max_clock_skew_s`` is refused: one such batch would keep a dead host fresh and
shrink its window to that sample); the durable dedupe ledger (the ack goes out only
after its commit; a far-ahead seq the collector's own loss counts do not explain is
refused); hot state. Nothing is stored for a refused batch, and every refusal that
can name the batch is an ack with status ``rejected`` (the collector dead-letters it,
counted, and moves on).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import msgspec
import probe_core
import zstandard

from collector.errors import WireError
from collector.wire import (
    LEADER_HEADER,
    BatchEnvelope,
    BatchKey,
    Limits,
    batch_key,
    encode,
    make_ack,
    validate_envelope,
)
from controller.auth import Authenticator, Principal
from controller.config import IngestSettings
from controller.errors import Forbidden, IngestError, NotLeader, SeqRefused, StoreError
from controller.hotstate import HotState
from controller.leader import Leadership
from controller.ledger import Ledger
from controller.metrics import Metrics
from controller.partitions import LeaderOwnership, Ownership

log = logging.getLogger(__name__)
JSON = b"application/json"
_ENC = msgspec.json.Encoder()
CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    accepted: Accepted | None = None  # a batch was stored: analysis takes it once answered


@dataclass(frozen=True)
class Accepted:
    """An accepted batch as analysis takes it: the JSON, and when it was received."""

    host_id: str
    raw: bytes
    received_at: float


def json_answer(status: int, obj: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(status, _ENC.encode(obj), headers)


@dataclass(frozen=True)
class Prepared:
    """A batch that passed every check and is ready for the ledger and hot state."""

    batch: BatchEnvelope
    raw: bytes
    started: float  # perf_counter when processing began: the request's time includes the commit
    body_bytes: int


def _internal_error() -> Answer:
    log.exception("ingest failed on a batch")
    return json_answer(500, {"detail": "internal error while ingesting; the batch was not stored"})


def parse_lost(value: bytes | str | None) -> int:
    """The X-Incidentlab-Lost header: a count, 0 when absent or not one."""
    if value is None:
        return 0
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 18 else 0


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The JSON bytes of a request body; raises IngestError with the status to answer."""
    if encoding in (None, "", "identity"):
        if len(body) > limit:
            raise IngestError(413, f"body over the decompressed limit of {limit} bytes")
        return body
    if encoding == "gzip":
        try:
            return probe_core.gzip_decompress(body, limit)
        except probe_core.OutputLimitError as exc:
            raise IngestError(413, str(exc)) from exc
        except probe_core.DecompressError as exc:
            raise IngestError(400, f"bad gzip body: {exc}") from exc
    if encoding == "zstd":
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise IngestError(400, f"bad zstd body: {exc}") from exc
        if len(out) > limit:
            raise IngestError(413, f"zstd output exceeds the limit of {limit} bytes")
        return out
    raise IngestError(415, f"unsupported Content-Encoding {encoding!r} (gzip, zstd or identity)")


class _Identity(msgspec.Struct):
    host_id: Any = None
    stream_id: Any = None
    seq: Any = None


_IDENTITY = msgspec.json.Decoder(_Identity)


def _identity(raw: bytes) -> BatchKey | None:
    """host, stream and seq of a batch that failed validation, when they can still be read.

    Typed decode of three fields, every other value skipped: never builds (or recurses
    into) the rest of a body that was refused for being too deep or too large."""
    try:
        obj = _IDENTITY.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None
    host, stream, seq = obj.host_id, obj.stream_id, obj.seq
    if (
        isinstance(host, str)
        and isinstance(stream, str)
        and isinstance(seq, int)
        and not isinstance(seq, bool)
        and len(host) <= 256
        and len(stream) <= 256
        and 0 <= seq < 2**63
    ):
        return BatchKey(host, stream, seq)
    return None


class IngestService:
    def __init__(
        self,
        *,
        auth: Authenticator,
        ledger: Ledger,
        hot: HotState,
        leadership: Leadership,
        metrics: Metrics,
        settings: IngestSettings,
        on_accepted: Callable[[Accepted], None] | None = None,
        clock: Callable[[], float] = time.time,
        ownership: Ownership | None = None,
    ) -> None:
        self.on_accepted = on_accepted
        # Which hosts this controller writes: every one on the leader, its partitions' when
        # replicas share the fleet (controller/partitions.py).
        self.ownership: Ownership = ownership or LeaderOwnership(leadership, 1)
        self.auth = auth
        self.ledger = ledger
        self.hot = hot
        self.leadership = leadership
        self.metrics = metrics
        self.max_decompressed = settings.max_decompressed_bytes
        self.max_clock_skew_s = settings.max_clock_skew_s
        self.limits = Limits(
            max_depth=settings.max_depth, max_nodes=settings.max_nodes, max_events=settings.max_events
        )
        self.clock = clock

    # --- the two halves ----------------------------------------------------------------------

    def admit(self, authorization: str | None) -> Principal:
        """From the headers alone: the principal allowed to ingest, or AuthError (Forbidden for
        a role that may not) or NotLeader, which the front door answers before any body is read."""
        principal = self.auth.authenticate(authorization)
        self.auth.require(principal, "ingest")
        if not self.ownership.admits():
            raise NotLeader(self.leadership.leader_url)
        return principal

    def process(
        self,
        principal: Principal,
        encoding: str | None,
        body: bytes,
        lost: int = 0,
        inline_limit: int | None = None,
    ) -> Answer | Prepared | None:
        """Everything after the headers, on bytes already read: run it off the event loop.

        ``lost`` is the X-Incidentlab-Lost header (0 without it). With ``inline_limit``
        (the event loop's own fast path for small batches) it stops short of the store:
        None, having done nothing, when the body decompresses past that many bytes; else
        a refusal, or the Prepared batch for ``commit`` to store off the loop."""
        start = time.perf_counter()
        try:
            prepared = self._prepare(principal, encoding, body, start, inline_limit)
        except Exception:  # a bug must answer, not hang the collector; the batch is not acked
            prepared = _internal_error()
        if prepared is None or (inline_limit is not None and isinstance(prepared, Prepared)):
            return prepared  # handed on: whoever finishes it records the metrics
        if isinstance(prepared, Prepared):
            return self.commit(prepared, lost)
        return self._measured(prepared, start, len(body))

    @overload
    def commit(self, prepared: Prepared, lost: int = 0) -> Answer: ...

    @overload
    def commit(self, prepared: Prepared, lost: int = 0, *, inline: bool) -> Answer | None: ...

    def commit(self, prepared: Prepared, lost: int = 0, *, inline: bool = False) -> Answer | None:
        """The store half of a prepared batch: the ledger commit and hot state (blocking I/O).
        ``inline`` (the event loop's): None, nothing done, when it cannot be done without
        waiting on a lock or the store, or hot state would cost more than a few microseconds."""
        if inline and self.hot.windows:
            return None  # extracting a window's samples is analysis work: not on the loop
        try:
            answer = self._accept(prepared, lost, wait=not inline)
        except Exception:  # a bug must answer, not hang the collector; the batch is not acked
            answer = _internal_error()
        if answer is None:
            return None
        return self._measured(answer, prepared.started, prepared.body_bytes)

    def _measured(self, answer: Answer, started: float, body_bytes: int) -> Answer:
        self.metrics.seconds.observe(time.perf_counter() - started)
        self.metrics.body_bytes.inc(body_bytes)
        return answer

    def count(self, answer: Answer) -> None:
        self.metrics.requests.labels(str(answer.status)).inc()

    def answered(self, answer: Answer) -> None:
        """After the ack is on its way: queue the host for evaluation (cheap, bounded)."""
        if answer.accepted is not None and self.on_accepted is not None:
            self.on_accepted(answer.accepted)

    def refuse(self, reason: str, answer: Answer) -> Answer:
        self.metrics.refused.labels(reason).inc()
        return answer

    # --- the work --------------------------------------------------------------------------------

    def _prepare(
        self,
        principal: Principal,
        encoding: str | None,
        body: bytes,
        started: float,
        inline_limit: int | None = None,
    ) -> Answer | Prepared | None:
        try:
            if inline_limit is not None:
                try:
                    raw = decompress(body, encoding, min(inline_limit, self.max_decompressed))
                except IngestError as exc:
                    if exc.status == 413:
                        return None  # larger than the fast path takes: the pool does it all
                    raise
            else:
                raw = decompress(body, encoding, self.max_decompressed)
        except IngestError as exc:
            reason = {413: "too_large", 415: "encoding"}.get(exc.status, "bad_encoding")
            return self.refuse(reason, json_answer(exc.status, {"detail": str(exc)}))
        try:
            batch = validate_envelope(raw, self.limits)
        except WireError as exc:
            return self._rejected(raw, "invalid", exc.field, str(exc))
        try:
            self.auth.require_host(principal, batch.host_id)
        except Forbidden as exc:
            # Not an ack: the batch is fine, the token is wrong for it. The collector keeps it.
            return self.refuse("host_forbidden", json_answer(403, {"detail": str(exc)}))
        if self.ownership.sharded and not self.ownership.owns_host(batch.host_id):
            return self._not_owner(batch.host_id)
        ahead = self._ahead_of_clock(batch)
        if ahead is not None:
            field, by = ahead
            message = (
                f"{field}: {by:.0f} s ahead of the controller's clock "
                f"(ingest.max_clock_skew_s is {self.max_clock_skew_s:.0f}); fix the host's clock"
            )
            return self._rejected(raw, "future", field, message, key=batch_key(batch))
        return Prepared(batch, raw, started, len(body))

    def _not_owner(self, host_id: str) -> Answer:
        """503 naming the replica that owns the host's partition, as a follower names the
        leader: the collector keeps the batch and follows the hint."""
        url = self.ownership.owner_url(host_id)
        detail = "another controller owns this host's partition" + (f"; it is at {url}" if url else "")
        headers = ((LEADER_HEADER.lower().encode(), url.encode()),) if url else ()
        return self.refuse("not_owner", json_answer(503, {"detail": detail, "leader": url}, headers))

    def rebuild(self, host_id: str, encoding: str | None, body: bytes, received_at: float) -> Accepted | None:
        """A batch already counted by the ledger (a new owner reading the stream's last window):
        checked as any body is, then into hot state only. None when it is not ``host_id``'s
        valid batch; never raises (one bad message must not stop a rebuild)."""
        try:
            raw = decompress(body, encoding, self.max_decompressed)
            batch = validate_envelope(raw, self.limits)
            if batch.host_id != host_id or self._ahead_of_clock(batch) is not None:
                return None
            self.hot.ingest(batch, raw, received_at=received_at)
        except Exception:
            return None
        return Accepted(host_id, raw, received_at)

    def _ahead_of_clock(self, batch: BatchEnvelope) -> tuple[str, float] | None:
        now = self.clock()
        limit = now + self.max_clock_skew_s
        if batch.sent_at > limit:
            return "$.sent_at", batch.sent_at - now
        for i, snap in enumerate(batch.snapshots):
            if snap.ts > limit:
                return f"$.snapshots[{i}].ts", snap.ts - now
        return None

    def _rejected(
        self, raw: bytes, reason: str, field: str, message: str, key: BatchKey | None = None
    ) -> Answer:
        key = key or _identity(raw)
        if key is not None:
            # An ack naming the batch tells the collector this is permanent: dead-letter it.
            return self.refuse(reason, Answer(400, encode(make_ack(key, "rejected", reason=message))))
        return self.refuse(reason, json_answer(400, {"detail": message, "field": field}))

    def _accept(self, prepared: Prepared, lost: int, *, wait: bool = True) -> Answer | None:
        batch, raw = prepared.batch, prepared.raw
        key = batch_key(batch)
        try:
            verdict = self.ledger.record(key, batch.boot_id, batch.dropped, lost_now=lost, wait=wait)
            if verdict is None:
                return None
        except SeqRefused as exc:
            return self._rejected(raw, "seq_ahead", "$.seq", str(exc), key=key)
        except StoreError as exc:
            return self.refuse("store", json_answer(503, {"detail": f"cannot record the batch now: {exc}"}))
        self.metrics.batches.labels(verdict).inc()
        if verdict == "accepted":
            now = self.clock()
            self.hot.ingest(batch, raw, received_at=now)
            accepted = Accepted(batch.host_id, raw, now)
            return Answer(200, encode(make_ack(key, verdict)), accepted=accepted)
        return Answer(200, encode(make_ack(key, verdict)))
