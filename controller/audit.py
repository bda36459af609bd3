"""The audit log: append-only, in the metadata store, one row per decision or side effect.

Entries are written in the same transaction as what they record (a gate decision
with its execution_plan, an approval with the run's status change), so the log and
the state never disagree after a crash. The database refuses UPDATE and DELETE.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Engine, text

from controller.store.repo import where

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
]
KINDS: tuple[str, ...] = get_args(AuditKind)
INSERT = text(
    "INSERT INTO audit_log (at, actor, kind, run_id, plan_hash, step, detail) "
    "VALUES (:at, :actor, :kind, :run, :plan, :step, :detail)"
)


def record(
    conn: Connection,
    *,
    at: float,
    actor: str,
    kind: str,
    run_id: str | None = None,
    plan_hash: str | None = None,
    step: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}")
    conn.execute(
        INSERT,
        {
            "at": at,
            "actor": actor[:128],
            "kind": kind,
            "run": run_id,
            "plan": plan_hash,
            "step": step,
            "detail": json.dumps(detail or {}, sort_keys=True, default=str),
        },
    )


def query(
    engine: Engine,
    *,
    run_id: str | None = None,
    actor: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    until: float | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Oldest first (the order things happened); ``after_id`` pages on."""
    clauses, params = where(
        [
            ("run_id", "=", "run", run_id),
            ("actor", "=", "actor", actor),
            ("kind", "=", "kind", kind),
            ("at", ">=", "since", since),
            ("at", "<", "until", until),
            ("id", ">", "after", after_id),
        ]
    )
    params["n"] = limit
    sql = "SELECT * FROM audit_log" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    sql += " ORDER BY id LIMIT :n"
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(sql), params)]
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return rows
