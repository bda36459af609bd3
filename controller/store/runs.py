"""The run store: every workflow table, and the only SQL the workflow runs.

Runs, their artifacts' metadata, attachments, incident memory, action intents and
results, approvals, rollbacks and the audit log. The workflow, the execution service,
the API and the workbench read and write through here, never with SQL of their own.

A unit of work is one transaction: ``with store.begin() as tx:`` groups what must
commit together (an artifact row, its audit entries and the run's new stage), and
``with store.read() as tx:`` reads without writing. A handful of single reads are
shortcuts on the store itself. The SQL is plain text both SQLite (3.24+) and
PostgreSQL take, built once: the workflow runs it per stage. A database failure
leaves as StoreError (controller/errors.py), its cause chained.

Rows come out as the TypedDicts below, JSON columns decoded except the run's
``culprit``, which stays the text it was stored as (the stages copy it as it is).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypedDict, get_args

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from controller.errors import StoreError

AuditKind = Literal[
    "gate_decision",
    "approval",
    "rejection",
    "approval_expired",
    "execution_intent",
    "execution_result",
    "execution_settled",
    "idempotent_reuse",
    "rollback",
    "verification",
    "integrity_failure",
    "stage_failure",
    "silence_created",
    "silence_expired",
    "postmortem_written",
    "postmortem_failed",
]
AUDIT_KINDS: tuple[str, ...] = get_args(AuditKind)
RunStatus = Literal["running", "awaiting_approval", "verifying", "completed", "failed"]


class RunRow(TypedDict):
    run_id: str
    workflow_id: str
    incident_id: str
    correlation_id: str
    host_id: str
    fingerprint: str
    family: str
    culprit: str  # JSON text, as stored
    confidence: float
    status: str
    stage: int
    attachments: int
    created_at: float
    updated_at: float
    closed_at: float | None
    code_version: str
    evidence_sha256: str | None
    state: str  # firing, recovering, resolved, explained
    fault_started_at: float | None
    last_seen_at: float | None
    resolved_at: float | None
    flaps: int
    parent_run_id: str | None
    silenced_by: str | None
    scope: str  # host or fleet
    fleet_run_id: str | None


class PostmortemRow(TypedDict):
    run_id: str
    status: str  # queued, rendering, written, failed
    reason: str
    requested_at: float
    started_at: float | None
    finished_at: float | None
    path: str | None
    error: str | None
    attempts: int


class SilenceRow(TypedDict):
    silence_id: str
    kind: str
    hosts: str  # JSON list of globs
    families: str  # JSON list
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    created_at: float
    expired_at: float | None
    expired_by: str | None


def fault_times(row: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(time to detect, time to resolve) of a run, in seconds from its fault's start (None
    where not known yet)."""
    started, resolved = row.get("fault_started_at"), row.get("resolved_at")
    if started is None:
        return None, None
    return round(row["created_at"] - started, 3), None if resolved is None else round(resolved - started, 3)


RunState = Literal["firing", "recovering", "resolved", "explained"]
LIVE_STATES = ("firing", "recovering")


class ArtifactRow(TypedDict):
    artifact_id: str
    run_id: str
    stage_index: int
    kind: str
    status: str
    sha256: str
    path: str
    replay: bool
    created_at: float


class ArtifactRef(TypedDict):
    path: str
    sha256: str
    kind: str


class MemoryRow(TypedDict):
    fingerprint: str
    family: str
    host_id: str
    culprit: str
    first_seen: float
    last_seen: float
    occurrences: int
    last_run_id: str
    resolution: dict[str, Any]


class IntentRow(TypedDict):
    idempotency_key: str
    run_id: str
    step: int
    action: str
    params: Any  # JSON, decoded
    before: Any
    intent_at: float
    outcome: str | None
    result: dict[str, Any] | None
    result_at: float | None
    rolled_back_at: float | None
    rollback_result: dict[str, Any] | None


class NewIntent(TypedDict):
    idempotency_key: str
    run_id: str
    step: int
    action: str
    params: dict[str, Any]
    before: dict[str, Any]
    intent_at: float


class DecisionRow(TypedDict):
    id: int
    run_id: str
    plan_hash: str
    decision: str
    actor: str
    reason: str
    steps: list[int] | None
    at: float
    expires_at: float | None


class AuditRow(TypedDict):
    id: int
    at: float
    actor: str
    kind: str
    run_id: str | None
    plan_hash: str | None
    step: int | None
    detail: dict[str, Any]


