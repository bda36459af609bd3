"""The ledger's commits on the event loop: never a wait, never a lost or double-counted batch.

``Ledger.record(..., wait=False)`` is what the front door calls on the loop with the
SQLite writer (controller/store/streams.py). It must answer None, having changed
nothing, whenever it would have to wait: SQLite's write lock held by someone else (the
workflow), the ledger's own lock held by a pool thread, the stream not in memory;
and a batch it declined must be taken exactly once by the waiting path.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from collector.wire import BatchKey
from controller.errors import StoreError
from controller.ledger import Ledger
from controller.store import repo, streams
from controller.store.db import MIGRATIONS, make_engine, migrate
from controller.store.streams import SqliteStreamWriter, StreamWriter, stream_writer


def db_file(tmp_path: Path) -> Path:
    return tmp_path / "agent" / "workflow_runs.db"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = make_engine(f"sqlite:///{db_file(tmp_path)}")
    migrate(eng)
    return eng


def ledger_of(engine: Engine, tmp_path: Path, window: int = 64) -> Ledger:
    writer = SqliteStreamWriter(engine, db_file(tmp_path))
    return Ledger(engine, window=window, max_streams=100, writer=writer)


def stored(engine: Engine, host: str = "h", stream: str = "s") -> dict[str, Any] | None:
    with engine.connect() as conn:
        return repo.get_stream(conn, host_id=host, stream_id=stream)


def test_the_writer_is_chosen_by_the_store(engine: Engine, tmp_path: Path) -> None:
    assert type(stream_writer(engine, db_file(tmp_path))) is SqliteStreamWriter
    assert type(stream_writer(engine, None)) is StreamWriter  # PostgreSQL: always the pool
    assert StreamWriter(engine).try_save({}) is False


def test_an_uncontended_commit_is_taken_on_the_loop_and_is_durable(engine: Engine, tmp_path: Path) -> None:
    ledger = ledger_of(engine, tmp_path)
    assert ledger.record(BatchKey("h", "s", 1), "b", {}) == "accepted"  # loads the stream (waits)
    assert ledger.record(BatchKey("h", "s", 2), "b", {}, wait=False) == "accepted"
    assert ledger.record(BatchKey("h", "s", 2), "b", {}, wait=False) == "duplicate"
    row = stored(engine)
    assert row is not None and row["watermark"] == 2 and row["accepted"] == 2
    # A restart reads the loop's commit back: the replayed seq is a duplicate.
    fresh = ledger_of(engine, tmp_path)
    assert fresh.record(BatchKey("h", "s", 2), "b", {}) == "duplicate"


def test_a_stream_not_in_memory_is_not_read_on_the_loop(engine: Engine, tmp_path: Path) -> None:
    ledger = ledger_of(engine, tmp_path)
    assert ledger.record(BatchKey("h", "new", 1), "b", {}, wait=False) is None
    assert ledger.snapshot() == [] and stored(engine, stream="new") is None
    assert ledger.record(BatchKey("h", "new", 1), "b", {}) == "accepted"


def test_the_loop_never_waits_for_the_write_lock_and_loses_nothing(engine: Engine, tmp_path: Path) -> None:
    ledger = ledger_of(engine, tmp_path)
    assert ledger.record(BatchKey("h", "s", 1), "b", {}) == "accepted"
    holder = sqlite3.connect(db_file(tmp_path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the workflow's transaction, say
    try:
        started = time.monotonic()
        assert ledger.record(BatchKey("h", "s", 2), "b", {}, wait=False) is None
        assert time.monotonic() - started < 0.5  # busy_timeout 0: it did not wait 10 s
        (s,) = ledger.snapshot()
        assert s.max_seq == 1 and s.accepted == 1 and 2 not in s.window  # nothing changed
        # The pool's waiting path takes the same batch once the lock is free.
        verdict: list[str | None] = []
        t = threading.Thread(target=lambda: verdict.append(ledger.record(BatchKey("h", "s", 2), "b", {})))
        t.start()
        time.sleep(0.3)
        assert not verdict  # waiting, as it should off the loop
        # While it waits it holds the ledger's lock: the loop must not wait on that either.
        assert ledger.record(BatchKey("h", "s", 3), "b", {}, wait=False) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    t.join(timeout=15)
    assert verdict == ["accepted"]
    assert ledger.record(BatchKey("h", "s", 3), "b", {}, wait=False) == "accepted"
    row = stored(engine)
    assert row is not None and row["accepted"] == 3 and row["watermark"] == 3


def test_a_failing_store_is_an_error_not_a_silent_accept(engine: Engine, tmp_path: Path) -> None:
    ledger = ledger_of(engine, tmp_path)
    assert ledger.record(BatchKey("h", "s", 1), "b", {}) == "accepted"
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE ingest_streams"))  # as test_stores does: the store fails
    for wait in (False, True):
        with pytest.raises(StoreError, match="cannot commit"):
            ledger.record(BatchKey("h", "s", 2), "b", {}, wait=wait)
    with engine.begin() as conn:
        MIGRATIONS[0][2](conn)
    assert ledger.record(BatchKey("h", "s", 2), "b", {}, wait=False) == "accepted"


def test_the_wal_is_checkpointed_off_the_loop(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "CHECKPOINT_EVERY", 5)
    ledger = ledger_of(engine, tmp_path)
    assert ledger.record(BatchKey("h", "s", 1), "b", {}) == "accepted"
    inline = [ledger.record(BatchKey("h", "s", seq), "b", {}, wait=False) for seq in range(2, 8)]
    # Four more on the loop make five commits: the next is declined, for the pool to checkpoint.
    assert inline == ["accepted"] * 4 + [None, None]
    # As the front door does it, 300 times: the loop first, the pool when declined.
    for seq in range(6, 306):
        if ledger.record(BatchKey("h", "s", seq), "b", {}, wait=False) is None:
            assert ledger.record(BatchKey("h", "s", seq), "b", {}) == "accepted"
    # Neither connection checkpoints on commit: without the pool's checkpoints the WAL
    # holds every commit (1.4 MB here); with them it is reused from the start, and stays
    # at what the migrations left (180 KB).
    wal = db_file(tmp_path).with_name("workflow_runs.db-wal")
    assert wal.stat().st_size < 400_000
    row = stored(engine)
    assert row is not None and row["accepted"] == 305


def test_loop_and_pool_together_count_every_batch_once(engine: Engine, tmp_path: Path) -> None:
    ledger = ledger_of(engine, tmp_path, window=4096)
    assert ledger.record(BatchKey("h", "s", 1), "b", {}) == "accepted"
    verdicts: list[str] = []
    lock = threading.Lock()

    def send(seqs: range, wait: bool) -> None:
        for seq in seqs:
            v = ledger.record(BatchKey("h", "s", seq), "b", {}, wait=wait)
            if v is None:  # declined on the "loop": the pool takes it, as the front door does
                v = ledger.record(BatchKey("h", "s", seq), "b", {})
            with lock:
                verdicts.append(v)

    threads = [threading.Thread(target=send, args=(range(2, 202), i % 2 == 0)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts.count("accepted") == 200 and verdicts.count("duplicate") == 600
    row = stored(engine)
    assert row is not None and row["accepted"] == 201 and row["watermark"] == 201
