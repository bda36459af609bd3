"""Host detectors: CPU saturation, memory pressure and OOM kills, IO pressure, fd
exhaustion, cgroup CPU throttling, runaway forks."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from controller.detectors.base import (
    Culprit,
    Finding,
    Params,
    clamp,
    detector,
    process_culprit,
    robust_z,
    seasonal_baseline,
    top_row,
    weigh,
)
from controller.detectors.evidence import Evidence
from controller.detectors.owners import comm_label, finite, members, owner, tree_culprit

CPU_BUSY_PCT = 90.0  # sustained over the last 5 samples
PSI_CPU_SOME = 40.0
PSI_NOBODY_WAITS = 5.0  # PSI some below this: hardly any task waits for the resource
PSI_NEEDS_BUSY_PCT = 60.0
MEM_AVAILABLE_PCT = 5.0
PSI_MEMORY_SOME = 20.0
PSI_IO_SOME = 30.0
DISK_UTIL_PCT = 90.0
IOWAIT_PCT = 30.0
PROCESS_FDS = 50_000  # far past any sane service, and a tenth of a default fs.nr_open
PROCESS_FD_PCT = 80.0  # of the process's own soft RLIMIT_NOFILE: EMFILE is near
FD_GROWTH_FLOOR = 1000  # a baseline below this counts as this much: growth is from at least 2,000
CGROUP_THROTTLED_PCT = 25.0
FORKS_PER_S = 50.0
FORKS_FOR_S = 20.0  # a storm holds past FORKS_PER_S this long (at least 2 samples, at most 3)
FORKER_SHARE = 0.3  # a parent forking at least this share of the busiest one's execs is one of a pool
# A sustained condition needs this many samples: a host's first (a collector starting up,
# its rates read over a start-up instant) cannot show one.
MIN_SAMPLES = 3
# A process is part of the load when it carries this share of the busiest one's (and at
# least LOAD_FLOOR_PCT of a CPU): the workers of one hog, not the idle bystanders.
LOAD_SHARE = 0.4
LOAD_FLOOR_PCT = 10.0


def _load_owner(ev: Evidence, rows: list[dict[str, Any]], key: str, top: dict[str, Any] | None) -> Culprit:
    """The owner of the processes that carry the load ``key`` measures (its workers grouped)."""
    if top is None:
        return owner([], reason="no process table")
    peak = finite(top.get(key)) or 0.0
    floor = max(LOAD_SHARE * peak, LOAD_FLOOR_PCT) if key == "cpu_pct" else LOAD_SHARE * peak
    load = [r for r in rows if (finite(r.get(key)) or 0.0) >= floor] or [top]
    return owner(load, weight=key, all_rows=rows, cgroups=ev.tables.get("cgroups", []))


def _load_text(c: Culprit) -> str:
    where = "" if c.kind == "process" else f" in {c.kind} {c.id}"
    return f"load from {comm_label(c.detail.get('comms') or {})}{where}"


@detector(
    "cpu_saturation",
    cpu_busy_pct=CPU_BUSY_PCT,
    psi_cpu_some=PSI_CPU_SOME,
    psi_nobody_waits=PSI_NOBODY_WAITS,
    psi_needs_busy_pct=PSI_NEEDS_BUSY_PCT,
    min_samples=MIN_SAMPLES,
)
def cpu_saturation(ev: Evidence, p: Params) -> list[Finding]:
    if ev.samples < p["min_samples"]:
        return []
    busy = ev.recent("cpu_busy_pct")
    psi = ev.recent("psi_cpu_some")
    # PSI's avg10 trails a load that has ended by tens of seconds: without the CPUs busy
    # now, pressure alone is the echo of a past load, not saturation.
    pressured = (
        psi is not None and psi >= p["psi_cpu_some"] and (busy is None or busy >= p["psi_needs_busy_pct"])
    )
    if (busy is None or busy < p["cpu_busy_pct"]) and not pressured:
        return []
    rows = ev.tables.get("processes", [])
    hog = top_row(rows, "cpu_pct")
    culprit = _load_owner(ev, rows, "cpu_pct", hog)
    seasonal = seasonal_baseline(ev.series.get("cpu_busy_pct", []), period_s=300, tolerance_s=15)
    score = clamp(max((busy or 0) / 100, (psi or 0) / 80))
    contradicting = []
    if seasonal is not None and busy is not None and seasonal >= p["cpu_busy_pct"] - 5:
        score *= 0.6  # this host is this busy at this phase every period: a pattern, not an incident
        contradicting.append(f"seasonal baseline {seasonal:.0f}% at the same phase")
    if psi is not None and psi < p["psi_nobody_waits"]:
        contradicting.append(f"PSI cpu some {psi:.1f}%: hardly any task waits for a CPU")
        score = weigh(score, contradicting[-1:])
    return [
        Finding(
            family="cpu_saturation",
            method="threshold",
            signal="cpu_busy_pct",
            value=busy or 0.0,
            baseline=seasonal,
            threshold=p["cpu_busy_pct"],
            score=score,
            culprit=culprit,
            summary=f"CPU {busy or 0:.0f}% busy, PSI cpu some {psi or 0:.0f}%"
            + (f"; {_load_text(culprit)}" if hog else ""),
            supporting=[
                s
                for s, shown in (
                    ("cpu_busy_pct", (busy or 0) >= p["cpu_busy_pct"]),
                    ("psi_cpu_some", pressured),
                )
                if shown
            ],
            contradicting=contradicting,
            expected=["procs_running above the CPU count", "psi_cpu_some rising", "run-queue latency up"],
        )
    ]


@detector("memory_pressure", mem_available_pct=MEM_AVAILABLE_PCT, psi_memory_some=PSI_MEMORY_SOME)
def memory_pressure(ev: Evidence, p: Params) -> list[Finding]:
    avail = ev.recent("mem_available_pct", 3)
    psi = ev.recent("psi_memory_some", 3)
    kills = ev.total("oom_kills") + ev.total("ebpf_oom_kill")
    victims = [e for e in ev.events if e.get("type") == "oom_kill"]
    low = avail is not None and avail <= p["mem_available_pct"]
    stalled = psi is not None and psi >= p["psi_memory_some"]
    if not (low or stalled or kills > 0 or victims):
        return []
    cg = [c for c in ev.tables.get("cgroups", []) if (c.get("memory") or {}).get("oom_kill")]
    # The memory cgroup at its limit owns the kills; its victims (a program restarted under a
    # new pid each time) are members, not culprits of their own.
    victim_members = members(victims) | {"oom_victims": len(victims)} if victims else {}
    if cg:
        c = max(cg, key=lambda c: c["memory"]["oom_kill"])
        kube = c.get("kubernetes")
        detail = {"cgroup": c["path"], "oom_kill": c["memory"]["oom_kill"]} | victim_members
        culprit = (
            Culprit(
                "pod",
                kube["pod_uid"],
                detail | {"container_id": kube.get("container_id")},
                key=f"pod:{kube['pod_uid']}",
            )
            if kube
            else Culprit("cgroup", c["path"], detail, key=f"cgroup:{c['path']}")
        )
    elif victims:
        v = victims[-1]
        comm = v.get("comm")
        same = [x for x in victims if x.get("comm") == comm]
        culprit = Culprit(
            "process",
            f"{comm}[{v.get('pid')}]",
            {"pid": v.get("pid"), "comm": comm, "oom_victim": True}
            | members(same)
            | {"oom_victims": len(same)},
            key=f"process:{comm}@None",
        )
    else:
        culprit = process_culprit(top_row(ev.tables.get("processes", []), "rss_bytes"), "no process table")
    score = clamp(
        max(
            0.9 if kills > 0 or victims else 0.0,
            (p["mem_available_pct"] * 2 - (avail or 100)) / (p["mem_available_pct"] * 2) if low else 0.0,
            (psi or 0) / 50,
        )
    )
    contradicting = []
    reclaim = sum(ev.recent(k, 3) or 0.0 for k in ("pswpin_per_s", "pswpout_per_s", "pgmajfault_per_s"))
    if not (kills > 0 or victims) and (psi or 0) < 1 and reclaim < 1:
        contradicting.append("no reclaim, swapping or memory stall: the low MemAvailable may be cache")
        score = weigh(score, contradicting)
    return [
        Finding(
            family="memory_pressure",
            method="threshold",
            signal="mem_available_pct",
            value=avail if avail is not None else -1.0,
            baseline=None,
            threshold=p["mem_available_pct"],
            score=score,
            culprit=culprit,
            summary=f"MemAvailable {avail if avail is not None else float('nan'):.1f}%, PSI memory some "
            f"{psi or 0:.0f}%, {int(kills) or len(victims)} OOM kill(s)",
            supporting=[
                s
                for s, shown in (
                    ("mem_available_pct", low),
                    ("psi_memory_some", stalled),
                    ("oom_kills", kills > 0 or bool(victims)),
                )
                if shown
            ],
            contradicting=contradicting,
            expected=["pswpin/pswpout or major faults rising", "psi_memory_full above 0", "oom_kill events"],
            last_active=None if low or stalled else _last_kill(ev),
        )
    ]


def _last_kill(ev: Evidence) -> float | None:
    """When the window last saw an OOM kill (None: it cannot tell, so the window's newest)."""
    seen = [t for t in (ev.last_nonzero("oom_kills"), ev.last_nonzero("ebpf_oom_kill")) if t is not None]
    return max(seen) if seen else None


@detector(
    "io_pressure",
    psi_io_some=PSI_IO_SOME,
    disk_util_pct=DISK_UTIL_PCT,
    iowait_pct=IOWAIT_PCT,
    min_samples=MIN_SAMPLES,
)
def io_pressure(ev: Evidence, p: Params) -> list[Finding]:
    if ev.samples < p["min_samples"]:
        return []
    psi = ev.recent("psi_io_some")
    util = ev.recent("disk_util_max_pct")
    iowait = ev.recent("cpu_iowait_pct")
    if not (
        (psi or 0) >= p["psi_io_some"]
        or (util or 0) >= p["disk_util_pct"]
        or (iowait or 0) >= p["iowait_pct"]
    ):
        return []
    disks = ev.tables.get("disks", [])
    disk = disks[0] if disks else None
    # io_top ranks every process by IO; the CPU-ranked rows miss one blocked on direct IO.
    io_rows: dict[Any, dict[str, Any]] = {}
    for r in ev.tables.get("io_top", []) + ev.tables.get("processes", []):
        rate = (finite(r.get("write_bytes_per_s")) or 0.0) + (finite(r.get("read_bytes_per_s")) or 0.0)
        if rate > 0:
            pid = r.get("pid")
            io_rows.setdefault(pid if isinstance(pid, int) else id(r), r | {"io_bytes_per_s": rate})
    rows = list(io_rows.values())
    writer = top_row(rows, "io_bytes_per_s")
    culprit = (
        _load_owner(ev, rows, "io_bytes_per_s", writer)
        if writer
        else Culprit("device", str(disk.get("name")), {"util_pct": disk.get("util_pct")})
        if disk
        else Culprit("host", "host", {})
    )
    if writer and disk:
        culprit.detail["device"] = disk.get("name")
    score = clamp(max((psi or 0) / 60, (util or 0) / 100, (iowait or 0) / 50))
    blocked = ev.recent("procs_blocked")
    contradicting = []
    if blocked is not None and blocked < 0.5 and (util or 0) < p["disk_util_pct"] / 2:
        contradicting.append("no task blocked on IO and no disk near busy")
        score = weigh(score, contradicting)
    return [
        Finding(
            family="io_pressure",
            method="threshold",
            signal="psi_io_some",
            value=psi or 0.0,
            baseline=None,
            threshold=p["psi_io_some"],
            score=score,
            culprit=culprit,
            summary=f"PSI io some {psi or 0:.0f}%, busiest disk {util or 0:.0f}% utilised, "
            f"iowait {iowait or 0:.0f}%",
            supporting=[
                s
                for s, shown in (
                    ("psi_io_some", (psi or 0) >= p["psi_io_some"]),
                    ("disk_util_max_pct", (util or 0) >= p["disk_util_pct"]),
                    ("cpu_iowait_pct", (iowait or 0) >= p["iowait_pct"]),
                    ("procs_blocked", (blocked or 0) >= 0.5),
                )
                if shown
            ],
            contradicting=contradicting,
            expected=[
                "procs_blocked above 0",
                "disk await rising",
                "block IO latency histogram shifting right",
            ],
        )
    ]


@detector(
    "fd_exhaustion", process_fds=PROCESS_FDS, process_fd_pct=PROCESS_FD_PCT, fd_growth_floor=FD_GROWTH_FLOOR
)
def fd_exhaustion(ev: Evidence, p: Params) -> list[Finding]:
    latest = ev.recent("max_process_fds", 2)
    if latest is None:
        return []
    pct = ev.recent("max_process_fd_pct", 2)
    near_limit = pct is not None and pct >= p["process_fd_pct"]
    # Growth needs latest >= 2 x max(baseline, p["fd_growth_floor"]): below that, the robust z
    # (two medians over the window) cannot matter, and most hosts are below it.
    z = robust_z(ev.values("max_process_fds")) if near_limit or latest >= 2 * p["fd_growth_floor"] else None
    growing = z is not None and z[0] >= 6 and latest >= 2 * max(z[1], p["fd_growth_floor"])
    if latest < p["process_fds"] and not growing and not near_limit:
        return []
    # fd_holders ranks every process by open files; the CPU-ranked rows are the fallback
    # for collectors that do not send it.
    row = top_row(ev.tables.get("fd_holders", []), "num_fds") or top_row(
        ev.tables.get("processes", []), "num_fds"
    )
    if near_limit:
        method, signal, value, threshold = "threshold", "max_process_fd_pct", pct or 0.0, p["process_fd_pct"]
        score = clamp(0.6 + (pct or 0) / 250)
    elif latest >= p["process_fds"]:
        method, signal, value, threshold = "threshold", "max_process_fds", latest, p["process_fds"]
        score = clamp(latest / (p["process_fds"] * 1.5))
    else:
        method, signal, value, threshold = "robust_z", "max_process_fds", latest, p["process_fds"]
        score = clamp(0.55 + min(z[0], 20) / 50) if z else 0.5
    contradicting = []
    held = ev.values("max_process_fds")
    if not near_limit and len(held) >= 8 and max(held) - min(held) <= 0.01 * latest:
        contradicting.append(f"steady at {latest:.0f} over the window: a large pool by design, not a leak")
        score = weigh(score, contradicting)
    culprit = process_culprit(row, "no process table")
    if row and row.get("fd_limit"):
        culprit.detail["fd_limit"] = row.get("fd_limit")
    limit = f" of {row['fd_limit']}" if row and row.get("fd_limit") else ""
    return [
        Finding(
            family="fd_exhaustion",
            method=method,
            signal=signal,
            value=value,
            baseline=z[1] if z else None,
            threshold=threshold,
            score=score,
            culprit=culprit,
            summary=f"a process holds {latest:.0f}{limit} open files"
            + (f" ({row.get('comm')})" if row else ""),
            supporting=["max_process_fds", "max_process_fd_pct"],
            contradicting=contradicting,
            expected=["EMFILE errors in the process", "socket count growing"],
        )
    ]


@detector("cgroup_cpu_throttling", cgroup_throttled_pct=CGROUP_THROTTLED_PCT)
def cgroup_cpu_throttling(ev: Evidence, p: Params) -> list[Finding]:
    pct = ev.recent("cgroup_throttled_max_pct")
    if pct is None or pct < p["cgroup_throttled_pct"]:
        return []
    rows = [
        c
        for c in ev.tables.get("cgroups", [])
        if (c.get("cpu") or {}).get("throttled_periods_pct") is not None
    ]
    worst = max(rows, key=lambda c: c["cpu"]["throttled_periods_pct"]) if rows else None
    if "cgroups" in ev.tables and (worst is None or worst["cpu"]["throttled_periods_pct"] <= 0):
        # The newest table has no cgroup throttled (the one that was is gone, or freed): the
        # series' recent mean lags the end of it, and a fault with no culprit is not one.
        return []
    if worst and worst.get("kubernetes"):
        culprit = Culprit(
            "pod",
            worst["kubernetes"]["pod_uid"],
            {"cgroup": worst["path"], "quota_cores": worst["cpu"].get("quota_cores")},
            key=f"pod:{worst['kubernetes']['pod_uid']}",
        )
    elif worst:
        culprit = Culprit(
            "cgroup",
            worst["path"],
            {"cgroup": worst["path"], "quota_cores": worst["cpu"].get("quota_cores")},
            key=f"cgroup:{worst['path']}",
        )
    else:
        culprit = Culprit("host", "host", {})
    score = clamp(pct / 60)
    contradicting = []
    cpu = (worst or {}).get("cpu") or {}
    usage, quota = finite(cpu.get("usage_pct")), finite(cpu.get("quota_cores"))
    if usage is not None and quota is not None and quota > 0 and usage < 50 * quota:
        contradicting.append(f"uses {usage:.0f}% of a core against a quota of {quota:g}: throttled in bursts")
        score = weigh(score, contradicting)
    return [
        Finding(
            family="cgroup_cpu_throttling",
            method="threshold",
            signal="cgroup_throttled_max_pct",
            value=pct,
            baseline=None,
            threshold=p["cgroup_throttled_pct"],
            score=score,
            culprit=culprit,
            summary=f"a cgroup is throttled in {pct:.0f}% of its CFS periods",
            supporting=["cgroup_throttled_max_pct"],
            contradicting=contradicting,
            expected=["latency of the service in that cgroup up", "usage pinned at the quota"],
        )
    ]


@detector("runaway_forks", forks_per_s=FORKS_PER_S, forks_for_s=FORKS_FOR_S, forker_share=FORKER_SHARE)
def runaway_forks(ev: Evidence, p: Params) -> list[Finding]:
    latest = ev.recent("forks_per_s", 3)
    if latest is None or latest < p["forks_per_s"]:
        return []
    # Held, not a burst: every one of the last samples past the threshold (a `for:` of
    # p["forks_for_s"], 2 or 3 samples): a build or a cron job's burst of forks is not a storm.
    held = min(3, max(2, math.ceil(p["forks_for_s"] / ev.interval()) if ev.interval() > 0 else 3))
    tail = ev.values("forks_per_s")[-held:]
    if len(tail) < held or min(tail) < p["forks_per_s"]:
        return []
    z = robust_z(ev.values("forks_per_s"))
    if z is not None and z[0] < 5:
        return []
    contradicting: list[str] = []
    execs = [e for e in ev.events if e.get("type") == "exec" and isinstance(e.get("ppid"), int) and e["ppid"]]
    parents: Counter[int] = Counter(e["ppid"] for e in execs)
    if parents:
        ppid, n = parents.most_common(1)[0]
        rows = ev.tables.get("processes", [])
        # Several parents forking alike are a pool's workers: the pool (their parent, or the
        # cgroup or unit they share) owns the storm, whichever worker forked most this time.
        forkers = {pid for pid, k in parents.items() if k >= p["forker_share"] * n}
        pool = [r for r in rows if isinstance(r.get("pid"), int) and r["pid"] in forkers]
        if len(pool) >= 2:
            culprit = owner(pool, all_rows=rows, cgroups=ev.tables.get("cgroups", []))
        else:
            # The parent that forks owns the storm: its children are members, however many come and go.
            culprit = tree_culprit(ppid, [e for e in execs if e.get("ppid") == ppid], rows)
        culprit.detail["children_seen"] = sum(parents.values())
        share = n / sum(parents.values())
        if len(pool) < 2 and share < p["forker_share"]:
            # Neither one parent nor a pool: a busy host's many shells, not a storm with an owner.
            contradicting.append(f"execs spread over {len(parents)} parents, the busiest forking {share:.0%}")
    else:
        culprit = process_culprit(top_row(ev.tables.get("processes", []), "cpu_pct"), "no exec events")
        contradicting.append("no exec events: no parent seen forking")
    return [
        Finding(
            family="runaway_forks",
            method="robust_z" if z else "threshold",
            signal="forks_per_s",
            value=latest,
            baseline=z[1] if z else None,
            threshold=p["forks_per_s"],
            score=weigh(clamp(0.5 + (min(z[0], 50) / 100 if z else 0) + latest / 2000), contradicting),
            culprit=culprit,
            summary=f"{latest:.0f} forks/s" + (f", {z[0]:.0f} robust z over the window" if z else ""),
            supporting=["forks_per_s", "ebpf_exec"],
            contradicting=contradicting,
            expected=["pid count climbing", "exec events from one parent"],
        )
    ]
