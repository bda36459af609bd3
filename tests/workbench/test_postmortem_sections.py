"""workbench.postmortem on hand-made dicts: times and durations, the status line and summary,
the impact, cause, trigger and detection sentences, the steps, approvals and verification
tables, action items, lessons, the timeline's order, the hypotheses' evidence, and a fleet
run's title and blast radius.

The default run mirrors the demo's: cpu_saturation in cgroup /ilab-demo, detected 3.5 s
after it began, step 3 (a cgroup quota) approved by demo-operator and applied at 42 s,
verification improved, resolved at 125 s."""

from __future__ import annotations

from typing import Any

import pytest

from workbench import postmortem as pm
from workbench.postmortem import Facts

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
HASH = "59c5d6fec919862851871e591d6b19c5f44471589808a7bf9e1cf80f00251bbd"
CULPRIT = {"kind": "cgroup", "id": "/ilab-demo", "comms": {"sha256sum": 2}, "service": "cgroup:/ilab-demo"}
NOT_APPROVED = "not among the steps demo-operator approved"
BLOCKED = "safe_reversible actions are off (posture.allow_safe_reversible)"


def step(n: int, action: str, target: str, decision: str, reason: str | None = None) -> dict[str, Any]:
    safety = "read_only" if action == "validate_state" else "safe_reversible"
    return {
        "step": n,
        "action": action,
        "target": target,
        "decision": decision,
        "reason": reason,
        "safety_class": safety,
    }


def artifact(kind: str, index: int, at: float, payload: dict[str, Any], status: str = "ok") -> dict[str, Any]:
    return {
        "kind": kind,
        "stage_index": index,
        "status": status,
        "started_at": at,
        "finished_at": at,
        "payload": payload,
    }


def make_body(applied: bool = True, **run: Any) -> dict[str, Any]:
    """The default run (see the module docstring); ``applied=False``: step 3 did not run,
    verification skipped. ``run`` overrides fields of the run row."""
    cause = {
        "family": "cpu_saturation",
        "confidence": 0.7793,
        "culprit": CULPRIT,
        "severity": {"level": "low", "score": 0.009, "why": "PSI cpu some 1%, full 0%"},
        "summary": "CPU 97% busy; load from sha256sum x2 in cgroup /ilab-demo",
        "symptoms": [],
    }
    hyps = [
        {**cause, "rank": 1, "supporting": ["cpu_busy_pct"], "contradicting": []},
        {
            "rank": 2,
            "family": "memory_pressure",
            "confidence": 0.31,
            "culprit": {"kind": "host", "id": "host"},
            "supporting": ["mem_available_pct"],
            "contradicting": ["PSI memory some 0%"],
        },
    ]
    finding = {"family": "cpu_saturation", "signal": "cpu_busy_pct", "value": 97.413, "threshold": 90.0}
    proposal = [
        {"action": "validate_state", "target": "/ilab-demo", "expected_effect": "confirm the culprit"},
        {"action": "renice", "target": "pid:8077", "expected_effect": "other work gets the CPU back"},
        {"action": "renice", "target": "pid:8076", "expected_effect": "other work gets the CPU back"},
        {"action": "cgroup_cpu_quota", "target": "cgroup:/ilab-demo", "expected_effect": "cap the hog"},
    ]
    steps = [
        step(0, "validate_state", "/ilab-demo", "allowed"),
        step(1, "renice", "pid:8077", "approval_required"),
        step(2, "renice", "pid:8076", "approval_required"),
        step(3, "cgroup_cpu_quota", "cgroup:/ilab-demo", "approval_required"),
    ]
    results: list[dict[str, Any]] = [
        {"step": 0, "action": "validate_state", "target": "/ilab-demo", "outcome": "validated"},
        {"step": 1, "action": "renice", "target": "pid:8077", "outcome": "not_run", "reason": NOT_APPROVED},
        {"step": 2, "action": "renice", "target": "pid:8076", "outcome": "not_run", "reason": NOT_APPROVED},
    ]
    quota = {"step": 3, "action": "cgroup_cpu_quota", "target": "cgroup:/ilab-demo"}
    if applied:
        results.append({**quota, "outcome": "applied", "applied_at": T0 + 42})
        verdict: dict[str, Any] = {
            "verdict": "improved",
            "reason": "cpu_busy_pct median 87.06 -> 51.72",
            "target_signal": "cpu_busy_pct",
            "before": {"median": 87.065},
            "after": {"median": 51.724},
            "regression_hints": [{"signal": "psi_cpu_some", "before": 0.48, "after": 12.78}],
        }
    else:
        results.append({**quota, "outcome": "not_run", "reason": NOT_APPROVED})
        verdict = {"verdict": "skipped", "reason": "nothing changed on the host"}
    report = {
        "most_likely_cause": cause,
        "verification": {"verdict": verdict["verdict"]},
        "uncertainty": {"coverage": 1.0, "freshness": "fresh", "notes": []},
    }
    row = {
        "run_id": "run-1",
        "host_id": "host-a",
        "incident_id": "inc-1",
        "family": "cpu_saturation",
        "scope": "host",
        "state": "resolved",
        "flaps": 0,
        "code_version": "incidentlab-workflow/0.1.0",
        "fault_started_at": T0,
        "created_at": T0 + 3.5,
        "resolved_at": T0 + 125,
    }
    return {
        "run": row | run,
        "chain": [
            artifact("observation_summary", 0, T0 + 3.5, {"window": {"samples": 18}, "missing": []}),
            artifact("anomaly_finding", 1, T0 + 3.5, {"findings": [finding]}),
            artifact("root_cause_hypothesis", 2, T0 + 3.5, {"hypotheses": hyps}),
            artifact("remediation_proposal", 3, T0 + 3.5, {"actions": proposal}),
            artifact("execution_plan", 4, T0 + 3.5, {"plan_hash": HASH, "steps": steps}),
            artifact("execution_result", 5, T0 + 42, {"results": results}),
            artifact("verification_result", 6, T0 + 60, verdict, "ok" if applied else "skipped"),
            artifact("incident_report", 7, T0 + 61, report),
        ],
    }


