"""A run's postmortem as data: the sections of the Google SRE book's template (summary,
impact, root cause and trigger, detection, resolution, action items, lessons, timeline,
supporting information), made from the run, its chain and its audit trail.

Pure functions over what the API answers (``Facts.of(body, audit)``), so
notebooks/postmortem.ipynb stays a thin page of calls and every sentence is tested on
dicts. docs/postmortem.md compares the result with the template, incident.io and PagerDuty.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

APPLIED = ("applied", "settled_applied")
RAN = (*APPLIED, "validated", "dry_run")
DECISIONS = ("approval", "rejection", "approval_expired")
# What each family's fix is, as the action items name it (prevent, after the mitigation).
PREVENT = {
    "cpu_saturation": "cap the workload's CPU (a cgroup quota or a Kubernetes limit) where it is deployed",
    "cgroup_cpu_throttling": "size the cgroup's CPU quota to what the workload needs at peak",
    "memory_pressure": "set a memory limit or fix the growth of the workload that took the memory",
    "io_pressure": "move the writer to its own device or throttle it (io.max)",
    "runaway_forks": "set a pids limit on the workload's cgroup",
    "fd_exhaustion": "raise the limit or fix the descriptor leak in the workload",
    "listen_queue_overflow": "raise the listen backlog or add capacity behind the listener",
    "tcp_retransmit_surge": "find the lossy path (NIC, link, peer) the retransmits point at",
    "nic_errors": "check the NIC, cable and switch port the errors come from",
}


GATE_WHY = {
    "approval_required": "changes the host: an operator approves it first",
    "allowed": "reads only, or allowed by the posture",
}


_MD_ACTIVE = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md(text: Any) -> str:
    """Data (a cgroup path, a process name, a label a collector sent) as Markdown that shows
    it literally: HTML escaped, Markdown's active characters backslashed, so nothing in it
    becomes a tag, a link or emphasis in the report."""
    out = _MD_ACTIVE.sub(r"\\\1", html.escape(str(text), quote=False))
    return "\n".join("\\" + line if line[:1] in "-=" else line for line in out.split("\n"))


def when(t: float | None) -> str:
    """A time as a reader wants it: to the second, the timezone named."""
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(s: float | None) -> str:
    """3.5 s, 2 min 5 s, 1 h 2 min."""
    if s is None:
        return "-"
    if round(s, 1) < 10:
        return f"{s:.1f} s"
    if round(s) < 60:
        return f"{s:.0f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def _payload(chain: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next((a["payload"] for a in chain if a["kind"] == kind), {})


@dataclass
class Facts:
    """What a postmortem is written from: the run row, its chain's payloads, its audit."""

    run: dict[str, Any]
    chain: list[dict[str, Any]]
    audit: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, body: dict[str, Any], audit: list[dict[str, Any]] | None = None) -> Facts:
        return cls(body["run"], body["chain"], list(audit or []))

    @property
    def report(self) -> dict[str, Any]:
        return _payload(self.chain, "incident_report")

    @property
    def cause(self) -> dict[str, Any]:
        cause: dict[str, Any] = self.report.get("most_likely_cause") or {}
        return cause

    @property
    def plan(self) -> dict[str, Any]:
        return _payload(self.chain, "execution_plan")

    @property
    def results(self) -> dict[int, dict[str, Any]]:
        return {r["step"]: r for r in _payload(self.chain, "execution_result").get("results", [])}

    @property
    def verification(self) -> dict[str, Any]:
        return _payload(self.chain, "verification_result")

    @property
    def findings(self) -> list[dict[str, Any]]:
        findings: list[dict[str, Any]] = _payload(self.chain, "anomaly_finding").get("findings", [])
        return findings

    @property
    def hypotheses(self) -> list[dict[str, Any]]:
        hyps: list[dict[str, Any]] = _payload(self.chain, "root_cause_hypothesis").get("hypotheses", [])
        return hyps

    @property
    def fleet(self) -> bool:
        return self.run.get("scope") == "fleet" or self.report.get("scope") == "fleet"

    def applied(self) -> list[dict[str, Any]]:
        return [r for r in self.results.values() if r.get("outcome") in APPLIED]

    def decisions(self) -> list[dict[str, Any]]:
        return [e for e in self.audit if e.get("kind") in DECISIONS]

    def rollbacks(self) -> list[dict[str, Any]]:
        return [e for e in self.audit if e.get("kind") == "rollback"]