_RUN_COLUMNS = tuple(RunRow.__annotations__)
_ARTIFACT_COLUMNS = tuple(ArtifactRow.__annotations__)
INSERT_RUN = text(
    f"INSERT INTO workflow_runs ({', '.join(_RUN_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _RUN_COLUMNS)})"
)
SELECT_RUN = text("SELECT * FROM workflow_runs WHERE run_id = :r")
_SILENCE_COLUMNS = tuple(SilenceRow.__annotations__)
INSERT_SILENCE = text(
    f"INSERT INTO silences ({', '.join(_SILENCE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _SILENCE_COLUMNS)})"
)
# An incident stays open while it keeps being seen: a run of its shape whose fault was seen
# within the attach window takes the sighting, whether its stages are done or not, and
# whether it had resolved (then it re-opens) or not.
OPEN_RUN_OF = text(
    "SELECT run_id FROM workflow_runs WHERE fingerprint = :fp AND status != 'failed' "
    "AND state != 'explained' AND last_seen_at >= :since ORDER BY created_at DESC LIMIT 1"
)
# A live run that can still take a sighting (the engine's cache may hold one since failed or
# explained by another path).
LIVE_RUN = text(
    "SELECT 1 FROM workflow_runs WHERE run_id = :r AND status != 'failed' "
    "AND state IN ('firing', 'recovering')"
)
ATTACH = text("INSERT INTO workflow_attachments (run_id, at, detail) VALUES (:r, :at, :d)")
BUMP_ATTACHMENTS = text(
    "UPDATE workflow_runs SET attachments = attachments + 1, updated_at = :at, last_seen_at = :at "
    "WHERE run_id = :r"
)
LIVE_RUNS_OF = text(
    "SELECT run_id, fingerprint, family, state, last_seen_at FROM workflow_runs "
    "WHERE host_id = :h AND state IN ('firing', 'recovering') AND status != 'failed' ORDER BY created_at"
)
LIVE_SEEN_BEFORE = text(
    "SELECT run_id, host_id, last_seen_at FROM workflow_runs WHERE state IN ('firing', 'recovering') "
    "AND last_seen_at < :before ORDER BY last_seen_at LIMIT :n"
)
# Only a live run moves: a stale cache never overwrites explained or resolved.
SET_STATE = text(
    "UPDATE workflow_runs SET state = :s, last_seen_at = :seen, resolved_at = :resolved, "
    "updated_at = :at WHERE run_id = :r AND state IN ('firing', 'recovering')"
)
REOPEN = text(
    "UPDATE workflow_runs SET state = 'firing', resolved_at = NULL, flaps = flaps + 1, "
    "last_seen_at = :at, updated_at = :at WHERE run_id = :r AND state = 'resolved'"
)
EXPLAIN_RUN = text(
    "UPDATE workflow_runs SET state = 'explained', parent_run_id = :p, updated_at = :at "
    "WHERE run_id = :r AND state IN ('firing', 'recovering')"
)
JOIN_FLEET = text(
    "UPDATE workflow_runs SET fleet_run_id = :f, updated_at = :at WHERE run_id = :r "
    "AND scope = 'host' AND (fleet_run_id IS NULL OR fleet_run_id != :f)"
)
FLEET_MEMBERS = text(
    "SELECT run_id, host_id, family, state, status, confidence, fault_started_at, resolved_at "
    "FROM workflow_runs WHERE fleet_run_id = :f ORDER BY host_id LIMIT :n"
)
# The live fleet incidents these host runs belong to (a fault whose group changed shape as
# it went on stays with the incident it was in).
LIVE_FLEETS_OF = text(
    "SELECT m.fleet_run_id FROM workflow_runs m JOIN workflow_runs f ON f.run_id = m.fleet_run_id "
    "WHERE m.run_id IN :ids AND f.state IN ('firing', 'recovering') AND f.status != 'failed'"
).bindparams(bindparam("ids", expanding=True))
LIVE_HOST_RUNS = text(
    "SELECT run_id, host_id, family, confidence, state, fleet_run_id, silenced_by FROM workflow_runs "
    "WHERE scope = 'host' AND state IN ('firing', 'recovering') AND status != 'failed' "
    "ORDER BY last_seen_at DESC LIMIT :n"
)
LIVE_PAGING = text(
    "SELECT * FROM workflow_runs WHERE state IN ('firing', 'recovering') AND status != 'failed' "
    "AND silenced_by IS NULL AND fleet_run_id IS NULL ORDER BY last_seen_at DESC LIMIT :n"
)
RUN_COUNTS = text(
    "SELECT status, family, state, scope, COUNT(*) FROM workflow_runs GROUP BY status, family, state, scope"
)
AWAITING_RUNS = text(
    "SELECT * FROM workflow_runs WHERE status = 'awaiting_approval' ORDER BY created_at DESC LIMIT :n"
)
# A postmortem asked for once per run: a second ask (resolved after completed) is a no-op.
REQUEST_POSTMORTEM = text(
    "INSERT INTO postmortems (run_id, status, reason, requested_at, attempts) "
    "VALUES (:r, 'queued', :why, :at, 0) ON CONFLICT (run_id) DO NOTHING"
)
START_POSTMORTEM = text(
    "UPDATE postmortems SET status = 'rendering', started_at = :at, attempts = attempts + 1 "
    "WHERE run_id = :r AND status IN ('queued', 'rendering')"
)
FINISH_POSTMORTEM = text(
    "UPDATE postmortems SET status = :s, finished_at = :at, path = :p, error = :e WHERE run_id = :r"
)
SELECT_POSTMORTEM = text("SELECT * FROM postmortems WHERE run_id = :r")
UNFINISHED_POSTMORTEMS = text(
    "SELECT run_id FROM postmortems WHERE status IN ('queued', 'rendering') ORDER BY requested_at LIMIT :n"
)
ATTACHMENTS_OF = text(
    "SELECT at, detail FROM workflow_attachments WHERE run_id = :r ORDER BY at DESC LIMIT :n"
)
ADVANCE_RUN = text(
    "UPDATE workflow_runs SET stage = :stage, status = :status, updated_at = :at, "
    "closed_at = :closed WHERE run_id = :run"
)
SET_STATUS = text("UPDATE workflow_runs SET status = :s, updated_at = :at WHERE run_id = :run")
RESUME_AWAITING = text(
    "UPDATE workflow_runs SET status = 'running', updated_at = :at "
    "WHERE run_id = :run AND status = 'awaiting_approval'"
)
FAIL_RUN = text(
    "UPDATE workflow_runs SET status = 'failed', updated_at = :at, closed_at = :at WHERE run_id = :run"
)
RUNNING = text(
    "SELECT run_id, host_id FROM workflow_runs WHERE status IN ('running', 'verifying') ORDER BY created_at"
)
OPEN_RUNS = text("SELECT COUNT(*) FROM workflow_runs WHERE status != 'completed' AND status != 'failed'")
INSERT_ARTIFACT = text(
    f"INSERT INTO workflow_artifacts ({', '.join(_ARTIFACT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ARTIFACT_COLUMNS)})"
)
CHAIN_REFS = text(
    "SELECT path, sha256, kind FROM workflow_artifacts WHERE run_id = :r AND replay = :rp "
    "ORDER BY stage_index"
)
FORGET_REPLAY = text("DELETE FROM workflow_artifacts WHERE run_id = :r AND replay = :rp")
SELECT_MEMORY = text("SELECT * FROM incident_memory WHERE fingerprint = :fp")
REMEMBER = text(
    "INSERT INTO incident_memory (fingerprint, family, host_id, culprit, first_seen, last_seen, "
    "occurrences, last_run_id, resolution) VALUES (:fp, :family, :host, :culprit, :now, :now, "
    "1, :run, :res) ON CONFLICT (fingerprint) DO UPDATE SET last_seen = excluded.last_seen, "
    "occurrences = incident_memory.occurrences + 1, last_run_id = excluded.last_run_id, "
    "resolution = excluded.resolution"
)
SELECT_INTENT = text("SELECT * FROM action_intents WHERE idempotency_key = :k")
# Claiming a key: a plain insert (a second controller's insert of the same key fails), or
# taking over an expired or unusable intent only if it is still the one that was read.
INSERT_INTENT = text(
    "INSERT INTO action_intents (idempotency_key, run_id, step, action, params, before, intent_at) "
    "VALUES (:k, :run, :step, :action, :params, :before, :at) ON CONFLICT (idempotency_key) DO NOTHING"
)
RECLAIM_INTENT = text(
    "UPDATE action_intents SET run_id = :run, step = :step, params = :params, before = :before, "
    "intent_at = :at, outcome = NULL, result = NULL, result_at = NULL, rolled_back_at = NULL, "
    "rollback_result = NULL WHERE idempotency_key = :k AND intent_at = :old"
)
SET_RESULT = text(
    "UPDATE action_intents SET outcome = :o, result = :r, result_at = :at WHERE idempotency_key = :k"
)
CLAIM_ROLLBACK = text(
    "UPDATE action_intents SET rolled_back_at = :at WHERE idempotency_key = :k AND rolled_back_at IS NULL"
)
SET_ROLLBACK = text("UPDATE action_intents SET rollback_result = :r WHERE idempotency_key = :k")
RELEASE_ROLLBACK = text(
    "UPDATE action_intents SET rolled_back_at = NULL, rollback_result = :r WHERE idempotency_key = :k"
)
INTENTS_OF = text("SELECT * FROM action_intents WHERE run_id = :run ORDER BY step")
STANDING = text(
    "SELECT i.* FROM action_intents i JOIN workflow_runs r ON r.run_id = i.run_id "
    "WHERE r.host_id = :h AND i.outcome IN ('applied', 'settled_applied') "
    "AND (i.rolled_back_at IS NULL OR i.rolled_back_at >= :undone_since) "
    "AND i.result_at >= :since AND i.action IN :actions ORDER BY i.result_at DESC LIMIT 64"
).bindparams(bindparam("actions", expanding=True))
LATEST_DECISION = text(
    "SELECT * FROM approvals WHERE run_id = :run AND plan_hash = :plan ORDER BY id DESC LIMIT 1"
)
INSERT_DECISION = text(
    "INSERT INTO approvals (run_id, plan_hash, decision, actor, reason, steps, at, expires_at) "
    "VALUES (:run, :plan, :decision, :actor, :reason, :steps, :at, :exp)"
)
INSERT_AUDIT = text(
    "INSERT INTO audit_log (at, actor, kind, run_id, plan_hash, step, detail) "
    "VALUES (:at, :actor, :kind, :run, :plan, :step, :detail)"
)
_INTENT_JSON = ("params", "before", "result", "rollback_result")


