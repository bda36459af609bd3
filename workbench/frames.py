"""pandas frames of runs, chains, hypotheses, evidence and the audit log.

Pure functions from the sources' plain dicts to typed DataFrames: times as UTC
datetimes, statuses and families as categories, the key fields of each artifact
flattened next to its payload.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from controller.store.runs import fault_times

RUN_STATUSES = ["running", "awaiting_approval", "verifying", "completed", "failed"]
RUN_COLUMNS = [
    "run_id",
    "host_id",
    "status",
    "family",
    "culprit_kind",
    "culprit",
    "confidence",
    "stage",
    "attachments",
    "created_at",
    "updated_at",
    "closed_at",
    "fingerprint",
    "incident_id",
    "state",
    "fault_started_at",
    "resolved_at",
    "time_to_detect_s",
    "time_to_resolve_s",
    "flaps",
    "silenced_by",
    "scope",
    "fleet_run_id",
]
RUN_STATES = ["firing", "recovering", "resolved", "explained"]


def _times(values: Any) -> pd.Series:
    # Always nanoseconds: pandas 3 picks a coarser unit for whole seconds or all-NaN input.
    return pd.to_datetime(pd.Series(values, dtype="float64"), unit="s", utc=True).dt.as_unit("ns")


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


def culprit_label(c: dict[str, Any]) -> str | None:
    """A culprit as an operator names it: a pod as namespace/pod/container (the UID is
    what the kernel shows; the name is what kubectl shows), anything else by its id."""
    if c.get("kind") in ("pod", "container") and c.get("namespace") and c.get("pod"):
        return "/".join(str(c[k]) for k in ("namespace", "pod", "container") if c.get(k))
    cid = c.get("id")
    return None if cid is None else str(cid)


def runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run, newest first."""
    culprits = [r.get("culprit") or {} for r in rows]
    times = [fault_times(r) for r in rows]
    df = pd.DataFrame(
        {
            "run_id": pd.Series([r["run_id"] for r in rows], dtype="string"),
            "host_id": pd.Series([r["host_id"] for r in rows], dtype="string"),
            "status": pd.Categorical([r["status"] for r in rows], categories=RUN_STATUSES),
            "family": pd.Series([r["family"] for r in rows], dtype="category"),
            "culprit_kind": pd.Series([c.get("kind") for c in culprits], dtype="category"),
            "culprit": pd.Series([culprit_label(c) for c in culprits], dtype="string"),
            "confidence": pd.Series([r["confidence"] for r in rows], dtype="float64"),
            "stage": pd.Series([r["stage"] for r in rows], dtype="int64"),
            "attachments": pd.Series([r["attachments"] for r in rows], dtype="int64"),
            "created_at": _times([r["created_at"] for r in rows]),
            "updated_at": _times([r["updated_at"] for r in rows]),
            "closed_at": _times([_nan(r["closed_at"]) for r in rows]),
            "fingerprint": pd.Series([r["fingerprint"] for r in rows], dtype="string"),
            "incident_id": pd.Series([r["incident_id"] for r in rows], dtype="string"),
            "state": pd.Categorical([r.get("state", "firing") for r in rows], categories=RUN_STATES),
            "fault_started_at": _times([_nan(r.get("fault_started_at")) for r in rows]),
            "resolved_at": _times([_nan(r.get("resolved_at")) for r in rows]),
            "time_to_detect_s": pd.Series([_nan(t[0]) for t in times], dtype="float64"),
            "time_to_resolve_s": pd.Series([_nan(t[1]) for t in times], dtype="float64"),
            "flaps": pd.Series([r.get("flaps", 0) for r in rows], dtype="int64"),
            "silenced_by": pd.Series([r.get("silenced_by") for r in rows], dtype="string"),
            "scope": pd.Categorical([r.get("scope") or "host" for r in rows], categories=["host", "fleet"]),
            "fleet_run_id": pd.Series([r.get("fleet_run_id") for r in rows], dtype="string"),
        },
        columns=RUN_COLUMNS,
    )
    return df


INCIDENT_COLUMNS = [
    "run_id",
    "family",
    "method",
    "service",
    "group",
    "members",
    "live_members",
    "state",
    "status",
    "confidence",
    "created_at",
    "fault_started_at",
    "resolved_at",
    "time_to_detect_s",
    "time_to_resolve_s",
    "flaps",
]


