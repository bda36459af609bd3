"""One controller replica's share of a fleet, through NATS JetStream and through HTTPS, in one
run; writes bench/results/scale.json.

Each phase starts a controller on a fresh PostgreSQL database with the bus on (so partition
leases run, as in a fleet of replicas) and a fresh nats-server; hosts send the recorded
snapshots of bench/fleet_bench.py, one batch every 10 s each, after a warm-up batch of each
host's last 300 s. Measured:

- **NATS against HTTPS** at the same fleet size and rate: the replica's CPU per batch (its
  process and its analysis workers, idle taken off), the detection delay of a host that
  turns CPU-saturated 20 s in (seconds and 10 s intervals until its run is listed), and
  for HTTPS the ingest p99 (request to ack, from the load generator), for NATS the most the
  replica's consumers fell behind (pending messages, sampled each second).
- **The most hosts one replica serves** at a 10 s interval: HTTPS steps of increasing fleet
  size; a step passes with ingest p99 under 100 ms, detection within two intervals of what
  the detectors need (five fresh samples: 4 intervals after the fault's first, so 6 in all)
  and no analysis overflow; the largest passing step is the answer on this machine.
- **Takeover**: a second replica joins the NATS phase's fleet; it takes about half the
  partitions and rebuilds each one's window from the stream: the rebuild's wall time, its
  batches and hosts, and seconds per 1,000 hosts; and the partitions' hand-over time.
- **Idle**: the replica's CPU with no batch arriving (its leases, its consumers' and its analysis
  workers' polling), taken off each phase's CPU.

This machine has two cores shared by the load generator, PostgreSQL, nats-server and the
controller: the README projects 50,000 hosts from these per-replica figures, with the
arithmetic, rather than claiming a measurement it cannot make.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg

from bench.fleet_bench import (
    FAULT_AT_S,
    INTERVAL_S,
    OPERATOR,
    WARMUP_RATE,
    Prober,
    finish,
    make_bodies,
    send,
    split_cpu_s,
    tree_cpu_s,
)
from bench.harness import write_result
from bench.ingest_bench import ROOT, TOKEN, start_controller, stop
from collector.bus import subject_for
from testkit.nats import NatsServer

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PARTITIONS = 16
PREFIX = "incidentlab.batches"
DETECTOR_NEEDS_INTERVALS = 4  # five fresh samples, the first at the fault's start


def fresh_database() -> str:
    name = f"incidentlab_scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def settings(hosts: int, db: str, nats_url: str) -> dict[str, Any]:
    return {
        "database_url": db,
        "auth": {
            "tokens": [
                {"name": "bench", "role": "collector", "token": TOKEN},
                {"name": "ops", "role": "operator", "token": OPERATOR},
            ]
        },
        "hot_state": {"max_hosts": max(hosts, 1000)},
        "workflow": {"enabled": True},
        "bus": {"enabled": True, "servers": [nats_url], "partitions": PARTITIONS},
    }


def status(url: str) -> dict[str, Any]:
    got: dict[str, Any] = httpx.get(
        url + "/api/v1/status", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30
    ).json()
    return got


def key_of(body: bytes) -> tuple[str, int]:
    import probe_core

    doc = msgspec.json.decode(probe_core.gzip_decompress(body, 1 << 26))
    return str(doc["host_id"]), int(doc["seq"])


class Publisher:
    """Publishes gzip'd batches to the stream at a pace, on a loop of its own, as collectors
    with the bus on do (subject, message id, headers; each PubAck awaited)."""

    def __init__(self, url: str) -> None:
        import nats

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self._call(nats.connect(url))
        self.js = self.nc.jetstream()

    def _call(self, coro: Any, timeout: float = 900) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _paced(self, bodies: list[bytes], keys: list[tuple[str, int]], rate: float) -> int:
        start = time.perf_counter()
        pending: list[Any] = []
        for i, (body, (host, seq)) in enumerate(zip(bodies, keys, strict=True)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(
                asyncio.ensure_future(
                    self.js.publish(
                        subject_for(PREFIX, host, PARTITIONS),
                        body,
                        timeout=30,
                        headers={
                            "Nats-Msg-Id": f"{host}:s-{host}:{seq}",
                            "Content-Encoding": "gzip",
                            "Incidentlab-Host": host,
                        },
                    )
                )
            )
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        return len(bodies)

    def paced(self, bodies: list[bytes], rate: float, keys: list[tuple[str, int]] | None = None) -> int:
        n: int = self._call(self._paced(bodies, keys or [key_of(b) for b in bodies], rate))
        return n

    def close(self) -> None:
        self._call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def settle(pid: int, until: float) -> bool:
    """Wait for the workers to finish with the warm-up (its CPU falls quiet), by ``until``:
    False when it never did (the idle measured after it is then too high)."""
    while time.time() < until:
        c0 = tree_cpu_s(pid)
        time.sleep(1.0)
        if tree_cpu_s(pid) - c0 < 0.05:
            return True
    return False


class Poller(threading.Thread):
    """/api/v1/status once a second in either phase (the same cost to both), keeping the most
    the bus's consumers fell behind."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.lag_max = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(Exception):
                self.lag_max = max(self.lag_max, int((status(self.url).get("bus") or {}).get("pending", 0)))