Filter = tuple[str, str, str, Any]  # (column, operator, parameter, value); None: no filter
Order = tuple[str, Literal["ASC", "DESC"]]


def where(conditions: Iterable[Filter]) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions and their parameters, skipping those whose value is None: the
    optional filters of the listing queries."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, op, key, value in conditions:
        if value is not None:
            clauses.append(f"{column} {op} :{key}")
            params[key] = value
    return clauses, params


def page_query(
    table: str, filters: Iterable[Filter], order: Sequence[Order], after: Sequence[Any] | None, limit: int
) -> tuple[Any, dict[str, Any]]:
    """One listing query: filters, then a keyset cursor over ``order`` (the values of the
    previous page's last row), newest or oldest first. Rows strictly past the cursor in
    the listing's order, so a row inserted between pages is neither repeated nor skipped
    ahead of the cursor."""
    clauses, params = where(filters)
    if after is not None:
        # (c1, c2, ...) past (a1, a2, ...) lexicographically, spelled out for both stores.
        ors = []
        for i, (column, direction) in enumerate(order):
            op = "<" if direction == "DESC" else ">"
            eq = [f"{c} = :k{j}" for j, (c, _) in enumerate(order[:i])]
            ors.append("(" + " AND ".join([*eq, f"{column} {op} :k{i}"]) + ")")
        clauses.append("(" + " OR ".join(ors) + ")")
        params |= {f"k{i}": v for i, v in enumerate(after)}
    params["n"] = limit
    sql = f"SELECT * FROM {table}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY " + ", ".join(f"{c} {d}" for c, d in order) + " LIMIT :n"
    return text(sql), params


