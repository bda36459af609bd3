"""FastAPI routers: status, ingest status, metrics, health, and the documented ingest route."""

from __future__ import annotations

import bisect
import logging
import time
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from collector.wire import BATCH_SCHEMA, INGEST_PATH, MAX_SEQ, Batch, Limits
from controller import __version__
from controller.api.deps import BEARER, Reader, Rt, runtime
from controller.api.fast_ingest import handle
from controller.ledger import StreamLedger, reported_loss
from controller.runtime import Runtime
from controller.store.db import ping

log = logging.getLogger(__name__)


class RefusalBody(BaseModel):
    """A 400 from ingest: a rejected ack when the batch can be named, else {detail, field}."""

    schema_: str | None = Field(default=None, alias="schema")
    host_id: str | None = None
    stream_id: str | None = None
    seq: int | None = None
    status: Literal["rejected"] | None = None
    reason: str | None = None
    leader: str | None = None
    detail: str | None = None
    field: str | None = None


class AckBody(BaseModel):
    schema_: str = Field(alias="schema")
    host_id: str
    stream_id: str
    seq: int
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    leader: str | None = None


class ErrorBody(BaseModel):
    detail: Any
    field: str | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives; every one is {detail, field?}."""
    why = {
        400: "the request is not acceptable (a bad body, cursor or parameter), naming the field",
        401: "no bearer token, or one this controller does not know",
        403: "the token's role may not do this",
        404: "no such run, host or silence",
        408: "the request body stalled or arrived too slowly",
        409: "the run is not in a state that allows this, or the plan changed",
        413: "the request body is over its limit",
        422: "a parameter or body field fails validation",
        429: "too many bodies in flight; retry after Retry-After",
        500: "a stored artifact is corrupt or a store failed: the detail names the run and file",
        503: "a follower (the detail names the leader), or the store is unavailable",
    }
    return {c: {"model": ErrorBody, "description": why[c]} for c in codes}


READ_ERRORS = errors(401, 403, 422)
BODY_ERRORS = errors(400, 408, 413, 429)


class Health(BaseModel):
    status: str


class StoreInfo(BaseModel):
    metadata: str
    schema_version: int
    payloads: str


class Status(BaseModel):
    version: str
    role: str
    leadership: dict[str, Any]
    stores: StoreInfo
    hot_state: dict[str, Any]
    ledger: dict[str, Any]
    server: dict[str, Any]
    open_runs: int
    workflow: dict[str, Any]
    failing_hosts: list[dict[str, Any]]
    bus: dict[str, Any] | None = None  # the NATS consumer when bus.enabled
    # Which hosts this replica writes: every one while it leads, or its partitions when
    # replicas share the fleet (owners, members, rebuilds).
    partitions: dict[str, Any] | None = None


class StreamStatus(BaseModel):
    stream_id: str
    last_seq: int
    watermark: int
    accepted: int
    duplicates: int
    gaps: int
    missing: int
    reported_lost: int
    unexplained_missing: int
    refused_ahead: int
    dropped: dict[str, int]


class HostStatus(BaseModel):
    host_id: str
    boot_id: str | None = None
    last_seen: float | None = None
    lag_s: float | None = None
    samples: int | None = None
    bytes: int | None = None
    dropped: dict[str, int] | None = None
    freshness: dict[str, str] | None = None
    streams: list[StreamStatus] | None = None
    agent: dict[str, Any] | None = None
    evaluation_error: dict[str, Any] | None = None
    error: str | None = None


class IngestStatusPage(BaseModel):
    hosts: list[HostStatus]
    count: int
    next_cursor: str | None


router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
def readyz(rt: Rt, response: Response) -> Health:
    """Ready to serve: the metadata store answers and migrations are applied."""
    if not ping(rt.engine):
        response.status_code = 503
        return Health(status="metadata store unreachable")
    if not rt.ready:
        response.status_code = 503
        return Health(status="starting")
    return Health(status="ok")


@router.get(
    "/metrics",
    tags=["health"],
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(rt: Rt) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/status", response_model=Status, tags=["status"], responses=READ_ERRORS)
def status(rt: Rt, _: Reader) -> Status:
    """Version, leader or follower, store backends, hot-state size and bounds, the front
    door's bounds and counters, open runs, the workflow queue (queued, overflow,
    evaluations, runs opened, attached, failures) and the hosts whose evaluation failed."""
    return Status(
        version=__version__,
        role="leader" if rt.leadership.is_leader else "follower",
        leadership=rt.leadership.describe(),
        stores=StoreInfo(
            metadata=rt.engine.dialect.name, schema_version=rt.schema_version, payloads=rt.payloads.protocol
        ),
        hot_state=rt.hot.stats(),
        ledger={"streams_in_memory": len(rt.ledger.snapshot()), "streams_evicted": rt.ledger.evicted},
        server=rt.guard.stats(),
        open_runs=rt.workflow.open_runs(),
        workflow=rt.workflow.stats(),
        failing_hosts=rt.workflow.failing_hosts(limit=20),
        bus=rt.bus.status() if rt.bus is not None else None,
        partitions=rt.ownership.describe(),
    )


# A page stops once its body passes this (always one host at least): the agent object
# alone may be 64 KiB, and 10,000 of them would be an answer no client wants.
MAX_PAGE_BYTES = 1 << 20
_ENCODE = msgspec.json.Encoder()
HOST_QUERY = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


def _stream_status(s: StreamLedger) -> dict[str, Any]:
    missing = s.missing_seqs()
    lost = reported_loss(s.dropped)
    return {
        "stream_id": s.stream_id,
        "last_seq": s.max_seq,
        "watermark": s.watermark,
        "accepted": s.accepted,
        "duplicates": s.duplicates,
        "gaps": s.gaps,
        "missing": missing,
        "reported_lost": lost,
        "unexplained_missing": max(0, missing - lost),
        "refused_ahead": s.refused,
        "dropped": s.dropped,
    }


def _host_status(rt: Runtime, host_id: str, streams: list[dict[str, Any]], now: float) -> bytes | None:
    h = rt.hot.host(host_id)
    if h is None:
        return None
    entry: dict[str, Any] = {
        "host_id": host_id,
        "boot_id": h.boot_id,
        "last_seen": h.last_seen,
        "lag_s": round(now - h.last_seen, 3),
        "samples": h.snapshots,
        "bytes": h.bytes,
        "dropped": h.dropped,
        "freshness": rt.hot.freshness(host_id),
        "streams": streams,
        # Kept as the raw JSON the collector sent (bounded and checked at ingest): embedded, not rebuilt.
        "agent": msgspec.Raw(h.agent) if h.agent is not None else None,
        "evaluation_error": rt.workflow.failure_of(host_id),
    }
    return _ENCODE.encode(entry)


@router.get(
    "/api/v1/ingest/status",
    tags=["status"],
    response_model=IngestStatusPage,
    responses=READ_ERRORS | errors(400),
)
def ingest_status(
    rt: Rt,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=HOST_QUERY, description="next_cursor of the previous page")
    ] = None,
    host: Annotated[str | None, Query(pattern=HOST_QUERY, description="this host only")] = None,
) -> Response:
    """Per host, in host-id order: last seq, lag, duplicates, gaps, seqs missing and how
    many the collector itself reports lost, drops, freshness, agent health. Pages are
    bounded by ``limit`` and by about 1 MiB of body; pass ``next_cursor`` back as ``cursor``."""
    now = time.time()
    by_host: dict[str, list[dict[str, Any]]] = {}
    for s in rt.ledger.snapshot():
        by_host.setdefault(s.host_id, []).append(_stream_status(s))
    ids = [host] if host is not None else sorted(rt.hot.host_ids())
    if cursor is not None:
        ids = ids[bisect.bisect_right(ids, cursor) :]
    parts: list[bytes] = []
    size = 0
    last: str | None = None
    more = False
    for host_id in ids:
        if len(parts) >= limit or (parts and size >= MAX_PAGE_BYTES):
            more = True
            break
        try:
            part = _host_status(rt, host_id, by_host.get(host_id, []), now)
        except Exception as exc:  # one host's state must never fail the page for every host
            log.exception("ingest status of host %s failed", host_id)
            part = _ENCODE.encode({"host_id": host_id, "error": f"{type(exc).__name__}: {exc}"[:500]})
        last = host_id
        if part is not None:
            parts.append(part)
            size += len(part)
    body = b'{"hosts":[' + b",".join(parts) + b'],"count":%d,"next_cursor":' % len(parts)
    body += (_ENCODE.encode(last) if more and last is not None else b"null") + b"}"
    return Response(body, media_type="application/json")


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The JSON schema with its $refs replaced by their definitions (the batch types do not recurse)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"}
NAME_SCHEMA = {"pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"}


def _batch_body_schema() -> dict[str, Any]:
    """The Batch type's JSON schema with the rules collector.wire checks beyond the types
    (ids, seq range, counts, names), so the document is as strict as ingest itself. What
    a schema cannot say (the clock skew bound, the ledger's far-ahead rule, the host a
    token may write, the depth and value limits) ingest answers with 400 or 403."""
    limits = Limits()
    raw = msgspec.json.schema(Batch)
    schema = _inline(raw, raw.get("$defs", {}))
    props = schema["properties"]
    props["schema"] = {"type": "string", "enum": [BATCH_SCHEMA]}
    for name in ("host_id", "boot_id", "stream_id"):
        props[name] = dict(ID_SCHEMA)
    props["seq"] |= {"minimum": 0, "maximum": MAX_SEQ}
    props["sent_at"] |= {"minimum": 0}
    props["snapshots"] |= {"maxItems": limits.max_snapshots}
    snap = props["snapshots"]["items"]
    snap["properties"]["ts"] |= {"minimum": 0}
    sources = snap["properties"]["sources"]
    sources |= {"maxProperties": limits.max_sources, "propertyNames": NAME_SCHEMA}
    entry = sources["additionalProperties"]["properties"]
    entry["reason"]["anyOf"][0] |= {"maxLength": limits.max_reason_chars}
    entry["duration_s"]["anyOf"][0] |= {"minimum": 0}
    props["events"] |= {"maxItems": limits.max_events}
    props["dropped"] |= {"maxProperties": limits.max_dropped_keys, "propertyNames": NAME_SCHEMA}
    props["dropped"]["additionalProperties"] |= {"minimum": 0, "maximum": MAX_SEQ}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(
    INGEST_PATH,
    tags=["ingest"],
    openapi_extra=_batch_body_schema(),
    dependencies=[Security(BEARER)],
    response_model=AckBody,
    responses={
        200: {"model": AckBody, "description": "an incidentlab.ack/v1: accepted or duplicate"},
        400: {
            "model": RefusalBody,
            "description": "invalid batch: an ack with status rejected naming the field (the collector "
            "dead-letters it), or {detail, field} when the batch cannot be named",
        },
        **errors(401),
        403: {"model": ErrorBody, "description": "the token's role may not ingest, or not this host"},
        **errors(408),
        411: {"model": ErrorBody, "description": "no Content-Length"},
        **errors(413),
        415: {"model": ErrorBody, "description": "unsupported Content-Encoding"},
        **errors(429),
        500: {"model": ErrorBody, "description": "an internal error; the batch was not stored"},
        503: {
            "model": ErrorBody,
            "description": "a follower (X-Incidentlab-Leader names the leader) or the store is unavailable",
        },
    },
)
async def ingest(request: Request) -> Response:
    """One incidentlab.batch/v1, gzip or zstd encoded. The front door (controller/api/fast_ingest.py)
    serves this path in production; this route documents it and serves an app mounted without it."""
    rt = runtime(request)
    body = await request.body()
    if len(body) > rt.settings.ingest.max_body_bytes:
        return Response(b'{"detail":"body over the ingest limit"}', 413, media_type="application/json")
    answer = await run_in_threadpool(
        handle, rt.ingest, request.headers.get("authorization"), request.headers.get("content-encoding"), body
    )
    return Response(
        answer.body,
        answer.status,
        headers={k.decode(): v.decode() for k, v in answer.headers},
        media_type="application/json",
    )
