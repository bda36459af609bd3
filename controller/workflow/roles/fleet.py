"""The stages of a fleet incident (a run of scope ``fleet``): the same artifact kinds as a host
run's, computed from the fleet evidence (controller/workflow/fleet.py ``fleet_evidence``): the
members, their blast radius, and the tail of each member's signal. Each role calls its
fleet variant here when the run's scope is fleet; the policy gate, executor and verifier
are the host run's own."""

from __future__ import annotations

from typing import Any

from controller.actuators import ACTUATORS
from controller.artifacts import EvidenceRef
from controller.workflow.roles.base import Output, StageContext, stats, window_ref

LISTED = 20  # members named in a payload (counts say how many there were)


def table(ctx: StageContext) -> dict[str, Any]:
    got = ctx.evidence.tables.get("fleet")
    return got if isinstance(got, dict) else {}


def is_fleet(ctx: StageContext) -> bool:
    return ctx.run.get("scope") == "fleet"


def member_refs(ctx: StageContext, members: list[dict[str, Any]]) -> list[EvidenceRef]:
    """The fleet window, and each listed member's own evidence (its run's window)."""
    refs = [window_ref(ctx)]
    for m in members[:LISTED]:
        run_id, host = m.get("run_id"), m.get("host_id")
        if isinstance(run_id, str) and isinstance(host, str):
            refs.append(
                EvidenceRef(
                    evidence_id=f"member:{host}",
                    kind="run",
                    host_id=host,
                    start=ctx.evidence.start,
                    end=ctx.evidence.end,
                    uri=f"workflows/evidence/{run_id}/package.json#window",
                )
            )
    return refs


def observe(ctx: StageContext) -> Output:
    t = table(ctx)
    members = t.get("members", [])
    signals = {name: stats(ctx.evidence.values(name)) for name in sorted(ctx.evidence.series)[:LISTED]}
    return Output(
        payload={
            "host_id": ctx.evidence.host_id,
            "scope": "fleet",
            "window": {"start": ctx.evidence.start, "end": ctx.evidence.end, "samples": ctx.evidence.samples},
            "method": t.get("method"),
            "group": t.get("group", {}),
            "members": [
                {k: m.get(k) for k in ("host_id", "run_id", "family", "confidence", "fault_started_at")}
                for m in members[:LISTED]
            ],
            "member_count": len(members),
            "blast_radius": {k: v for k, v in t.get("blast_radius", {}).items() if k != "host_ids"},
            "signals": signals,
        },
        status="ok" if members else "degraded",
        evidence_refs=member_refs(ctx, members),
        notes=[] if members else ["a fleet incident without members"],
    )


def findings(ctx: StageContext) -> Output:
    members = table(ctx).get("members", [])
    out = [
        {
            "family": m.get("family"),
            "host_id": m.get("host_id"),
            "run_id": m.get("run_id"),
            "signal": m.get("signal"),
            "score": m.get("confidence"),
            "culprit": m.get("culprit"),
        }
        for m in members[:LISTED]
    ]
    return Output(
        payload={"detectors": ["fleet_correlator"], "findings": out, "more": max(0, len(members) - LISTED)},
        status="ok" if out else "degraded",
    )


def _summary(t: dict[str, Any]) -> str:
    r = t.get("blast_radius", {})
    where = ", ".join(f"{k} {v}" for k, v in t.get("group", {}).items())
    what = t.get("service") or "their hosts"
    share = r.get("cluster_share") if r.get("cluster_share") is not None else r.get("share_of_known")
    tail = f" ({share:.0%} of the hosts known)" if isinstance(share, float) else ""
    if t.get("method") == "correlated":
        fams = ", ".join(sorted(r.get("families", {})))
        return f"{r.get('hosts')} hosts in {where or 'one group'} degrading together ({fams}){tail}"
    return (
        f"{t.get('family')} on {what} across {r.get('hosts')} hosts"
        + (f" in {where}" if where else "")
        + tail
    )


def hypothesis(ctx: StageContext) -> Output:
    t = table(ctx)
    members = t.get("members", [])
    radius = t.get("blast_radius", {})
    conf = [float(m.get("confidence") or 0.0) for m in members]
    confidence = sum(conf) / len(conf) if conf else 0.0
    pairs = t.get("correlation", [])
    if t.get("method") == "correlated" and pairs:
        confidence *= sum(float(p[2]) for p in pairs) / len(pairs)
    supporting = [f"{m.get('family')} on {m.get('host_id')} ({m.get('signal')})" for m in members[:LISTED]]
    contradicting = []
    known = radius.get("cluster_hosts") or radius.get("known_hosts") or 0
    if known and radius.get("hosts", 0) < known:
        contradicting.append(
            f"{known - radius['hosts']} other hosts known in the same scope show no such fault"
        )
    families = radius.get("families", {})
    if len(families) > 1:
        contradicting.append("the members' top families differ: " + ", ".join(sorted(families)))
    hyp = {
        "rank": 1,
        "family": ctx.run["family"],
        "confidence": round(confidence, 4),
        "culprit": ctx.run_culprit(),
        "summary": _summary(t),
        "method": f"fleet_{t.get('method')}",
        "supporting": supporting,
        "contradicting": contradicting,
        "expected_signals": sorted({str(m.get("signal")) for m in members if m.get("signal")})[:LISTED],
        "fingerprint": ctx.run["fingerprint"],
        "signal": "",
        "state": "active",
        "last_active": ctx.evidence.end,
        "age_s": 0.0,
        "severity": None,
        "blast_radius": {k: v for k, v in radius.items() if k != "host_ids"}
        | {"host_ids": radius.get("host_ids", [])[:LISTED]},
        "members": len(members),
    }
    return Output(payload={"hypotheses": [hyp], "memory": {"seen_before": ctx.memory is not None}})


def proposals(ctx: StageContext) -> Output:
    """A fleet incident's plan acts on what its members share (a Deployment's rollout
    paused); their host actions stay in the member runs' own plans (and approvals)."""
    t = table(ctx)
    actions = []
    service = t.get("service") or ""
    # One workload's pods failing alike on many nodes: stop its rollout, not each node's pods.
    parts = service.removeprefix("workload:").split("/") if service.startswith("workload:") else []
    if len(parts) == 3 and parts[1] == "Deployment":
        actions.append(
            {
                "for_family": ctx.run["family"],
                "for_rank": 1,
                "action": "pause_rollout",
                "target": f"deployment:{parts[0]}/{parts[2]}",
                "parameters": {"namespace": parts[0], "name": parts[2]},
                "safety_class": ACTUATORS["pause_rollout"].safety_class,
                "expected_effect": "no more of its pods replaced by the new version while it is looked at",
                "rollback": {"undo": "resume the rollout (spec.paused as it was)"},
            }
        )
    # No read-only check of its own: the members' states are the fleet's check, and each
    # member's plan validates its host.
    notes = [f"{len(t.get('members', []))} member runs keep their own host-level plans"]
    if not actions:
        notes.append("no action across hosts for this service: the members' own plans act")
    return Output(payload={"actions": actions, "scope": "fleet"}, notes=notes)


def report_extra(ctx: StageContext) -> dict[str, Any]:
    t = table(ctx)
    radius = t.get("blast_radius", {})
    return {
        "scope": "fleet",
        "blast_radius": {k: v for k, v in radius.items() if k not in ("host_ids", "families")}
        | {"host_ids": radius.get("host_ids", [])[:LISTED]},
        "members": len(t.get("members", [])),
    }