RUN_ORDER: tuple[Order, ...] = (("created_at", "DESC"), ("run_id", "DESC"))
AUDIT_ORDER: tuple[Order, ...] = (("id", "ASC"),)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _params(rows: Sequence[Any]) -> dict[str, Any] | list[dict[str, Any]]:
    """One row as plain parameters (SQLAlchemy's executemany path costs more per call)."""
    return dict(rows[0]) if len(rows) == 1 else [dict(r) for r in rows]


def _intent(row: Any) -> IntentRow:
    d = dict(row._mapping)
    for k in _INTENT_JSON:
        d[k] = json.loads(d[k]) if d[k] else None
    return d  # type: ignore[return-value]


class RunTx:
    """The store's statements on one connection (one transaction, or a read)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- runs ------------------------------------------------------------------------------------

    def insert_runs(self, rows: Sequence[RunRow]) -> None:
        self.conn.execute(INSERT_RUN, _params(rows))

    def run(self, run_id: str) -> RunRow | None:
        row = self.conn.execute(SELECT_RUN, {"r": run_id}).first()
        return dict(row._mapping) if row else None  # type: ignore[return-value]

    def open_run_of(self, fingerprint: str, *, since: float) -> str | None:
        """The newest run of this shape (not failed, not a symptom of another's) whose fault
        was seen at or after ``since``."""
        row = self.conn.execute(OPEN_RUN_OF, {"fp": fingerprint, "since": since}).first()
        return str(row[0]) if row is not None else None

    def attach(self, run_id: str, *, at: float, detail: dict[str, Any]) -> None:
        self.conn.execute(ATTACH, {"r": run_id, "at": at, "d": json.dumps(detail)})
        self.conn.execute(BUMP_ATTACHMENTS, {"r": run_id, "at": at})

    def live_runs_of(self, host_id: str) -> list[tuple[str, str, str, str, float | None]]:
        """(run_id, fingerprint, family, state, last_seen_at) of the host's firing and recovering runs."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self.conn.execute(LIVE_RUNS_OF, {"h": host_id})]

    def live_seen_before(self, before: float, *, limit: int) -> list[tuple[str, str, float | None]]:
        """(run_id, host_id, last_seen_at) of live runs not seen active since ``before``."""
        rows = self.conn.execute(LIVE_SEEN_BEFORE, {"before": before, "n": limit})
        return [(r[0], r[1], r[2]) for r in rows]

    def set_state(
        self, run_id: str, *, state: RunState, at: float, seen: float | None, resolved: float | None
    ) -> None:
        params = {"s": state, "seen": seen, "resolved": resolved, "at": at, "r": run_id}
        self.conn.execute(SET_STATE, params)

    def is_live(self, run_id: str) -> bool:
        return self.conn.execute(LIVE_RUN, {"r": run_id}).first() is not None

    def reopen(self, run_id: str, *, at: float) -> bool:
        """resolved -> firing, a flap counted; False when the run was not resolved."""
        return bool(self.conn.execute(REOPEN, {"at": at, "r": run_id}).rowcount == 1)

    def explain_run(self, run_id: str, *, parent: str, at: float) -> bool:
        """A live run becomes a symptom of ``parent``'s fault: it stops paging on its own."""
        return bool(self.conn.execute(EXPLAIN_RUN, {"p": parent, "at": at, "r": run_id}).rowcount == 1)

    def join_fleet(self, run_id: str, fleet_run_id: str, *, at: float) -> bool:
        """A host run becomes a member of a fleet incident; False when it already was."""
        params = {"f": fleet_run_id, "at": at, "r": run_id}
        return bool(self.conn.execute(JOIN_FLEET, params).rowcount == 1)

    def live_fleets_of(self, run_ids: Sequence[str]) -> list[str]:
        """The live fleet incidents of these runs, one entry per member (the commonest first)."""
        if not run_ids:
            return []
        got = [r[0] for r in self.conn.execute(LIVE_FLEETS_OF, {"ids": list(run_ids)})]
        return sorted(set(got), key=lambda f: (-got.count(f), f))

    def fleet_members(self, fleet_run_id: str, *, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(FLEET_MEMBERS, {"f": fleet_run_id, "n": limit}).all()
        return [dict(r._mapping) for r in rows]

    def live_host_runs(self, *, limit: int) -> list[dict[str, Any]]:
        """The live host runs, most recently seen first: what joint risk is made of."""
        return [dict(r._mapping) for r in self.conn.execute(LIVE_HOST_RUNS, {"n": limit})]

    def live_paging(self, *, limit: int) -> list[RunRow]:
        """Live runs that page on their own (explained ones are not live), most recent first."""
        return [dict(r._mapping) for r in self.conn.execute(LIVE_PAGING, {"n": limit})]  # type: ignore[misc]

    def run_counts(self) -> dict[tuple[str, str, str, str], int]:
        """Runs by (status, family, state, scope): bounded by those, whatever the history."""
        return {(r[0], r[1], r[2], r[3]): int(r[4]) for r in self.conn.execute(RUN_COUNTS)}

    def awaiting(self, *, limit: int) -> list[RunRow]:
        return [dict(r._mapping) for r in self.conn.execute(AWAITING_RUNS, {"n": limit})]  # type: ignore[misc]

    # --- postmortems ------------------------------------------------------------------------------

    def request_postmortem(self, run_id: str, *, why: str, at: float) -> bool:
        """Ask for a run's postmortem; False when it was asked for already."""
        return bool(self.conn.execute(REQUEST_POSTMORTEM, {"r": run_id, "why": why, "at": at}).rowcount == 1)

    def start_postmortem(self, run_id: str, *, at: float) -> bool:
        return bool(self.conn.execute(START_POSTMORTEM, {"r": run_id, "at": at}).rowcount == 1)

    def finish_postmortem(
        self, run_id: str, *, ok: bool, at: float, path: str | None, error: str | None
    ) -> None:
        params = {"s": "written" if ok else "failed", "at": at, "p": path, "e": error, "r": run_id}
        self.conn.execute(FINISH_POSTMORTEM, params)

    def postmortem(self, run_id: str) -> PostmortemRow | None:
        row = self.conn.execute(SELECT_POSTMORTEM, {"r": run_id}).first()
        return dict(row._mapping) if row else None  # type: ignore[return-value]

    def unfinished_postmortems(self, limit: int) -> list[str]:
        return [r[0] for r in self.conn.execute(UNFINISHED_POSTMORTEMS, {"n": limit})]

    def attachments(self, run_id: str, *, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(ATTACHMENTS_OF, {"r": run_id, "n": limit}).all()
        return [{"at": r[0], "detail": json.loads(r[1])} for r in rows]

    def advance_run(self, run_id: str, *, stage: int, status: str, at: float, closed: float | None) -> None:
        params = {"stage": stage, "status": status, "at": at, "closed": closed, "run": run_id}
        self.conn.execute(ADVANCE_RUN, params)

    def set_status(self, run_id: str, *, status: str, at: float) -> None:
        self.conn.execute(SET_STATUS, {"s": status, "at": at, "run": run_id})

    def resume_awaiting(self, run_id: str, *, at: float) -> bool:
        """awaiting_approval -> running; False when the run was not awaiting (of two
        concurrent decisions, only one moves it)."""
        return bool(self.conn.execute(RESUME_AWAITING, {"at": at, "run": run_id}).rowcount == 1)

    def fail_run(self, run_id: str, *, at: float) -> None:
        self.conn.execute(FAIL_RUN, {"at": at, "run": run_id})

    def running_ids(self, owns: Callable[[str], bool] | None = None) -> list[str]:
        """Runs a crash or stop left running; with ``owns``, only those of the hosts it owns."""
        return [r[0] for r in self.conn.execute(RUNNING) if owns is None or owns(r[1])]

    def open_count(self) -> int:
        return int(self.conn.execute(OPEN_RUNS).scalar_one())

    def list_runs(
        self,
        *,
        status: str | None = None,
        host_id: str | None = None,
        scope: str | None = None,
        fleet_run_id: str | None = None,
        not_state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[RunRow]:
        """Newest first; ``after`` is the (created_at, run_id) of the previous page's last row."""
        filters = [
            ("status", "=", "status", status),
            ("host_id", "=", "host", host_id),
            ("scope", "=", "scope", scope),
            ("fleet_run_id", "=", "fleet", fleet_run_id),
            ("state", "!=", "not_state", not_state),
            ("created_at", ">=", "since", since),
            ("created_at", "<", "until", until),
        ]
        sql, params = page_query("workflow_runs", filters, RUN_ORDER, after, limit)
        return [dict(r._mapping) for r in self.conn.execute(sql, params)]  # type: ignore[misc]

    # --- artifacts and memory --------------------------------------------------------------------

    def insert_artifacts(self, rows: Sequence[ArtifactRow]) -> None:
        self.conn.execute(INSERT_ARTIFACT, _params(rows))

    def chain_refs(self, run_id: str, *, replay: bool) -> list[ArtifactRef]:
        rows = self.conn.execute(CHAIN_REFS, {"r": run_id, "rp": replay}).all()
        return [{"path": p, "sha256": s, "kind": k} for p, s, k in rows]

    def forget_replay(self, run_id: str) -> None:
        self.conn.execute(FORGET_REPLAY, {"r": run_id, "rp": True})

    def memory(self, fingerprint: str) -> MemoryRow | None:
        row = self.conn.execute(SELECT_MEMORY, {"fp": fingerprint}).first()
        if row is None:
            return None
        mem = dict(row._mapping)
        mem["resolution"] = json.loads(mem["resolution"])
        return mem  # type: ignore[return-value]

    def remember(self, run: RunRow, *, resolution: dict[str, Any], at: float) -> None:
        """The run's resolution becomes what the next run of its shape consults."""
        self.conn.execute(
            REMEMBER,
            {
                "fp": run["fingerprint"],
                "family": run["family"],
                "host": run["host_id"],
                "culprit": run["culprit"],
                "now": at,
                "run": run["run_id"],
                "res": json.dumps(resolution, sort_keys=True),
            },
        )

    # --- approvals -------------------------------------------------------------------------------

    def latest_decision(self, run_id: str, plan_hash: str) -> DecisionRow | None:
        row = self.conn.execute(LATEST_DECISION, {"run": run_id, "plan": plan_hash}).first()
        if row is None:
            return None
        d = dict(row._mapping)
        d["steps"] = json.loads(d["steps"]) if d["steps"] else None
        return d  # type: ignore[return-value]

    def insert_decision(
        self,
        run_id: str,
        plan_hash: str,
        *,
        decision: str,
        actor: str,
        reason: str,
        steps: list[int] | None,
        at: float,
        expires_at: float | None,
    ) -> None:
        self.conn.execute(
            INSERT_DECISION,
            {
                "run": run_id,
                "plan": plan_hash,
                "decision": decision,
                "actor": actor,
                "reason": reason,
                "steps": json.dumps(sorted(steps)) if steps is not None else None,
                "at": at,
                "exp": expires_at,
            },
        )

    # --- intents, results, rollbacks -------------------------------------------------------------

    def intent(self, key: str) -> IntentRow | None:
        row = self.conn.execute(SELECT_INTENT, {"k": key}).first()
        return _intent(row) if row is not None else None

    def intents_of(self, run_id: str) -> list[IntentRow]:
        return [_intent(r) for r in self.conn.execute(INTENTS_OF, {"run": run_id})]

    def standing_changes(
        self, host_id: str, actions: list[str], *, since: float, undone_since: float | None = None
    ) -> list[IntentRow]:
        """The host's changes of these kinds applied since then and not rolled back (or rolled
        back no earlier than ``undone_since``), newest first."""
        if not actions:
            return []
        undone = undone_since if undone_since is not None else 1e18  # none: only those standing
        params = {"h": host_id, "since": since, "actions": actions, "undone_since": undone}
        rows = self.conn.execute(STANDING, params)
        return [_intent(r) for r in rows]

    def claim_intent(self, intent: NewIntent, *, replacing: float | None = None) -> bool:
        """Claim the key: a new row, or (``replacing`` the intent_at that was read) taking
        over that same row. False when another controller got there first."""
        params = {
            "k": intent["idempotency_key"],
            "run": intent["run_id"],
            "step": intent["step"],
            "action": intent["action"],
            "params": json.dumps(intent["params"], sort_keys=True),
            "before": json.dumps(intent["before"], default=str),
            "at": intent["intent_at"],
        }
        if replacing is None:
            return bool(self.conn.execute(INSERT_INTENT, params).rowcount == 1)
        return bool(self.conn.execute(RECLAIM_INTENT, params | {"old": replacing}).rowcount == 1)

    def set_result(self, key: str, result: dict[str, Any], *, at: float) -> None:
        params = {"o": result["outcome"], "r": json.dumps(result, default=str), "at": at, "k": key}
        self.conn.execute(SET_RESULT, params)

    def claim_rollback(self, key: str, *, at: float) -> bool:
        """Only one rollback of a key runs at a time (False: it is claimed already)."""
        return bool(self.conn.execute(CLAIM_ROLLBACK, {"at": at, "k": key}).rowcount == 1)

    def finish_rollback(self, key: str, result: dict[str, Any], *, done: bool) -> None:
        """Record the rollback's result; not ``done`` releases the claim so it can be retried."""
        encoded = json.dumps(result, default=str)
        self.conn.execute(SET_ROLLBACK if done else RELEASE_ROLLBACK, {"r": encoded, "k": key})

    # --- silences ------------------------------------------------------------------------------

    def insert_silence(self, row: SilenceRow) -> None:
        self.conn.execute(INSERT_SILENCE, dict(row))

    def silence(self, silence_id: str) -> SilenceRow | None:
        row = self.conn.execute(
            text("SELECT * FROM silences WHERE silence_id = :s"), {"s": silence_id}
        ).first()
        return dict(row._mapping) if row else None  # type: ignore[return-value]

    def expire_silence(self, silence_id: str, *, at: float, actor: str) -> None:
        self.conn.execute(
            text("UPDATE silences SET expired_at = :at, expired_by = :who WHERE silence_id = :s"),
            {"at": at, "who": actor, "s": silence_id},
        )

    def silences(self, *, active_at: float | None, limit: int) -> list[SilenceRow]:
        """Newest first; with ``active_at``, those in force or still to start then."""
        where = "WHERE expired_at IS NULL AND ends_at > :now " if active_at is not None else ""
        rows = self.conn.execute(
            text(f"SELECT * FROM silences {where}ORDER BY created_at DESC, silence_id LIMIT :n"),
            {"now": active_at, "n": limit},
        )
        return [dict(r._mapping) for r in rows]  # type: ignore[misc]

    def live_hosts(self, limit: int) -> list[str]:
        q = text(
            "SELECT DISTINCT host_id FROM workflow_runs WHERE state IN ('firing', 'recovering') "
            "AND status != 'failed' ORDER BY host_id LIMIT :n"
        )
        return [r[0] for r in self.conn.execute(q, {"n": limit})]

    def live_unsilenced(self) -> list[dict[str, Any]]:
        q = text(
            "SELECT run_id, host_id, family FROM workflow_runs "
            "WHERE state IN ('firing', 'recovering') AND status != 'failed' AND silenced_by IS NULL"
        )
        return [dict(r._mapping) for r in self.conn.execute(q)]

    def silence_runs(self, run_ids: Sequence[str], silence_id: str) -> None:
        if run_ids:
            self.conn.execute(
                text("UPDATE workflow_runs SET silenced_by = :s WHERE run_id = :r"),
                [{"s": silence_id, "r": r} for r in run_ids],
            )

    def count_active_silences(self, now: float) -> int:
        q = text("SELECT count(*) FROM silences WHERE expired_at IS NULL AND ends_at > :now")
        return int(self.conn.execute(q, {"now": now}).scalar_one())

    # --- the audit log ---------------------------------------------------------------------------

    def audit(
        self,
        *,
        at: float,
        actor: str,
        kind: str,
        run_id: str | None = None,
        plan_hash: str | None = None,
        step: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry, in this transaction with what it records."""
        if kind not in AUDIT_KINDS:
            raise ValueError(f"unknown audit kind {kind!r}")
        self.conn.execute(
            INSERT_AUDIT,
            {
                "at": at,
                "actor": actor[:128],
                "kind": kind,
                "run": run_id,
                "plan": plan_hash,
                "step": step,
                "detail": _dumps(detail or {}),
            },
        )

    def audit_entries(
        self,
        *,
        run_id: str | None = None,
        actor: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Oldest first (the order things happened); ``after_id`` pages on."""
        filters = [
            ("run_id", "=", "run", run_id),
            ("actor", "=", "actor", actor),
            ("kind", "=", "kind", kind),
            ("at", ">=", "since", since),
            ("at", "<", "until", until),
        ]
        after = (after_id,) if after_id is not None else None
        sql, params = page_query("audit_log", filters, AUDIT_ORDER, after, limit)
        rows = [dict(r._mapping) for r in self.conn.execute(sql, params)]
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows  # type: ignore[return-value]


class RunStore:
    """The workflow's tables on one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    @contextmanager
    def begin(self) -> Iterator[RunTx]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        try:
            with self.db.begin() as conn:
                yield RunTx(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"the run store failed: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[RunTx]:
        try:
            with self.db.connect() as conn:
                yield RunTx(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"the run store cannot answer: {exc}") from exc

    # Single reads, each on its own connection.

    def run(self, run_id: str) -> RunRow | None:
        with self.read() as tx:
            return tx.run(run_id)

    def list_runs(self, **filters: Any) -> list[RunRow]:
        with self.read() as tx:
            return tx.list_runs(**filters)

    def audit_entries(self, **filters: Any) -> list[AuditRow]:
        with self.read() as tx:
            return tx.audit_entries(**filters)

    def intents_of(self, run_id: str) -> list[IntentRow]:
        with self.read() as tx:
            return tx.intents_of(run_id)