def audit(kind: str, at: float, actor: str, steps: list[int] | None, reason: str = "") -> dict[str, Any]:
    return {
        "id": 1,
        "at": at,
        "actor": actor,
        "kind": kind,
        "run_id": "run-1",
        "plan_hash": HASH,
        "step": None,
        "detail": {"steps": steps, "reason": reason},
    }


GATE = {**audit("gate_decision", T0 + 3.5, "policy_gate", None), "step": 3, "detail": {"decision": "x"}}
APPROVAL = audit("approval", T0 + 40, "demo-operator", [3], "cap the cgroup")


def payload(body: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(a["payload"] for a in body["chain"] if a["kind"] == kind)
    return found


def facts(body: dict[str, Any] | None = None, *entries: dict[str, Any]) -> Facts:
    return Facts.of(body or make_body(), [GATE, APPROVAL] if not entries else list(entries))


def test_when_names_the_timezone_and_a_missing_time_is_a_dash() -> None:
    assert pm.when(T0 + 3661.9) == "2027-01-15 09:01:01 UTC"
    assert pm.when(None) == "-"


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(3.5, "3.5 s"), (42, "42 s"), (125, "2 min 5 s"), (120, "2 min"), (3720, "1 h 2 min"), (None, "-")],
)
def test_duration(seconds: float | None, said: str) -> None:
    assert pm.duration(seconds) == said


