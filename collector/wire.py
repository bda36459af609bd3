"""The wire contract between collector and controller: incidentlab.batch/v1 and incidentlab.ack/v1.

This module is the contract the controller imports. Decoding and validation are
one pass (msgspec builds typed objects straight from the JSON bytes), so the
controller never builds a large object graph twice. Every refusal is a
WireError naming the field.

Batch (sent gzip- or zstd-compressed to POST /api/v1/ingest):
    schema, host_id, boot_id, stream_id (one per spool), seq (per stream, assigned
    when the record entered the spool), sent_at, snapshots[], events[], dropped
    (cumulative counts for this stream: spool_evicted, spool_corrupt, dead_letters,
    event_overflow, perf_lost), collector (CollectorInfo: on the first batch of a
    stream and whenever it changes), agent (the agent's own health).
Ack: schema, host_id, stream_id, seq, status (accepted, duplicate, rejected),
    reason, leader (the writer's URL when the answering controller is a follower).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from collector.errors import AckMismatch, WireError

BATCH_SCHEMA = "incidentlab.batch/v1"
ACK_SCHEMA = "incidentlab.ack/v1"
MAX_SEQ = 2**63 - 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
_PATH = re.compile(r"`\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\])*)`")

Status = Literal["ok", "fallback", "unavailable", "error"]
PathKind = Literal["kernel", "file", "none"]
AckStatus = Literal["accepted", "duplicate", "rejected"]


class SourceEntry(msgspec.Struct, forbid_unknown_fields=True):
    status: Status
    path: PathKind
    reason: str | None
    data: dict[str, Any]
    duration_s: float | None = None


class Snapshot(msgspec.Struct, forbid_unknown_fields=True):
    ts: float
    interval_s: float | None
    sources: dict[str, SourceEntry]


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    schema: str
    host_id: str
    boot_id: str
    stream_id: str
    seq: int
    sent_at: float
    snapshots: list[Snapshot]
    events: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    collector: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None


class SourceEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """A source entry as ingest reads it: ``data`` stays raw JSON (scanned, not built)."""

    status: Status
    path: PathKind
    reason: str | None
    data: msgspec.Raw
    duration_s: float | None = None


class SnapshotEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    ts: float
    interval_s: float | None
    sources: dict[str, SourceEnvelope]


class BatchEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """The batch as the controller's ingest validates it: the same fields and rules as
    Batch, but each source's data kept as raw JSON, so a 64 KiB batch does not become a
    tree of Python objects on the request path. Hot state keeps the bytes; windows are
    decoded into Batch later, when a workflow reads them."""

    schema: str
    host_id: str
    boot_id: str
    stream_id: str
    seq: int
    sent_at: float
    snapshots: list[SnapshotEnvelope]
    events: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    collector: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None


class Ack(msgspec.Struct, forbid_unknown_fields=True):
    schema: str
    host_id: str
    stream_id: str
    seq: int
    status: AckStatus
    reason: str | None = None
    leader: str | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds on one batch; the defaults fit a minute of 1 s snapshots with room to spare."""

    max_snapshots: int = 600
    max_events: int = 20_000
    max_sources: int = 64


@dataclass(frozen=True)
class BatchKey:
    host_id: str
    stream_id: str
    seq: int


_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