def culprit_name(culprit: dict[str, Any]) -> str:
    """A culprit as an SRE says it: the workload or service when known, then what it is."""
    from workbench.frames import culprit_label

    kind, cid = culprit.get("kind") or "", culprit_label(culprit) or "?"
    comms = culprit.get("comms") or {}
    what = ", ".join(f"{c} x{n}" if n > 1 else str(c) for c, n in sorted(comms.items()))
    workload = culprit.get("workload")
    if workload and kind in ("pod", "container"):
        what = f"workload {workload}" + (f"; {what}" if what else "")
    name = str(cid) if kind == cid else f"{kind.replace('_', ' ')} {cid}".strip()
    return f"{name} ({what})" if what else name


def where(f: Facts) -> str:
    return "across hosts" if f.fleet else f"on {f.run['host_id']}"


def title(f: Facts) -> str:
    return f"{(f.run.get('family') or 'incident').replace('_', ' ')} {where(f)}"


def times(f: Facts) -> dict[str, float | None]:
    """When the fault began, was detected (the run opened), was mitigated (the first change
    applied) and ended (resolved), and the spans between."""
    began, detected = f.run.get("fault_started_at"), f.run.get("created_at")
    resolved = f.run.get("resolved_at")
    applied = [float(r["applied_at"]) for r in f.applied() if r.get("applied_at")]
    mitigated = min(applied) if applied else None
    return {
        "began": began,
        "detected": detected,
        "mitigated": mitigated,
        "resolved": resolved,
        "to_detect": _span(began, detected),
        "to_mitigate": _span(began, mitigated),
        "to_resolve": _span(began, resolved),
    }


def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, b - a)


def state(f: Facts) -> str:
    """The postmortem's status line: the fault's state and what is left to do."""
    live = f.run.get("state") or "firing"
    todo = len(action_items(f))
    fault = "resolved" if live == "resolved" else f"not resolved when written (the fault is {live})"
    return f"{fault}; {todo} action item(s) open" if todo else fault


def header(f: Facts) -> list[tuple[str, str]]:
    t = times(f)
    version = f.run.get("code_version") or "unknown version"
    return [
        ("Date", when(t["began"] or t["detected"])),
        ("Status", state(f)),
        ("Authors", f"written by incidentlab ({version}) from run {f.run['run_id']}"),
        ("Host", "fleet (see Across hosts)" if f.fleet else str(f.run["host_id"])),
        ("Incident", str(f.run.get("incident_id") or "-")),
    ]


def summary(f: Facts) -> str:
    t = times(f)
    cause = f.cause
    culprit = culprit_name(cause.get("culprit") or {})
    lasted = (
        f"lasted {duration(t['to_resolve'])}"
        if t["to_resolve"] is not None
        else f"was still {f.run.get('state') or 'firing'} when this was written"
    )
    sev = (cause.get("severity") or {}).get("level")
    what = cause.get("summary") or "no cause was ranked"
    parts = [
        f"{_upper(where(f))}, {f.run.get('family') or 'a fault'}: {what}.",
        f"The fault {lasted}; it was detected {duration(t['to_detect'])} after it began"
        + (
            f", mitigated {duration(t['to_mitigate'])} after it began."
            if t["to_mitigate"] is not None
            else "."
        ),
        f"The most likely cause is {culprit} ({_confidence(cause.get('confidence'))})."
        if cause.get("culprit")
        else "",
        f"Severity {sev}." if sev else "",
        resolution(f),
    ]
    return " ".join(p for p in parts if p)


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _confidence(c: Any) -> str:
    if not isinstance(c, int | float):
        return "confidence unknown"
    word = "high" if c >= 0.75 else "moderate" if c >= 0.5 else "low"
    return f"confidence {c:.2f}, {word}"


