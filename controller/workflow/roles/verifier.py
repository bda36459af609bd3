"""verifier -> verification_result: did the action help?

It waits for a fresh evidence window after the last change (settle time, then a
minimum number of samples; past the deadline it gives up: inconclusive), compares
the hypothesis's target signal before and after, and says improved, not_improved
or inconclusive (stale telemetry, too few samples), with hints of signals that got
worse. When the posture allows it, a not_improved result rolls back every applied
step that has rollback data, and the rollbacks are recorded here and in the audit log.
"""

from __future__ import annotations

import statistics
from typing import Any

from controller.artifacts import Status
from controller.workflow.roles import fleet
from controller.workflow.roles.base import NotReady, Output, Role, StageContext, register
from controller.workflow.roles.observer import KEY_SIGNALS

IMPROVED = 0.10  # the target signal's median fell by at least this share
WORSE = 0.25  # another key signal's median rose by more than this share: a regression hint
BEFORE_SAMPLES = 10
MIN_DURING = 3  # samples since the fault began, at least, to compare against them alone


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def target_signal(ctx: StageContext, family: str) -> str | None:
    for f in ctx.previous("anomaly_finding").payload.get("findings", []):
        if f.get("family") == family:
            return str(f["signal"])
    return None


@register
class Verifier(Role):
    kind = "verification_result"

    def compute(self, ctx: StageContext) -> Output:
        if hasattr(ctx.actions, "recorded_verification"):  # a replay: never waits, reads or rolls back
            recorded = ctx.actions.recorded_verification or {
                "verdict": "inconclusive",
                "reason": "the run had not verified when it was replayed",
                "compared_signals": [],
            }
            verdict = recorded["verdict"]
            status: Status = (
                "skipped" if verdict == "skipped" else "ok" if verdict == "improved" else "degraded"
            )
            return Output(payload=recorded, status=status)
        execution = ctx.previous("execution_result").payload
        applied = [r for r in execution.get("results", []) if r.get("changed_host")]
        if not applied:
            reason = "dry_run" if execution.get("dry_run", True) else "nothing changed on the host"
            return Output(
                payload={"verdict": "skipped", "reason": reason, "compared_signals": []}, status="skipped"
            )
        if fleet.is_fleet(ctx):
            # A fleet action (a paused rollout) shows in its members, each verified on its host.
            why = "a fleet action is judged by its member runs' lifecycle (live_members of the incident)"
            return Output(
                payload={"verdict": "inconclusive", "reason": why, "compared_signals": []}, status="degraded"
            )
        signal = target_signal(ctx, ctx.run["family"])
        opts = ctx.actions.opts
        at = max(float(r.get("applied_at") or 0) for r in applied)
        after_ev = ctx.fresh(at + opts.verify_settle_s) if ctx.fresh is not None else None
        after = after_ev.values(signal) if after_ev is not None and signal else []
        now = ctx.clock()
        if len(after) < opts.verify_min_samples and now < at + opts.verify_deadline_s:
            raise NotReady(
                now + max(1.0, opts.verify_settle_s / 2), "waiting for fresh samples after the action"
            )
        before = during_fault(ctx, signal) if signal else []
        b, a = _median(before), _median(after)
        payload: dict[str, Any] = {
            "target_signal": signal,
            "before": {"median": b, "samples": len(before)},
            "after": {"median": a, "samples": len(after), "from": at + opts.verify_settle_s},
            "compared_signals": [signal] if signal else [],
        }
        if signal is None or not before:
            verdict, reason = "inconclusive", "no target signal in the stored window"
        elif len(after) < opts.verify_min_samples:
            verdict, reason = "inconclusive", f"{len(after)} sample(s) after the action by the deadline"
        elif after_ev is not None and after_ev.not_fresh():
            verdict, reason = (
                "inconclusive",
                "telemetry after the action is not fresh: " + ", ".join(sorted(after_ev.not_fresh())),
            )
        else:
            assert a is not None and b is not None
            if a <= b * (1 - IMPROVED):
                verdict, reason = "improved", f"{signal} median {b:.4g} -> {a:.4g}"
            else:
                verdict, reason = "not_improved", f"{signal} median {b:.4g} -> {a:.4g}"
        payload["verdict"], payload["reason"] = verdict, reason
        payload["regression_hints"] = regressions(ctx, after_ev, skip=signal) if after_ev is not None else []
        rollbacks = []
        if verdict == "not_improved" and opts.rollback_on_not_improved:
            plan_hash = ctx.previous("execution_plan").payload.get("plan_hash")
            for r in applied:
                if r.get("rollback"):
                    why = f"not improved: {reason}"
                    rollbacks.append(
                        ctx.actions.rollback(
                            ctx.run["run_id"], r, actor="verifier", why=why, plan_hash=plan_hash
                        )
                    )
        payload["rollbacks"] = rollbacks
        return Output(payload=payload, status="ok" if verdict == "improved" else "degraded")


def during_fault(ctx: StageContext, name: str) -> list[float]:
    """The window's last BEFORE_SAMPLES points of a signal taken since the fault began: a
    fault detected within seconds leaves calm samples among the last ten, and comparing the
    change against those would call a fix that worked no better than before."""
    points = ctx.evidence.tail(name, BEFORE_SAMPLES)
    began = ctx.run.get("fault_started_at")
    during = [v for t, v in points if began is None or t >= began]
    return during if len(during) >= MIN_DURING else [v for _, v in points]


def regressions(ctx: StageContext, after_ev: Any, skip: str | None) -> list[dict[str, Any]]:
    hints = []
    for name in KEY_SIGNALS:
        if name == skip:
            continue
        b = _median(during_fault(ctx, name))
        a = _median(after_ev.values(name))
        if a is None or b is None:
            continue
        if a > b * (1 + WORSE) and a - b > 1.0:
            hints.append({"signal": name, "before": round(b, 3), "after": round(a, 3)})
    return hints[:8]
