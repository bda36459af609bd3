"""Culprits at the level that owns the fault (controller/detectors/owners.py): pods,
containers, services, cgroups made for a workload, process trees, lone processes; the
key the fingerprint is built from survives pid churn."""

from __future__ import annotations

from typing import Any

import pytest

from controller.detectors.owners import generic_cgroup, members, owner, tree_culprit


def row(
    pid: int, comm: str, cpu: float, cgroup: str = "/user.slice", ppid: int = 1, **kw: Any
) -> dict[str, Any]:
    return {"pid": pid, "ppid": ppid, "comm": comm, "cpu_pct": cpu, "cgroup": cgroup} | kw


@pytest.mark.parametrize(
    ("path", "generic"),
    [
        ("/", True),
        ("/user.slice", True),
        ("/user.slice/user-0.slice/session-3.scope", True),
        ("/system.slice", True),
        ("/init.scope", True),
        ("/user.slice/user-1000.slice/user@1000.service/app.slice/x.service", True),
        ("/system.slice/nginx.service", False),
        ("/ilab-hogs", False),
        ("/kubepods/burstable/pod1234/abcd", False),
    ],
)
def test_generic_cgroups_name_no_owner(path: str, generic: bool) -> None:
    assert generic_cgroup(path) is generic


def test_a_pod_owns_its_processes_fault() -> None:
    rows = [
        row(10 + i, "java", 90, "/kubepods/pod-x/c1", pod_uid="uid-1", container_id="c1") for i in range(3)
    ]
    c = owner(rows, weight="cpu_pct")
    assert (c.kind, c.id, c.key) == ("pod", "uid-1", "pod:uid-1") and c.detail["count"] == 3


def test_a_container_is_named_from_its_cgroup() -> None:
    cid = "a" * 64
    c = owner([row(5, "redis", 99, f"/system.slice/docker-{cid}.scope")], weight="cpu_pct")
    assert c.kind == "container" and c.id == cid[:12] and c.key == f"container:{cid}"


def test_a_systemd_service_owns_its_workers() -> None:
    rows = [row(100 + i, "php-fpm", 80, "/system.slice/php-fpm.service", ppid=99) for i in range(4)]
    c = owner(rows, weight="cpu_pct")
    assert (c.kind, c.id) == ("unit", "php-fpm.service") and c.detail["comms"] == {"php-fpm": 4}


def test_a_cgroup_holding_only_the_workers_owns_them_and_a_shared_one_does_not() -> None:
    rows = [row(200 + i, "sha256sum", 99, "/ilab-hogs", ppid=190 + i) for i in range(2)]
    mine = [{"path": "/ilab-hogs", "pids": {"current": None, "max": None}, "procs": 4}]
    c = owner(rows, weight="cpu_pct", cgroups=mine)
    assert (c.kind, c.id, c.key) == ("cgroup", "/ilab-hogs", "cgroup:/ilab-hogs")
    assert sorted(c.detail["pids"]) == [200, 201]
    shared = [{"path": "/ilab-hogs", "pids": {"current": None, "max": None}, "procs": 40}]
    assert owner(rows, weight="cpu_pct", cgroups=shared).kind != "cgroup"
    # Without a count, a limit someone set says the cgroup is a workload's own.
    limited = [{"path": "/ilab-hogs", "pids": {}, "memory": {"max": 1 << 30}}]
    assert owner(rows, weight="cpu_pct", cgroups=limited).kind == "cgroup"
    # Neither: nothing proves it is theirs.
    assert owner(rows, weight="cpu_pct", cgroups=[{"path": "/ilab-hogs", "pids": {}}]).kind == "process"


def test_workers_of_one_parent_are_one_tree_whatever_their_pids() -> None:
    def rows(base: int) -> list[dict[str, Any]]:
        table = [row(base + i, "worker", 95 - i, "/process_api/x", ppid=4242) for i in range(4)]
        parent = row(4242, "pool", 2, "/process_api/x", ppid=1)
        return [*table, parent, row(9, "collector", 1, "/process_api/x", ppid=4242)]

    first, second = (owner(r[:4], weight="cpu_pct", all_rows=r) for r in (rows(1000), rows(5000)))
    assert (
        first.kind == "process_tree" and first.id == "pool[4242]" and first.detail["comms"] == {"worker": 4}
    )
    assert first.key == second.key and first.detail["pids"] != second.detail["pids"]
    assert "collector" in first.detail["ambiguous"]  # the parent also runs something else


def test_a_lone_process_is_keyed_by_program_not_pid() -> None:
    a = owner([row(7, "leaker", 50, "/user.slice")], weight="cpu_pct")
    b = owner([row(8, "leaker", 50, "/user.slice")], weight="cpu_pct")
    assert a.kind == "process" and a.id == "leaker[7]" and a.key == b.key == "process:leaker@/user.slice"


def test_similar_loads_under_other_parents_are_called_ambiguous() -> None:
    c = owner([row(1, "a", 90, ppid=10), row(2, "b", 85, ppid=20)], weight="cpu_pct")
    assert c.kind == "process" and "b" in c.detail["ambiguous"]


def test_no_rows_is_the_host_with_the_reason() -> None:
    c = owner([], reason="no process table")
    assert (c.kind, c.key, c.detail["reason"]) == ("host", "host", "no process table")