def ingested(url: str) -> int:
    counts = (status(url).get("bus") or {}).get("counts") or {}
    return int(counts.get("accepted", 0)) + int(counts.get("duplicate", 0))


def idle_rate(pid: int, seconds: float) -> float:
    c0, t0 = tree_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (tree_cpu_s(pid) - c0) / (time.monotonic() - t0)


def phase(
    tmp: Path, hosts: int, seconds: float, via: str, keep: bool = False
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One replica, a fresh database and stream, ``hosts`` at 10 s through ``via`` (https or nats).
    With ``keep``, the controller, database and NATS server are handed back for the takeover."""
    tmp.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(tmp / "nats").start()
    db = fresh_database()
    ctl, url = start_controller(tmp / "r1", hosts, workflow=True, extra=settings(hosts, db, nats.url))
    handed: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + 60
        while not (status(url).get("bus") or {}).get("connected"):
            if time.monotonic() > deadline:
                raise SystemExit("the controller did not connect to NATS")
            time.sleep(0.2)
        # Making the bodies takes a while at thousands of hosts: it is done before the clock's start.
        start = time.time() + 45 + 2 * hosts / WARMUP_RATE + hosts * seconds / INTERVAL_S / 2000
        warm, paced, faulty = make_bodies(hosts, seconds, start)
        pub = Publisher(nats.url) if via == "nats" else None
        if pub is not None:
            pub.paced(warm, WARMUP_RATE)
        else:
            finish(send(url, warm, tmp, rate=WARMUP_RATE, token=TOKEN))
        if time.time() > start - 15:
            raise SystemExit("the warm-up took too long: raise the start margin")
        keys = [key_of(b) for b in paced] if pub is not None else []
        settled = settle(ctl.pid, start - 12)
        idle = idle_rate(ctl.pid, min(8.0, max(1.0, start - time.time() - 2)))
        time.sleep(max(0.0, start - time.time()))
        warm_overflow = (status(url)["workflow"].get("analysis") or {}).get("queue_overflow", 0)
        prober = Prober(url, faulty)
        prober.start()
        poller = Poller(url)
        poller.start()
        caught_up = True
        (m0, k0), p0 = split_cpu_s(ctl.pid), time.monotonic()
        result: dict[str, Any]
        if pub is not None:
            result = {"requests": pub.paced(paced, hosts / INTERVAL_S, keys), "codes": {}}
            # Until the consumers took all that was published: the CPU is all spent then.
            deadline = time.monotonic() + 60
            while ingested(url) < len(warm) + len(paced):
                if time.monotonic() > deadline:
                    caught_up = False
                    break
                time.sleep(0.2)
        else:
            result = finish(send(url, paced, tmp, rate=hosts / INTERVAL_S, token=TOKEN))
        (m1, k1), p1 = split_cpu_s(ctl.pid), time.monotonic()
        poller.stop.set()
        poller.join(timeout=10)
        time.sleep(2)
        prober.stop.set()
        prober.join(timeout=15)
        st = status(url)
        if pub is not None:
            pub.close()
        n = result["requests"]
        cpu = (m1 + k1) - (m0 + k0)
        overflow = (st["workflow"].get("analysis") or {}).get("queue_overflow", 0)
        delay = None if prober.detected_at is None else prober.detected_at - (start + FAULT_AT_S)
        out: dict[str, Any] = {
            "via": via,
            "hosts": hosts,
            "batches": n,
            "batches_per_s": round(hosts / INTERVAL_S, 1),
            "cpu_ms_per_batch": round((cpu - idle * (p1 - p0)) / n * 1000, 3),
            "ingest_process_ms_per_batch": round((m1 - m0) / n * 1000, 3),
            "analysis_workers_ms_per_batch": round((k1 - k0) / n * 1000, 3),
            "cpu_share_of_one_core_pct": round(cpu / (p1 - p0) * 100, 1),
            "idle_cpu_pct": round(idle * 100, 2),
            "warmup_settled": settled,
            "detection_delay_s": None if delay is None else round(delay, 1),
            "detection_delay_intervals": None if delay is None else round(delay / INTERVAL_S, 2),
            # Batches not analysed while the fleet ran at its pace (the warm-up's burst apart).
            "analysis_overflow": overflow - warm_overflow,
            "analysis_overflow_warmup": warm_overflow,
        }
        if via == "https":
            out |= {"codes": result["codes"], "ingest_p99_ms": round(result["p99_ms"], 1)}
        else:
            out |= {
                "bus_counts": (st.get("bus") or {}).get("counts"),
                "consumer_lag_max": poller.lag_max,
                "caught_up": caught_up,
            }
        if keep:
            handed = {"ctl": ctl, "url": url, "db": db, "nats": nats, "tmp": tmp, "hosts": hosts}
        return out, handed
    finally:
        if handed is None:
            stop(ctl)
            nats.stop()
            drop_database(db)


def takeover(kept: dict[str, Any]) -> dict[str, Any]:
    """A second replica joins: the partitions it takes, how long they took to move, and the
    rebuild of their windows from the stream."""
    tmp: Path = kept["tmp"]
    hosts: int = kept["hosts"]
    joined = time.monotonic()
    ctl2, url2 = start_controller(
        tmp / "r2", hosts, workflow=True, extra=settings(hosts, kept["db"], kept["nats"].url)
    )
    try:
        ready = time.monotonic()
        deadline = ready + 120
        while True:
            st = status(url2)
            owned = (st.get("partitions") or {}).get("owned") or []
            bus = st.get("bus") or {}
            rebuilt = bus.get("rebuilt") or {}
            if owned and all(str(p) in rebuilt for p in owned) and not bus.get("rebuilding"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the second replica did not rebuild in time: {bus}")
            time.sleep(0.2)
        done = time.monotonic()
        views = [rebuilt[str(p)] for p in owned]
        rebuilt_hosts = sum(v["hosts"] for v in views)
        wall = max(v["seconds"] or 0.0 for v in views)
        first = status(kept["url"])
        return {
            "partitions_moved": len(owned),
            "of_partitions": PARTITIONS,
            "replica_start_s": round(ready - joined, 2),
            "moved_and_rebuilt_after_ready_s": round(done - ready, 2),
            "rebuild_wall_s": round(wall, 3),
            "rebuild_wall_s_sum_of_partitions": round(sum(v["seconds"] or 0.0 for v in views), 3),
            "rebuilt_batches": sum(v["messages"] for v in views),
            "rebuilt_hosts": rebuilt_hosts,
            "rebuild_s_per_1000_hosts": round(wall / rebuilt_hosts * 1000, 3) if rebuilt_hosts else None,
            "first_replica_kept": len((first.get("partitions") or {}).get("owned") or []),
            "analysis_overflow": (st["workflow"].get("analysis") or {}).get("queue_overflow", 0),
        }
    finally:
        stop(ctl2)


def passes(s: dict[str, Any]) -> bool:
    # Detection "within two intervals": of what the detectors themselves need (a mean of
    # the last five samples: the fault's fifth sample comes four intervals after its first).
    if "error" in s:
        return False
    d = s["detection_delay_intervals"]
    return bool(
        s["ingest_p99_ms"] < 100
        and d is not None
        and d <= DETECTOR_NEEDS_INTERVALS + 2
        and not s["analysis_overflow"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1000, help="the NATS-against-HTTPS phases")
    parser.add_argument("--seconds", type=float, default=90.0, help="each paced phase")
    parser.add_argument(
        "--steps",
        type=int,
        nargs="*",
        default=[2000, 3000, 4000],
        help="larger HTTPS steps, up to the first that fails",
    )
    args = parser.parse_args(argv)
    subprocess.run([str(ROOT / "scripts" / "ensure-postgres.sh")], check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as d:
        tmp = Path(d)
        https, _ = phase(tmp / "https", args.hosts, args.seconds, "https")
        print(json.dumps(https), flush=True)
        nats, kept = phase(tmp / "nats", args.hosts, args.seconds, "nats", keep=True)
        print(json.dumps(nats), flush=True)
        assert kept is not None
        try:
            take = takeover(kept)
        finally:
            stop(kept["ctl"])
            kept["nats"].stop()
            drop_database(kept["db"])
        print(json.dumps(take), flush=True)
        steps = [https]
        for n in args.steps:
            try:
                step, _ = phase(tmp / f"step-{n}", n, args.seconds, "https")
            except SystemExit as exc:  # a step this machine cannot even feed: it does not pass
                step = {"hosts": n, "error": str(exc)}
            print(json.dumps(step), flush=True)
            steps.append(step)
            if not passes(step):
                break  # a larger fleet will not pass either

    served = max((s["hosts"] for s in steps if passes(s)), default=0)
    ratio = nats["cpu_ms_per_batch"] / https["cpu_ms_per_batch"] if https["cpu_ms_per_batch"] > 0 else None
    body = {
        "interval_s": INTERVAL_S,
        "partitions": PARTITIONS,
        "https": https,
        "nats": nats,
        "nats_over_https_cpu_ratio": None if ratio is None else round(ratio, 3),
        "steps": [
            {
                k: s.get(k)
                for k in (
                    "hosts",
                    "ingest_p99_ms",
                    "detection_delay_intervals",
                    "analysis_overflow",
                    "cpu_ms_per_batch",
                    "cpu_share_of_one_core_pct",
                    "error",
                )
                if k in s
            }
            | {"passes": passes(s)}
            for s in steps
        ],
        "most_hosts_one_replica_here": served,
        "detection_limit_intervals": DETECTOR_NEEDS_INTERVALS + 2,
        "takeover": take,
    }
    path = write_result("scale", body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
