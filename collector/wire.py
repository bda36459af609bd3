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

Before msgspec builds anything, probe_core.json_check reads the bytes once without
the GIL: strict JSON, valid UTF-8 (no lone surrogates), every number finite and
every integer within 64 bits, nesting and value count bounded (Limits). A batch
that passes it cannot make a later decode fail or hold the GIL for long.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec
import probe_core

from collector.errors import AckMismatch, WireError

BATCH_SCHEMA = "incidentlab.batch/v1"
ACK_SCHEMA = "incidentlab.ack/v1"
MAX_SEQ = 2**63 - 1
# Where a collector POSTs its batches (the controller serves it in controller/api/fast_ingest.py).
INGEST_PATH = "/api/v1/ingest"
# A follower's 503 names the leader's URL in this header; collectors follow it (docs/wire.md).
LEADER_HEADER = "X-Incidentlab-Leader"
# The stream's loss (spool_evicted + spool_corrupt + dead_letters) when the batch is sent: the
# body carries the counts from when it was made, which a backlog that outlived an eviction
# understates, and the controller's far-ahead rule needs the loss that explains the gap.
LOST_HEADER = "X-Incidentlab-Lost"
# \Z, not $: "$" also matches before a trailing newline, and "host\n" would be another host.
# No "/": ids name files and keys downstream, and "a/../b" must not be a path.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
ID_RULE = "must be 1-128 characters of letters, digits and _.:@-, the first a letter or digit"
_NAME_RULE = "1-64 characters of a-z, 0-9 and _.-"
_PATH = re.compile(r"`\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\])*)`")