def _field_of(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    m = _PATH.search(text)
    where = ("$" + m.group(1)) if m else "$"
    named = _NAMED.search(text)
    return f"{where}.{named.group(1)}" if named else where


def _check(batch: B, limits: Limits) -> B:
    if batch.schema != BATCH_SCHEMA:
        raise WireError("$.schema", f"expected {BATCH_SCHEMA!r}, got {batch.schema!r}")
    for name in ("host_id", "boot_id", "stream_id"):
        if not _ID.match(getattr(batch, name)):
            raise WireError(f"$.{name}", "must be 1-128 characters of letters, digits and _.:@/-")
    if not 0 <= batch.seq <= MAX_SEQ:
        raise WireError("$.seq", f"must be between 0 and {MAX_SEQ}")
    if not math.isfinite(batch.sent_at) or batch.sent_at < 0:
        raise WireError("$.sent_at", "must be a finite, non-negative Unix time")
    if len(batch.snapshots) > limits.max_snapshots:
        n = len(batch.snapshots)
        raise WireError("$.snapshots", f"{n} snapshots, over the limit of {limits.max_snapshots}")
    if len(batch.events) > limits.max_events:
        raise WireError("$.events", f"{len(batch.events)} events, over the limit of {limits.max_events}")
    for i, snap in enumerate(batch.snapshots):
        if len(snap.sources) > limits.max_sources:
            raise WireError(f"$.snapshots[{i}].sources", f"more than {limits.max_sources} sources")
        if not math.isfinite(snap.ts):
            raise WireError(f"$.snapshots[{i}].ts", "must be finite")
    for key, value in batch.dropped.items():
        if value < 0:
            raise WireError(f"$.dropped.{key}", "counts cannot be negative")
    return batch


B = TypeVar("B", Batch, BatchEnvelope)
_BATCH_DECODER = msgspec.json.Decoder(Batch)
_ENVELOPE_DECODER = msgspec.json.Decoder(BatchEnvelope)
_ACK_DECODER = msgspec.json.Decoder(Ack)
_ENCODER = msgspec.json.Encoder()


def validate_batch(body: bytes | dict[str, Any], limits: Limits | None = None) -> Batch:
    """A Batch from JSON bytes (decoded and validated in one pass) or from a dict."""
    try:
        if isinstance(body, bytes | bytearray):
            batch = _BATCH_DECODER.decode(body)
        else:
            batch = msgspec.convert(body, Batch)
    except msgspec.ValidationError as exc:
        raise WireError(_field_of(exc), str(exc).split(" - at ")[0]) from exc
    except msgspec.DecodeError as exc:
        raise WireError("$", f"not valid JSON: {exc}") from exc
    return _check(batch, limits or Limits())


def validate_envelope(body: bytes, limits: Limits | None = None) -> BatchEnvelope:
    """validate_batch for ingest: the same refusals, each source's data left as raw JSON."""
    try:
        env = _ENVELOPE_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise WireError(_field_of(exc), str(exc).split(" - at ")[0]) from exc
    except msgspec.DecodeError as exc:
        raise WireError("$", f"not valid JSON: {exc}") from exc
    return _check(env, limits or Limits())


def encode(obj: Batch | Ack) -> bytes:
    return _ENCODER.encode(obj)


def batch_key(batch: Batch | BatchEnvelope) -> BatchKey:
    return BatchKey(batch.host_id, batch.stream_id, batch.seq)


def make_ack(key: BatchKey, status: AckStatus, reason: str | None = None, leader: str | None = None) -> Ack:
    return Ack(ACK_SCHEMA, key.host_id, key.stream_id, key.seq, status, reason, leader)


def validate_ack(body: bytes | dict[str, Any], sent: BatchKey) -> Ack:
    """The ack, if it is well formed and answers exactly the batch that was sent."""
    try:
        ack = _ACK_DECODER.decode(body) if isinstance(body, bytes | bytearray) else msgspec.convert(body, Ack)
    except msgspec.ValidationError as exc:
        raise WireError(_field_of(exc), str(exc).split(" - at ")[0]) from exc
    except msgspec.DecodeError as exc:
        raise WireError("$", f"ack is not valid JSON: {exc}") from exc
    if ack.schema != ACK_SCHEMA:
        raise WireError("$.schema", f"expected {ACK_SCHEMA!r}, got {ack.schema!r}")
    for name in ("host_id", "stream_id", "seq"):
        got, want = getattr(ack, name), getattr(sent, name)
        if got != want:
            raise AckMismatch(f"$.{name}", f"ack answers {got!r}, the batch sent was {want!r}")
    return ack