def test_a_resolved_run_with_a_change_applied() -> None:
    f = facts()
    t = pm.times(f)
    assert (t["began"], t["detected"], t["mitigated"], t["resolved"]) == (T0, T0 + 3.5, T0 + 42, T0 + 125)
    assert (t["to_detect"], t["to_mitigate"], t["to_resolve"]) == (3.5, 42, 125)
    # Open: the two renices nobody approved, and the family's lasting fix.
    assert pm.state(f) == "resolved; 3 action item(s) open"
    assert pm.title(f) == "cpu saturation on host-a"
    assert pm.summary(f) == (
        "On host-a, cpu_saturation: CPU 97% busy; load from sha256sum x2 in cgroup /ilab-demo. "
        "The fault lasted 2 min 5 s; it was detected 3.5 s after it began, mitigated 42 s after it began. "
        "The most likely cause is cgroup /ilab-demo (sha256sum x2) (confidence 0.78, high). "
        "Severity low. "
        "Mitigated by cgroup_cpu_quota on cgroup:/ilab-demo; "
        "verification: improved (cpu_busy_pct median 87.06 -> 51.72). "
        "The fault ended at 2027-01-15 08:02:05 UTC."
    )
    assert pm.header(f) == [
        ("Date", "2027-01-15 08:00:00 UTC"),
        ("Status", "resolved; 3 action item(s) open"),
        ("Authors", "written by incidentlab (incidentlab-workflow/0.1.0) from run run-1"),
        ("Host", "host-a"),
        ("Incident", "inc-1"),
    ]


def test_a_firing_run_with_nothing_applied() -> None:
    f = facts(make_body(applied=False, state="firing", resolved_at=None))
    t = pm.times(f)
    assert t["mitigated"] is None and t["to_mitigate"] is None and t["to_resolve"] is None
    assert pm.state(f) == "not resolved when written (the fault is firing); 4 action item(s) open"
    said = pm.summary(f)
    assert "The fault was still firing when this was written; it was detected 3.5 s after it began." in said
    assert "mitigated" not in said.lower()
    assert said.endswith(
        f"No change was made to the host: a read-only check (1 step); {NOT_APPROVED} (3 steps)."
    )


def test_impact_cause_trigger_and_detection() -> None:
    f = facts()
    assert pm.impact(f) == [
        "Severity low (score 0.009): PSI cpu some 1%, full 0%.",
        "Duration 2 min 5 s, from 2027-01-15 08:00:00 UTC to 2027-01-15 08:02:05 UTC.",
    ]
    assert pm.root_cause(f) == (
        "cpu_saturation: cgroup /ilab-demo (sha256sum x2), service cgroup:/ilab-demo. "
        "CPU 97% busy; load from sha256sum x2 in cgroup /ilab-demo"
    )
    assert pm.trigger(f) == (
        "cpu_busy_pct crossed its threshold at 97.41 against a threshold of 90 (cpu_saturation detector)."
    )
    assert pm.detection(f) == (
        "Detected by incidentlab's detectors (cpu_saturation) at 2027-01-15 08:00:03 UTC, "
        "3.5 s after the fault began at 2027-01-15 08:00:00 UTC."
    )
    assert pm.culprit_name({"kind": "process_tree", "id": "pid 7", "comms": {"b": 1, "a": 3}}) == (
        "process tree pid 7 (a x3, b)"
    )


def test_steps_name_the_gate_why_and_what_came_of_it() -> None:
    rows = pm.steps(facts())
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[3] == {
        "step": 3,
        "action": "cgroup_cpu_quota",
        "target": "cgroup:/ilab-demo",
        "safety": "safe_reversible",
        "gate": "approval_required",
        "why": pm.GATE_WHY["approval_required"],
        "outcome": "applied",
        "applied": "2027-01-15 08:00:42 UTC",
    }
    assert (rows[0]["why"], rows[0]["outcome"], rows[0]["applied"]) == (
        pm.GATE_WHY["allowed"],
        "validated",
        "-",
    )
    assert rows[1]["outcome"] == "not_run"


