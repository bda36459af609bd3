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


_STREAM_COLUMNS = (
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
# Plain SQL that SQLite (3.24+) and PostgreSQL both take, built once: the ingest path runs it
# per batch, and building an ORM upsert each time cost more than the commit.
# Identifiers quoted: "window" is a reserved word in PostgreSQL.
_QUOTED = ", ".join(f'"{c}"' for c in _STREAM_COLUMNS)
UPSERT_STREAM = text(
    f"INSERT INTO ingest_streams ({_QUOTED}) "
    f"VALUES ({', '.join(':' + c for c in _STREAM_COLUMNS)}) "
    'ON CONFLICT ("host_id", "stream_id") DO UPDATE SET '
    + ", ".join(f'"{c}" = excluded."{c}"' for c in _STREAM_COLUMNS[2:])
)


def get_stream(conn: Connection, *, host_id: str, stream_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(STREAMS).where(STREAMS.c.host_id == host_id, STREAMS.c.stream_id == stream_id)
    ).first()
    return dict(row._mapping) if row else None


def save_stream(conn: Connection, *, row: dict[str, Any]) -> None:
    """The per-batch upsert: UPSERT_STREAM, prebuilt."""
    conn.execute(UPSERT_STREAM, row)


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