def incidents_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per fleet incident, newest first: what it groups and how far it reaches."""
    culprits = [r.get("culprit") or {} for r in rows]
    times = [fault_times(r) for r in rows]
    groups = [",".join(f"{k}={v}" for k, v in (c.get("group") or {}).items()) for c in culprits]
    return pd.DataFrame(
        {
            "run_id": pd.Series([r["run_id"] for r in rows], dtype="string"),
            "family": pd.Series([r["family"] for r in rows], dtype="category"),
            "method": pd.Series([c.get("method") for c in culprits], dtype="category"),
            "service": pd.Series([c.get("service") for c in culprits], dtype="string"),
            "group": pd.Series(groups, dtype="string"),
            "members": pd.Series([r.get("member_count", 0) for r in rows], dtype="int64"),
            "live_members": pd.Series([r.get("live_members", 0) for r in rows], dtype="int64"),
            "state": pd.Categorical([r.get("state", "firing") for r in rows], categories=RUN_STATES),
            "status": pd.Categorical([r["status"] for r in rows], categories=RUN_STATUSES),
            "confidence": pd.Series([r["confidence"] for r in rows], dtype="float64"),
            "created_at": _times([r["created_at"] for r in rows]),
            "fault_started_at": _times([_nan(r.get("fault_started_at")) for r in rows]),
            "resolved_at": _times([_nan(r.get("resolved_at")) for r in rows]),
            "time_to_detect_s": pd.Series([_nan(t[0]) for t in times], dtype="float64"),
            "time_to_resolve_s": pd.Series([_nan(t[1]) for t in times], dtype="float64"),
            "flaps": pd.Series([r.get("flaps", 0) for r in rows], dtype="int64"),
        },
        columns=INCIDENT_COLUMNS,
    )


def members_frame(members: list[dict[str, Any]]) -> pd.DataFrame:
    """A fleet incident's member runs: one row per host."""
    return pd.DataFrame(
        {
            "host_id": pd.Series([m["host_id"] for m in members], dtype="string"),
            "run_id": pd.Series([m["run_id"] for m in members], dtype="string"),
            "family": pd.Series([m["family"] for m in members], dtype="category"),
            "state": pd.Categorical([m.get("state", "firing") for m in members], categories=RUN_STATES),
            "status": pd.Categorical([m["status"] for m in members], categories=RUN_STATUSES),
            "confidence": pd.Series([m["confidence"] for m in members], dtype="float64"),
            "fault_started_at": _times([_nan(m.get("fault_started_at")) for m in members]),
            "resolved_at": _times([_nan(m.get("resolved_at")) for m in members]),
        }
    )


def fleet_heat(evidence: dict[str, Any]) -> pd.DataFrame:
    """A fleet incident's member signals as hosts by time (one column per time bin): what
    its heatmap draws. Series are named ``<signal>@<host>`` in the fleet evidence."""
    window = evidence.get("window", evidence)
    rows: dict[str, pd.Series] = {}
    for name, pts in (window.get("series") or {}).items():
        if "@" not in name or not pts:
            continue
        host = name.rsplit("@", 1)[1]
        ts = pd.to_datetime([float(t) for t, _ in pts], unit="s", utc=True).floor("10s")
        rows[host] = pd.Series([float(v) for _, v in pts], index=ts).groupby(level=0).mean()
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).T.sort_index()


def summary_of(kind: str, p: dict[str, Any]) -> str:
    """One line per artifact: what an operator reads first."""
    if kind == "observation_summary":
        w = p.get("window", {})
        return f"{w.get('samples', 0)} samples; missing: {', '.join(p.get('missing', [])) or 'none'}"
    if kind == "anomaly_finding":
        fs = p.get("findings", [])
        return ", ".join(f"{f['family']} ({f['score']:.2f})" for f in fs[:3]) or "no finding"
    if kind == "root_cause_hypothesis":
        hs = p.get("hypotheses", [])
        if not hs:
            return "no hypothesis"
        h = hs[0]
        return f"{h['family']}: {h['culprit'].get('id')} at {h['confidence']:.2f}"
    if kind == "remediation_proposal":
        acts = p.get("actions", [])
        return f"{len(acts)} action(s): " + ", ".join(a["action"] for a in acts[:4])
    if kind == "execution_plan":
        steps = p.get("steps", [])
        counts: dict[str, int] = {}
        for s in steps:
            counts[s["decision"]] = counts.get(s["decision"], 0) + 1
        return ", ".join(f"{n} {d}" for d, n in sorted(counts.items())) or "no steps"
    if kind == "execution_result":
        return ", ".join(f"{r['action']}: {r['outcome']}" for r in p.get("results", [])[:4]) or "nothing"
    if kind == "verification_result":
        return f"{p.get('verdict')}: {p.get('reason')}"
    if kind == "incident_report":
        cause = p.get("most_likely_cause") or {}
        culprit = (cause.get("culprit") or {}).get("id")
        return f"{cause.get('family')} ({culprit}); verdict {(p.get('verification') or {}).get('verdict')}"
    return ""


CHAIN_COLUMNS = [
    "stage_index",
    "kind",
    "status",
    "producer",
    "summary",
    "artifact_id",
    "started_at",
    "finished_at",
    "duration_ms",
    "freshness",
    "coverage",
    "replay_of",
    "sha256",
    "payload",
]
HYPOTHESIS_COLUMNS = [
    "rank",
    "family",
    "confidence",
    "culprit_kind",
    "culprit",
    "summary",
    "method",
    "supporting",
    "contradicting",
    "expected_signals",
]


