"""Incidents that span hosts: the fleet correlator, fleet incidents, their chains and members.

The fleet tests replay recorded windows (testkit/windows, real faults on this machine) as
many hosts through the real hot state and engine, one sample a second per host, hosts
labelled through their CollectorInfo as a collector sends it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import FleetSettings
from controller.detectors import Evidence
from controller.topology import clean_labels, labels_from_info
from controller.workflow.analysis import Hypothesis
from controller.workflow.fleet import FLEET_HOST, Correlator, FleetGroup, Sighting, blast_radius, correlate
from testkit.fleet import Fleet, Playback, calm_snap, play_together, recorded
from testkit.scenarios import T0

# --- the correlator, pure --------------------------------------------------------------------------


def sighting(
    host: str, family: str = "cpu_saturation", service: str | None = "unit:api.service", **kw: Any
) -> Sighting:
    series = kw.pop("series", [(T0 + i, float(i % 3)) for i in range(30)])
    labels = kw.pop("labels", {"cluster": "prod", "zone": "a"})
    return Sighting(
        host, f"run-{host}", family, service, labels, 0.8, kw.pop("at", 100.0), None, "sig", series, **kw
    )


def fill(c: Correlator, items: list[Sighting]) -> None:
    with c._lock:
        for s in items:
            c._sightings[s.host] = s


def test_the_same_family_on_one_service_is_one_group_from_min_hosts() -> None:
    c = Correlator(FleetSettings(min_hosts=3))
    fill(c, [sighting("h1"), sighting("h2")])
    assert c.groups(101.0) == []
    fill(
        c,
        [
            sighting("h3", labels={"cluster": "prod", "zone": "b"}),
            sighting("h4", service="unit:other.service"),
        ],
    )
    (g,) = c.groups(101.0)
    assert g.method == "same_service" and g.hosts == ["h1", "h2", "h3"] and g.service == "unit:api.service"
    assert g.group == {"cluster": "prod"}  # zones differ: only the cluster is shared
    assert g.fingerprint == FleetGroup(g.key, "x", "y", None, {}, ()).fingerprint  # built from the key alone


def test_host_level_culprits_group_by_their_label_group_only() -> None:
    c = Correlator(FleetSettings(min_hosts=3))
    fill(c, [sighting(f"a{i}", "tcp_retransmit_surge", None) for i in range(3)])
    fill(c, [sighting(f"b{i}", "tcp_retransmit_surge", None, labels={"zone": "b"}) for i in range(2)])
    fill(c, [sighting(f"n{i}", "tcp_retransmit_surge", None, labels={}) for i in range(4)])  # unlabelled
    (g,) = c.groups(101.0)
    assert (
        g.method == "same_group"
        and g.hosts == ["a0", "a1", "a2"]
        and g.group == {"cluster": "prod", "zone": "a"}
    )


def test_old_sightings_leave_the_window_and_the_bound_holds() -> None:
    c = Correlator(FleetSettings(min_hosts=3, window_s=60, max_hosts=10))
    fill(c, [sighting("h1", at=10.0), sighting("h2", at=50.0), sighting("h3", at=60.0)])
    assert len(c.groups(65.0)) == 1
    assert c.groups(115.0) == [] and len(c) == 1  # h1 and h2 aged out
    ev = Evidence("x", 0, 1, 1, series={"sig": [(0.0, 1.0)]})
    top = Hypothesis(
        1, "cpu_saturation", 0.9, {"kind": "unit", "id": "a", "service": "unit:a"}, "", "", [], [], [], "fp"
    )
    for i in range(25):
        c.observe(f"x{i}", "r", top, ev, 200.0, None)
    assert len(c) == 10 and c.evictions >= 15


def ramp(start: float, at: int, shift: float = 0.0, noise: int = 0) -> list[tuple[float, float]]:
    """A signal that steps up at ``at`` s, on a clock ``shift`` s off the others."""
    return [(start + shift + i, (10.0 if i >= at else 1.0) + ((i * 7 + noise) % 3) * 0.1) for i in range(120)]


def test_hosts_degrading_together_are_grouped_even_with_different_families() -> None:
    c = Correlator(FleetSettings(min_hosts=3, window_s=120))
    together = [
        sighting("c1", "cpu_saturation", None, series=ramp(T0, 80, noise=1), labels={"zone": "c"}),
        sighting("c2", "io_pressure", None, series=ramp(T0, 80, shift=3.0, noise=2), labels={"zone": "c"}),
        sighting("c3", "memory_pressure", None, series=ramp(T0, 81, noise=0), labels={"zone": "c"}),
    ]
    apart = sighting("c4", "fd_exhaustion", None, series=ramp(T0, 20), labels={"zone": "c"})
    flat = sighting(
        "c5", "nic_errors", None, series=[(T0 + i, 5.0) for i in range(120)], labels={"zone": "c"}
    )
    fill(c, [*together, apart, flat])
    (g,) = c.groups(101.0)
    assert g.method == "correlated" and g.hosts == ["c1", "c2", "c3"], g
    assert all(r >= 0.7 for _, _, r in g.correlation) and len(g.correlation) == 3
    # The seed's threshold is a setting: at 0.999 nothing is that alike.
    strict = Correlator(FleetSettings(min_hosts=3, window_s=120, pearson=0.999))
    fill(strict, together)
    assert strict.groups(101.0) == []


def test_correlate_needs_shared_bins_and_movement() -> None:
    short = sighting("s", series=[(T0, 1.0), (T0 + 1, 2.0)])
    flat = sighting("f", series=[(T0 + i, 3.0) for i in range(60)])
    moving = sighting("m", series=ramp(T0, 30))
    assert correlate([short, moving], 0.7, 120) == []
    assert correlate([flat, moving], 0.7, 120) == []
    nan = sighting("n", series=[(T0 + i, float("nan")) for i in range(60)])
    assert correlate([nan, moving], 0.7, 120) == []


def test_blast_radius_shares() -> None:
    members = tuple(sighting(f"h{i}", labels={"cluster": "prod", "zone": "a"}) for i in range(4))
    g = FleetGroup("k", "same_service", "cpu_saturation", "unit:api.service", {"cluster": "prod"}, members)
    r = blast_radius(g, lambda match: (10 if match == {"cluster": "prod"} else 0, 40))
    assert r["hosts"] == 4 and r["zones"] == ["a"] and r["clusters"] == ["prod"]
    assert r["cluster_share"] == 0.4 and r["share_of_known"] == 0.1 and r["services"] == ["unit:api.service"]


def test_controller_reads_labels_as_untrusted() -> None:
    assert clean_labels({"zone": "a", "Bad": "x", "rack": 7, "x": "y" * 500}) == ({"zone": "a"}, 3)
    assert clean_labels(None) == ({}, 0) and clean_labels(["zone"]) == ({}, 1)
    assert labels_from_info(b'{"labels": {"zone": "a"}, "other": 1}') == ({"zone": "a"}, 0)
    assert labels_from_info(b"[1,2]") == ({}, 1)
    many = {f"l{i:02d}": "v" for i in range(40)}
    got, dropped = clean_labels(many)
    assert len(got) == 32 and dropped == 8


# --- a fleet through the real engine -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+psycopg://")
    f = Fleet(tmp_path, url)
    yield f
    f.db.dispose()


def test_six_hosts_one_fault_one_fleet_incident_and_one_unrelated_run(fleet: Fleet) -> None:
    """20 hosts: six in zone a run the same recorded fault (four workers in one cgroup), one in
    zone b an unrelated one (a program OOM-looping in its cgroup), thirteen stay calm."""
    zone_a = [f"node-a{i}" for i in range(6)]
    calm_hosts = [f"node-c{i}" for i in range(13)]
    labels = {h: {"cluster": "prod", "zone": "a"} for h in zone_a} | {
        "node-b0": {"cluster": "prod", "zone": "b"}
    }
    labels |= {h: {"cluster": "prod", "zone": "a" if i % 2 else "b"} for i, h in enumerate(calm_hosts)}
    t0 = T0
    # Members start their fault a few seconds apart, as a rollout reaches them.
    plays = {h: recorded("cpu_workers_cgroup", t0 + 2 * i) for i, h in enumerate(zone_a)}
    plays["node-b0"] = recorded("memory_pressure", t0)
    playback = Playback(plays, labels)
    for step in range(125):
        fleet.t = t0 + step
        playback.feed(fleet)
        for i, h in enumerate(calm_hosts):
            fleet.feed(h, calm_snap(step, fleet.t), labels[h], evaluate=step % 10 == i % 10)
        fleet.eng.triggers.fleet_pass()
    fleets = fleet.runs(scope="fleet")
    assert len(fleets) == 1, [(r["family"], r["culprit"]) for r in fleets]
    (inc,) = fleets
    culprit = json.loads(inc["culprit"])
    assert inc["host_id"] == FLEET_HOST and inc["family"] == "cpu_saturation"
    assert culprit["service"] == "cgroup:/ilab-workers" and culprit["hosts"] >= 3  # as it opened
    with fleet.eng.runs.read() as tx:
        members = tx.fleet_members(inc["run_id"], limit=100)
    assert sorted(m["host_id"] for m in members) == zone_a
    hosts = fleet.runs(scope="host")
    # Each faulty host has one run; the six are members; nothing else opened a run.
    assert sorted(r["host_id"] for r in hosts) == sorted([*zone_a, "node-b0"]), [
        (r["host_id"], r["family"]) for r in hosts
    ]
    alone = [r for r in hosts if r["fleet_run_id"] is None]
    assert [(r["host_id"], r["family"]) for r in alone] == [("node-b0", "memory_pressure")]
    # The fleet incident's own chain: eight stages, an observation across hosts, a blast radius.
    chain = fleet.eng.load_chain(inc["run_id"])
    assert [a.kind for a in chain][:4] == [
        "observation_summary",
        "anomaly_finding",
        "root_cause_hypothesis",
        "remediation_proposal",
    ]
    obs = chain[0].payload
    assert obs["scope"] == "fleet" and obs["member_count"] >= 3
    hyp = chain[2].payload["hypotheses"][0]
    radius = hyp["blast_radius"]
    assert radius["zones"] == ["a"] and radius["clusters"] == ["prod"] and radius["known_hosts"] == 20
    assert "cgroup:/ilab-workers" in hyp["summary"]
    # The faults ended: every member resolves, then the fleet incident does.
    for step in range(125, 170):
        fleet.t = t0 + step
        for h, snaps in plays.items():
            snap = copy.deepcopy(snaps[-1] if h == "node-b0" else plays[h][min(40, len(snaps) - 1)])
            snap["ts"] = fleet.t
            fleet.feed(h, snap, labels[h])
        fleet.eng.triggers.fleet_pass()
    done = fleet.eng.load_run(inc["run_id"])
    assert done is not None and done["state"] == "resolved" and done["resolved_at"] is not None


def test_correlated_hosts_with_different_families_are_one_fleet_incident(fleet: Fleet) -> None:
    hosts = {"node-x1": "cpu_workers_cgroup", "node-x2": "io_pressure", "node-x3": "runaway_forks"}
    plays = {h: recorded(name, T0) for h, name in hosts.items()}
    play_together(fleet, plays, {h: {"cluster": "prod", "zone": "c"} for h in hosts}, 92)
    fleets = fleet.runs(scope="fleet")
    assert len(fleets) == 1 and json.loads(fleets[0]["culprit"])["method"] == "correlated", fleets
    with fleet.eng.runs.read() as tx:
        members = tx.fleet_members(fleets[0]["run_id"], limit=10)
    assert sorted(m["host_id"] for m in members) == sorted(hosts)
    assert len({m["family"] for m in members}) == 3


def test_fleet_off_groups_nothing(tmp_path: Path) -> None:
    f = Fleet(tmp_path, enabled=False)
    try:
        for step in range(92):
            f.t = T0 + step
            for i in range(3):
                snaps = recorded("cpu_workers_cgroup", T0)
                if step < len(snaps):
                    f.feed(f"h{i}", snaps[step], {"zone": "a"})
            assert f.eng.triggers.fleet_pass() == 0
        assert (
            len(f.runs(scope="host")) == 3 and f.runs(scope="fleet") == [] and len(f.eng.triggers.fleet) == 0
        )
    finally:
        f.db.dispose()


@pytest.mark.parametrize(("impacting", "decision"), [(False, "blocked"), (True, "approval_required")])
def test_a_deployments_fleet_incident_proposes_pausing_its_rollout(
    tmp_path: Path, impacting: bool, decision: str
) -> None:
    from controller.workflow.roles import Posture

    f = Fleet(tmp_path, posture=Posture(allow_impacting=impacting))
    try:
        members = [
            sighting(f"node-{i}", "cpu_saturation", "workload:shop/Deployment/api", at=f.t + 0.5)
            for i in range(3)
        ]
        fill(f.eng.triggers.fleet, members)
        assert f.eng.triggers.fleet_pass() == 1
        (inc,) = f.runs(scope="fleet")
        chain = f.eng.load_chain(inc["run_id"])
        proposal = chain[3].payload["actions"]
        assert [a["action"] for a in proposal] == ["pause_rollout"]
        assert proposal[0]["parameters"] == {"namespace": "shop", "name": "api"}
        (step,) = chain[4].payload["steps"]
        assert step["decision"] == decision
        want = "awaiting_approval" if impacting else "completed"
        assert (f.eng.load_run(inc["run_id"]) or {})["status"] == want
    finally:
        f.db.dispose()


def test_an_approved_rollout_pause_is_applied_and_judged_by_the_members(tmp_path: Path) -> None:
    from controller.actuators import HostEnv, KubeTarget
    from controller.workflow.roles import Posture

    from .fake_kube import FakeKube

    f = Fleet(tmp_path, posture=Posture(dry_run=False, allow_impacting=True))
    try:
        with FakeKube() as kube:
            f.eng.execution.env = HostEnv(kube=KubeTarget(kube.url))
            fill(
                f.eng.triggers.fleet,
                [sighting(f"n{i}", service="workload:shop/Deployment/api", at=0.5) for i in range(3)],
            )
            f.eng.triggers.fleet_pass()
            (inc,) = f.runs(scope="fleet")
            assert inc["status"] == "awaiting_approval"
            plan = f.eng.load_chain(inc["run_id"])[4].payload
            f.eng.decisions.approve(
                inc["run_id"], plan["plan_hash"], steps=None, actor="ops", reason="stop the rollout"
            )
            f.eng.execute(inc["run_id"])
            assert kube.deployment["spec"]["paused"] is True
            chain = f.eng.load_chain(inc["run_id"])
            (result,) = chain[5].payload["results"]
            assert result["action"] == "pause_rollout" and result["outcome"] == "applied"
            verdict = chain[6].payload
            assert verdict["verdict"] == "inconclusive" and "member runs" in verdict["reason"]
            assert (f.eng.load_run(inc["run_id"]) or {})["status"] == "completed"
    finally:
        f.db.dispose()