def impact(f: Facts) -> list[str]:
    """How much it hurt, apart from how sure the cause is."""
    cause, t = f.cause, times(f)
    sev = cause.get("severity") or {}
    out = [
        f"Severity {sev.get('level')} (score {sev.get('score')}): {sev.get('why')}."
        if sev
        else "Severity was not assessed for this family."
    ]
    if t["to_resolve"] is not None:
        out.append(f"Duration {duration(t['to_resolve'])}, from {when(t['began'])} to {when(t['resolved'])}.")
    for s in cause.get("symptoms") or []:
        out.append(f"Also seen, explained by this cause: {s.get('family')} ({s.get('why')}).")
    radius = f.report.get("blast_radius") or {}
    if radius:
        out.append(
            f"{radius.get('hosts')} hosts; zones {', '.join(radius.get('zones') or []) or 'none named'}; "
            f"services {', '.join(radius.get('services') or []) or 'none named'}."
        )
    if f.run.get("flaps"):
        out.append(f"It came back {f.run['flaps']} time(s) after it seemed to end (flaps).")
    return out


def root_cause(f: Facts) -> str:
    cause = f.cause
    if not cause:
        return "No cause was ranked: see the hypotheses under Supporting information."
    culprit = cause.get("culprit") or {}
    service = culprit.get("service")
    return (
        f"{cause.get('family')}: {culprit_name(culprit)}"
        + (f", service {service}" if service else "")
        + f". {cause.get('summary') or ''}".rstrip()
    )


def trigger(f: Facts) -> str:
    """What set it off: the first signal that crossed its threshold, and when."""
    if not f.findings:
        return "No detector fired in the stored window."
    first = f.findings[0]
    value, limit = first.get("value"), first.get("threshold")
    over = (
        f" at {_num(value)} against a threshold of {_num(limit)}"
        if isinstance(value, int | float) and isinstance(limit, int | float)
        else ""
    )
    return f"{first.get('signal')} crossed its threshold{over} ({first.get('family')} detector)."


def _num(x: float) -> str:
    return f"{x:.4g}"


def detection(f: Facts) -> str:
    t = times(f)
    fired = ", ".join(sorted({str(x.get("family")) for x in f.findings})) or "no detector"
    return (
        f"Detected by incidentlab's detectors ({fired}) at {when(t['detected'])}, "
        f"{duration(t['to_detect'])} after the fault began at {when(t['began'])}."
    )


def resolution(f: Facts) -> str:
    applied = f.applied()
    v = f.verification
    if applied:
        acts = ", ".join(f"{r['action']} on {r.get('target')}" for r in applied)
        said = f"Mitigated by {acts}; verification: {v.get('verdict')} ({v.get('reason')})."
    elif f.plan.get("steps"):
        said = "No change was made to the host: " + _why_nothing(f) + "."
    else:
        said = "No action was proposed."
    back = [e for e in f.rollbacks() if (e.get("detail") or {}).get("outcome") == "rolled_back"]
    if back:
        said += f" {len(back)} change(s) were rolled back."
    if f.run.get("state") == "resolved":
        said += f" The fault ended at {when(f.run.get('resolved_at'))}."
    return said


def _why_nothing(f: Facts) -> str:
    reasons: dict[str, int] = {}
    for s in f.plan.get("steps", []):
        r = f.results.get(s["step"]) or {}
        if r.get("outcome") in APPLIED:
            continue
        why = r.get("reason") or s.get("reason") or s.get("decision") or "not run"
        if r.get("outcome") in ("validated", "dry_run"):
            why = "dry run" if r.get("outcome") == "dry_run" else "a read-only check"
        reasons[why] = reasons.get(why, 0) + 1
    return "; ".join(f"{why} ({n} step{'s' if n > 1 else ''})" for why, n in reasons.items())


