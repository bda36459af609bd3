"""The metadata store on SQLite and the real PostgreSQL; payloads on disk, in memory and on S3 (moto)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from collector.wire import BatchKey
from controller.errors import StoreError
from controller.ledger import Ledger, StreamLedger, observe
from controller.store import repo
from controller.store.db import MIGRATIONS, make_engine, migrate, schema_version
from controller.store.payloads import PayloadStore


def sqlite_engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'agent' / 'workflow_runs.db'}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = sqlite_engine(tmp_path)
    else:
        url = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://")
        eng = make_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


def test_migrations_apply_once_and_record_versions(engine: Engine) -> None:
    assert migrate(engine) == [v for v, _, _ in MIGRATIONS]
    assert migrate(engine) == []
    assert schema_version(engine) == MIGRATIONS[-1][0]


def test_runs_from_before_the_lifecycle_get_it_on_migration(engine: Engine) -> None:
    """A database at schema 4 (no lifecycle columns) with a run in it: migration 5 adds them,
    and the run was last seen when it was last touched."""
    from controller.store.db import _LIFECYCLE_COLUMNS

    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_workflow_runs_state"))
        for name, _ in _LIFECYCLE_COLUMNS:
            conn.execute(text(f"ALTER TABLE workflow_runs DROP COLUMN {name}"))
        conn.execute(text("DELETE FROM schema_migrations WHERE version = 5"))
        conn.execute(
            text(
                "INSERT INTO workflow_runs (run_id, workflow_id, incident_id, correlation_id, host_id, "
                "fingerprint, family, culprit, confidence, status, stage, attachments, created_at, "
                "updated_at, code_version) VALUES ('run-old', 'wf', 'inc', 'corr', 'h', 'fp', "
                "'cpu_saturation', '{}', 0.9, 'completed', 8, 2, 100.0, 150.0, 'old')"
            )
        )
    assert migrate(engine) == [5]
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM workflow_runs WHERE run_id = 'run-old'")).mappings().one()
    assert row["state"] == "firing" and row["last_seen_at"] == 150.0 and row["flaps"] == 0
    assert row["resolved_at"] is None and row["parent_run_id"] is None


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    eng = sqlite_engine(tmp_path)
    with eng.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    assert (tmp_path / "agent" / "workflow_runs.db").exists()


def test_stream_rows_roundtrip(engine: Engine) -> None:
    migrate(engine)
    s = StreamLedger(
        "h", "s", boot_id="b", watermark=5, window={7, 9}, max_seq=9, accepted=7, dropped={"x": 1}
    )
    with engine.begin() as conn:
        repo.upsert_stream(conn, row=s.row())
        s.watermark = 9
        s.window = set()
        repo.upsert_stream(conn, row=s.row())
    with engine.connect() as conn:
        (row,) = repo.load_streams(conn)
    back = StreamLedger.from_row(row)
    assert back == s


def test_leader_row(engine: Engine) -> None:
    migrate(engine)
    with engine.begin() as conn:
        assert repo.get_leader(conn) is None
        repo.set_leader(conn, node_id="n1", url="https://a:8443", now=1.0)
        assert repo.heartbeat(conn, node_id="n1", now=2.0)
        assert not repo.heartbeat(conn, node_id="n2", now=3.0)
        repo.set_leader(conn, node_id="n2", url="https://b:8443", now=4.0)
        row = repo.get_leader(conn)
    assert row is not None and row["node_id"] == "n2" and row["url"] == "https://b:8443"


def test_ledger_is_durable_and_bounded(engine: Engine) -> None:
    migrate(engine)
    ledger = Ledger(engine, window=16, max_streams=2)

    def key(seq: int, stream: str = "s") -> BatchKey:
        return BatchKey("h", stream, seq)

    assert [ledger.record(key(s), "b", {}) for s in (1, 2, 2, 4)] == [
        "accepted",
        "accepted",
        "duplicate",
        "accepted",
    ]
    for stream in ("t", "u"):  # push stream s out of memory
        ledger.record(key(1, stream), "b", {})
    assert ledger.evicted == 1
    fresh = Ledger(engine, window=16, max_streams=2)  # a restart: only the store remembers
    assert [fresh.record(key(s), "b", {}) for s in (1, 2, 4, 3)] == [
        "duplicate",
        "duplicate",
        "duplicate",
        "accepted",
    ]


def test_ledger_refuses_to_accept_what_it_cannot_commit(tmp_path: Path) -> None:
    eng = sqlite_engine(tmp_path)
    migrate(eng)
    ledger = Ledger(eng, window=16, max_streams=10)
    assert ledger.record(BatchKey("h", "s", 1), "b", {}) == "accepted"
    with eng.begin() as conn:
        conn.execute(text("DROP TABLE ingest_streams"))
    with pytest.raises(StoreError, match="cannot commit"):
        ledger.record(BatchKey("h", "s", 2), "b", {})
    # The failed batch was not counted: after the store is back it is accepted.
    migrate_again = MIGRATIONS[0][2]
    with eng.begin() as conn:
        migrate_again(conn)
    assert ledger.record(BatchKey("h", "s", 2), "b", {}) == "accepted"


def test_observe_window_overflow_counts_missing() -> None:
    s = StreamLedger("h", "s")
    for seq in range(3, 3 + 20):
        observe(s, seq, window_max=8)
    # At seq 11 the window held 3..11 (9 > 8): the watermark jumped the hole 1-2 (missing 2).
    assert s.missing == 2 and s.watermark == 22 and s.window == set()
    assert observe(s, 1, window_max=8) == "duplicate"  # too late: counted missing, never double counted
    assert s.gaps == 1


def test_ledger_is_safe_across_threads(tmp_path: Path) -> None:
    eng = sqlite_engine(tmp_path)
    migrate(eng)
    ledger = Ledger(eng, window=4096, max_streams=10)
    verdicts: list[str] = []
    lock = threading.Lock()

    def send(seqs: range) -> None:
        for s in seqs:
            v = ledger.record(BatchKey("h", "s", s), "b", {})
            with lock:
                verdicts.append(v)

    threads = [threading.Thread(target=send, args=(range(1, 201),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts.count("accepted") == 200 and verdicts.count("duplicate") == 600


@pytest.fixture(params=["file", "memory", "s3"])
def payloads(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PayloadStore]:
    if request.param == "file":
        yield PayloadStore(str(tmp_path / "artifacts"))
    elif request.param == "memory":
        yield PayloadStore(f"memory://{tmp_path.name}")
    else:
        yield from _moto_store()


def _moto_store() -> Iterator[PayloadStore]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="incidentlab")
    try:
        yield PayloadStore(
            "s3://incidentlab/payloads",
            {
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            },
        )
    finally:
        server.stop()


def test_payload_store_roundtrip(payloads: PayloadStore) -> None:
    payloads.put("workflows/messages/run-1/01.json", b'{"kind": "observation_summary"}')
    payloads.put("workflows/messages/run-1/02.json", b"{}")
    assert payloads.get("workflows/messages/run-1/01.json") == b'{"kind": "observation_summary"}'
    assert payloads.exists("workflows/messages/run-1/02.json")
    assert payloads.list("workflows/messages/run-1") == [
        "workflows/messages/run-1/01.json",
        "workflows/messages/run-1/02.json",
    ]
    payloads.delete("workflows/messages/run-1/02.json")
    assert not payloads.exists("workflows/messages/run-1/02.json")
    with pytest.raises(FileNotFoundError):
        payloads.get("missing.json")


@pytest.mark.parametrize("key", ["../escape.json", "/abs.json", "."])
def test_payload_keys_cannot_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(StoreError, match="escapes"):
        PayloadStore(str(tmp_path)).put(key, b"x")
