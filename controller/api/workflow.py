"""The incident workflow's API: live RCA per host, runs with their chains, evidence, replay."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from controller import artifacts
from controller.api.deps import Reader, Rt, Writer, leader_only
from controller.api.routes import BODY_ERRORS, READ_ERRORS, errors
from controller.artifacts import Artifact
from controller.detectors import Evidence
from controller.errors import Invalid, UnknownRun
from controller.store.runs import AuditKind, RunStatus, fault_times
from controller.workflow.analysis import detect, rank
from controller.workflow.engine import WorkflowEngine
from controller.workflow.silences import SilenceSpec, public

router = APIRouter(prefix="/api/v1/agent", tags=["workflow"], responses=READ_ERRORS)
# Unix seconds, finite: NaN and infinity compare oddly in SQL.
TIME: dict[str, Any] = {"ge": 0, "le": 1e11, "allow_inf_nan": False}
log = logging.getLogger(__name__)
MAX_ID = 2**63 - 1


DECIDE_ERRORS = errors(400, 404, 409, 500, 503) | BODY_ERRORS
EVIDENCE_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": {"type": "object"}}}}
}


class _Open(BaseModel):
    """Documented fields; the answer may carry more (forward-compatible readers ignore them)."""

    model_config = ConfigDict(extra="allow")


class RcaHost(_Open):
    host_id: str
    window: dict[str, Any] | None = None
    freshness: dict[str, str] | None = None
    hypotheses: list[dict[str, Any]] | None = None
    latest_run: dict[str, Any] | None = None
    error: str | None = None


class RcaPage(_Open):
    hosts: list[RcaHost]
    count: int


class HostWindow(RcaHost):
    series: dict[str, list[tuple[float, float]]]


class RunsPage(_Open):
    runs: list[dict[str, Any]]
    count: int
    next_cursor: str | None


class RunDetail(_Open):
    run: dict[str, Any]
    postmortem: dict[str, Any] | None = None
    attachments: list[dict[str, Any]]
    chain: list[dict[str, Any]]
    manifest: dict[str, Any] | None
    problems: list[str]
    replay: dict[str, Any] | None
    actions: list[dict[str, Any]]


class Decision(_Open):
    run_id: str
    plan_hash: str
    decision: Literal["approved", "rejected"]
    actor: str
    reason: str
    steps: list[int] | None
    at: float
    expires_at: float | None


class RollbackAnswer(_Open):
    run_id: str
    rollbacks: list[dict[str, Any]]


class AuditPage(_Open):
    entries: list[dict[str, Any]]
    count: int
    next_cursor: str | None


class ReplayAnswer(_Open):
    run_id: str
    replay_of: dict[str, str]
    changed: list[str]
    chain: list[dict[str, Any]]
    manifest: dict[str, Any] | None
    problems: list[str]


def encode_cursor(row: Mapping[str, Any]) -> str:
    raw = json.dumps([row["created_at"], row["run_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = float(created)
    except (ValueError, TypeError, binascii.Error, RecursionError) as exc:
        raise Invalid("cursor", "cursor is not one this API gave out") from exc
    if not math.isfinite(at) or not isinstance(run_id, str):
        raise Invalid("cursor", "cursor is not one this API gave out")
    return at, run_id


def run_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A run row for the API, with its times to detect and to resolve (from the fault's start)."""
    detect, resolve = fault_times(row)
    return dict(row) | {
        "culprit": json.loads(row["culprit"]),
        "time_to_detect_s": detect,
        "time_to_resolve_s": resolve,
        # Whether it pages on its own: not a symptom of another run, not silenced, not a
        # member of a fleet incident (which pages for it).
        "pages": row.get("state") != "explained"
        and not row.get("silenced_by")
        and not row.get("fleet_run_id"),
    }