def steps(f: Facts) -> list[dict[str, Any]]:
    """Each planned step: the gate's decision and why, and what came of it."""
    rows = []
    for s in f.plan.get("steps", []):
        r = f.results.get(s["step"]) or {}
        rows.append(
            {
                "step": s["step"],
                "action": s["action"],
                "target": s["target"],
                "safety": s.get("safety_class") or "-",
                "gate": s["decision"],
                "why": s.get("reason") or GATE_WHY.get(s["decision"], ""),
                "outcome": r.get("outcome") or "-",
                "applied": when(r.get("applied_at")) if r.get("applied_at") else "-",
            }
        )
    return rows


def approvals(f: Facts) -> list[dict[str, Any]]:
    """Who decided, when, on which plan, which steps."""
    rows = []
    for e in f.decisions():
        d = e.get("detail") or {}
        chosen = d.get("steps")
        rows.append(
            {
                "at": when(e.get("at")),
                "who": e.get("actor") or "-",
                "decision": {"approval": "approved", "rejection": "rejected"}.get(e["kind"], "expired"),
                "plan": str(e.get("plan_hash") or "-")[:12],
                "steps": "all that needed it" if chosen is None else ", ".join(map(str, chosen)) or "none",
                "reason": d.get("reason") or "",
            }
        )
    return rows


def verification(f: Facts) -> list[dict[str, Any]]:
    """Before and after, per signal compared (the target signal, then regression hints)."""
    v = f.verification
    rows = []
    if v.get("target_signal") and v.get("before"):
        b, a = (v.get("before") or {}).get("median"), (v.get("after") or {}).get("median")
        rows.append(
            {"signal": v["target_signal"], "before": b, "after": a, "change": _change(b, a), "role": "target"}
        )
    for h in v.get("regression_hints") or []:
        rows.append(
            {
                "signal": h["signal"],
                "before": h["before"],
                "after": h["after"],
                "change": _change(h["before"], h["after"]),
                "role": "regressed",
            }
        )
    return rows


def _change(b: Any, a: Any) -> str:
    if not isinstance(b, int | float) or not isinstance(a, int | float):
        return "-"
    if b == 0:
        return f"{a - b:+.4g}"
    return f"{(a - b) / abs(b):+.0%}"


def declined(f: Facts) -> set[int]:
    """Steps an operator chose to leave out: an approval of other steps of the plan. They are
    a decision, not open work."""
    out: set[int] = set()
    waiting = set(f.plan.get("needs_approval", []))
    for e in f.decisions():
        chosen = (e.get("detail") or {}).get("steps")
        if e.get("kind") == "approval" and chosen is not None:
            out |= waiting - set(chosen)
    return out


def action_items(f: Facts) -> list[dict[str, Any]]:
    """Follow-ups: each proposed change that did not run and that no operator left out on
    purpose (mitigate), a verification that did
    not confirm the fix (investigate), stale telemetry (detect), the family's lasting fix
    (prevent). The owner is the service the culprit belongs to."""
    proposal = _payload(f.chain, "remediation_proposal").get("actions", [])
    effects = {(a["action"], a["target"]): a.get("expected_effect", "") for a in proposal}
    culprit = f.cause.get("culprit") or {}
    owner = culprit.get("service") or f"the owner of {culprit.get('id') or f.run['host_id']}"
    left_out = declined(f)
    items = []
    for s in f.plan.get("steps", []):
        r = f.results.get(s["step"]) or {}
        if r.get("outcome") in RAN or s["step"] in left_out:
            continue
        why = r.get("reason") or s.get("reason") or s["decision"]
        effect = effects.get((s["action"], s["target"]))
        items.append(
            {
                "item": f"{s['action']} on {s['target']}" + (f": {effect}" if effect else ""),
                "type": "mitigate",
                "owner": owner,
                "why": f"not run: {why}",
            }
        )
    verdict = f.verification.get("verdict")
    if f.applied() and verdict in ("not_improved", "inconclusive"):
        items.append(
            {
                "item": "find out why the change did not bring the signal back",
                "type": "investigate",
                "owner": owner,
                "why": f"verification {verdict}: {f.verification.get('reason')}",
            }
        )
    stale = [n for n in (f.report.get("uncertainty") or {}).get("notes", []) if "stale" in n or "fresh" in n]
    if stale:
        items.append(
            {
                "item": "restore the telemetry that was not fresh",
                "type": "detect",
                "owner": "incidentlab operators",
                "why": stale[0],
            }
        )
    fix = PREVENT.get(str(f.run.get("family")))
    if fix:
        items.append({"item": fix, "type": "prevent", "owner": owner, "why": "so it does not recur"})
    return items