def test_approvals_say_who_which_steps_and_the_plan() -> None:
    entries = [
        GATE,
        APPROVAL,
        audit("approval", T0 + 50, "ops", None),
        audit("rejection", T0 + 55, "lead", [1, 2], "leave the processes alone"),
    ]
    rows = pm.approvals(facts(None, *entries))
    assert rows == [
        {
            "at": "2027-01-15 08:00:40 UTC",
            "who": "demo-operator",
            "decision": "approved",
            "plan": "59c5d6fec919",
            "steps": "3",
            "reason": "cap the cgroup",
        },
        {
            "at": "2027-01-15 08:00:50 UTC",
            "who": "ops",
            "decision": "approved",
            "plan": "59c5d6fec919",
            "steps": "all that needed it",
            "reason": "",
        },
        {
            "at": "2027-01-15 08:00:55 UTC",
            "who": "lead",
            "decision": "rejected",
            "plan": "59c5d6fec919",
            "steps": "1, 2",
            "reason": "leave the processes alone",
        },
    ]


def test_verification_rows_the_target_then_the_regressions() -> None:
    body = make_body()
    assert pm.verification(Facts.of(body)) == [
        {"signal": "cpu_busy_pct", "before": 87.065, "after": 51.724, "change": "-41%", "role": "target"},
        {"signal": "psi_cpu_some", "before": 0.48, "after": 12.78, "change": "+2562%", "role": "regressed"},
    ]
    payload(body, "verification_result")["regression_hints"] = [
        {"signal": "forks", "before": 0, "after": 7.5}
    ]
    assert pm.verification(Facts.of(body))[1]["change"] == "+7.5"  # from 0: absolute, not a percentage
    assert pm.verification(Facts.of(make_body(applied=False))) == []


def test_action_items_a_step_that_did_not_run_is_a_mitigation() -> None:
    body = make_body()
    payload(body, "execution_plan")["steps"][1] |= {"decision": "blocked", "reason": BLOCKED}
    results = payload(body, "execution_result")["results"]
    results[1] |= {"reason": BLOCKED}
    results[2] |= {"outcome": "dry_run", "reason": None}
    items = pm.action_items(Facts.of(body))
    assert items == [
        {
            "item": "renice on pid:8077: other work gets the CPU back",
            "type": "mitigate",
            "owner": "cgroup:/ilab-demo",
            "why": f"not run: {BLOCKED}",
        },
        {
            "item": pm.PREVENT["cpu_saturation"],
            "type": "prevent",
            "owner": "cgroup:/ilab-demo",
            "why": "so it does not recur",
        },
    ]


def test_action_items_a_change_that_did_not_help_is_investigated() -> None:
    body = make_body(family="gpu_xid")  # a family with no lasting fix named
    payload(body, "verification_result").update(verdict="not_improved", reason="cpu_busy_pct 87 -> 86")
    investigate = [i for i in pm.action_items(Facts.of(body)) if i["type"] != "mitigate"]
    assert investigate == [
        {
            "item": "find out why the change did not bring the signal back",
            "type": "investigate",
            "owner": "cgroup:/ilab-demo",
            "why": "verification not_improved: cpu_busy_pct 87 -> 86",
        }
    ]
    # Without a change applied, a verdict is no reason to investigate; without a service,
    # the owner is the culprit's.
    body = make_body(applied=False, family="gpu_xid")
    payload(body, "verification_result")["verdict"] = "not_improved"
    del payload(body, "incident_report")["most_likely_cause"]["culprit"]["service"]
    items = pm.action_items(Facts.of(body))
    assert {i["type"] for i in items} == {"mitigate"}
    assert {i["owner"] for i in items} == {"the owner of /ilab-demo"}


def test_lessons_of_a_fast_verified_run() -> None:
    assert pm.lessons(facts()) == {
        "went well": [
            "Detection took 3.5 s from the first bad sample.",
            "The cause was named with confidence 0.78, high, ahead of 1 alternative(s).",
            "The change was verified: cpu_busy_pct median 87.06 -> 51.72.",
            "Every expected source was fresh: the analysis saw the whole host.",
        ],
        "went wrong": [
            "After the change psi_cpu_some went from 0.48 to 12.78: a cost of the change, or a second fault."
        ],
        "where we got lucky": [],
    }


