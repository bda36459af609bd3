"""cgroup: the heaviest leaf cgroups by memory and by CPU, on cgroup v2, v1, or a hybrid of both.

Each pass walks the leaves of the memory (or unified) hierarchy reading one usage
file and one CPU counter each, bounded to MAX_CGROUPS (on v1 also the cpu tree,
whose cgroups need not match the memory tree's), then reads the full detail
(throttling, memory events and OOM kills, IO, pids, PSI) for the top rows only:
by memory, by CPU, and on v1 by throttled time.
Kubernetes pod UID, container id and QoS class are parsed from kubepods paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import probe_core

from collector.cgroups import (
    discover_layout,
    parse_cpu_max,
    parse_flat_keyed,
    parse_io_stat,
    parse_kube_ids,
    parse_limit,
    parse_mountinfo,
    parse_v1_limit,
)
from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register

MAX_CGROUPS = 4096  # a large Kubernetes node has a few thousand; past this the walk stops and says so
TOP_CGROUPS = 10


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


PROCS_READ_MAX = 64 << 10  # a cgroup.procs longer than this holds "many" processes (None)


def parse_procs_count(text: str) -> int:
    """The processes cgroup.procs lists (one tgid a line)."""
    return sum(1 for line in text.splitlines() if line.strip().isdigit())


def _procs(path: Path) -> int | None:
    """How many processes a cgroup holds, from its cgroup.procs (where no pids controller
    counts them: a v1 pids hierarchy the workload is not placed in, or none)."""
    try:
        with path.open("rb") as f:
            data = f.read(PROCS_READ_MAX + 1)
    except OSError:
        return None
    if len(data) > PROCS_READ_MAX:
        return None
    return parse_procs_count(data.decode("ascii", "replace"))


def walk_leaves(root: Path, limit: int) -> tuple[list[str], bool]:
    """Relative paths of leaf cgroups under root (root itself when it has no children)."""
    leaves: list[str] = []
    stack = [root]
    seen = 0
    while stack:
        d = stack.pop()
        seen += 1
        if seen > limit:
            return leaves, True
        try:
            children = [e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # removed while walking
        if children:
            stack.extend(Path(c) for c in children)
        else:
            rel = "/" + os.path.relpath(d, root)
            leaves.append("/" if rel == "/." else rel)
    return leaves, False


@register
class CgroupSource(Source):
    name = "cgroup"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)
        mountinfo = _read(Path(ctx.settings.procfs_root) / "self" / "mountinfo") or ""
        self._layout = discover_layout(parse_mountinfo(mountinfo), Path(ctx.settings.sysfs_root))

    def plan(self) -> PathPlan:
        if self._layout.memory_root() is None:
            return PathPlan("none", "no cgroup memory hierarchy is mounted")
        return PathPlan("file")

    def _cpu_usage_ns(self, version: int, rel: str) -> int | None:
        lay = self._layout
        if version == 2 and lay.v2 is not None:
            stat = _read(lay.v2 / rel.lstrip("/") / "cpu.stat")
            usage = parse_flat_keyed(stat).get("usage_usec") if stat else None
            return None if usage is None else usage * 1000
        acct = lay.v1.get("cpuacct")
        return _int(acct / rel.lstrip("/") / "cpuacct.usage") if acct else None

    def _detail(self, version: int, rel: str, memory_bytes: int | None) -> dict[str, Any]:
        lay = self._layout
        sub = rel.lstrip("/")
        out: dict[str, Any] = {"path": rel, "version": version}
        kube = parse_kube_ids(rel)
        if kube:
            out["kubernetes"] = {"pod_uid": kube.pod_uid, "container_id": kube.container_id, "qos": kube.qos}
        if version == 2 and lay.v2 is not None:
            d = lay.v2 / sub
            events = parse_flat_keyed(_read(d / "memory.events") or "")
            max_text, high_text = _read(d / "memory.max"), _read(d / "memory.high")
            out["memory"] = {
                "current": memory_bytes,
                "max": parse_limit(max_text) if max_text else None,
                "high": parse_limit(high_text) if high_text else None,
                "oom": events.get("oom"),
                "oom_kill": events.get("oom_kill"),
                "high_events": events.get("high"),
                "limit_hits": events.get("max"),
            }
            cpu_stat = parse_flat_keyed(_read(d / "cpu.stat") or "")
            cpu_max = _read(d / "cpu.max")
            quota, period = parse_cpu_max(cpu_max) if cpu_max else (None, 100_000)
            throttled_ns = cpu_stat["throttled_usec"] * 1000 if "throttled_usec" in cpu_stat else None
            io = parse_io_stat(_read(d / "io.stat") or "")
            rbytes = sum(f.get("rbytes", 0) for f in io.values())
            wbytes = sum(f.get("wbytes", 0) for f in io.values())
            pids_current, pids_max_text = _int(d / "pids.current"), _read(d / "pids.max")
            pids_max = parse_limit(pids_max_text) if pids_max_text else None
            procs = _procs(d / "cgroup.procs")
            pressure = {}
            for res in ("cpu", "memory", "io"):
                text = _read(d / f"{res}.pressure")
                if text:
                    try:
                        some = probe_core.parse_pressure(text)["some"]
                    except probe_core.ParseError:
                        continue
                    pressure[res] = None if some is None else some["avg10"]
            out["pressure_some_avg10"] = pressure or None
        else:
            mem = lay.v1.get("memory")
            oom = parse_flat_keyed(_read(mem / sub / "memory.oom_control") or "") if mem else {}
            limit_text = _read(mem / sub / "memory.limit_in_bytes") if mem else None
            out["memory"] = {
                "current": memory_bytes,
                "max": parse_v1_limit(limit_text) if limit_text else None,
                "high": None,
                "oom": None,  # v1 counts OOM kills (below), not OOM events
                "limit_hits": _int(mem / sub / "memory.failcnt") if mem else None,
                # oom_kill in memory.oom_control since Linux 4.13.
                "oom_kill": oom.get("oom_kill"),
                "under_oom": oom.get("under_oom"),
            }
            cpu = lay.v1.get("cpu")
            cpu_stat = parse_flat_keyed(_read(cpu / sub / "cpu.stat") or "") if cpu else {}
            quota_us = _int(cpu / sub / "cpu.cfs_quota_us") if cpu else None
            period = (_int(cpu / sub / "cpu.cfs_period_us") if cpu else None) or 100_000
            quota = quota_us if quota_us is not None and quota_us > 0 else None
            throttled_ns = cpu_stat.get("throttled_time")
            blkio = lay.v1.get("blkio")
            rbytes = wbytes = 0
            for line in (
                (_read(blkio / sub / "blkio.throttle.io_service_bytes") or "") if blkio else ""
            ).splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[2].isdigit():
                    rbytes += int(parts[2]) if parts[1] == "Read" else 0
                    wbytes += int(parts[2]) if parts[1] == "Write" else 0
            pids = lay.v1.get("pids")
            pids_current = _int(pids / sub / "pids.current") if pids else None
            pids_max_text = _read(pids / sub / "pids.max") if pids else None
            pids_max = parse_limit(pids_max_text) if pids_max_text else None
            # A cgroup only the cpu tree has (a quota set there) lists its processes there.
            procs = next(
                (
                    n
                    for t in (mem, cpu)
                    if t is not None and (n := _procs(t / sub / "cgroup.procs")) is not None
                ),
                None,
            )
            out["pressure_some_avg10"] = None
        periods = (
            self._rates.rate(f"{rel}.periods", cpu_stat["nr_periods"]) if "nr_periods" in cpu_stat else None
        )
        throttled = (
            self._rates.rate(f"{rel}.throttled", cpu_stat["nr_throttled"])
            if "nr_throttled" in cpu_stat
            else None
        )
        throttled_time = (
            None if throttled_ns is None else self._rates.rate(f"{rel}.throttled_ns", throttled_ns)
        )
        out["cpu"] = {
            "quota_cores": None if quota is None else round(quota / period, 3),
            "nr_throttled_per_s": throttled,
            "throttled_periods_pct": None
            if not periods or throttled is None
            else round(throttled * 100 / periods, 3),
            "throttled_pct": None if throttled_time is None else round(throttled_time / 1e7, 3),
        }
        rb, wb = self._rates.rate(f"{rel}.rbytes", rbytes), self._rates.rate(f"{rel}.wbytes", wbytes)
        out["io"] = {"read_bytes_per_s": rb, "write_bytes_per_s": wb}
        out["pids"] = {"current": pids_current, "max": pids_max}
        out["procs"] = procs  # processes in the cgroup itself (what says it is a workload's own)
        return out

    def sample(self) -> SourceResult:
        mem_root = self._layout.memory_root()
        if mem_root is None:
            return SourceResult.unavailable("no cgroup memory hierarchy is mounted")
        version, root = mem_root
        leaves, truncated = walk_leaves(root, MAX_CGROUPS)
        self._rates.begin()
        usage: dict[str, tuple[int | None, float | None]] = {}
        usage_file = "memory.usage_in_bytes" if version == 1 else "memory.current"
        for rel in leaves:
            mem = _int(root / rel.lstrip("/") / usage_file)
            ns = self._cpu_usage_ns(version, rel)
            cpu_rate = None if ns is None else self._rates.rate(f"{rel}.cpu_ns", ns)
            usage[rel] = (mem, cpu_rate)
        # On v1 each controller has its own tree: a cgroup may exist only under cpu (a quota set
        # there alone), and a process's cpu path need not match its memory path. Walk that tree too
        # and keep its most throttled leaves.
        throttle: dict[str, float] = {}
        cpu_root = self._layout.v1.get("cpu") if version == 1 else None
        if cpu_root is not None and cpu_root != root:
            cpu_leaves, cut = walk_leaves(cpu_root, MAX_CGROUPS)
            truncated = truncated or cut
            for rel in cpu_leaves:
                stat = parse_flat_keyed(_read(cpu_root / rel.lstrip("/") / "cpu.stat") or "")
                if "throttled_time" in stat:
                    t = self._rates.rate(f"{rel}.throttled_rank_ns", stat["throttled_time"])
                    if t:
                        throttle[rel] = t
                if rel not in usage:
                    ns = self._cpu_usage_ns(version, rel)
                    mem = _int(root / rel.lstrip("/") / usage_file)
                    usage[rel] = (mem, None if ns is None else self._rates.rate(f"{rel}.cpu_ns", ns))
        by_mem = sorted(usage, key=lambda r: usage[r][0] or 0, reverse=True)[:TOP_CGROUPS]
        by_cpu = sorted(usage, key=lambda r: usage[r][1] or 0.0, reverse=True)[:TOP_CGROUPS]
        by_throttle = sorted(throttle, key=lambda r: throttle[r], reverse=True)[:TOP_CGROUPS]
        rows = []
        for rel in dict.fromkeys(by_mem + by_cpu + by_throttle):
            detail = self._detail(version, rel, usage[rel][0])
            cpu_rate = usage[rel][1]
            detail["cpu"]["usage_pct"] = None if cpu_rate is None else round(cpu_rate / 1e7, 3)
            rows.append(detail)
        self._rates.end()
        data = {
            "mode": self._layout.mode,
            "memory_hierarchy": f"v{version}",
            "leaves": len(usage),
            "truncated": truncated,
            "cgroups": rows,
        }
        return SourceResult.ok("file", data)