def lessons(f: Facts) -> dict[str, list[str]]:
    """What went well, what went wrong, where we got lucky: each from a fact of the run."""
    t, u, v = times(f), (f.report.get("uncertainty") or {}), f.verification
    well: list[str] = []
    wrong: list[str] = []
    lucky: list[str] = []
    if t["to_detect"] is not None:
        (well if t["to_detect"] <= 60 else wrong).append(
            f"Detection took {duration(t['to_detect'])} from the first bad sample."
        )
    conf = f.cause.get("confidence")
    if isinstance(conf, int | float):
        others = len(f.hypotheses) - 1
        (well if conf >= 0.75 else wrong).append(
            f"The cause was named with {_confidence(conf)}"
            + (f", ahead of {others} alternative(s)." if others > 0 else ".")
        )
    blocked = [s for s in f.plan.get("steps", []) if s["decision"] == "blocked"]
    if blocked:
        wrong.append(
            f"The policy gate blocked {len(blocked)} step(s) ({blocked[0].get('reason')}): "
            "nothing that could have mitigated it ran on its own."
        )
    if v.get("verdict") == "improved":
        well.append(f"The change was verified: {v.get('reason')}.")
    elif f.applied():
        wrong.append(f"The change was not verified as a fix: {v.get('verdict')} ({v.get('reason')}).")
    for h in v.get("regression_hints") or []:
        wrong.append(
            f"After the change {h['signal']} went from {_num(h['before'])} to {_num(h['after'])}: "
            "a cost of the change, or a second fault."
        )
    cov = u.get("coverage")
    partial = isinstance(cov, int | float) and cov < 1.0
    if u.get("freshness") not in (None, "fresh") or partial:
        covered = f" with {cov:.0%} coverage" if isinstance(cov, int | float) else ""
        wrong.append(
            f"Telemetry was {u.get('freshness') or 'of unknown freshness'}{covered}: the analysis saw less."
        )
    elif u:
        well.append("Every expected source was fresh: the analysis saw the whole host.")
    if f.run.get("flaps"):
        wrong.append(f"The fault flapped {f.run['flaps']} time(s) before it ended.")
    if f.run.get("state") == "resolved" and not f.applied():
        lucky.append("The fault ended without a change to the host.")
    if any((r.get("still_present") is False) for r in f.results.values()):
        lucky.append("The culprit was gone by the time the read-only check looked.")
    return {"went well": well, "went wrong": wrong, "where we got lucky": lucky}


STAGE_EVENTS = {
    "root_cause_hypothesis": "analyzed",
    "execution_plan": "planned",
    "execution_result": "executed",
    "verification_result": "verified",
    "incident_report": "reported",
}


def stage_event(kind: str, payload: dict[str, Any], status: str) -> str:
    """The stages a reader of a timeline cares about, in a few words each."""
    from workbench.frames import summary_of

    line = summary_of(kind, payload)
    return f"{STAGE_EVENTS[kind]}: {line}" + (f" ({status})" if status not in ("ok", "skipped") else "")