def chain_frame(chain: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per artifact, in stage order; `payload` keeps the whole payload."""
    rows = []
    for a in chain:
        u = a.get("uncertainty") or {}
        rows.append(
            {
                "stage_index": a["stage_index"],
                "kind": a["kind"],
                "status": a["status"],
                "producer": a["producer"],
                "summary": summary_of(a["kind"], a["payload"]),
                "artifact_id": a["artifact_id"],
                "started_at": a["started_at"],
                "finished_at": a["finished_at"],
                "duration_ms": round((a["finished_at"] - a["started_at"]) * 1000, 3),
                "freshness": u.get("freshness"),
                "coverage": u.get("coverage"),
                "replay_of": (a.get("replay") or {}).get("replay_of"),
                "sha256": a["sha256"],
                "payload": a["payload"],
            }
        )
    df = pd.DataFrame(rows, columns=CHAIN_COLUMNS)
    df["stage_index"] = df["stage_index"].astype("int64")
    df["duration_ms"] = df["duration_ms"].astype("float64")
    df["coverage"] = df["coverage"].astype("float64")
    df["started_at"] = _times(df["started_at"])
    df["finished_at"] = _times(df["finished_at"])
    for col in ("kind", "status", "producer", "freshness"):
        df[col] = df[col].astype("category")
    return df


def hypotheses_frame(chain: list[dict[str, Any]]) -> pd.DataFrame:
    hyps: list[dict[str, Any]] = next(
        (a["payload"]["hypotheses"] for a in chain if a["kind"] == "root_cause_hypothesis"), []
    )
    df = pd.DataFrame(
        [
            {
                "rank": h["rank"],
                "family": h["family"],
                "confidence": h["confidence"],
                "culprit_kind": h["culprit"].get("kind"),
                "culprit": h["culprit"].get("id"),
                "summary": h["summary"],
                "method": h["method"],
                "supporting": h["supporting"],
                "contradicting": h["contradicting"],
                "expected_signals": h["expected_signals"],
            }
            for h in hyps
        ],
        columns=HYPOTHESIS_COLUMNS,
    )
    df["rank"] = df["rank"].astype("int64")
    df["confidence"] = df["confidence"].astype("float64")
    df["family"] = df["family"].astype("category")
    return df


def evidence_frame(
    package: dict[str, Any], after: dict[str, Any] | None = None, signals: list[str] | None = None
) -> pd.DataFrame:
    """Tidy: one row per (time, signal) of the run's window, and of the verifier's window after
    the change when there is one (`window` says which)."""
    parts = []
    for name, doc in (("run", package.get("window") or package), ("after", after)):
        if not doc:
            continue
        for signal, points in (doc.get("series") or {}).items():
            if signals is not None and signal not in signals:
                continue
            if points:
                frame = pd.DataFrame(points, columns=["ts", "value"])
                frame["signal"] = signal
                frame["window"] = name
                parts.append(frame)
    if not parts:
        return pd.DataFrame(
            {
                "ts": pd.Series(dtype="datetime64[ns, UTC]"),
                "signal": pd.Series(dtype="category"),
                "value": pd.Series(dtype="float64"),
                "window": pd.Series(dtype="category"),
            }
        )
    df = pd.concat(parts, ignore_index=True)
    df["ts"] = _times(df["ts"])
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    df["signal"] = df["signal"].astype("category")
    df["window"] = df["window"].astype("category")
    return df[["ts", "signal", "value", "window"]].sort_values(["signal", "ts"], ignore_index=True)


def audit_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(entries, columns=["id", "at", "actor", "kind", "run_id", "plan_hash", "step", "detail"])
    df["at"] = _times(df["at"])
    df["kind"] = df["kind"].astype("category")
    df["step"] = df["step"].astype("Int64")
    return df


VOLATILE = {
    "artifact_id",
    "created_at",
    "started_at",
    "finished_at",
    "sha256",
    "replay",
    "input_artifact_ids",
}


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def diff_frame(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> pd.DataFrame:
    """Where a replay's conclusions differ from the recorded chain: one row per field."""
    rows = []
    by_kind = {a["kind"]: a for a in replayed}
    for a in recorded:
        b = by_kind.get(a["kind"])
        left: dict[str, Any] = {}
        right: dict[str, Any] = {}
        _flat("", {k: v for k, v in a.items() if k not in VOLATILE}, left)
        if b is not None:
            _flat("", {k: v for k, v in b.items() if k not in VOLATILE}, right)
        for field in sorted(set(left) | set(right)):
            # Wall-clock times of the stages, and the run as it stood when the report was written.
            if field.startswith(("payload.timeline", "payload.at_report")):
                continue
            if left.get(field) != right.get(field):
                rows.append(
                    {
                        "kind": a["kind"],
                        "field": field,
                        "recorded": left.get(field),
                        "replayed": right.get(field),
                    }
                )
    return pd.DataFrame(rows, columns=["kind", "field", "recorded", "replayed"])