def chain_body(chain: list[Artifact]) -> dict[str, Any]:
    return {
        "chain": [msgspec.to_builtins(a) for a in chain],
        "manifest": artifacts.manifest(chain) if chain else None,
        "problems": artifacts.verify_chain(chain) if chain else [],
    }


def _conclusion(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload without the wall-clock times of its timeline and the run's state when it was
    written (``at_report``, which moves on while the fault lasts): what a replay is compared on."""
    if "timeline" not in payload:
        return payload
    out = {k: v for k, v in payload.items() if k != "at_report"}
    return out | {"timeline": [{k: v for k, v in t.items() if k != "at"} for t in payload["timeline"]]}


def _run_or_404(wf: WorkflowEngine, run_id: str) -> dict[str, Any]:
    run = wf.load_run(run_id)
    if run is None:
        raise UnknownRun(run_id)
    return run


@router.get("/rca", response_model=RcaPage, responses=errors(404))
def rca(
    rt: Rt,
    _: Reader,
    host: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    """The current ranked hypotheses per host, from its hot-state window (the newest hosts first)."""
    wf = rt.workflow
    hosts = [host] if host is not None else list(reversed(rt.hot.host_ids()))[:limit]
    out = []
    for host_id in hosts:
        try:
            ev = wf.evidence_for(host_id)
            entry = _rca_entry(wf, host_id, ev) if ev is not None else None
        except Exception as exc:  # one host's window must never fail the answer for every host
            wf.record_failure(host_id, exc)
            log.exception("RCA of host %s failed", host_id)
            entry = {"host_id": host_id, "error": f"{type(exc).__name__}: {exc}"[:500]}
        if entry is None:
            if host is not None:
                raise HTTPException(404, f"no telemetry in hot state for host {host_id!r}")
            continue
        out.append(entry)
    return {"hosts": out, "count": len(out)}


def _rca_entry(wf: WorkflowEngine, host_id: str, ev: Evidence) -> dict[str, Any]:
    rules = wf.opts.rules.for_host(host_id, ev.labels)
    latest = wf.list_runs(host_id=host_id, limit=1)
    failure = wf.failure_of(host_id)
    failing = failure is not None and (failure["last_ok_at"] or 0) < failure["last_failed_at"]
    return {
        "host_id": host_id,
        "window": {"start": ev.start, "end": ev.end, "samples": ev.samples},
        "freshness": ev.freshness,
        "hypotheses": [h.to_dict() for h in rank(ev, detect(ev, rules), rules)],
        "latest_run": (
            {k: latest[0].get(k) for k in ("run_id", "status", "family", "created_at", "state", "flaps")}
            if latest
            else None
        ),
        # The host's latest evaluation failed (its window holds data evidence cannot read).
        "error": failure["last_error"] if failing and failure is not None else None,
    }


MAX_WINDOW_SIGNALS = 12
LIVE_DEFAULT = ("cpu_busy_pct", "mem_available_pct", "psi_cpu_some", "psi_memory_some", "psi_io_some")


@router.get(
    "/hosts/{host_id}/window",
    response_model=HostWindow,
    responses=errors(404, 500),
)
def host_window(
    rt: Rt,
    _: Reader,
    host_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")],
    signal: Annotated[
        list[Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:@/-]+$")]] | None,
        Query(max_length=MAX_WINDOW_SIGNALS, description="these series; default: what fires, and key ones"),
    ] = None,
    points: Annotated[int, Query(ge=1, le=900, description="the newest points of each series")] = 300,
) -> dict[str, Any]:
    """A host's hot-state window now, for a live look (``wb.live``): the current ranked
    hypotheses and the series asked for (at most 12, the newest ``points`` of each); without
    ``signal``, the signals of what fires and a few key ones."""
    wf = rt.workflow
    try:
        ev = wf.evidence_for(host_id)
        entry = _rca_entry(wf, host_id, ev) if ev is not None else None
    except Exception as exc:  # said here; a reader's look does not mark the host failing
        log.exception("window of host %s failed", host_id)
        raise HTTPException(500, f"window of host {host_id!r}: {type(exc).__name__}: {exc}"[:500]) from exc
    if ev is None or entry is None:
        raise HTTPException(404, f"no telemetry in hot state for host {host_id!r}")
    names = list(signal or [])
    if not names:
        fired = [s for h in entry["hypotheses"] for s in h.get("supporting") or [] if isinstance(s, str)]
        names = list(dict.fromkeys([*fired, *LIVE_DEFAULT]))
    have = set(ev.signal_names())
    named = [n for n in dict.fromkeys(names) if n in have][:MAX_WINDOW_SIGNALS]
    entry["series"] = {n: ev.tail(n, points) for n in named}
    return entry


@router.get("/workflow/runs", response_model=RunsPage, responses=errors(400))
def list_runs(
    rt: Rt,
    _: Reader,
    status: RunStatus | None = None,
    host: Annotated[str | None, Query(max_length=128)] = None,
    scope: Literal["host", "fleet"] | None = None,
    fleet: Annotated[str | None, Query(max_length=64, description="members of this fleet incident")] = None,
    since: Annotated[float | None, Query(description="created at or after (Unix seconds)", **TIME)] = None,
    until: Annotated[float | None, Query(description="created before (Unix seconds)", **TIME)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Runs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    after = decode_cursor(cursor) if cursor else None
    rows = rt.workflow.list_runs(
        status=status,
        host_id=host,
        scope=scope,
        fleet_run_id=fleet,
        since=since,
        until=until,
        after=after,
        limit=limit + 1,
    )
    page = rows[:limit]
    more = len(rows) > limit
    return {
        "runs": [run_summary(r) for r in page],
        "count": len(page),
        "next_cursor": encode_cursor(page[-1]) if more else None,
    }


@router.get("/workflow/runs/{run_id}", response_model=RunDetail, responses=errors(404, 500))
def get_run(rt: Rt, _: Reader, run_id: str) -> dict[str, Any]:
    """The run, its attachments, its chain with the manifest, and its latest replay if any."""
    wf = rt.workflow
    run = _run_or_404(wf, run_id)
    replay = wf.load_chain(run_id, replay=True)
    body = chain_body(wf.load_chain(run_id))
    body["problems"] = body["problems"] + wf.integrity_problems(run_id)
    with wf.runs.read() as tx:
        row = tx.postmortem(run_id)
    postmortem: dict[str, Any] | None = None if row is None else dict(row)
    if postmortem is not None and postmortem["status"] == "written":
        postmortem["url"] = f"/api/v1/agent/workflow/runs/{run_id}/postmortem"
        if postmortem["path"] and Path(postmortem["path"]).with_suffix(".pdf").is_file():
            postmortem["pdf_url"] = postmortem["url"] + "?format=pdf"
    return {
        "run": run_summary(run),
        "postmortem": postmortem,
        "attachments": wf.attachments(run_id),
        **body,
        "replay": chain_body(replay) if replay else None,
        "actions": rt.execution.intents(run_id),
    }


# A report holds what collectors sent (cgroup paths, process names, labels): escaped when
# written, and served so that even a page that slipped something through runs nothing.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
}

# Its refusals are JSON like every other route's, though its answer is HTML.
JSON_ERRORS = {
    code: entry | {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for code, entry in errors(401, 403, 404, 422).items()
}


@router.get(
    "/workflow/runs/{run_id}/postmortem",
    response_class=HTMLResponse,
    responses=JSON_ERRORS
    | {
        200: {
            "content": {
                "text/html": {"schema": {"type": "string"}},
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            }
        }
    },
)
def get_postmortem(
    rt: Rt,
    _: Reader,
    run_id: str,
    format: Annotated[
        Literal["html", "pdf"], Query(description="pdf where workflow.postmortems.pdf printed one")
    ] = "html",
) -> Response:
    """The run's postmortem (HTML, or PDF when printed), made when it ended; 404 until one is written."""
    _run_or_404(rt.workflow, run_id)
    with rt.workflow.runs.read() as tx:
        row = tx.postmortem(run_id)
    if row is None or row["status"] != "written" or not row["path"]:
        why = "not asked for" if row is None else row["status"]
        raise HTTPException(404, f"no postmortem of {run_id} ({why})")
    path = Path(row["path"]).resolve()
    # Only ever a file the worker wrote, under its own directory.
    if not path.is_relative_to(rt.postmortems.dir) or not path.is_file():
        raise HTTPException(404, f"no postmortem of {run_id} (its file is gone)")
    if format == "pdf":
        pdf = path.with_suffix(".pdf")
        if not pdf.is_file():
            raise HTTPException(404, f"no PDF of {run_id}'s postmortem (workflow.postmortems.pdf is off?)")
        return Response(
            pdf.read_bytes(),
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{run_id}-postmortem.pdf"', **REPORT_HEADERS},
        )
    return HTMLResponse(path.read_text(errors="replace"), headers=REPORT_HEADERS)


PLAN_HASH = r"^[0-9a-f]{64}$"


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clock: float | None = Field(
        default=None,
        ge=0,
        le=1e11,
        allow_inf_nan=False,
        description="a fixed clock (Unix seconds): the same inputs then give the same sha256s",
    )


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan_hash: str = Field(pattern=PLAN_HASH, description="the execution_plan's plan_hash")
    steps: list[Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        default=None, max_length=64, description="approve only these steps; all that need approval if absent"
    )
    reason: str = Field(default="", max_length=2000)


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)
    plan_hash: str | None = Field(default=None, pattern=PLAN_HASH)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


