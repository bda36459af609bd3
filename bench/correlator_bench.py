"""The fleet correlator's cost and delay; bench/fleet_bench.py puts them in fleet.json.

- **CPU per evaluation** at 100, 1,000 and 5,000 hosts, every host with a live sighting
  (the worst case: a fleet-wide event), spread over 10 zones of one cluster; a fifth of
  them in groups of the same family on one service, the rest each running a program of its
  own with a family of six and a signal tail of 60 points that steps up at a random time
  (the correlation path, at most ``max_group`` hosts per zone): the median of CPU seconds per
  ``Correlator.groups`` call over trials, and per host, so growth shows (target: no worse
  than linear). The peer is the same correlator with the correlation matrix made pair by
  pair in Python (each pair over the bins both have), as a first version did, at the hosts
  both can afford.
- **Delay to the fleet incident**, through the real engine (hot state, detectors, runs,
  the correlator's pass at its default cadence): six hosts replay the recorded CPU
  saturation window (testkit/windows, 1 s samples), their faults starting 2 s apart; the
  delay from the third member's fault start (the one that makes the group) to the fleet
  incident opening, and from each member's run opening to its joining, in intervals.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from controller.config import FleetSettings
from controller.workflow.fleet import BINS, MIN_BINS, Correlator, Sighting, _binned

T0 = 1_800_000_000.0
SIZES = (100, 1000, 5000)
FAMILIES = (
    "cpu_saturation",
    "io_pressure",
    "memory_pressure",
    "tcp_retransmit_surge",
    "nic_errors",
    "fd_exhaustion",
)


def sightings(n: int, seed: int = 7) -> list[Sighting]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        zone = f"z{i % 10}"
        grouped = i % 5 == 0
        step_at = rnd.randrange(10, 50)
        series = [(T0 + t, (10.0 if t >= step_at else 1.0) + rnd.random()) for t in range(60)]
        out.append(
            Sighting(
                host=f"h{i:05d}",
                run_id=f"run-{i}",
                family="cpu_saturation" if grouped else rnd.choice(FAMILIES),
                # The rest run programs of their own: only correlation can group them.
                service=f"unit:svc{i % 40}.service" if grouped else f"program:p{i}",
                labels={"cluster": "prod", "zone": zone},
                confidence=0.8,
                at=T0 + 60,
                started=T0 + step_at,
                signal="sig",
                series=series,
            )
        )
    return out


def _pairwise_python(members: list[Sighting], window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The peer: the same test pair by pair (each pair over the bins both have)."""
    width = window_s / BINS
    m = np.vstack([_binned(s.series, s.series[-1][0] - window_s + 1e-9, width) for s in members])
    present = np.isfinite(m)
    k = len(members)
    r = np.zeros((k, k))
    pairs = np.zeros((k, k), dtype=bool)
    for i in range(k):
        for j in range(i + 1, k):
            both = present[i] & present[j]
            if both.sum() < MIN_BINS:
                continue
            a, b = m[i, both], m[j, both]
            sa, sb = a.std(), b.std()
            if sa > 1e-9 and sb > 1e-9:
                r[i, j] = r[j, i] = float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))
                pairs[i, j] = pairs[j, i] = True
    return r, pairs


def cpu_per_evaluation(n: int, trials: int = 5, peer: bool = False) -> dict[str, Any]:
    import controller.workflow.fleet as fleet

    settings = FleetSettings()
    c = Correlator(settings)
    for s in sightings(n):
        with c._lock:
            c._sightings[s.host] = s
    original = fleet.correlation_matrix
    if peer:
        fleet.correlation_matrix = _pairwise_python  # type: ignore[assignment]
    try:
        groups = c.groups(T0 + 61)  # warm
        samples = []
        for _ in range(trials):
            start = time.process_time()
            groups = c.groups(T0 + 61)
            samples.append(time.process_time() - start)
    finally:
        fleet.correlation_matrix = original
    med = statistics.median(samples)
    return {
        "hosts": n,
        "cpu_ms_per_evaluation": round(med * 1000, 3),
        "cpu_us_per_host": round(med * 1e6 / n, 3),
        "spread_ms": [round(min(samples) * 1000, 3), round(max(samples) * 1000, 3)],
        "groups": len(groups),
        "hosts_grouped": sum(len(g.members) for g in groups),
        "trials": trials,
    }


def delay_to_incident() -> dict[str, Any]:
    from testkit.fleet import Fleet, Playback, recorded

    with tempfile.TemporaryDirectory(prefix="incidentlab-correlator-bench-") as tmpdir:
        fleet = Fleet(Path(tmpdir), evaluate_every_s=FleetSettings().evaluate_every_s)
        try:
            hosts = [f"node-{i}" for i in range(6)]
            plays = {h: recorded("cpu_workers_cgroup", T0 + 2 * i) for i, h in enumerate(hosts)}
            fault_at = {h: T0 + 2 * i + 60 for i, h in enumerate(hosts)}  # the manifest's fault start
            playback = Playback(plays, {h: {"cluster": "prod", "zone": "a"} for h in hosts})
            opened: dict[str, float] = {}
            fleet_opened: float | None = None
            joined: dict[str, float] = {}
            every = fleet.eng.opts.fleet.evaluate_every_s
            last_pass = -1e18
            for step in range(125):
                fleet.t = T0 + step
                playback.feed(fleet)
                for host in fleet.opened.values():
                    opened.setdefault(host, fleet.t)
                if fleet.t - last_pass >= every:  # the engine's cadence
                    last_pass = fleet.t
                    fleet.eng.triggers.fleet_pass()
                    runs = fleet.runs(scope="host")
                    for r in runs:
                        if r["fleet_run_id"] and r["host_id"] not in joined:
                            joined[r["host_id"]] = fleet.t
                    if fleet_opened is None and fleet.runs(scope="fleet"):
                        fleet_opened = fleet.t
        finally:
            fleet.db.dispose()
    third = sorted(fault_at.values())[2]
    interval = 1.0
    return {
        "members": len(hosts),
        "interval_s": interval,
        "evaluate_every_s": every,
        "fleet_incident_after_third_fault_intervals": None
        if fleet_opened is None
        else round((fleet_opened - third) / interval, 1),
        "join_after_member_run_intervals_max": max(
            (round((joined[h] - opened[h]) / interval, 1) for h in joined if h in opened), default=None
        ),
        "members_joined": len(joined),
        "member_detect_intervals": {
            h: round((opened[h] - fault_at[h]) / interval, 1) for h in sorted(opened)
        },
    }


def run() -> dict[str, Any]:
    ours = [cpu_per_evaluation(n) for n in SIZES]
    peer = [cpu_per_evaluation(n, trials=3, peer=True) for n in SIZES[:2]]
    growth = ours[-1]["cpu_us_per_host"] / ours[0]["cpu_us_per_host"] if ours[0]["cpu_us_per_host"] else None
    return {
        "cpu_per_evaluation": ours,
        "peer_pairwise_python": peer,
        "ratio_to_peer_at_1000": round(
            peer[1]["cpu_ms_per_evaluation"] / ours[1]["cpu_ms_per_evaluation"], 1
        ),
        # Per-host cost at 5,000 over that at 100: at most 1 is linear or better.
        "per_host_growth_100_to_5000": None if growth is None else round(growth, 2),
        "delay": delay_to_incident(),
        "met": {"linear": growth is not None and growth <= 1.5},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
