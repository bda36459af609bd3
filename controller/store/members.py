"""The statements of the partition leases (controller/partitions.py), on the lease's own
psycopg session (autocommit): its member row, its advisory locks and everyone's."""

from __future__ import annotations

from typing import Any

MEMBERS_SQL = """
SELECT node_id, url, lock_id, EXTRACT(EPOCH FROM clock_timestamp()) - heartbeat AS age, owned, detail
FROM controller_members
"""
LOCKS_SQL = """
SELECT classid::bigint, objid::bigint, pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint IN (%s, %s)
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
UPSERT_SQL = """
INSERT INTO controller_members (node_id, url, lock_id, started, heartbeat, owned, detail)
VALUES (%(node)s, %(url)s, %(lock)s, EXTRACT(EPOCH FROM clock_timestamp()),
        EXTRACT(EPOCH FROM clock_timestamp()), %(owned)s, %(detail)s)
ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, lock_id = EXCLUDED.lock_id,
  heartbeat = EXCLUDED.heartbeat, owned = EXCLUDED.owned, detail = EXCLUDED.detail
"""


def try_lock(conn: Any, ns: int, key: int) -> bool:
    """pg_try_advisory_lock(ns, key): taken now, or held by another session (never waits)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ns, key)).fetchone()
    return bool(row is not None and row[0])


def unlock(conn: Any, ns: int, key: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (ns, key))


def heartbeat(conn: Any, *, node: str, url: str | None, lock_id: int, owned: str, detail: str) -> None:
    """The member's row, its heartbeat on PostgreSQL's clock."""
    conn.execute(UPSERT_SQL, {"node": node, "url": url, "lock": lock_id, "owned": owned, "detail": detail})


def locks(conn: Any, ns_a: int, ns_b: int) -> list[tuple[int, int, int]]:
    """(namespace, key, holder pid) of every granted two-key advisory lock in these namespaces."""
    return [(int(a), int(b), int(c)) for a, b, c in conn.execute(LOCKS_SQL, (ns_a, ns_b)).fetchall()]


def members(conn: Any) -> list[tuple[str, str | None, int, float, str, str]]:
    """(node id, url, lock id, seconds since its heartbeat, owned JSON, detail JSON) of each row."""
    return [(r[0], r[1], int(r[2]), float(r[3]), r[4], r[5]) for r in conn.execute(MEMBERS_SQL).fetchall()]


def forget_members(conn: Any, nodes: list[str]) -> None:
    conn.execute("DELETE FROM controller_members WHERE node_id = ANY(%s)", (nodes,))


def terminate(conn: Any, pid: int) -> None:
    """End another session (a fenced lease holder): PostgreSQL releases its locks with it."""
    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
