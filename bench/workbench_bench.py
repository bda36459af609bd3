"""Loading runs into pandas from the local store; writes bench/results/workbench.json.

A store of 10,000 runs (rows shaped as the engine writes them) in SQLite. Measured, in
the same process, the same store: `Workbench(data_dir).runs()` (one query, typed
columns: datetimes, categories, the culprit parsed) against the peer, pandas'
own `read_sql_query` of the same table with `parse_dates` (untyped culprit JSON,
object columns), and against reading each run through the per-run API shape
(`source.run()`, what a loop over runs would do), for 200 runs scaled to 10,000.
Target (issue 8): runs() for 10,000 runs well under a second.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.harness import write_result
from controller.store.db import make_engine, migrate
from controller.store.runs import RunRow, RunStore
from workbench import Workbench

RUNS = 10_000
TRIALS = 5
TARGET_S = 1.0
FAMILIES = ["cpu_saturation", "memory_pressure", "io_pressure", "fd_exhaustion", "tcp_retransmit_surge"]
STATUSES = ["completed", "completed", "completed", "awaiting_approval", "failed"]


def make_store(data: Path) -> None:
    db = make_engine(f"sqlite:///{data / 'agent' / 'workflow_runs.db'}")
    migrate(db)
    rows: list[RunRow] = []
    t0 = 1_800_000_000.0
    for i in range(RUNS):
        fam = FAMILIES[i % len(FAMILIES)]
        rows.append(
            {
                "run_id": f"run-{i:016x}",
                "workflow_id": f"wf-{i:016x}",
                "incident_id": f"inc-{i % 977:016x}",
                "correlation_id": f"corr-{i:016x}",
                "host_id": f"node-{i % 300:03d}",
                "fingerprint": f"{i % 977:064x}",
                "family": fam,
                "culprit": json.dumps(
                    {"kind": "process", "id": f"worker[{1000 + i % 977}]", "pid": 1000 + i % 977}
                ),
                "confidence": 0.5 + (i % 50) / 100,
                "status": STATUSES[i % len(STATUSES)],
                "stage": 8,
                "attachments": i % 7,
                "created_at": t0 + i * 30,
                "updated_at": t0 + i * 30 + 2,
                "closed_at": t0 + i * 30 + 2 if i % 5 != 3 else None,
                "code_version": "bench",
                "evidence_sha256": None,
                "state": "resolved",
                "fault_started_at": t0 + i * 30 - 5,
                "last_seen_at": t0 + i * 30 + 60,
                "resolved_at": t0 + i * 30 + 90,
                "flaps": 0,
                "parent_run_id": None,
                "silenced_by": None,
                "scope": "host",
                "fleet_run_id": None,
            }
        )
    with RunStore(db).begin() as tx:
        tx.insert_runs(rows)
    db.dispose()


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_store(data)
        wb = Workbench(data)
        db = make_engine(f"sqlite:///{data / 'agent' / 'workflow_runs.db'}")
        assert len(wb.runs()) == RUNS
        ours, peer = [], []
        for _ in range(TRIALS):
            ours.append(timed(wb.runs))
            with db.connect() as conn:
                peer.append(
                    timed(
                        lambda conn=conn: pd.read_sql_query(
                            "SELECT * FROM workflow_runs ORDER BY created_at DESC",
                            conn,
                            parse_dates={"created_at": {"unit": "s"}, "updated_at": {"unit": "s"}},
                        )
                    )
                )
        ids = list(wb.runs(limit=200)["run_id"])
        per_run = timed(lambda: [wb.source.run(str(r)) for r in ids]) / len(ids) * RUNS
        wb.close()
        db.dispose()
    ours_s, peer_s = statistics.median(ours), statistics.median(peer)
    result = {
        "runs": RUNS,
        "trials": TRIALS,
        "runs_frame_s_median": round(ours_s, 4),
        "read_sql_query_s_median": round(peer_s, 4),
        "ratio_to_read_sql": round(ours_s / peer_s, 2),
        "per_run_reads_s_for_all": round(per_run, 2),
        "target_s": TARGET_S,
        "met": ours_s < TARGET_S,
    }
    path = write_result("workbench", result)
    print(f"{path}: {result}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
