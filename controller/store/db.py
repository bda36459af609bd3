"""Engines and migrations for the metadata store.

SQLite (the default, ``data/agent/workflow_runs.db``) runs in WAL mode with
synchronous=NORMAL: a commit survives a process crash (kill -9) at once, and a
power cut after the next checkpoint. PostgreSQL (psycopg 3) is for shared
metadata and HA. Migrations are numbered and recorded in ``schema_migrations``;
each pending one runs in its own transaction at start, under an advisory lock on
PostgreSQL so two controllers starting together do not race.

Start refuses a database it cannot vouch for (``check_store``): a 0-byte or table-less
SQLite file (an empty file would silently become a new database: the ledger and the
audit log reset, old seqs accepted again), a file that is not SQLite, a database
holding tables but no ``schema_migrations`` (someone else's), and a schema newer
than this code. ``init=True`` (``incidentlab-controller serve --init``) lets the
empty cases be initialised. A missing SQLite file and an empty PostgreSQL database
are a first start and need no flag.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from controller.errors import ConfigError, StoreError
from controller.store.models import (
    ActionIntent,
    Approval,
    AuditEntry,
    ControllerLeader,
    ControllerMember,
    FleetSighting,
    IncidentMemory,
    IngestStream,
    Postmortem,
    SchemaMigration,
    Silence,
    WorkflowArtifact,
    WorkflowAttachment,
    WorkflowRun,
)

MIGRATION_LOCK = 0x1C1DE18


def _create(*tables: type[SQLModel]) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        SQLModel.metadata.create_all(conn, tables=[t.__table__ for t in tables])  # type: ignore[attr-defined]

    return run


def _append_only(conn: Connection) -> None:
    """The audit log refuses UPDATE and DELETE, in the database itself."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
            )
        )
        return
    for op in ("UPDATE", "DELETE"):
        conn.execute(
            text(
                f"CREATE TRIGGER audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
        )


def _execution(conn: Connection) -> None:
    _create(ActionIntent, Approval, AuditEntry)(conn)
    _append_only(conn)


def _evidence_digest(conn: Connection) -> None:
    """workflow_runs.evidence_sha256 (a database made by this code's models has it already)."""
    columns = {c["name"] for c in inspect(conn).get_columns("workflow_runs")}
    if "evidence_sha256" not in columns:
        conn.execute(text("ALTER TABLE workflow_runs ADD COLUMN evidence_sha256 VARCHAR(64)"))


_LIFECYCLE_COLUMNS = (
    ("state", "VARCHAR(16) NOT NULL DEFAULT 'firing'"),
    ("fault_started_at", "FLOAT"),
    ("last_seen_at", "FLOAT"),
    ("resolved_at", "FLOAT"),
    ("flaps", "INTEGER NOT NULL DEFAULT 0"),
    ("parent_run_id", "VARCHAR(64)"),
)


def _lifecycle(conn: Connection) -> None:
    """workflow_runs' lifecycle columns; a run from before them was last seen when last touched."""
    columns = {c["name"] for c in inspect(conn).get_columns("workflow_runs")}
    for name, kind in _LIFECYCLE_COLUMNS:
        if name not in columns:
            conn.execute(text(f"ALTER TABLE workflow_runs ADD COLUMN {name} {kind}"))
    conn.execute(text("UPDATE workflow_runs SET last_seen_at = updated_at WHERE last_seen_at IS NULL"))
    # Runs that had ended (their stages done or failed) are not shown firing until the sweep.
    conn.execute(
        text(
            "UPDATE workflow_runs SET state = 'resolved', resolved_at = last_seen_at "
            "WHERE state = 'firing' AND (closed_at IS NOT NULL OR status = 'failed')"
        )
    )
    indexes = {i["name"] for i in inspect(conn).get_indexes("workflow_runs")}
    if "ix_workflow_runs_state" not in indexes:
        conn.execute(text("CREATE INDEX ix_workflow_runs_state ON workflow_runs (state)"))


def _silences(conn: Connection) -> None:
    _create(Silence)(conn)
    columns = {c["name"] for c in inspect(conn).get_columns("workflow_runs")}
    if "silenced_by" not in columns:
        conn.execute(text("ALTER TABLE workflow_runs ADD COLUMN silenced_by VARCHAR(64)"))


def _fleet(conn: Connection) -> None:
    """workflow_runs.scope (host or fleet) and fleet_run_id (the fleet incident a host run is part of)."""
    columns = {c["name"] for c in inspect(conn).get_columns("workflow_runs")}
    if "scope" not in columns:
        conn.execute(text("ALTER TABLE workflow_runs ADD COLUMN scope VARCHAR(8) NOT NULL DEFAULT 'host'"))
    if "fleet_run_id" not in columns:
        conn.execute(text("ALTER TABLE workflow_runs ADD COLUMN fleet_run_id VARCHAR(64)"))
    indexes = {i["name"] for i in inspect(conn).get_indexes("workflow_runs")}
    for col in ("scope", "fleet_run_id"):
        if f"ix_workflow_runs_{col}" not in indexes:
            conn.execute(text(f"CREATE INDEX ix_workflow_runs_{col} ON workflow_runs ({col})"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "ingest ledger and leader", _create(IngestStream, ControllerLeader)),
    (
        2,
        "workflow runs, artifacts, attachments, incident memory",
        _create(WorkflowRun, WorkflowArtifact, WorkflowAttachment, IncidentMemory),
    ),
    (3, "governed execution: action intents, approvals, the append-only audit log", _execution),
    (4, "the evidence window's sha256 per run, checked by every stage", _evidence_digest),
    (5, "a run's lifecycle: firing, recovering, resolved; flaps; the run a symptom belongs to", _lifecycle),
    (6, "silences and maintenance windows; the one a run opened under", _silences),
    (7, "fleet incidents: a run's scope, and the fleet incident a host run belongs to", _fleet),
    (8, "postmortems rendered when runs end", _create(Postmortem)),
    (
        9,
        "replicas sharing the bus's partitions, and the fleet correlator's sightings",
        _create(ControllerMember, FleetSighting),
    ),
]


SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy takes: ``postgresql://`` means psycopg 3 here (the one PostgreSQL
    URL rewrite; libpq_dsn is its inverse)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def libpq_dsn(url: str) -> str:
    """The URL psycopg (libpq) takes, for the leader's dedicated lock session."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def ping(engine: Engine) -> bool:
    """Whether the metadata store answers a trivial query now."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: SQLite with query_only (and no journal-mode change),
    PostgreSQL with read-only transactions. Nothing is created if the store is missing.
    Raises ConfigError for a URL that is neither."""
    url = sqlalchemy_url(url)
    if url.startswith("postgresql"):
        return create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
    if not url.startswith("sqlite:///"):
        raise ConfigError("database_url must be sqlite:///... or postgresql://...")
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA query_only=ON")
        cur.close()

    return engine


def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


def check_store(engine: Engine, url: str, *, init: bool = False) -> None:
    """Refuse, before anything is written, a store this controller did not make (see above)."""
    path = sqlite_path(url)
    existed = False
    if path is not None:
        existed = _sqlite_file(path)
    if path is not None and existed:
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise ConfigError(f"cannot read the database file {path}: {exc.strerror}") from exc
        if not head and not init:
            raise ConfigError(
                f"the database file {path} is empty (0 bytes): refusing to start on it, which would "
                "reset the ingest ledger and the audit log; restore it, or start once with --init"
            )
        if head and head != SQLITE_MAGIC:
            raise ConfigError(f"{path} is not a SQLite database; refusing to start on it")
    try:
        tables = set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot inspect the metadata store: {exc}") from exc
    if tables and "schema_migrations" not in tables:
        raise ConfigError(
            f"the database at {engine.url.render_as_string(hide_password=True)} holds tables "
            f"({', '.join(sorted(tables)[:5])}) but no schema_migrations: it is not an incidentlab "
            "store; refusing to start on it"
        )
    if not tables and existed and path is not None and path.stat().st_size and not init:
        raise ConfigError(
            f"the database file {path} holds no tables: refusing to start on it; "
            "start once with --init to initialise it"
        )
    if "schema_migrations" in tables:
        latest = max(v for v, _, _ in MIGRATIONS)
        found = schema_version(engine)
        if found > latest:
            raise ConfigError(
                f"the database's schema is version {found}, newer than this controller's {latest}: "
                "run a controller at least as new as the one that migrated it"
            )


def _sqlite_file(path: Path) -> bool:
    """Whether the SQLite file exists (it must then be a regular file); refuses what would
    hang the open or silently start a new database in the place of an old one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot look at the database file {path}: {exc.strerror}") from exc
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(
                f"the database file {path} is a link to {os.readlink(path)}, which does not exist: "
                "refusing to start a new database in its place"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot look at the database file {path}: {exc.strerror}") from exc
    if st is None:
        leftovers = [
            p.name
            for p in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
            if os.path.lexists(p)
        ]
        if leftovers:
            raise ConfigError(
                f"the database file {path} is gone but {', '.join(leftovers)} beside it are not: they may "
                "hold its last transactions; restore the file or move them away"
            )
        return False
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"the database file {path} is not a regular file; refusing to open it")
    return True


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(engine: Engine) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    applied_now: list[int] = []
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            SQLModel.metadata.create_all(conn, tables=[SchemaMigration.__table__])  # type: ignore[attr-defined]
            done = {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}
            for version, name, run in MIGRATIONS:
                if version in done:
                    continue
                with conn.begin_nested():
                    run(conn)
                    conn.execute(
                        text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                        {"v": version, "n": name, "t": time.time()},
                    )
                applied_now.append(version)
    except SQLAlchemyError as exc:
        raise StoreError(f"migrations failed: {exc}") from exc
    return applied_now


def schema_version(engine: Engine) -> int:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT max(version) FROM schema_migrations")).first()
    return int(row[0]) if row and row[0] is not None else 0
