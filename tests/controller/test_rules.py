"""Rules an operator tunes (controller/detectors/rules.py): a rules file read through the
settings, refused with the rule and field named when bad; per-host overrides; thresholds,
`for`, labels, runbooks and families turned off, as the analysis and the engine see them."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from controller.config import WorkflowSettings
from controller.detectors import FAMILIES, build_evidence
from controller.detectors.rules import (
    DEFAULT_HOST_RULES,
    Rules,
    RulesError,
    RulesFile,
    parse_duration,
    tunables,
)
from controller.workflow.analysis import detect, rank, top_firing
from controller.workflow.options import WorkflowOptions
from controller.workflow.roles import Posture
from testkit.scenarios import FAULTS, T0, apply, window
from tests.controller.test_lifecycle import Driver

RULES = """
rules:
  - family: cpu_saturation
    params: {cpu_busy_pct: 95}
    for: 10s
    labels: {team: platform}
    runbook_url: https://runbooks.example/cpu
  - family: cpu_saturation
    match: {hosts: ["batch-*"]}
    params: {cpu_busy_pct: 99.5, psi_cpu_some: 80}
    labels: {tier: batch}
  - family: anomaly
    match: {hosts: ["quiet-*"]}
    enabled: false
  - family: anomaly
    params: {z: 4.0, max_concurrent: 5}