# Where events at the same second go, in the order they happen.
ORDER = {
    "began": 0,
    "detected": 1,
    "root_cause_hypothesis": 2,
    "execution_plan": 3,
    "decision": 4,
    "applied": 5,
    "execution_result": 6,
    "verification_result": 7,
    "rollback": 8,
    "incident_report": 9,
    "resolved": 10,
}


def timeline(f: Facts) -> list[dict[str, str]]:
    """The incident's events in time order: the fault, the stages that decide something,
    each decision and change, the end."""
    t = times(f)
    rows: list[tuple[float, int, str]] = []
    if t["began"] is not None:
        rows.append(
            (t["began"], ORDER["began"], "fault began (the first sample of the stretch that opened the run)")
        )
    if t["detected"] is not None:
        rows.append((t["detected"], ORDER["detected"], f"detected: run {f.run['run_id']} opened"))
    for a in f.chain:
        if a["kind"] in STAGE_EVENTS:
            rows.append(
                (a["finished_at"], ORDER[a["kind"]], stage_event(a["kind"], a["payload"], a["status"]))
            )
    for e in f.decisions():
        d = e.get("detail") or {}
        if e["kind"] == "approval_expired":
            what = f"approval expired (given by {d.get('approved_by') or e.get('actor')})"
        else:
            chosen = d.get("steps")
            which = "" if chosen is None else f" (steps {', '.join(map(str, chosen)) or 'none'})"
            what = f"{e['kind']} by {e.get('actor')}{which}"
        rows.append((e["at"], ORDER["decision"], what))
    for r in f.applied():
        if r.get("applied_at"):
            rows.append((r["applied_at"], ORDER["applied"], f"applied {r['action']} on {r.get('target')}"))
    for e in f.rollbacks():
        rows.append((e["at"], ORDER["rollback"], f"rollback of step {e.get('step')} by {e.get('actor')}"))
    if t["resolved"] is not None:
        rows.append((t["resolved"], ORDER["resolved"], "fault ended (resolved: no longer seen)"))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [{"at": when(at), "event": what} for at, _, what in rows]


def hypotheses(f: Facts) -> list[dict[str, Any]]:
    """Each ranked hypothesis with the evidence for and against it (a signal named as
    evidence with the value its detector saw and the threshold)."""
    seen = {(x.get("family"), x.get("signal")): x for x in f.findings}

    def said(family: str, item: str) -> str:
        x = seen.get((family, item))
        if x is None or not isinstance(x.get("value"), int | float):
            return item
        limit = x.get("threshold")
        return f"{item} {_num(x['value'])}" + (
            f" (threshold {_num(limit)})" if isinstance(limit, int | float) else ""
        )

    return [
        {
            "rank": h["rank"],
            "family": h["family"],
            "culprit": culprit_name(h.get("culprit") or {}),
            "confidence": round(float(h["confidence"]), 2),
            "evidence for": "; ".join(said(h["family"], s) for s in h.get("supporting") or []) or "-",
            "evidence against": "; ".join(h.get("contradicting") or []) or "none found",
        }
        for h in f.hypotheses
    ]


def uncertainty(f: Facts) -> list[str]:
    """How sure, in plain words."""
    u = f.report.get("uncertainty") or {}
    cov = u.get("coverage")
    out = [
        f"The cause is ranked with {_confidence(f.cause.get('confidence'))}.",
        f"Telemetry was {u.get('freshness', 'unknown')}"
        + (
            f" and covered {cov:.0%} of the sources this host should have."
            if isinstance(cov, int | float)
            else "."
        ),
    ]
    alts = [h for h in f.hypotheses if h["rank"] > 1]
    if alts:
        a = alts[0]
        out.append(f"The runner-up was {a['family']} at {float(a['confidence']):.2f}.")
    out.extend(u.get("notes") or [])
    return out


# Tables read left to right; the page prints on A4 without the notebook's wide margins.
STYLE = """<style>
table.dataframe th, table.dataframe td { text-align: left !important; vertical-align: top; }
table.dataframe { margin-left: 0; }
@media print { .jp-Cell { break-inside: avoid; } body { margin: 0; } }
</style>"""
