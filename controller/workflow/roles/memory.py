"""memory -> incident_report: timeline, most likely cause, actions and outcomes, verdict, uncertainty.

The engine writes the incident-memory record (keyed by fingerprint) in the same
transaction that commits this artifact. ``at_report`` is the run as it stood when the
report was written (sightings attached, lifecycle state, flaps): it moves on while the
fault lasts, so it is no conclusion, and a replay does not compare it."""

from __future__ import annotations

from controller.store.runs import fault_times
from controller.workflow.roles import fleet
from controller.workflow.roles.base import Output, Role, StageContext, register


@register
class Memory(Role):
    kind = "incident_report"

    def compute(self, ctx: StageContext) -> Output:
        hyps = ctx.previous("root_cause_hypothesis").payload.get("hypotheses", [])
        top = hyps[0] if hyps else None
        results = ctx.previous("execution_result").payload.get("results", [])
        verdict = ctx.previous("verification_result").payload
        obs = ctx.previous("observation_summary")
        run = ctx.run
        started = run.get("fault_started_at")
        extra = fleet.report_extra(ctx) if fleet.is_fleet(ctx) else {}
        return Output(
            payload=extra
            | {
                "host_id": ctx.run["host_id"],
                "timeline": [{"stage": a.kind, "at": a.finished_at, "status": a.status} for a in ctx.chain],
                "most_likely_cause": None
                if top is None
                else {
                    "family": top["family"],
                    "culprit": top["culprit"],
                    "confidence": top["confidence"],
                    "summary": top["summary"],
                    "severity": top.get("severity"),
                    # What the cause explains: found, but symptoms of it, not faults of their own.
                    "symptoms": top.get("symptoms", []),
                },
                "alternatives": [{"family": h["family"], "confidence": h["confidence"]} for h in hyps[1:]],
                "actions": [{"action": r["action"], "outcome": r["outcome"]} for r in results],
                "verification": {"verdict": verdict.get("verdict"), "reason": verdict.get("reason")},
                "uncertainty": {
                    "freshness": obs.uncertainty.freshness,
                    "coverage": obs.uncertainty.coverage,
                    "notes": obs.uncertainty.notes,
                },
                "fault_started_at": started,
                "time_to_detect_s": fault_times(run)[0],
                "at_report": {
                    "attachments": run.get("attachments", 0),
                    "state": run.get("state", "firing"),
                    "flaps": run.get("flaps", 0),
                },
            },
            status="ok" if top else "degraded",
        )