"""


def rules_from(text: str, tmp_path: Path) -> Rules:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return Rules.load(path)


def hyps(family: str | None, rules: Rules, host: str = "node-a", **kw: Any) -> list[Any]:
    snaps = window(family, **kw)
    ev = build_evidence(host, snaps, [], {n: "fresh" for n in snaps[-1].sources})
    hr = rules.for_host(host)
    return rank(ev, detect(ev, hr), hr)


def test_a_host_gets_the_rules_that_match_it_later_ones_over_earlier(tmp_path: Path) -> None:
    rules = rules_from(RULES, tmp_path)
    web = rules.for_host("web-1")
    assert web.params["cpu_saturation"]["cpu_busy_pct"] == 95.0
    assert web.params["cpu_saturation"]["psi_cpu_some"] == tunables("cpu_saturation")["psi_cpu_some"]
    assert web.hold_s == {"cpu_saturation": 10.0}
    assert web.labels["cpu_saturation"] == {"team": "platform"}
    assert web.runbook_url["cpu_saturation"] == "https://runbooks.example/cpu"
    assert web.general.z == 4.0 and web.general.max_concurrent == 5 and web.enabled("anomaly")
    batch = rules.for_host("batch-7")
    assert batch.params["cpu_saturation"]["cpu_busy_pct"] == 99.5
    assert batch.labels["cpu_saturation"] == {"team": "platform", "tier": "batch"}
    assert not rules.for_host("quiet-3").enabled("anomaly")
    assert rules.for_host("web-1") is web  # kept, not rebuilt per evaluation
    assert Rules().for_host("any") is DEFAULT_HOST_RULES


def test_every_family_lists_its_tunables() -> None:
    for family in FAMILIES:
        assert isinstance(tunables(family), dict)
    assert "cpu_busy_pct" in tunables("cpu_saturation") and "bytes_per_s" in tunables("network_throughput")
    assert "z" in tunables("anomaly") and "z" in tunables("host_instability")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("rules:\n  - family: cpu_saturaton\n", "unknown family 'cpu_saturaton'"),
        ("rules:\n  - family: cpu_saturation\n    params: {busy: 95}\n", "has no tunable 'busy'"),
        ("rules:\n  - family: cpu_saturation\n    params: {cpu_busy_pct: .nan}\n", "finite"),
        ("rules:\n  - family: cpu_saturation\n    for: soon\n", "not a duration"),
        ("rules:\n  - family: cpu_saturation\n    for: 2d\n", "not a duration"),
        ("rules:\n  - family: cpu_saturation\n    for: 90000\n", "between 0 and 24h"),
        ("rules:\n  - family: cpu_saturation\n    runbook_url: javascript:alert(1)\n", "runbook_url"),
        ("rules:\n  - family: cpu_saturation\n    severity: high\n", "severity"),
        ("rules:\n  - family: cpu_saturation\n    labels: {'bad key': x}\n", "label 'bad key'"),
        ("rules: 3\n", "rules"),
        ("- just a list\n", "rules file"),
    ],
)
def test_a_bad_rules_file_is_refused_with_the_rule_and_field_named(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(RulesError, match=says) as err:
        rules_from(text, tmp_path)
    assert "rules" in str(err.value)


def test_too_many_rules_are_refused(tmp_path: Path) -> None:
    text = "rules:\n" + "  - family: anomaly\n" * 2001
    with pytest.raises(RulesError, match="rules"):
        rules_from(text, tmp_path)


def test_durations() -> None:
    assert [parse_duration(x) for x in (30, "30s", "250ms", "5m", "1h", " 2.5s ")] == [
        30,
        30,
        0.25,
        300,
        3600,
        2.5,
    ]
    for bad in (True, "-1s", "1 week", "", -5):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_a_threshold_from_the_rules_decides(tmp_path: Path) -> None:
    # The scenario: CPU 98.5% busy, PSI 72%: past the defaults and 95, short of 99.5 and 80.
    rules = rules_from(RULES, tmp_path)
    assert hyps("cpu_saturation", Rules())[0].family == "cpu_saturation"
    assert not [h for h in hyps("cpu_saturation", rules, host="batch-7") if h.family == "cpu_saturation"]


def test_for_holds_a_finding_pending_until_it_has_lasted(tmp_path: Path) -> None:
    slow = rules_from("rules:\n  - family: cpu_saturation\n    for: 60s\n", tmp_path)
    pending = hyps("cpu_saturation", slow, fault_s=30)
    top = next(h for h in pending if h.family == "cpu_saturation")
    assert top.state == "pending" and top_firing(pending, 0.5) is None
    held = hyps("cpu_saturation", slow, fault_s=70)
    assert (
        held[0].family == "cpu_saturation" and held[0].state == "active" and top_firing(held, 0.5) is held[0]
    )


def test_labels_and_the_runbook_ride_on_the_hypothesis(tmp_path: Path) -> None:
    rules = rules_from(RULES, tmp_path)
    top = hyps("cpu_saturation", rules, fault_s=30)[0].to_dict()
    assert top["labels"] == {"team": "platform"} and top["runbook_url"] == "https://runbooks.example/cpu"
    assert "labels" not in hyps("cpu_saturation", Rules())[0].to_dict()  # compact without rules


def test_general_tunables_and_a_family_turned_off(tmp_path: Path) -> None:
    def faults(d: dict[str, Any], i: int, faulty: bool) -> None:
        if faulty:
            apply(d, "host.vmstat_rates.pgmajfault_per_s", 350)

    base = [h.family for h in hyps(None, Rules(), calm_s=200, fault_s=20, tweak=faults)]
    assert "anomaly" in base
    off = rules_from(RULES, tmp_path)
    assert "anomaly" not in [
        h.family for h in hyps(None, off, host="quiet-1", calm_s=200, fault_s=20, tweak=faults)
    ]
    deaf = rules_from("rules:\n  - family: anomaly\n    params: {z: 100000}\n", tmp_path)
    assert "anomaly" not in [h.family for h in hyps(None, deaf, calm_s=200, fault_s=20, tweak=faults)]


def test_the_settings_name_the_file_and_a_bad_one_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    opts = WorkflowOptions.from_settings(WorkflowSettings(rules_file=str(path)), Posture())
    assert opts.rules.for_host("batch-1").params["cpu_saturation"]["cpu_busy_pct"] == 99.5
    assert WorkflowOptions.from_settings(WorkflowSettings(), Posture()).rules.spec == RulesFile()
    path.write_text("rules:\n  - family: nope\n")
    with pytest.raises(RulesError, match="unknown family"):
        WorkflowOptions.from_settings(WorkflowSettings(rules_file=str(path)), Posture())
    with pytest.raises(RulesError):
        WorkflowOptions.from_settings(WorkflowSettings(rules_file=str(tmp_path / "missing.yaml")), Posture())


def test_rules_travel_to_analysis_workers_without_their_cache(tmp_path: Path) -> None:
    rules = rules_from(RULES, tmp_path)
    rules.for_host("web-1")
    copy = pickle.loads(pickle.dumps(rules))
    assert copy.spec == rules.spec and not copy._cache
    assert copy.for_host("web-1") == rules.for_host("web-1")


def test_the_engine_opens_no_run_for_a_pending_fault_and_one_once_it_holds(tmp_path: Path) -> None:
    rules = rules_from("rules:\n  - family: cpu_saturation\n    for: 20s\n", tmp_path)
    d = Driver(tmp_path, WorkflowOptions(rules=rules))
    d.run(60)
    fault = FAULTS["cpu_saturation"][0]
    opened = d.run(40, fault)
    first = next(i for i, r in enumerate(opened) if r is not None)
    assert first >= 20  # held for its `for` first (the default opens within a few samples)
    runs = d.runs()
    assert len(runs) == 1 and runs[0]["family"] == "cpu_saturation"
    hyp = d.eng.load_chain(runs[0]["run_id"])
    assert hyp is not None


ALERTS = """
alerts:
  - alert: blocked_tasks
    expr: procs_blocked > 4 and (psi_io_some > 10 or disk_util_max_pct >= 90)
    for: 10s
    confidence: 0.8
    labels: {team: storage}
    runbook_url: https://runbooks.example/blocked
    summary: tasks stuck on IO