@router.post(
    "/workflow/runs/{run_id}/approve",
    response_model=Decision,
    responses=DECIDE_ERRORS,
)
def approve(rt: Rt, who: Writer, run_id: str, body: ApproveBody) -> dict[str, Any]:
    """Approve the run's plan: bound to its hash, valid for execution.approval_ttl_s. The run
    resumes at the executor. A plan that changed since it was read needs a new approval."""
    leader_only(rt, run_id)
    return rt.workflow.decisions.approve(
        run_id, body.plan_hash, steps=body.steps, actor=who.name, reason=body.reason
    )


@router.post(
    "/workflow/runs/{run_id}/reject",
    response_model=Decision,
    responses=DECIDE_ERRORS,
)
def reject(rt: Rt, who: Writer, run_id: str, body: RejectBody) -> dict[str, Any]:
    """Reject the run's plan with a reason: nothing in it runs; the run completes, saying so."""
    leader_only(rt, run_id)
    return rt.workflow.decisions.reject(run_id, body.plan_hash, actor=who.name, reason=body.reason)


@router.post(
    "/workflow/runs/{run_id}/rollback",
    response_model=RollbackAnswer,
    responses=DECIDE_ERRORS,
)
def rollback(rt: Rt, who: Writer, run_id: str, body: RollbackBody) -> dict[str, Any]:
    """Undo every applied step of the run that has rollback data (each once), recorded in the audit log."""
    leader_only(rt, run_id)
    done = rt.workflow.decisions.rollback(run_id, actor=who.name, reason=body.reason)
    return {"run_id": run_id, "rollbacks": done}


