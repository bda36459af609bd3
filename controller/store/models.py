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


class WorkflowRun(SQLModel, table=True):
    """One incident run: its shape (fingerprint), where its stages stand, and how it ended."""

    __tablename__ = "workflow_runs"
    run_id: str = Field(primary_key=True, max_length=64)
    workflow_id: str = Field(max_length=64)
    incident_id: str = Field(max_length=64)
    correlation_id: str = Field(max_length=64)
    host_id: str = Field(index=True, max_length=128)
    fingerprint: str = Field(index=True, max_length=64)
    family: str = Field(index=True, max_length=64)
    culprit: str = "{}"  # JSON
    confidence: float = 0.0
    status: str = Field(index=True, max_length=32)  # running, awaiting_approval, completed, failed
    stage: int = 0  # stages committed so far
    attachments: int = 0
    created_at: float = Field(index=True)
    updated_at: float
    closed_at: float | None = None
    code_version: str = ""
    # sha256 of the evidence window as written when the run opened: every stage checks it.
    evidence_sha256: str | None = Field(default=None, max_length=64)
    # The fault's lifecycle, apart from the stages' status: firing -> recovering -> resolved,
    # or explained (a symptom whose cause has a run of its own: parent_run_id).
    state: str = Field(default="firing", index=True, max_length=16)
    fault_started_at: float | None = None  # the first sample of the stretch that opened it
    last_seen_at: float | None = None  # the last evaluation that found it active
    resolved_at: float | None = None
    flaps: int = 0  # times it came back within the attach window after resolving
    parent_run_id: str | None = Field(default=None, max_length=64)
    # The silence or maintenance window active for it when it opened: it pages nobody.
    silenced_by: str | None = Field(default=None, max_length=64)
    # "host": one fault on one host; "fleet": one fault across hosts (controller/workflow/fleet.py).
    scope: str = Field(default="host", index=True, max_length=8, sa_column_kwargs={"server_default": "host"})
    # The fleet incident this host run is a member of: it pages through it, not on its own.
    fleet_run_id: str | None = Field(default=None, index=True, max_length=64)


class WorkflowArtifact(SQLModel, table=True):
    """Metadata of one committed artifact; its JSON lives in the payload store at ``path``."""

    __tablename__ = "workflow_artifacts"
    artifact_id: str = Field(primary_key=True, max_length=64)
    run_id: str = Field(index=True, max_length=64)
    stage_index: int
    kind: str = Field(max_length=64)
    status: str = Field(max_length=16)
    sha256: str = Field(max_length=64)
    path: str
    replay: bool = False
    created_at: float


class WorkflowAttachment(SQLModel, table=True):
    """The same incident shape seen again while its run was open: attached, not a new run."""

    __tablename__ = "workflow_attachments"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    at: float
    detail: str = "{}"


class IncidentMemory(SQLModel, table=True):
    """What happened last time an incident of this shape was seen, for the analyzer to consult."""

    __tablename__ = "incident_memory"
    fingerprint: str = Field(primary_key=True, max_length=64)
    family: str = Field(max_length=64)
    host_id: str = Field(max_length=128)
    culprit: str = "{}"
    first_seen: float
    last_seen: float
    occurrences: int = 1
    last_run_id: str = Field(max_length=64)
    resolution: str = "{}"


class ActionIntent(SQLModel, table=True):
    """One side effect, keyed by its idempotency key: the intent is committed before the
    action runs and the result after; an intent without a result is settled by a probe."""

    __tablename__ = "action_intents"
    idempotency_key: str = Field(primary_key=True, max_length=64)
    run_id: str = Field(index=True, max_length=64)
    step: int
    action: str = Field(max_length=64)
    params: str = "{}"
    before: str = "{}"  # the live state the actuator read just before acting
    intent_at: float
    outcome: str | None = Field(default=None, max_length=32)
    result: str | None = None  # JSON, the result record
    result_at: float | None = None
    rolled_back_at: float | None = None
    rollback_result: str | None = None


class Approval(SQLModel, table=True):
    """An operator's decision on a plan: bound to the plan's hash, valid until expires_at."""

    __tablename__ = "approvals"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    plan_hash: str = Field(max_length=64)
    decision: str = Field(max_length=16)  # approved | rejected
    actor: str = Field(max_length=128)
    reason: str = ""
    steps: str | None = None  # JSON list of approved steps; None: all that needed approval
    at: float
    expires_at: float | None = None


class AuditEntry(SQLModel, table=True):
    """Append-only (triggers refuse UPDATE and DELETE): every gate decision, approval,
    rejection, execution and rollback, with its actor, time and plan hash."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    actor: str = Field(max_length=128)
    kind: str = Field(index=True, max_length=32)
    run_id: str | None = Field(default=None, index=True, max_length=64)
    plan_hash: str | None = Field(default=None, max_length=64)
    step: int | None = None
    detail: str = "{}"


class Silence(SQLModel, table=True):
    """An operator's silence or maintenance window (controller/workflow/silences.py): never
    deleted, only expired; creating and expiring it are in the audit log."""

    __tablename__ = "silences"
    silence_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # silence, maintenance
    hosts: str = "[]"  # JSON: host-id globs
    families: str = "[]"  # JSON: family names
    starts_at: float
    ends_at: float = Field(index=True)
    comment: str = Field(max_length=2000)
    created_by: str = Field(max_length=128)
    created_at: float
    expired_at: float | None = None
    expired_by: str | None = Field(default=None, max_length=128)


class Postmortem(SQLModel, table=True):
    """A run's postmortem, rendered in the background when it resolves or completes
    (controller/workflow/postmortems.py): where it is, or why it failed."""

    __tablename__ = "postmortems"
    run_id: str = Field(primary_key=True, max_length=64)
    status: str = Field(index=True, max_length=16)  # queued, rendering, written, failed
    reason: str = Field(max_length=16)  # resolved or completed: what asked for it
    requested_at: float
    started_at: float | None = None
    finished_at: float | None = None
    path: str | None = None  # the HTML, under workflow.postmortems.dir
    error: str | None = Field(default=None, max_length=2000)
    attempts: int = 0


class ControllerMember(SQLModel, table=True):
    """A controller replica sharing the bus's partitions (controller/partitions.py): who it is,
    where it is reached, what it owns and how its rebuilds go, refreshed every poll. It is
    alive while its member lock (an advisory lock keyed by ``lock_id``) is held."""

    __tablename__ = "controller_members"
    node_id: str = Field(primary_key=True, max_length=64)
    url: str | None = Field(default=None, max_length=2048)
    lock_id: int
    started: float
    heartbeat: float
    owned: str = "[]"  # the partitions it holds, JSON
    detail: str = "{}"  # its rebuilds and lag per partition, JSON (bounded by the partitions)


class FleetSighting(SQLModel, table=True):
    """A host's latest sighting for the fleet correlator, written by the replica that owns the
    host and read by the one that correlates (controller/workflow/fleet.py): one row per host."""

    __tablename__ = "fleet_sightings"
    host_id: str = Field(primary_key=True, max_length=128)
    run_id: str = Field(max_length=64)
    at: float = Field(index=True)
    body: str  # the Sighting as JSON, its series capped by fleet.series_points