"""


def blocked(d: dict[str, Any], i: int, faulty: bool) -> None:
    if faulty:
        apply(d, "host.cpu.procs_blocked", 6)
        apply(d, "psi.io.some.avg10", 15.0)


def test_an_alert_of_ones_own_fires_from_its_expression(tmp_path: Path) -> None:
    rules = rules_from(ALERTS, tmp_path)
    hyps_now = hyps(None, rules, calm_s=200, fault_s=30, tweak=blocked)
    top = hyps_now[0]
    assert top.family == "blocked_tasks" and top.state == "active" and top.confidence == 0.8
    assert top.culprit["rule"] == "blocked_tasks" and top.culprit["since"] == T0 + 200
    assert top.summary == "tasks stuck on IO" and top.supporting == [
        "procs_blocked",
        "psi_io_some",
        "disk_util_max_pct",
    ]
    d = top.to_dict()
    assert d["labels"] == {"team": "storage"} and d["runbook_url"] == "https://runbooks.example/blocked"
    assert top_firing(hyps_now, 0.5) is top  # what it moved rides on it
    assert not [h for h in hyps(None, rules, calm_s=230, fault_s=0) if h.family == "blocked_tasks"]


def test_an_alert_is_pending_until_it_has_held_for_its_for(tmp_path: Path) -> None:
    rules = rules_from(ALERTS.replace("for: 10s", "for: 60s"), tmp_path)
    early = [
        h for h in hyps(None, rules, calm_s=200, fault_s=30, tweak=blocked) if h.family == "blocked_tasks"
    ]
    assert early and early[0].state == "pending" and top_firing(early, 0.5) is None
    late = [
        h for h in hyps(None, rules, calm_s=200, fault_s=70, tweak=blocked) if h.family == "blocked_tasks"
    ]
    assert late and late[0].state == "active"


def test_an_alert_applies_only_where_it_matches(tmp_path: Path) -> None:
    rules = rules_from(
        ALERTS.replace("    for: 10s\n", "    for: 10s\n    match: {hosts: [db-*]}\n"), tmp_path
    )
    assert [
        h
        for h in hyps(None, rules, host="db-1", calm_s=200, fault_s=30, tweak=blocked)
        if h.family == "blocked_tasks"
    ]
    assert not [
        h for h in hyps(None, rules, calm_s=200, fault_s=30, tweak=blocked) if h.family == "blocked_tasks"
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alerts:\n  - alert: x\n    expr: 'a > '\n", "expected num at the end"),
        ("alerts:\n  - alert: cpu_saturation\n    expr: 'a > 1'\n", "built-in family"),
        ("alerts:\n  - alert: x\n    expr: 'a > 1'\n  - alert: x\n    expr: 'b > 1'\n", "named twice: x"),
        ("alerts:\n  - alert: Bad-Name\n    expr: 'a > 1'\n", "alert"),
        ("alerts:\n  - alert: x\n    expr: 'a > 1'\n    confidence: 2\n", "confidence"),
    ],
)
def test_a_bad_alert_is_refused_naming_it(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(RulesError, match=re.escape(says)):
        rules_from(text, tmp_path)