def test_lessons_of_a_slow_blocked_run_that_ended_on_its_own() -> None:
    body = make_body(applied=False, created_at=T0 + 90)
    payload(body, "execution_plan")["steps"][1] |= {"decision": "blocked", "reason": BLOCKED}
    said = pm.lessons(Facts.of(body))
    assert said["went wrong"][0] == "Detection took 1 min 30 s from the first bad sample."
    assert (
        f"The policy gate blocked 1 step(s) ({BLOCKED}): nothing that could have mitigated it ran on its own."
        in said["went wrong"]
    )
    assert not any("Detection" in s for s in said["went well"])
    assert not any("verified" in s for s in said["went well"] + said["went wrong"])
    assert said["where we got lucky"] == ["The fault ended without a change to the host."]


def test_timeline_is_in_time_order_and_ties_read_in_order() -> None:
    events = pm.timeline(facts())
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    # Detection and the first five stages share a second, the change and its result another.
    assert [e["event"] for e in events] == [
        "fault began (the first sample of the stretch that opened the run)",
        "detected: run run-1 opened",
        "analyzed: cpu_saturation: /ilab-demo at 0.78",
        "planned: 1 allowed, 3 approval_required",
        "approval by demo-operator (steps 3)",
        "applied cgroup_cpu_quota on cgroup:/ilab-demo",
        "executed: validate_state: validated, renice: not_run, renice: not_run, cgroup_cpu_quota: applied",
        "verified: improved: cpu_busy_pct median 87.06 -> 51.72",
        "reported: cpu_saturation (/ilab-demo); verdict improved",
        "fault ended (resolved: no longer seen)",
    ]
    assert events[0]["at"] == "2027-01-15 08:00:00 UTC" and events[-1]["at"] == "2027-01-15 08:02:05 UTC"
    # An approval at the very instant of the change comes before it.
    tied = [e["event"] for e in pm.timeline(facts(None, audit("approval", T0 + 42, "ops", [3])))]
    assert tied[4:6] == ["approval by ops (steps 3)", "applied cgroup_cpu_quota on cgroup:/ilab-demo"]


def test_timeline_a_stage_not_ok_says_so_and_a_rollback_is_listed() -> None:
    body = make_body()
    body["chain"][6]["status"] = "degraded"
    rollback = {**audit("rollback", T0 + 70, "ops", None), "step": 3, "detail": {"outcome": "rolled_back"}}
    f = Facts.of(body, [rollback])
    events = [e["event"] for e in pm.timeline(f)]
    assert "verified: improved: cpu_busy_pct median 87.06 -> 51.72 (degraded)" in events
    assert events[-3:-1] == [
        "reported: cpu_saturation (/ilab-demo); verdict improved",
        "rollback of step 3 by ops",
    ]
    assert " 1 change(s) were rolled back." in pm.resolution(f)


def test_hypotheses_annotate_the_evidence() -> None:
    rows = pm.hypotheses(facts())
    assert rows[0] == {
        "rank": 1,
        "family": "cpu_saturation",
        "culprit": "cgroup /ilab-demo (sha256sum x2)",
        "confidence": 0.78,
        "evidence for": "cpu_busy_pct 97.41 (threshold 90)",
        "evidence against": "none found",
    }
    # No finding for memory_pressure: its evidence is named plain.
    assert (rows[1]["evidence for"], rows[1]["evidence against"]) == (
        "mem_available_pct",
        "PSI memory some 0%",
    )


def test_uncertainty_names_the_runner_up() -> None:
    assert pm.uncertainty(facts()) == [
        "The cause is ranked with confidence 0.78, high.",
        "Telemetry was fresh and covered 100% of the sources this host should have.",
        "The runner-up was memory_pressure at 0.31.",
    ]


def test_a_fleet_run_is_titled_across_hosts_with_its_blast_radius() -> None:
    body = make_body(scope="fleet")
    payload(body, "incident_report")["blast_radius"] = {
        "hosts": 3,
        "zones": ["a", "b"],
        "services": ["cgroup:/ilab-workers"],
    }
    f = Facts.of(body)
    assert pm.title(f) == "cpu saturation across hosts"
    assert pm.summary(f).startswith("Across hosts, cpu_saturation: CPU 97% busy;")
    assert dict(pm.header(f))["Host"] == "fleet (see Across hosts)"
    assert "3 hosts; zones a, b; services cgroup:/ilab-workers." in pm.impact(f)
    assert pm.title(Facts.of(make_body())) == "cpu saturation on host-a"


