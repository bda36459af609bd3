"""Root-cause analysis over every recorded window; writes bench/results/rca.json.

Each window in testkit/windows/manifest.json (recorded on this machine with the real
collector while a real fault ran) is replayed sample by sample through the real
engine (hot state, detectors, ranking, runs and their lifecycle, in process, SQLite),
evaluated after every sample as a collector at a 1 s interval drives it. Per window:

- runs opened during the fault that are not explained as a symptom of another
  (target: exactly 1 per fault, however many processes, pids or flaps it has), and
  runs opened in the calm lead-in (false runs);
- top-1 family and culprit of the run the fault opened; top-3: the family among the
  three best hypotheses when it opened;
- the share of evaluations during the fault whose top-1 names the right family, from
  the evaluation that found it to the fault's end, per period of a fault that comes and
  goes (how steady the answer is once given:
  a cause that loses the top to its own symptom half the time fails it; target >= 0.9);
  how long finding it took is the time to detect, apart;
- time to detect (samples from the fault's start to its run opening) and to resolve
  (samples from its end to the run resolving, for faults that end in the window);
- false hypotheses on the quiet part: calm-lead-in evaluations with an active
  hypothesis past the open threshold (target 0).

The peer is the same replay scored per pid (the fingerprint before owners): the runs
that culprit identity would have opened, so the ratio says what owners and symptoms save.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import write_result
from collector.wire import validate_batch
from controller.config import HotStateSettings
from controller.hotstate import HotState
from controller.store.db import make_engine, migrate
from controller.store.payloads import PayloadStore
from controller.workflow.analysis import detect, rank, top_firing
from controller.workflow.engine import WorkflowEngine
from controller.workflow.options import WorkflowOptions
from testkit.store import WINDOWS, batches, snapshots

HOST = "recorded"


def manifest() -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, Any]] = json.loads((WINDOWS / "manifest.json").read_text())
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def _owner_ok(culprit: dict[str, Any], want: dict[str, Any]) -> bool:
    named = want["owner"] in str(culprit.get("id")) or want["owner"] in (culprit.get("comms") or {})
    return named and (want.get("kind") is None or culprit.get("kind") == want["kind"])


def replay(name: str, want: dict[str, Any], tmp: Path) -> dict[str, Any]:
    snaps = snapshots(name)
    t0 = snaps[0]["ts"]
    periods = [(t0 + a, t0 + b) for a, b in want["fault"]]
    clock = [t0]
    db = make_engine(f"sqlite:///{tmp / name / 'runs.db'}")
    migrate(db)
    hot = HotState(HotStateSettings(samples_per_host=1000, bytes_per_host=256 << 20), clock=lambda: clock[0])
    eng = WorkflowEngine(db, PayloadStore(str(tmp / name)), hot, WorkflowOptions(), clock=lambda: clock[0])
    threshold = eng.opts.open_threshold
    first_run: dict[str, Any] | None = None
    opened_at: dict[str, float] = {}
    during = right = quiet = quiet_false = 0
    pids_seen: set[str] = set()  # the peer: one fingerprint per (family, culprit id), as before owners
    top3_at_open: list[str] = []
    symptoms: set[str] = set()  # what the fault's run carried as symptoms, over the fault
    found: set[int] = set()  # fault periods in which the fault has been found
    states: list[str | None] = []  # the fault's run's lifecycle, as it moved
    try:
        for raw in batches(snaps, HOST):
            batch = validate_batch(raw)
            ts = batch.snapshots[-1].ts
            clock[0] = ts + 0.5
            hot.ingest(batch, raw)
            ev = eng.evidence_for(HOST)
            hyps = rank(ev, detect(ev)) if ev is not None else []
            period = next((k for k, (a, b) in enumerate(periods) if a <= ts < b), None)
            top = top_firing(hyps, threshold)
            if top is not None:
                pids_seen.add(f"{top.family}|{top.culprit.get('id')}")
            if ts < periods[0][0]:
                quiet += 1
                quiet_false += any(h.state == "active" and h.confidence >= threshold for h in hyps)
            top_right = top is not None and top.family == want["family"]
            if period is not None and period in found:
                during += 1
                right += bool(hyps) and hyps[0].family == want["family"]
            elif period is not None and top_right:
                found.add(period)  # each period's count starts once the fault is found in it
            if period is not None and top_right and top is not None:
                symptoms.update(x["family"] for x in top.symptoms)
            run_id = eng.evaluate(HOST)
            if first_run is not None:
                state = (eng.load_run(first_run["run_id"]) or {}).get("state")
                if not states or states[-1] != state:
                    states.append(state)
            if run_id is not None and run_id not in opened_at:
                opened_at[run_id] = ts
                if first_run is None and ts >= periods[0][0]:
                    first_run = {"run_id": run_id, "at": ts}
                    top3_at_open = [h.family for h in hyps[:3]]
        runs: list[dict[str, Any]] = [dict(r) for r in eng.list_runs(limit=500)]
    finally:
        db.dispose()
    in_fault_runs = [r for r in runs if opened_at[r["run_id"]] >= periods[0][0]]
    false_runs = [r for r in runs if opened_at[r["run_id"]] < periods[0][0]]
    paging = [r for r in in_fault_runs if r["state"] != "explained"]
    run = next((r for r in runs if first_run and r["run_id"] == first_run["run_id"]), None)
    culprit = json.loads(run["culprit"]) if run else {}
    end = periods[-1][1]
    resolve = None
    if run is not None and run["resolved_at"] is not None and end <= t0 + len(snaps) - 1:
        resolve = round(run["resolved_at"] - end, 1)
    return {
        "window": name,
        "family": want["family"],
        "what": want.get("what"),
        "samples": len(snaps),
        "fault_periods": len(periods),
        "runs_per_fault": len(paging),
        "explained_runs": len(in_fault_runs) - len(paging),
        "false_runs": len(false_runs),
        "false_run_families": sorted({r["family"] for r in false_runs}),
        "runs_per_pid_peer": len(pids_seen),
        "top1": run is not None and run["family"] == want["family"],
        "top3": want["family"] in top3_at_open,
        "culprit_ok": run is not None and _owner_ok(culprit, want),
        "culprit": {k: culprit.get(k) for k in ("kind", "id", "comms", "ambiguous") if culprit.get(k)},
        "symptoms": sorted(symptoms),
        "top1_share_during_fault": round(right / during, 3) if during else None,
        "time_to_detect_samples": None if first_run is None else round(first_run["at"] - periods[0][0], 1),
        "time_to_resolve_samples": resolve,
        "resolved": run is not None and run["state"] == "resolved",
        "flaps": run["flaps"] if run else None,
        "states": states,
        "quiet_evaluations": quiet,
        "false_hypotheses_quiet": quiet_false,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("windows", nargs="*", help="names from the manifest (default: all)")
    args = parser.parse_args(argv)
    wanted = manifest()
    names = args.windows or list(wanted)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [replay(n, wanted[n], Path(tmp)) for n in names]
    n = len(rows)
    shares = [r["top1_share_during_fault"] for r in rows if r["top1_share_during_fault"] is not None]
    detect_s = [r["time_to_detect_samples"] for r in rows if r["time_to_detect_samples"] is not None]
    resolve_s = [r["time_to_resolve_samples"] for r in rows if r["time_to_resolve_samples"] is not None]
    ends = [r for r in rows if r["fault_periods"] and r["window"] in ("cpu_stops_halfway", "cpu_flaps")]
    summary = {
        "windows": n,
        "top1_accuracy": round(sum(r["top1"] for r in rows) / n, 3),
        "top3_accuracy": round(sum(r["top3"] for r in rows) / n, 3),
        "culprit_accuracy": round(sum(r["culprit_ok"] for r in rows) / n, 3),
        "runs_per_fault": round(sum(r["runs_per_fault"] for r in rows) / n, 3),
        "runs_per_fault_per_pid_peer": round(sum(r["runs_per_pid_peer"] for r in rows) / n, 3),
        "windows_with_one_run": sum(r["runs_per_fault"] == 1 for r in rows),
        "top1_share_during_fault_min": min(shares) if shares else None,
        "top1_share_during_fault_median": statistics.median(shares) if shares else None,
        "time_to_detect_samples_median": statistics.median(detect_s) if detect_s else None,
        "time_to_detect_samples_max": max(detect_s) if detect_s else None,
        "time_to_resolve_samples_median": statistics.median(resolve_s) if resolve_s else None,
        "ended_faults_resolved": sum(r["resolved"] for r in ends),
        "ended_faults": len(ends),
        "false_hypotheses_quiet": sum(r["false_hypotheses_quiet"] for r in rows),
        "false_runs": sum(r["false_runs"] for r in rows),
    }
    met = {
        "runs_per_fault": all(r["runs_per_fault"] == 1 for r in rows),
        "top1_share_during_fault": bool(shares) and min(shares) >= 0.9,
        "false_hypotheses_quiet": summary["false_hypotheses_quiet"] == 0,
    }
    path = write_result(
        "rca",
        {
            "summary": summary,
            "targets": {
                "runs_per_fault": 1.0,
                "top1_share_during_fault_min": 0.9,
                "false_hypotheses_quiet": 0,
            },
            "met": met,
            "windows": rows,
        },
    )
    print(json.dumps(summary | {"met": met}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