# A source's outcome and the path it took; collector/sources/base.py's SourceResult uses these too.
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
    Batch, but each source's data, each event and the collector and agent objects kept
    as raw JSON, so a 64 KiB batch does not become a tree of Python objects on the
    request path. Hot state keeps the bytes (and counts each one); windows are decoded
    into Batch later, when a workflow reads them."""

    schema: str
    host_id: str
    boot_id: str
    stream_id: str
    seq: int
    sent_at: float
    snapshots: list[SnapshotEnvelope]
    events: list[msgspec.Raw] = []
    dropped: dict[str, int] = {}
    collector: msgspec.Raw = msgspec.Raw(b"null")
    agent: msgspec.Raw = msgspec.Raw(b"null")


class EventHead(msgspec.Struct):
    """The event fields the controller reads (detectors key on them), typed; the rest of
    an event is free-form (docs/event-format.md)."""

    type: str = ""
    pid: int = 0
    ppid: int = 0
    comm: str = ""
    ts_ns: int = 0


class _Events(msgspec.Struct):
    events: list[EventHead] = []


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
    """Bounds on one batch; the defaults fit a minute of 1 s snapshots with room to spare.

    max_depth: a real batch nests 9 deep (batch, snapshots, sources, data, tables, rows).
    max_nodes: a 1 s snapshot of a busy host is 3-11 k JSON values and 20,000 exec events
    about 340 k; 500 k values take msgspec about 30 ms to build, the longest a later
    decode of one batch may hold the GIL. The object caps are 10-50x what an agent sends.
    """

    max_snapshots: int = 600
    max_events: int = 20_000
    max_sources: int = 64
    max_depth: int = 32
    max_nodes: int = 500_000
    max_event_bytes: int = 4096
    max_info_bytes: int = 64 << 10  # each of collector and agent
    max_reason_chars: int = 4096
    max_dropped_keys: int = 32


def partition_of(host_id: str, partitions: int) -> int:
    """The partition a host belongs to: the first 8 bytes of the SHA-256 of its UTF-8 host_id,
    big-endian, modulo the count; the same in every process, version and language (the bus
    subject and the controllers' ownership both use it). Not CRC-32: its linearity sends
    names that differ in one character (node-1, node-2, ...) to the same few partitions."""
    digest = hashlib.sha256(host_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions


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


_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096  # source and counter names are a handful; a flood of new ones is not cached
# A raw JSON value's first byte (msgspec has skipped the whitespace before it).
_OPEN_BRACE, _NULL_N = ord("{"), ord("n")
_INF = math.inf


def _check_name(name: str, where: str, what: str = "source name") -> None:
    if not _NAME.match(name):
        raise WireError(where, f"{what} {name[:64]!r} is not {_NAME_RULE}")
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)


def _check(batch: B, limits: Limits) -> B:
    if batch.schema != BATCH_SCHEMA:
        raise WireError("$.schema", f"expected {BATCH_SCHEMA!r}, got {batch.schema!r}")
    for name in ("host_id", "boot_id", "stream_id"):
        if not _ID.match(getattr(batch, name)):
            raise WireError(
                f"$.{name}",
                "must be 1-128 characters of letters, digits and _.:@-, the first a letter or digit",
            )
    if not 0 <= batch.seq <= MAX_SEQ:
        raise WireError("$.seq", f"must be between 0 and {MAX_SEQ}")
    if not math.isfinite(batch.sent_at) or batch.sent_at < 0:
        raise WireError("$.sent_at", "must be a finite, non-negative Unix time")
    if len(batch.snapshots) > limits.max_snapshots:
        n = len(batch.snapshots)
        raise WireError("$.snapshots", f"{n} snapshots, over the limit of {limits.max_snapshots}")
    if len(batch.events) > limits.max_events:
        raise WireError("$.events", f"{len(batch.events)} events, over the limit of {limits.max_events}")
    envelope = isinstance(batch, BatchEnvelope)
    max_sources, max_reason = limits.max_sources, limits.max_reason_chars
    for i, snap in enumerate(batch.snapshots):
        sources = snap.sources
        if len(sources) > max_sources:
            raise WireError(f"$.snapshots[{i}].sources", f"more than {max_sources} sources")
        if not snap.ts >= 0 or not math.isfinite(snap.ts):  # `not >=` is also true for NaN
            raise WireError(f"$.snapshots[{i}].ts", "must be a finite, non-negative Unix time")
        # The hot loop of validation (a batch may hold 600 snapshots of 64 sources): a
        # check per source, names from a bounded cache of those already found good.
        for name, entry in sources.items():
            if name not in _GOOD_NAMES:
                _check_name(name, f"$.snapshots[{i}].sources")
            reason, duration = entry.reason, entry.duration_s
            if reason is not None and len(reason) > max_reason:
                raise WireError(f"$.snapshots[{i}].sources.{name}.reason", f"over {max_reason} characters")
            if duration is not None and not (duration >= 0 and duration != _INF):
                raise WireError(f"$.snapshots[{i}].sources.{name}.duration_s", "must be finite, >= 0")
            # Batch (what windows decode into) wants an object: refuse here what would fail there.
            # envelope: entry.data is a Raw (mypy cannot narrow through the flag; isinstance costs)
            if envelope and memoryview(entry.data)[0] != _OPEN_BRACE:  # type: ignore[arg-type]
                raise WireError(f"$.snapshots[{i}].sources.{name}.data", "must be an object")
    if len(batch.dropped) > limits.max_dropped_keys:
        raise WireError("$.dropped", f"more than {limits.max_dropped_keys} counters")
    for key, value in batch.dropped.items():
        if key not in _GOOD_NAMES:
            _check_name(key, "$.dropped", "counter name")
        if not 0 <= value <= MAX_SEQ:
            raise WireError(f"$.dropped.{key}", f"counts must be between 0 and {MAX_SEQ}")
    if isinstance(batch, BatchEnvelope):  # (not `envelope`: mypy narrows on isinstance)
        for i, raw in enumerate(batch.events):
            if len(raw) > limits.max_event_bytes:
                raise WireError(f"$.events[{i}]", f"{len(raw)} bytes, over {limits.max_event_bytes}")
            if memoryview(raw)[0] != _OPEN_BRACE:
                raise WireError(f"$.events[{i}]", "an event must be an object")
        for name in ("collector", "agent"):
            raw = getattr(batch, name)
            if len(raw) > limits.max_info_bytes:
                raise WireError(f"$.{name}", f"{len(raw)} bytes, over {limits.max_info_bytes}")
            # json_check has proven it is JSON: "n" can only begin null.
            if memoryview(raw)[0] not in (_OPEN_BRACE, _NULL_N):
                raise WireError(f"$.{name}", "must be an object or null")
    else:
        for name in ("collector", "agent"):
            obj = getattr(batch, name)
            if obj is not None and len(_ENCODER.encode(obj)) > limits.max_info_bytes:
                raise WireError(f"$.{name}", f"over {limits.max_info_bytes} bytes")
    return batch


B = TypeVar("B", Batch, BatchEnvelope)
_BATCH_DECODER = msgspec.json.Decoder(Batch)
_ENVELOPE_DECODER = msgspec.json.Decoder(BatchEnvelope)
_EVENTS_DECODER = msgspec.json.Decoder(_Events)
_ACK_DECODER = msgspec.json.Decoder(Ack)
_ENCODER = msgspec.json.Encoder()


def check_json(body: bytes, limits: Limits) -> None:
    """Refuse what msgspec must never see: bad JSON, bad UTF-8, non-finite or out-of-range
    numbers, and documents too deep or too many values to build quickly."""
    verdict = probe_core.json_check(body, limits.max_depth, limits.max_nodes)
    if not verdict["ok"]:
        error = verdict["error"] or "refused"
        bound = error.startswith(("nested deeper", "more than"))
        message = (
            f"{error} (byte {verdict['offset']})"
            if bound
            else f"not valid JSON: {error} (byte {verdict['offset']})"
        )
        raise WireError(verdict["path"] or "$", message)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise WireError(_field_of(exc), str(exc).split(" - at ")[0]) from exc
    except msgspec.DecodeError as exc:
        raise WireError("$", f"not valid JSON: {exc}") from exc


def _check_events(body: bytes) -> None:
    _decode(_EVENTS_DECODER, body)  # the typed fields of every event (the rest is skipped)


def validate_batch(body: bytes | dict[str, Any], limits: Limits | None = None) -> Batch:
    """A Batch from JSON bytes (checked, then decoded and validated in one pass) or from a dict."""
    limits = limits or Limits()
    if isinstance(body, bytes | bytearray):
        body = bytes(body)
        check_json(body, limits)
        batch: Batch = _decode(_BATCH_DECODER, body)
        _check_events(body)
    else:
        try:
            batch = msgspec.convert(body, Batch)
        except msgspec.ValidationError as exc:
            raise WireError(_field_of(exc), str(exc).split(" - at ")[0]) from exc
        check_json(_ENCODER.encode(batch), limits)
        try:
            msgspec.convert({"events": batch.events}, _Events)
        except msgspec.ValidationError as exc:
            raise WireError(_field_of(exc), str(exc).split(" - at ")[0]) from exc
    return _check(batch, limits)


def validate_envelope(body: bytes, limits: Limits | None = None) -> BatchEnvelope:
    """validate_batch for ingest: the same refusals, raw JSON kept where it is only stored."""
    limits = limits or Limits()
    check_json(body, limits)
    env: BatchEnvelope = _decode(_ENVELOPE_DECODER, body)
    if env.events:
        _check_events(body)
    return _check(env, limits)


def raw_or_none(raw: msgspec.Raw) -> bytes | None:
    """A copy of a raw JSON value (a Raw keeps the whole request body alive), None for null."""
    out = bytes(raw)
    return None if out == b"null" else out


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
