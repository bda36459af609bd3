"""FastAPI routers: status, ingest status, metrics, health, and the documented ingest route."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from collector.transport import INGEST_PATH
from collector.wire import Batch
from controller import __version__
from controller.api.fast_ingest import read_body
from controller.auth import Action, Principal
from controller.errors import AuthError, Forbidden
from controller.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def require(action: Action) -> Callable[..., Principal]:
    def dep(
        rt: Annotated[Runtime, Depends(runtime)], authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        try:
            principal = rt.auth.authenticate(authorization)
            rt.auth.require(principal, action)
        except Forbidden as exc:
            raise HTTPException(403, str(exc)) from exc
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
        return principal

    return dep


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
    open_runs: int
    workflow: dict[str, int]


router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
def readyz(rt: Annotated[Runtime, Depends(runtime)], response: Response) -> Health:
    """Ready to serve: the metadata store answers and migrations are applied."""
    try:
        with rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        response.status_code = 503
        return Health(status="metadata store unreachable")
    if not rt.ready:
        response.status_code = 503
        return Health(status="starting")
    return Health(status="ok")


@router.get("/metrics", tags=["health"], response_class=Response)
def metrics(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/status", response_model=Status, tags=["status"])
def status(
    rt: Annotated[Runtime, Depends(runtime)], _: Annotated[Principal, Depends(require("read"))]
) -> Status:
    """Version, leader or follower, store backends, hot-state size and bounds, open runs and the
    workflow queue (queued, overflow, evaluations, runs opened, attached, failures)."""
    return Status(
        version=__version__,
        role="leader" if rt.leadership.is_leader else "follower",
        leadership=rt.leadership.describe(),
        stores=StoreInfo(
            metadata=rt.engine.dialect.name, schema_version=rt.schema_version, payloads=rt.payloads.protocol
        ),
        hot_state=rt.hot.stats(),
        ledger={"streams_in_memory": len(rt.ledger.snapshot()), "streams_evicted": rt.ledger.evicted},
        open_runs=rt.workflow.open_runs(),
        workflow=rt.workflow.stats(),
    )


@router.get("/api/v1/ingest/status", tags=["status"])
def ingest_status(
    rt: Annotated[Runtime, Depends(runtime)],
    _: Annotated[Principal, Depends(require("read"))],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Per host: last seq, lag, duplicates, gaps, drops the collector reported, freshness."""
    now = time.time()
    streams: dict[str, list[dict[str, Any]]] = {}
    for s in rt.ledger.snapshot():
        streams.setdefault(s.host_id, []).append(
            {
                "stream_id": s.stream_id,
                "last_seq": s.max_seq,
                "watermark": s.watermark,
                "accepted": s.accepted,
                "duplicates": s.duplicates,
                "gaps": s.gaps,
                "missing": s.missing,
                "dropped": s.dropped,
            }
        )
    hosts = []
    for host_id in rt.hot.host_ids()[-limit:]:
        h = rt.hot.host(host_id)
        if h is None:
            continue
        hosts.append(
            {
                "host_id": host_id,
                "boot_id": h.boot_id,
                "last_seen": h.last_seen,
                "lag_s": round(now - h.last_seen, 3),
                "samples": h.snapshots,
                "dropped": h.dropped,
                "freshness": rt.hot.freshness(host_id),
                "streams": streams.get(host_id, []),
                "agent": h.agent,
            }
        )
    return {"hosts": hosts, "count": len(hosts)}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The JSON schema with its $refs replaced by their definitions (the batch types do not recurse)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _batch_body_schema() -> dict[str, Any]:
    raw = msgspec.json.schema(Batch)
    schema = _inline(raw, raw.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(
    INGEST_PATH,
    tags=["ingest"],
    openapi_extra=_batch_body_schema(),
    responses={
        200: {"description": "an incidentlab.ack/v1 (accepted or duplicate)"},
        400: {"description": "invalid batch: an ack with status rejected naming the field, or a detail"},
        401: {"description": "missing or unknown token"},
        403: {"description": "the token's role may not ingest"},
        413: {"description": "body or decompressed body over the limit"},
        415: {"description": "unsupported Content-Encoding"},
        503: {
            "description": "a follower (X-Incidentlab-Leader names the leader) or the store is unavailable"
        },
    },
)
async def ingest(request: Request) -> Response:
    """One incidentlab.batch/v1, gzip or zstd encoded. The lean ASGI path serves this in production."""
    rt: Runtime = request.app.state.runtime
    body = await read_body(request.receive, rt.settings.ingest.max_body_bytes)
    if body is None:
        return Response(b'{"detail":"body over the ingest limit"}', 413, media_type="application/json")
    answer = rt.ingest.handle(
        request.headers.get("authorization"), request.headers.get("content-encoding"), body
    )
    return Response(
        answer.body,
        answer.status,
        headers={k.decode(): v.decode() for k, v in answer.headers},
        media_type="application/json",
    )
