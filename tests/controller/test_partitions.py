"""Replicas sharing the fleet: the assignment (pure), the leases on a real PostgreSQL (split,
handed over, fenced), and three real controller processes on PostgreSQL and a real
nats-server with a few hundred simulated hosts, one killed with SIGKILL under load: its
partitions move within the lease, no batch is lost or counted twice, and a fault that runs
through the failover stays one run, continued by the new owner after it rebuilt the window."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from collector.bus import subject_for
from collector.wire import partition_of
from controller.partitions import PartitionLeases, assign, namespaces
from controller.store.db import make_engine, migrate, sqlalchemy_url
from testkit.nats import NatsServer
from testkit.scenarios import FAULTS, calm
from workbench.client import ApiSource
from workbench.errors import WorkbenchError

from .conftest import COLLECTOR_TOKEN, OPERATOR_TOKEN, ControllerProc, base_config

# --- the assignment ---------------------------------------------------------------------------


def test_assignment_is_balanced_deterministic_and_moves_little() -> None:
    members = ["a", "b", "c"]
    got = assign(members, 64)
    assert got == assign(list(reversed(members)), 64)  # every replica computes the same
    loads = Counter(got.values())
    assert set(loads) == set(members) and max(loads.values()) - min(loads.values()) <= 1
    # A fourth joins: it takes about its share, and the rest mostly stay where they were.
    joined = assign([*members, "d"], 64)
    moved = sum(1 for p in range(64) if got[p] != joined[p])
    assert Counter(joined.values())["d"] == 16 and moved <= 24
    # One dies: only its partitions (and a few to even the shares) move.
    left = assign(["a", "b"], 64)
    assert (
        all(left[p] == got[p] for p in range(64) if got[p] != "c" and left[p] == got[p])
        and sum(1 for p in range(64) if got[p] != "c" and left[p] != got[p]) <= 8
    )
    assert assign([], 8) == {} and set(assign(["x"], 5).values()) == {"x"}


def test_lock_namespaces_are_int4_and_apart() -> None:
    for key in (0, 0x1C1DE17, 2**62 + 5, -1):
        part, member = namespaces(key)
        assert 0 <= part < 2**31 and 0 <= member < 2**31 and part != member


# --- the leases on PostgreSQL -------------------------------------------------------------------


def _leases(pg_url: str, node: str, partitions: int = 8, lease_s: float = 1.0) -> PartitionLeases:
    return PartitionLeases(
        pg_url,
        node_id=node,
        url=f"http://{node}",
        partitions=partitions,
        lock_key=0x1C1DE17,
        poll_s=0.1,
        lease_s=lease_s,
    )


@pytest.fixture
def store(pg_url: str) -> str:
    engine = make_engine(sqlalchemy_url(pg_url))
    migrate(engine)
    engine.dispose()
    return pg_url


def _until(what: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.postgres
def test_leases_split_hand_over_and_never_overlap(store: str) -> None:
    a, b = _leases(store, "a"), _leases(store, "b")
    released: list[frozenset[int]] = []
    a.on_release = released.append
    a.start()
    try:
        assert a.owned() == frozenset(range(8))  # alone: everything, before it serves
        b.start()
        _until(lambda: len(a.owned()) == 4 and len(b.owned()) == 4)
        assert not a.owned() & b.owned()
        assert released and set().union(*released) == b.owned()  # a stopped them before unlocking
        _until(lambda: set(a.describe()["owners"].values()) == {"a", "b"})  # a's next poll sees b's
        assert a.owner_url("node-1") == f"http://{'a' if a.owns_host('node-1') else 'b'}"
        view = a.describe()
        assert view["mode"] == "partitions" and {m["node_id"] for m in view["members"]} == {"a", "b"}
        assert view["unowned"] == [] and all(m["alive"] for m in view["members"])
        b.stop()
        # A replica that stops leaves the members at once: the other takes its share next poll.
        assert _until(lambda: a.owned() == frozenset(range(8)), timeout=5) < 2
    finally:
        b.stop()
        a.stop()


@pytest.mark.postgres
def test_a_hung_replica_is_fenced_after_its_lease(store: str) -> None:
    a, b = _leases(store, "a", lease_s=0.5), _leases(store, "b", lease_s=0.5)
    a.start()
    b.start()
    try:
        _until(lambda: len(a.owned()) == 4 and len(b.owned()) == 4)
        # a hangs: its thread stops polling, its session (and its locks) stay.
        a._stop.set()
        a._thread.join()
        took = _until(lambda: b.owned() == frozenset(range(8)), timeout=10)
        assert b.fenced_total >= 1 and took < 5
        # The hung replica's session was terminated: its next poll finds it and gives up all.
        a.tick()
        assert a.owned() == frozenset() and a.last_error is not None
    finally:
        b.stop()
        a.stop()


@pytest.mark.postgres
def test_a_replica_whose_polls_stall_stops_before_the_others_take_over(store: str) -> None:
    now = {"t": 100.0}
    a = PartitionLeases(
        store,
        node_id="a",
        url=None,
        partitions=4,
        lock_key=0x1C1DE17,
        poll_s=0.1,
        lease_s=1.0,
        clock=lambda: now["t"],
    )
    a.tick()
    try:
        assert a.owned() == frozenset(range(4)) and a.owns_host("node-1")
        now["t"] += 0.75  # past 0.7 of the lease without a good poll: it stops consuming
        assert a.owned() == frozenset() and not a.owns_host("node-1")
        a.tick()  # a good poll again: its partitions are its own again
        assert a.owned() == frozenset(range(4))
    finally:
        a.stop()


@pytest.mark.postgres
def test_a_callback_that_raises_never_kills_the_lease_thread(store: str) -> None:
    a = _leases(store, "a")
    calls = []

    def boom(parts: frozenset[int]) -> None:
        calls.append(parts)
        raise RuntimeError("the store hiccupped")

    a.on_acquire = boom
    a.tick()
    try:
        assert calls and a.owned() == frozenset(range(8))  # held all the same
        a.detail = lambda: {"x": object.__new__(Exploding)}
        a.tick()  # a detail that cannot be encoded: said, every partition given up, no raise
        assert a.last_error is not None and a.owned() == frozenset()
    finally:
        a.stop()


class Exploding:
    def __str__(self) -> str:
        raise ValueError("no")


@pytest.mark.postgres
def test_a_lost_store_gives_up_every_partition(store: str) -> None:
    a = _leases(store, "a")
    lost: list[frozenset[int]] = []
    a.on_release = lost.append
    a.start()
    try:
        assert a.owned() == frozenset(range(8))
        with psycopg.connect(store, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid != pg_backend_pid()"
            )
        _until(lambda: lost != [])
        assert lost[0] == frozenset(range(8))
        _until(lambda: a.owned() == frozenset(range(8)))  # and takes them again once it is back
    finally:
        a.stop()


# --- three controller processes ---------------------------------------------------------------

PARTITIONS = 12
HOSTS = 200
LEASE_S = 3.0
FAULT_HOST = "node-fault-0"


def _snap(ts: float, i: int, fault_i: int | None) -> dict[str, Any]:
    d = calm(i)
    if fault_i is not None:
        FAULTS["cpu_saturation"][0](d, fault_i)
    sources = {k: {"status": "ok", "path": "file", "reason": None, "data": v} for k, v in d.items()}
    return {"ts": ts, "interval_s": 1.0, "sources": sources}


class Fleet:
    """Simulated hosts publishing straight to the stream, as the collector does (subject,
    message id, headers): each round carries the samples since the last, on the wall clock."""

    def __init__(self, url: str, hosts: list[str]) -> None:
        self.url = url
        self.hosts = hosts
        self.seq: Counter[str] = Counter()
        self.i = 0  # samples so far
        self.last = time.time() - 60.0  # the first round brings a minute of baseline
        self.fault_from: int | None = None

    async def _publish(self, js: Any, host: str, snaps: list[dict[str, Any]]) -> None:
        self.seq[host] += 1
        seq = self.seq[host]
        doc = {
            "schema": "incidentlab.batch/v1",
            "host_id": host,
            "boot_id": "b",
            "stream_id": f"s-{host}",
            "seq": seq,
            "sent_at": snaps[-1]["ts"],
            "snapshots": snaps,
        }
        await js.publish(
            subject_for("incidentlab.batches", host, PARTITIONS),
            gzip.compress(json.dumps(doc).encode()),
            headers={
                "Nats-Msg-Id": f"{host}:s-{host}:{seq}",
                "Content-Encoding": "gzip",
                "Incidentlab-Host": host,
            },
        )

    def faulty(self, i: int) -> int | None:
        return None if self.fault_from is None or i < self.fault_from else i - self.fault_from

    async def round(self, js: Any) -> None:
        now = time.time()
        n = max(1, int(now - self.last))
        self.last += n
        steps = [(self.last - n + k + 1, self.i + k) for k in range(n)]
        self.i += n
        calm_snaps = [_snap(ts, i, None) for ts, i in steps]
        for host in self.hosts:
            if host == FAULT_HOST:
                await self._publish(js, host, [_snap(ts, i, self.faulty(i)) for ts, i in steps])
            else:
                await self._publish(js, host, calm_snaps)

    def published(self) -> int:
        return sum(self.seq.values())


class Driver:
    """Rounds of the fleet on a loop of their own, one per ``every_s``, until stopped."""

    def __init__(self, fleet: Fleet, every_s: float) -> None:
        import threading

        import nats

        self.fleet = fleet
        self.every_s = every_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self.call(nats.connect(fleet.url))
        self.js = self.nc.jetstream()
        self.running = False
        self.task: Any = None

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def rounds(self, n: int) -> None:
        for _ in range(n):
            self.call(self.fleet.round(self.js))

    async def _pace(self) -> None:
        while self.running:
            started = time.monotonic()
            await self.fleet.round(self.js)
            await asyncio.sleep(max(0.0, self.every_s - (time.monotonic() - started)))

    def start(self) -> None:
        self.running = True
        self.task = asyncio.run_coroutine_threadsafe(self._pace(), self.loop)

    def stop(self) -> None:
        self.running = False
        if self.task is not None:
            self.task.result(60)
            self.task = None

    def close(self) -> None:
        self.stop()
        self.call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _get(c: ControllerProc, path: str, **params: Any) -> Any:
    r = httpx.get(
        c.url + path, params=params, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=20
    )
    r.raise_for_status()
    return r.json()


def _ledger(pg_url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT host_id, accepted, max_seq FROM ingest_streams").fetchall()
    return {h: (a, m) for h, a, m in rows}


def _runs(pg_url: str) -> list[tuple[str, str, str, str]]:
    with psycopg.connect(pg_url) as conn:
        return [
            (r[0], r[1], r[2], r[3])
            for r in conn.execute("SELECT run_id, host_id, family, state FROM workflow_runs").fetchall()
        ]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.mark.postgres
@pytest.mark.slow
def test_three_replicas_a_killed_one_loses_nothing_and_a_fault_through_it_is_one_run(
    tmp_path: Path, pg_url: str, nats_server: NatsServer, controller_factory: Callable[..., ControllerProc]
) -> None:
    cfg = base_config(
        tmp_path / "data",  # one payload root for the three, as a shared volume or S3 would be
        database_url=pg_url,
        ha={"poll_interval_s": 0.3, "lease_s": LEASE_S},
        bus={"enabled": True, "servers": [nats_server.url], "partitions": PARTITIONS, "ack_wait_s": 3},
        workflow={"fleet": {"enabled": False}},
    )
    replicas = [controller_factory(cfg, name=n) for n in ("r1", "r2", "r3")]
    node_of = {_get(c, "/api/v1/status")["leadership"]["node_id"]: c for c in replicas}

    def owners(c: ControllerProc) -> dict[int, str | None]:
        got = _get(c, "/api/v1/ha/status")["partitions"]["owners"]
        return {int(p): n for p, n in got.items()}

    def spread() -> bool:
        o = owners(replicas[0])
        return all(o.values()) and len(set(o.values())) == 3

    _until(spread, timeout=30)
    _until(lambda: all(_get(c, "/api/v1/status")["bus"]["connected"] for c in replicas), timeout=30)
    hosts = [FAULT_HOST] + [f"node-{i}.pool{i % 7}" for i in range(HOSTS - 1)]
    driver = Driver(Fleet(nats_server.url, hosts), every_s=2.0)
    try:
        # A batch of a host another replica owns is sent there over HTTPS too (the same 503 a
        # follower answers, naming the owner).
        victim_node = owners(replicas[0])[partition_of(FAULT_HOST, PARTITIONS)]
        assert victim_node is not None
        victim = node_of[victim_node]
        other = next(c for c in replicas if c is not victim)
        body = gzip.compress(
            json.dumps(
                {
                    "schema": "incidentlab.batch/v1",
                    "host_id": FAULT_HOST,
                    "boot_id": "b",
                    "stream_id": "https",
                    "seq": 1,
                    "sent_at": time.time(),
                    "snapshots": [],
                }
            ).encode()
        )
        r = httpx.post(
            other.url + "/api/v1/ingest",
            content=body,
            headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}", "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert r.status_code == 503 and r.headers["x-incidentlab-leader"] == victim.url

        # Calm first (the baseline), then the fault on one host, until its owner opens a run.
        driver.rounds(1)
        driver.fleet.fault_from = driver.fleet.i
        driver.start()
        _until(lambda: any(h == FAULT_HOST for _, h, _, _ in _runs(pg_url)), timeout=90)
        (run_id, _, family, _) = next(r for r in _runs(pg_url) if r[1] == FAULT_HOST)
        assert family == "cpu_saturation"

        # The owner dies under load; the fault goes on.
        survivors = [c for c in replicas if c is not victim]
        before = [_get(c, "/api/v1/status")["workflow"]["analysis"].get("triggers", 0) for c in survivors]
        victim.kill9()
        killed = time.monotonic()

        def moved() -> bool:
            o = owners(survivors[0])
            return all(o.values()) and victim_node not in o.values()

        _until(moved, timeout=30)
        took = time.monotonic() - killed
        assert took <= LEASE_S, f"the partitions took {took:.1f} s to move"
        new_owner = node_of[owners(survivors[0])[partition_of(FAULT_HOST, PARTITIONS)] or ""]

        # The new owner rebuilt the partition's window and finds the fault again: it attaches
        # to the run the dead owner opened, no second run.
        def rebuilt() -> bool:
            st = _get(new_owner, "/api/v1/status")["bus"]
            return str(partition_of(FAULT_HOST, PARTITIONS)) in st["rebuilt"]

        _until(rebuilt, timeout=30)
        view = _get(new_owner, "/api/v1/status")["bus"]["rebuilt"][str(partition_of(FAULT_HOST, PARTITIONS))]
        assert view["messages"] > 0 and view["hosts"] > 0 and view["progress"] == 1.0
        i = survivors.index(new_owner)
        _until(
            lambda: _get(new_owner, "/api/v1/status")["workflow"]["analysis"].get("triggers", 0) > before[i],
            timeout=60,
        )
        time.sleep(3)
        driver.stop()
        fault_runs = [r for r in _runs(pg_url) if r[1] == FAULT_HOST]
        assert [r[0] for r in fault_runs] == [run_id], fault_runs
        assert all(r[1] == FAULT_HOST for r in _runs(pg_url)), "a calm host opened a run"

        # Every batch published is counted once, by whichever replica owned its host then.
        published = driver.fleet.published()

        def settled() -> bool:
            return sum(a for a, _ in _ledger(pg_url).values()) >= published

        _until(settled, timeout=90)
        time.sleep(LEASE_S)  # redeliveries of what the dead replica held have come by now
        ledger = _ledger(pg_url)
        assert sum(a for a, _ in ledger.values()) == published
        assert all(ledger[h] == (driver.fleet.seq[h], driver.fleet.seq[h]) for h in hosts)

        # A decision sent to a replica that does not run the run's stages names the one that
        # does; the workbench follows it (the owner answers: here, that the plan is not this).
        non_owner = next(c for c in survivors if c is not new_owner)
        decision = {"plan_hash": "0" * 64, "reason": "routing"}
        r = httpx.post(
            non_owner.url + f"/api/v1/agent/workflow/runs/{run_id}/approve",
            json=decision,
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            timeout=20,
        )
        assert r.status_code == 503 and r.headers["x-incidentlab-leader"] == new_owner.url
        wb = ApiSource(non_owner.url, OPERATOR_TOKEN)
        try:
            with pytest.raises(WorkbenchError) as err:
                wb.approve(run_id, "0" * 64, None, "routing")
            assert err.value.status in (400, 409), err.value
        finally:
            wb.close()

        # Any replica answers the run: reads do not need its owner.
        for c in survivors:
            got = _get(c, f"/api/v1/agent/workflow/runs/{run_id}")
            assert got["run"]["run_id"] == run_id if "run" in got else got["run_id"] == run_id
    finally:
        driver.close()


# --- the fleet correlator across replicas ------------------------------------------------------


def _sighting(host: str, at: float, run: str = "") -> Any:
    from controller.workflow.fleet import Sighting

    return Sighting(
        host=host,
        run_id=run or f"run-{host}",
        family="tcp_retransmit_surge",
        service="10.0.9.9:5432",
        labels={"cluster": "c1", "zone": "z1"},
        confidence=0.8,
        at=at,
        started=at - 30,
        signal="tcp.retrans_per_s",
        series=[(at - 10 + i, float(i)) for i in range(10)],
        culprit={"kind": "backend", "id": "10.0.9.9:5432", "service": "10.0.9.9:5432"},
    )


@pytest.mark.postgres
def test_sightings_from_several_replicas_make_one_fleet_group_on_the_leader(store: str) -> None:
    from controller.config import FleetSettings
    from controller.workflow.fleet import Correlator, SharedSightings

    engine = make_engine(sqlalchemy_url(store))
    try:
        # Two replicas each own some of the hosts: neither sees enough of them alone.
        a, b = SharedSightings(engine), SharedSightings(engine)
        now = time.time()
        a.put(_sighting("node-1", now))
        b.put(_sighting("node-2", now))
        b.put(_sighting("node-3", now))
        a.put(_sighting("node-old", now - 3600))  # past the window: not grouped, and deleted
        alone = Correlator(FleetSettings())
        for s in a.load(now - 300, 100)[:1]:
            alone.replace([s])
        assert alone.groups(now) == []
        leader = Correlator(FleetSettings())
        leader.replace(a.load(now - 300, 100))
        (group,) = leader.groups(now)
        assert group.hosts == ["node-1", "node-2", "node-3"] and group.method == "same_service"
        assert "node-old" not in [s.host for s in b.load(0, 100)]
        # A host's run that resolved is forgotten where it is owned, and leaves the group.
        b.forget("node-3", "run-node-3")
        leader.replace(a.load(now - 300, 100))
        assert leader.groups(now) == []
        # A newer sighting of a host replaces its row: one per host, bounded by the fleet.
        a.put(_sighting("node-1", now + 1, run="run-again"))
        assert [(s.host, s.run_id) for s in a.load(now - 300, 100)] == [
            ("node-1", "run-again"),
            ("node-2", "run-node-2"),
        ]
        assert a.errors == b.errors == 0
        # A row that is not a sighting (not JSON, or the wrong shape) is skipped and counted.
        with engine.begin() as conn:
            for host, body in (("node-x", "not json"), ("node-y", '{"host": 1}')):
                conn.exec_driver_sql(
                    "INSERT INTO fleet_sightings (host_id, run_id, at, body) VALUES (%s, 'r', %s, %s)",
                    (host, now, body),
                )
        assert {s.host for s in a.load(now - 300, 100)} == {"node-1", "node-2"} and a.errors == 2
    finally:
        engine.dispose()
