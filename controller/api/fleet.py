"""The fleet's API: fleet incidents with their members, joint risk per host and label group,
everything awaiting approval across runs, and HA status (the seed's endpoints)."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from controller.api.deps import Reader, Rt
from controller.api.routes import READ_ERRORS, errors
from controller.api.workflow import TIME, _Open, decode_cursor, encode_cursor, run_summary
from controller.artifacts import ArtifactError

router = APIRouter(prefix="/api/v1", responses=READ_ERRORS)
log = logging.getLogger(__name__)
MEMBERS_MAX = 500  # member runs listed per fleet incident (member_count says how many)
RISK_RUNS = 10_000  # live host runs joint risk reads
STATE_WEIGHT = {"firing": 1.0, "recovering": 0.5}
# Label keys joint risk groups hosts by, beyond the correlator's group_by.
RISK_KEYS = ("region", "zone", "node_pool", "gpu_product", "instance_type", "rack")


class IncidentsPage(_Open):
    incidents: list[dict[str, Any]]
    count: int
    next_cursor: str | None


class JointRisk(_Open):
    hosts: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    fleet: dict[str, Any]


class ProposedActions(_Open):
    actions: list[dict[str, Any]]
    runs: int
    count: int


class HaStatus(_Open):
    mode: str
    role: str
    node_id: str
    leader_url: str | None
    analysis: dict[str, Any]
    fleet: dict[str, Any]
    bus: dict[str, Any] | None = None
    partitions: dict[str, Any] | None = None


@router.get(
    "/agent/workflow/incidents", response_model=IncidentsPage, tags=["workflow"], responses=errors(400)
)
def incidents(
    rt: Rt,
    _: Reader,
    state: Literal["live", "all"] = "all",
    since: Annotated[float | None, Query(description="opened at or after (Unix seconds)", **TIME)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Fleet incidents (one fault across hosts), newest first, each with its member runs and
    blast radius; ``state=live`` keeps firing and recovering ones."""
    after = decode_cursor(cursor) if cursor else None
    # A fleet run is never explained: live is everything not resolved.
    rows = rt.workflow.list_runs(
        scope="fleet",
        not_state="resolved" if state == "live" else None,
        since=since,
        after=after,
        limit=limit + 1,
    )
    more = len(rows) > limit
    page = rows[:limit]
    body = []
    with rt.workflow.runs.read() as tx:
        for row in page:
            members = tx.fleet_members(row["run_id"], limit=MEMBERS_MAX + 1)
            entry = run_summary(row)
            entry["member_count"] = min(len(members), MEMBERS_MAX)
            entry["members"] = members[:MEMBERS_MAX]
            entry["live_members"] = sum(1 for m in members if m["state"] in ("firing", "recovering"))
            body.append(entry)
    return {"incidents": body, "count": len(body), "next_cursor": encode_cursor(page[-1]) if more else None}


def host_risk(runs: list[dict[str, Any]]) -> float:
    """1 - the chance none of its live faults is real: each run's confidence, a recovering
    one counted at half."""
    ok = 1.0
    for r in runs:
        ok *= 1.0 - min(1.0, max(0.0, float(r["confidence"] or 0.0))) * STATE_WEIGHT.get(r["state"], 0.0)
    return round(1.0 - ok, 4)


def joint(risks: list[float]) -> float:
    """The chance at least one host of a group has a real fault (taken as independent)."""
    ok = 1.0
    for r in risks:
        ok *= 1.0 - r
    return round(1.0 - ok, 4)


