"""Ingest: the door every batch comes through, and everything it refuses.

handle() runs the whole path on bytes already read (the ASGI layer caps the body):
token and role, leadership, Content-Encoding (gzip or zstd, decompressed under a
hard cap: a bomb is 413, not an out-of-memory), one-pass decode and validation
through collector.wire (400 naming the field), the durable dedupe ledger (the ack
goes out only after its commit), hot state. Nothing is stored for a refused batch.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import probe_core
import zstandard

from collector.errors import WireError
from collector.transport import LEADER_HEADER
from collector.wire import BatchEnvelope, BatchKey, Limits, batch_key, encode, make_ack, validate_envelope
from controller.auth import Authenticator
from controller.errors import AuthError, Forbidden, StoreError
from controller.hotstate import HotState
from controller.leader import Leadership
from controller.ledger import Ledger
from controller.metrics import Metrics

JSON = b"application/json"
_ENC = msgspec.json.Encoder()


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _json(status: int, obj: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(status, _ENC.encode(obj), headers)


class IngestRefusal(Exception):
    """A refusal at the door, with the HTTP status it answers."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The JSON bytes of a request body; raises IngestRefusal with the status to answer."""
    if encoding in (None, "", "identity"):
        if len(body) > limit:
            raise IngestRefusal(413, f"body over the decompressed limit of {limit} bytes")
        return body
    if encoding == "gzip":
        try:
            return probe_core.gzip_decompress(body, limit)
        except probe_core.OutputLimitError as exc:
            raise IngestRefusal(413, str(exc)) from exc
        except probe_core.DecompressError as exc:
            raise IngestRefusal(400, f"bad gzip body: {exc}") from exc
    if encoding == "zstd":
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
                out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise IngestRefusal(400, f"bad zstd body: {exc}") from exc
        if len(out) > limit:
            raise IngestRefusal(413, f"zstd output exceeds the limit of {limit} bytes")
        return out
    raise IngestRefusal(415, f"unsupported Content-Encoding {encoding!r} (gzip, zstd or identity)")


def _identity(raw: bytes) -> BatchKey | None:
    """host, stream and seq of a batch that failed validation, when they can still be read."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    host, stream, seq = obj.get("host_id"), obj.get("stream_id"), obj.get("seq")
    if (
        isinstance(host, str)
        and isinstance(stream, str)
        and isinstance(seq, int)
        and not isinstance(seq, bool)
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
        max_decompressed: int,
        limits: Limits | None = None,
        on_accepted: Callable[[str], None] | None = None,
    ) -> None:
        self.on_accepted = on_accepted
        self.auth = auth
        self.ledger = ledger
        self.hot = hot
        self.leadership = leadership
        self.metrics = metrics
        self.max_decompressed = max_decompressed
        self.limits = limits or Limits()

    def handle(self, authorization: str | None, encoding: str | None, body: bytes) -> Answer:
        start = time.perf_counter()
        answer = self._handle(authorization, encoding, body)
        self.metrics.requests.labels(str(answer.status)).inc()
        self.metrics.seconds.observe(time.perf_counter() - start)
        self.metrics.body_bytes.inc(len(body))
        return answer

    def _handle(self, authorization: str | None, encoding: str | None, body: bytes) -> Answer:
        try:
            principal = self.auth.authenticate(authorization)
            self.auth.require(principal, "ingest")
        except Forbidden as exc:
            return _json(403, {"detail": str(exc)})
        except AuthError as exc:
            return _json(401, {"detail": str(exc)}, ((b"www-authenticate", b"Bearer"),))
        if not self.leadership.is_leader:
            leader = self.leadership.leader_url
            headers = ((LEADER_HEADER.lower().encode(), leader.encode()),) if leader else ()
            return _json(503, {"detail": "this controller is a follower", "leader": leader}, headers)
        try:
            raw = decompress(body, encoding, self.max_decompressed)
        except IngestRefusal as exc:
            return _json(exc.status, {"detail": str(exc)})
        try:
            batch = validate_envelope(raw, self.limits)
        except WireError as exc:
            key = _identity(raw)
            if key is not None:
                # An ack naming the batch tells the collector this is permanent: dead-letter it.
                return Answer(400, encode(make_ack(key, "rejected", reason=str(exc))))
            return _json(400, {"detail": str(exc), "field": exc.field})
        return self._accept(batch, raw)

    def _accept(self, batch: BatchEnvelope, raw: bytes) -> Answer:
        key = batch_key(batch)
        try:
            verdict = self.ledger.record(key, batch.boot_id, batch.dropped)
        except StoreError as exc:
            return _json(503, {"detail": f"cannot record the batch now: {exc}"})
        self.metrics.batches.labels(verdict).inc()
        if verdict == "accepted":
            self.hot.ingest(batch, raw)
            if self.on_accepted is not None:
                self.on_accepted(batch.host_id)
        return Answer(200, encode(make_ack(key, verdict)))