def test_steps_an_operator_left_out_are_a_decision_not_open_work() -> None:
    body = make_body()
    payload(body, "execution_plan")["needs_approval"] = [1, 2, 3]
    f = facts(body)  # approved step 3 only: the renices were left out on purpose
    assert pm.declined(f) == {1, 2}
    assert [i["type"] for i in pm.action_items(f)] == ["prevent"]
    assert pm.state(f) == "resolved; 1 action item(s) open"
    everything = facts(body, audit("approval", T0 + 40, "ops", None))  # all of them: none left out
    assert pm.declined(everything) == set()
    assert [i["type"] for i in pm.action_items(everything)] == ["mitigate", "mitigate", "prevent"]


@pytest.mark.parametrize(
    ("seconds", "said"), [(9.97, "10 s"), (59.7, "1 min"), (9.94, "9.9 s"), (59.4, "59 s")]
)
def test_duration_rounds_before_it_picks_the_unit(seconds: float, said: str) -> None:
    assert pm.duration(seconds) == said


@pytest.mark.parametrize(
    ("uncertainty", "said"),
    [
        (
            {"freshness": "stale", "coverage": None, "notes": []},
            "Telemetry was stale: the analysis saw less.",
        ),
        ({"freshness": "stale", "notes": []}, "Telemetry was stale: the analysis saw less."),
        (
            {"freshness": "fresh", "coverage": 0.0},
            "Telemetry was fresh with 0% coverage: the analysis saw less.",
        ),
    ],
)
def test_lessons_on_telemetry_never_guess_a_coverage(uncertainty: dict[str, Any], said: str) -> None:
    body = make_body()
    payload(body, "incident_report")["uncertainty"] = uncertainty
    lessons = pm.lessons(facts(body))
    assert said in lessons["went wrong"]
    assert not any("whole host" in line for line in lessons["went well"])


def test_small_wordings() -> None:
    assert pm.culprit_name({"kind": "host", "id": "host"}) == "host"
    none = [e["event"] for e in pm.timeline(facts(None, audit("approval", T0 + 40, "ops", [])))]
    assert "approval by ops (steps none)" in none
    expired = {**audit("approval_expired", T0 + 50, "approvals", None), "detail": {"approved_by": "ops"}}
    assert "approval expired (given by ops)" in [e["event"] for e in pm.timeline(facts(None, expired))]
    # A rollback at the second its verification ended reads after it.
    rollback = {**audit("rollback", T0 + 60, "ops", None), "step": 3}
    events = [e["event"] for e in pm.timeline(facts(None, rollback))]
    assert (
        events.index("rollback of step 3 by ops")
        == events.index("verified: improved: cpu_busy_pct median 87.06 -> 51.72") + 1
    )


def test_a_pod_is_named_as_kubectl_names_it() -> None:
    from workbench.frames import culprit_label

    pod = {
        "kind": "pod",
        "id": "0b1c2d3e-aaaa-bbbb-cccc-000000000001",
        "namespace": "shop",
        "pod": "api-7d9c6b5f4-x2lkq",
        "container": "envoy",
        "workload": "shop/Deployment/api",
    }
    assert culprit_label(pod) == "shop/api-7d9c6b5f4-x2lkq/envoy"
    assert pm.culprit_name(pod) == "pod shop/api-7d9c6b5f4-x2lkq/envoy (workload shop/Deployment/api)"
    unnamed = {"kind": "pod", "id": "0b1c2d3e-aaaa-bbbb-cccc-000000000001"}  # off the API's reach
    assert culprit_label(unnamed) == "0b1c2d3e-aaaa-bbbb-cccc-000000000001"
    assert culprit_label({"kind": "cgroup", "id": "/ilab-demo"}) == "/ilab-demo"