@router.get("/agent/joint-risk", response_model=JointRisk, tags=["workflow"])
def joint_risk(rt: Rt, _: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Risk per host from its live runs, and per label group (the correlator's group_by
    labels and the usual topology labels): hosts at risk, hosts known, the largest risk
    and the joint risk; the riskiest first."""
    with rt.workflow.runs.read() as tx:
        live = tx.live_host_runs(limit=RISK_RUNS)
    by_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in live:
        by_host[r["host_id"]].append(r)
    hosts: list[dict[str, Any]] = []
    for host, runs in by_host.items():
        labels = rt.hot.labels(host)
        hosts.append(
            {
                "host_id": host,
                "risk": host_risk(runs),
                "labels": labels,
                "runs": [
                    {
                        k: r[k]
                        for k in ("run_id", "family", "confidence", "state", "fleet_run_id", "silenced_by")
                    }
                    for r in runs[:10]
                ],
            }
        )
    hosts.sort(key=lambda h: (-h["risk"], h["host_id"]))
    keys = list(dict.fromkeys([*rt.workflow.opts.fleet.group_by, *RISK_KEYS]))
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for h in hosts:
        for k in keys:
            if k in h["labels"]:
                groups[(k, h["labels"][k])].append(h["risk"])
    out_groups: list[dict[str, Any]] = []
    for (k, v), risks in groups.items():
        known = rt.hot.label_counts({k: v})[0]
        out_groups.append(
            {
                "label": k,
                "value": v,
                "hosts_at_risk": len(risks),
                "hosts_known": known,
                "max_risk": max(risks),
                "joint_risk": joint(risks),
                "share_at_risk": round(len(risks) / known, 4) if known else None,
            }
        )
    out_groups.sort(key=lambda g: (-g["joint_risk"], g["label"], g["value"]))
    total = rt.hot.label_counts({})[1]
    return {
        "hosts": hosts[:limit],
        "groups": out_groups[:limit],
        "fleet": {
            "hosts_known": total,
            "hosts_at_risk": len(hosts),
            "joint_risk": joint([h["risk"] for h in hosts]),
            "live_runs": len(live),
            "truncated": len(live) >= RISK_RUNS,
        },
    }


@router.get("/agent/proposed-actions", response_model=ProposedActions, tags=["workflow"])
def proposed_actions(rt: Rt, _: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """Every step awaiting an operator's decision, across runs (newest run first): what to
    approve with ``POST .../runs/{run_id}/approve`` and the plan hash it binds to."""
    with rt.workflow.runs.read() as tx:
        waiting = tx.awaiting(limit=limit)
    actions = []
    for run in waiting:
        try:
            chain = rt.workflow.load_chain(run["run_id"])
        except (ArtifactError, OSError, ValueError) as exc:
            log.warning("proposed actions: run %s's chain cannot be read: %s", run["run_id"], exc)
            continue
        plan = next((a.payload for a in chain if a.kind == "execution_plan"), None)
        if plan is None:
            continue
        for step in plan.get("steps", []):
            if step.get("decision") != "approval_required":
                continue
            actions.append(
                {
                    "run_id": run["run_id"],
                    "scope": run.get("scope", "host"),
                    "host_id": run["host_id"],
                    "family": run["family"],
                    "plan_hash": plan.get("plan_hash"),
                    "posture": plan.get("posture"),
                    "opened_at": run["created_at"],
                    **{k: step.get(k) for k in ("step", "action", "target", "parameters", "safety_class")},
                    "reversible": step.get("reversible"),
                }
            )
    return {"actions": actions, "runs": len(waiting), "count": len(actions)}


@router.get("/ha/status", response_model=HaStatus, tags=["status"])
def ha_status(rt: Rt, _: Reader) -> dict[str, Any]:
    """Who writes (single, or PostgreSQL's advisory-lock leader and followers, or replicas
    sharing the bus's partitions and who owns each), where the leader is, the analysis
    workers (the host partitions of this replica) and the fleet
    correlator's state."""
    lead = rt.leadership.describe()
    stats = rt.workflow.stats()
    analysis = stats.get("analysis", {})
    return lead | {
        "analysis": {
            # Hosts hash to the workers by host id: each worker is one partition of this replica.
            "partitions": analysis.get("workers", 0),
            "alive": analysis.get("alive"),
            "restarts": analysis.get("restarts", 0),
            "hosts": analysis.get("hosts"),
            "lag_max_s": analysis.get("lag_max_s"),
        },
        "fleet": stats.get("fleet", {}),
        # The bus consumer: which partitions this replica consumes and their lag.
        "bus": None if rt.bus is None else rt.bus.status() | {"lag": dict(sorted(rt.bus.pending.items()))},
        # Partitions: this replica's, every partition's owner, the members with their shares,
        # lag and rebuilds (controller/partitions.py).
        "partitions": rt.ownership.describe(),
    }
