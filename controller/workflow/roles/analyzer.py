"""analyzer -> anomaly_finding and root_cause_hypothesis (two stages of one role).

The hypothesis stage consults incident memory ("seen before, resolved by ...") and,
when an advisor is configured, records its annotations as advice: never a decision.
"""

from __future__ import annotations

from typing import Any

from controller.detectors import DETECTORS
from controller.workflow.analysis import detect, rank
from controller.workflow.roles import fleet
from controller.workflow.roles.base import Output, Role, StageContext, register

MAX_FINDINGS = 10


@register
class AnomalyStage(Role):
    kind = "anomaly_finding"

    def compute(self, ctx: StageContext) -> Output:
        if fleet.is_fleet(ctx):
            return fleet.findings(ctx)
        findings = sorted(detect(ctx.evidence, ctx.rules), key=lambda f: (-f.score, f.family))
        return Output(
            payload={
                "detectors": sorted(DETECTORS),
                "findings": [f.to_dict() for f in findings[:MAX_FINDINGS]],
                "more": max(0, len(findings) - MAX_FINDINGS),
            },
            status="ok" if findings else "degraded",
            notes=[] if findings else ["no detector fired on the stored window"],
        )


@register
class HypothesisStage(Role):
    kind = "root_cause_hypothesis"

    def compute(self, ctx: StageContext) -> Output:
        if fleet.is_fleet(ctx):
            return fleet.hypothesis(ctx)
        hyps = rank(ctx.evidence, detect(ctx.evidence, ctx.rules), ctx.rules)
        payload: dict[str, Any] = {"hypotheses": [h.to_dict() for h in hyps]}
        notes = []
        if ctx.memory is not None:
            payload["memory"] = {
                "seen_before": True,
                "occurrences": ctx.memory["occurrences"],
                "last_run_id": ctx.memory["last_run_id"],
                "last_resolution": ctx.memory["resolution"],
            }
            notes.append(f"seen {ctx.memory['occurrences']} time(s) before")
        else:
            payload["memory"] = {"seen_before": False}
        if ctx.advisor is not None:
            payload["advisor"] = ctx.advisor.annotate(ctx.chain, payload["hypotheses"])
        if ctx.evidence.not_fresh():
            notes.append("confidence capped: telemetry is not all fresh")
        return Output(payload=payload, status="ok" if hyps else "degraded", notes=notes)
