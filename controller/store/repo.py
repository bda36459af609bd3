"""Keyword-only repository functions over a SQLAlchemy connection (Core, not ORM
sessions, because the ingest path calls them once per batch)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from controller.store.models import ControllerLeader, IngestStream

STREAMS = IngestStream.__table__  # type: ignore[attr-defined]
LEADER = ControllerLeader.__table__  # type: ignore[attr-defined]


STREAM_COLUMNS = (
    "host_id",
    "stream_id",
    "boot_id",
    "watermark",
    "window",
    "max_seq",
    "accepted",
    "duplicates",
    "gaps",
    "missing",
    "first_seen",
    "last_seen",
    "dropped",
)


def upsert_stream_sql(param: str = ":") -> str:
    """Plain SQL that SQLite (3.24+) and PostgreSQL both take: the ingest path runs it per
    batch, and building an ORM upsert each time cost more than the commit. ``param``: ":"
    for named parameters (SQLAlchemy's text), "?" for sqlite3's positional ones, in
    STREAM_COLUMNS order. Identifiers quoted: "window" is a reserved word in PostgreSQL."""
    quoted = ", ".join(f'"{c}"' for c in STREAM_COLUMNS)
    values = ", ".join("?" if param == "?" else ":" + c for c in STREAM_COLUMNS)
    return (
        f"INSERT INTO ingest_streams ({quoted}) VALUES ({values}) "
        'ON CONFLICT ("host_id", "stream_id") DO UPDATE SET '
        + ", ".join(f'"{c}" = excluded."{c}"' for c in STREAM_COLUMNS[2:])
    )


UPSERT_STREAM = text(upsert_stream_sql())


def get_stream(conn: Connection, *, host_id: str, stream_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(STREAMS).where(STREAMS.c.host_id == host_id, STREAMS.c.stream_id == stream_id)
    ).first()
    return dict(row._mapping) if row else None


def _insert(conn: Connection, table: Any) -> Any:
    return pg_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)


def upsert_stream(conn: Connection, *, row: dict[str, Any]) -> None:
    stmt = _insert(conn, STREAMS).values(**row)
    keys = ("host_id", "stream_id")
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={k: stmt.excluded[k] for k in row if k not in keys}
    )
    conn.execute(stmt)


def load_streams(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(select(STREAMS))]


def get_leader(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute(select(LEADER).where(LEADER.c.id == 1)).first()
    return dict(row._mapping) if row else None


def set_leader(conn: Connection, *, node_id: str, url: str | None, now: float) -> None:
    stmt = _insert(conn, LEADER).values(id=1, node_id=node_id, url=url, since=now, heartbeat=now)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={"node_id": node_id, "url": url, "since": now, "heartbeat": now}
        )
    )


def heartbeat(conn: Connection, *, node_id: str, now: float) -> bool:
    """Refresh the leader row's heartbeat; False when another node's row is there now."""
    result = conn.execute(
        LEADER.update().where(LEADER.c.id == 1, LEADER.c.node_id == node_id).values(heartbeat=now)
    )
    return bool(result.rowcount)
