"""SQLModel tables of the controller's metadata store (SQLite or PostgreSQL).

Each table's shape is fixed by a numbered migration in controller/store/db.py;
a new column is a new migration, never an edit to an applied one.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"
    version: int = Field(primary_key=True)
    name: str
    applied_at: float


class IngestStream(SQLModel, table=True):
    """The durable dedupe ledger of one collector stream: every seq <= watermark was
    received, and ``window`` lists the received seqs above it (JSON, bounded)."""

    __tablename__ = "ingest_streams"
    host_id: str = Field(primary_key=True, max_length=128)
    stream_id: str = Field(primary_key=True, max_length=128)
    boot_id: str = Field(default="", max_length=128)
    watermark: int = 0
    window: str = "[]"
    max_seq: int = 0
    accepted: int = 0
    duplicates: int = 0
    gaps: int = 0  # gaps seen: a seq arrived past max_seq + 1
    missing: int = 0  # seqs never received that the watermark moved past
    first_seen: float = 0.0
    last_seen: float = 0.0
    dropped: str = "{}"  # the latest cumulative drop counts the collector reported


class ControllerLeader(SQLModel, table=True):
    """Who holds the writer lock (PostgreSQL HA): written by the leader, read by followers."""

    __tablename__ = "controller_leader"
    id: int = Field(default=1, primary_key=True)
    node_id: str
    url: str | None = None
    since: float
    heartbeat: float