def test_members_are_bounded() -> None:
    m = members([row(i, f"w{i % 3}", i) for i in range(100)], "cpu_pct")
    assert len(m["pids"]) == 8 and m["pids"][0] == 99 and m["count"] == 100 and len(m["comms"]) == 3


def test_a_fork_storm_tree_takes_its_workers_cgroup() -> None:
    kids = [{"pid": 50 + i, "ppid": 40, "comm": "sh", "cgroup": "/ilab-storm"} for i in range(5)]
    c = tree_culprit(40, kids, [row(40, "spawner", 30, "/user.slice")])
    assert c.id == "spawner[40]" and c.detail["cgroup"] == "/ilab-storm" and c.key == "tree:spawner[40]"


GARBAGE: list[Any] = [None, "x", [1], {"a": 1}, float("nan"), float("inf"), -1, True, 10**30]


@pytest.mark.parametrize("junk", GARBAGE, ids=repr)
def test_garbage_in_a_row_names_some_owner_and_never_raises(junk: Any) -> None:
    """Rows come from collectors: any field of any type must not fail the evaluation."""
    rows = [
        {"pid": junk, "ppid": junk, "comm": junk, "cpu_pct": junk, "cgroup": junk, "pod_uid": None},
        row(5, "ok", 50, "/ilab-x", ppid=4),
        row(6, "ok", 40, "/ilab-x", ppid=4),
    ]
    table = [{"path": "/ilab-x", "pids": junk, "memory": junk, "cpu": junk, "procs": junk}]
    c = owner(rows, weight="cpu_pct", all_rows=rows, cgroups=table)
    assert c.kind in ("cgroup", "process_tree", "process") and c.key
    t = tree_culprit(4, rows, rows)
    assert t.key == "tree:None[4]" or t.key.startswith("tree:")


@pytest.mark.parametrize("huge", [10**400, 2**63, float("inf"), -(10**400)], ids=repr)
def test_numbers_past_a_double_weigh_nothing_and_raise_nothing(huge: Any) -> None:
    rows = [row(5, "a", huge, ppid=4), row(6, "b", huge, ppid=4), row(7, "c", 50, ppid=9)]
    c = owner(rows, weight="cpu_pct", all_rows=rows)
    assert c.key


def test_hostile_rows_never_fail_the_detectors() -> None:
    """Unhashable pids, lists for cgroup paths, numbers past a double: every detector runs."""
    from controller.detectors import build_evidence
    from controller.workflow.analysis import detect, rank
    from testkit.scenarios import window

    def hostile(d: dict[str, Any], i: int, faulty: bool) -> None:
        if not faulty:
            return
        d["processes"]["rows"][:0] = [
            {
                "pid": [1],
                "ppid": 4,
                "comm": ["x"],
                "cpu_pct": 1.7e308,
                "write_bytes_per_s": 2**62,
                "cgroup": ["y"],
            },
            {
                "pid": {"a": 1},
                "ppid": 4,
                "comm": "w",
                "cpu_pct": 99.0,
                "read_bytes_per_s": "lots",
                "cgroup": {"z": 1},
            },
        ]
        d["cgroup"]["cgroups"] = [
            {
                "path": ["p"],
                "cpu": {"throttled_periods_pct": 80.0, "usage_pct": 1.7e308, "quota_cores": "q"},
                "memory": {"oom_kill": 3},
            },
        ]
        d["sockets"]["listeners_near_backlog"] = [
            {"saddr": "0.0.0.0", "sport": 80, "rqueue": 1.7e308, "backlog": "x"}
        ]

    for family in (
        "cpu_saturation",
        "io_pressure",
        "memory_pressure",
        "listen_queue_overflow",
        "runaway_forks",
    ):
        snaps = window(family, tweak=hostile)
        ev = build_evidence("node-a", snaps, [], {n: "fresh" for n in snaps[0].sources})
        assert rank(ev, detect(ev)) is not None


def test_a_culprits_service_is_the_same_on_every_host() -> None:
    from controller.detectors.owners import service_of

    # Two nodes' pods of one Deployment: different UIDs, one workload (named by the collector).
    for uid in ("0b1c2d3e-aaaa-bbbb-cccc-000000000001", "0b1c2d3e-aaaa-bbbb-cccc-000000000002"):
        row = {"pid": 7, "comm": "api", "cpu_pct": 90.0, "pod_uid": uid, "workload": "shop/Deployment/api"}
        c = owner([row], weight="cpu_pct")
        assert c.kind == "pod" and c.detail["workload"] == "shop/Deployment/api"
        assert service_of(c.kind, c.id, c.detail) == "workload:shop/Deployment/api"
    # Without the collector's name a pod is its program, never its UID (which differs per host).
    bare = owner([{"pid": 7, "comm": "api", "cpu_pct": 90.0, "pod_uid": "u1"}], weight="cpu_pct")
    assert service_of(bare.kind, bare.id, bare.detail) == "program:api"
    assert service_of("unit", "nginx.service", {}) == "unit:nginx.service"
    assert service_of("cgroup", "/jobs/etl", {}) == "cgroup:/jobs/etl"
    assert service_of("process_tree", "make[42]", {"comm": "make"}) == "program:make"
    assert service_of("socket", "10.0.0.1:8080", {"backlog": 128}) == "listener:8080"
    assert service_of("socket", "10.0.9.9:5432", {}) == "peer:10.0.9.9:5432"
    assert service_of("host", "host", {}) is None and service_of("device", "GPU-a", {}) is None