@router.get("/workflow/audit", response_model=AuditPage, responses=errors(400))
def get_audit(
    rt: Rt,
    _: Reader,
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    kind: Annotated[AuditKind | None, Query()] = None,
    since: Annotated[float | None, Query(description="at or after (Unix seconds)", **TIME)] = None,
    until: Annotated[float | None, Query(description="before (Unix seconds)", **TIME)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=19, pattern=r"^[0-9]{1,19}$")] = None,
) -> dict[str, Any]:
    """The audit log, oldest first (the order things happened); ``next_cursor`` pages on."""
    rows = rt.workflow.runs.audit_entries(
        run_id=run_id,
        actor=actor,
        kind=kind,
        since=since,
        until=until,
        after_id=_audit_cursor(cursor),
        limit=limit + 1,
    )
    page = rows[:limit]
    return {
        "entries": page,
        "count": len(page),
        "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None,
    }


def _audit_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    value = int(cursor)
    if value > MAX_ID:  # a row id is a signed 64-bit integer in both stores
        raise Invalid("cursor", f"cursor {cursor} is past the largest row id ({MAX_ID})")
    return value


@router.get(
    "/workflow/evidence/{run_id}",
    response_class=Response,
    responses=EVIDENCE_OK | errors(404, 500),
)
def get_evidence(rt: Rt, _: Reader, run_id: str) -> Response:
    """The evidence package: the chain, its manifest and the window its refs point at
    (before a run completes, the window alone), and `after`, the window the verifier
    compared, when the run changed something."""
    wf = rt.workflow
    _run_or_404(wf, run_id)
    try:
        return Response(wf.reader.package(run_id), media_type="application/json")
    except FileNotFoundError as exc:
        raise HTTPException(404, f"run {run_id!r} has no evidence package") from exc


@router.post(
    "/workflow/runs/{run_id}/replay", response_model=ReplayAnswer, responses=errors(404, 500) | BODY_ERRORS
)
def replay(
    rt: Rt,
    _: Writer,
    run_id: str,
    body: ReplayBody | None = None,
) -> dict[str, Any]:
    """Re-run every stage from the stored observation and evidence with the current code."""
    clock = body.clock if body is not None else None
    wf = rt.workflow
    original = wf.load_chain(run_id)
    chain = wf.replay(run_id, clock=(lambda: clock) if clock is not None else None)
    before = {a.kind: _conclusion(a.payload) for a in original}
    return {
        "run_id": run_id,
        "replay_of": {a.kind: a.artifact_id for a in original},
        # Stages whose conclusion the current code would draw differently.
        "changed": [a.kind for a in chain if a.kind in before and before[a.kind] != _conclusion(a.payload)],
        **chain_body(chain),
    }


# --- silences and maintenance windows ------------------------------------------------------------


class SilenceOut(_Open):
    silence_id: str
    kind: str
    hosts: list[str]
    families: list[str]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    created_at: float
    expired_at: float | None
    expired_by: str | None


class SilencesPage(_Open):
    silences: list[SilenceOut]
    count: int


class ExpireBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


@router.post(
    "/silences", response_model=SilenceOut, status_code=201, responses=errors(400, 409) | BODY_ERRORS
)
def create_silence(rt: Rt, who: Writer, body: SilenceSpec) -> dict[str, Any]:
    """Silence runs of some hosts or families (``kind: silence``), or every family on some
    hosts (``kind: maintenance``), until ``ends_at``: runs still open and are analysed, and
    carry ``silenced_by``; the live runs it covers are silenced now. Audited."""
    leader_only(rt)
    return public(rt.workflow.silences.create(body, who.name))


@router.get("/silences", response_model=SilencesPage, responses=errors(400))
def list_silences(
    rt: Rt,
    _: Reader,
    state: Annotated[Literal["active", "all"], Query(description="active: in force or to come")] = "active",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Silences and maintenance windows, newest first."""
    rows = rt.workflow.silences.list(active_only=state == "active", limit=limit)
    return {"silences": [public(r) for r in rows], "count": len(rows)}


@router.post(
    "/silences/{silence_id}/expire",
    response_model=SilenceOut,
    responses=errors(404, 409) | BODY_ERRORS,
)
def expire_silence(
    rt: Rt, who: Writer, silence_id: Annotated[str, PathParam(max_length=64)], body: ExpireBody
) -> dict[str, Any]:
    """End a silence now, with a reason (audited). Runs it silenced keep saying so."""
    leader_only(rt)
    return public(rt.workflow.silences.expire(silence_id, who.name, body.reason))
