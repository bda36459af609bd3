"""The GPU fleet's API (the seed's): nodes and their devices, events (XID, ECC, throttling,
NVLink) with the process and pod where known, risk per node and job, and a device timeline.

Everything is read from the hosts' hot-state windows (the analysis workers' when they keep
them), a bounded number of hosts per request; parsing is apart from reading: the
``*_of(ev)`` functions take an Evidence and are tested on recorded and synthetic windows."""

from __future__ import annotations

import itertools
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from controller.api.deps import Reader, Rt
from controller.api.routes import READ_ERRORS, errors
from controller.api.workflow import _Open
from controller.detectors import Evidence
from controller.detectors.gpu import CRITICAL_XIDS
from controller.workflow.analysis import Hypothesis, detect, rank

router = APIRouter(prefix="/api/v1/gpu", tags=["gpu"], responses=READ_ERRORS)
log = logging.getLogger(__name__)
HOST = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
PROCS = 16  # processes listed per device
# The families that make each risk, as the seed divides GPU trouble.
RISKS: dict[str, tuple[str, ...]] = {
    "starvation": ("input_pipeline_starvation", "gpu_memory_pressure_low_util", "gpu_memory_held_idle"),
    "communication": ("gpu_nvlink_degradation", "tcp_retransmit_surge", "nic_errors"),
    "reliability": ("gpu_xid", "gpu_ecc", "gpu_throttling"),
}
PCIE_DEGRADED_RISK = 0.5  # a link trained below its maximum: slower, not broken


class GpuNodes(_Open):
    nodes: list[dict[str, Any]]
    count: int
    gpu_hosts: int


class GpuEvents(_Open):
    events: list[dict[str, Any]]
    count: int


class GpuCorrelation(_Open):
    nodes: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


class GpuTimeline(_Open):
    host_id: str
    window: dict[str, Any]
    devices: list[dict[str, Any]]
    events: list[dict[str, Any]]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _rows_by_pid(ev: Evidence) -> dict[int, dict[str, Any]]:
    return {
        r["pid"]: r
        for r in ev.tables.get("processes", [])
        if isinstance(r, dict) and isinstance(r.get("pid"), int)
    }


def _who(pid: Any, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The process (and pod) a pid names, where the host's process rows have it."""
    row = rows.get(pid) if isinstance(pid, int) else None
    if row is None:
        return {"pid": pid}
    out = {"pid": pid, "comm": row.get("comm"), "cgroup": row.get("cgroup")}
    for k in ("pod_uid", "container_id", "workload"):
        if row.get(k):
            out[k] = row[k]
    return out


def devices_of(ev: Evidence) -> list[dict[str, Any]]:
    """Each GPU as its latest sample left it, with its processes named."""
    rows = _rows_by_pid(ev)
    out = []
    for g in ev.tables.get("gpus", []):
        if not isinstance(g, dict):
            continue
        i = g.get("index")
        links = [x for x in g.get("nvlink") or [] if isinstance(x, dict)]
        procs = [p for p in g.get("processes") or [] if isinstance(p, dict)]
        pcie = g.get("pcie")
        pcie = pcie if isinstance(pcie, dict) else {}
        out.append(
            {
                "index": i,
                "uuid": g.get("uuid"),
                "name": g.get("name"),
                "util_pct": ev.latest(f"gpu{i}_util_pct"),
                "mem_used_pct": ev.latest(f"gpu{i}_mem_used_pct"),
                "temperature_c": g.get("temperature_c"),
                "power_w": g.get("power_w"),
                "fan_speed_pct": g.get("fan_speed_pct"),
                "energy_mj": g.get("energy_mj"),
                "throttle_reasons": g.get("throttle_reasons"),
                "ecc_uncorrected": ev.latest(f"gpu{i}_ecc_uncorrected"),
                "pcie": {
                    k: pcie.get(k) for k in ("link_gen", "link_width", "max_link_gen", "max_link_width")
                },
                "nvlink": {
                    "links": len(links),
                    "down": sum(1 for x in links if not x.get("active")),
                    "errors": ev.latest(f"gpu{i}_nvlink_errors"),
                },
                "processes": [
                    _who(p.get("pid"), rows) | {"used_bytes": p.get("used_bytes")} for p in procs[:PROCS]
                ],
            }
        )
    return out


def _rises(ev: Evidence, name: str) -> list[tuple[float, float, float]]:
    """(time, rise, new value) each time a counter went up."""
    pts = ev.series.get(name, [])
    return [(t, b - a, b) for (_, a), (t, b) in itertools.pairwise(pts) if b > a]


def events_of(ev: Evidence) -> list[dict[str, Any]]:
    """XID, ECC, throttle and NVLink events of the window, newest first."""
    rows = _rows_by_pid(ev)
    host = ev.host_id
    by_uuid = {g.get("uuid"): g for g in ev.tables.get("gpus", []) if isinstance(g, dict)}
    out: list[dict[str, Any]] = []
    for x in ev.tables.get("xid_events", []):
        if not isinstance(x, dict):
            continue
        g = by_uuid.get(x.get("device_uuid"), {})
        pids = [p for p in x.get("pids") or [] if isinstance(p, int)]
        out.append(
            {
                "type": "xid",
                "host_id": host,
                "ts": x.get("ts"),
                "device_uuid": x.get("device_uuid"),
                "device_index": g.get("index"),
                "xid": x.get("xid"),
                "count": x.get("count"),
                "critical": x.get("xid") in CRITICAL_XIDS,
                # NVML names no pid; one process on the device then is named, several are candidates.
                "process": _who(x["pid"], rows) if isinstance(x.get("pid"), int) else None,
                "candidates": [_who(p, rows) for p in pids] if len(pids) > 1 else [],
            }
        )
    for g in by_uuid.values():
        i, uuid = g.get("index"), g.get("uuid")
        base = {"host_id": host, "device_uuid": uuid, "device_index": i}
        for t, rise, total in _rises(ev, f"gpu{i}_ecc_uncorrected"):
            out.append(base | {"type": "ecc", "ts": t, "new_uncorrected": rise, "uncorrected": total})
        for t, rise, total in _rises(ev, f"gpu{i}_nvlink_errors"):
            out.append(base | {"type": "nvlink_errors", "ts": t, "new_errors": rise, "errors": total})
        for t, _, total in _rises(ev, f"gpu{i}_nvlink_down"):
            out.append(base | {"type": "nvlink_down", "ts": t, "links_down": total})
        pts = ev.series.get(f"gpu{i}_throttled", [])
        for (_, a), (t, b) in itertools.pairwise(pts):
            if a != b:
                kind = "throttle_start" if b > a else "throttle_end"
                reasons = g.get("throttle_reasons") if b > a else None
                out.append(base | {"type": kind, "ts": t, "reasons": reasons})
    out.sort(key=lambda e: -(e.get("ts") or 0.0))
    return out


def risks_of(ev: Evidence, hyps: list[Hypothesis]) -> dict[str, Any]:
    """Starvation, communication and reliability risk of a node: the strongest active
    hypothesis of the families behind each (a link trained below its maximum counts too)."""
    out: dict[str, Any] = {}
    for risk, families in RISKS.items():
        best = max(
            (h for h in hyps if h.family in families and h.state == "active"),
            key=lambda h: h.confidence,
            default=None,
        )
        out[risk] = {
            "risk": round(best.confidence, 4) if best else 0.0,
            "family": best.family if best else None,
            "summary": best.summary if best else None,
        }
    degraded = [
        g.get("index") for g in ev.tables.get("gpus", []) if ev.latest(f"gpu{g.get('index')}_pcie_degraded")
    ]
    if degraded and out["communication"]["risk"] < PCIE_DEGRADED_RISK:
        out["communication"] = {
            "risk": PCIE_DEGRADED_RISK,
            "family": None,
            "summary": f"PCIe link below its maximum on GPU {', '.join(str(i) for i in degraded)}",
        }
    return out


def _job(p: dict[str, Any]) -> str | None:
    """A job's name across nodes: its workload, else its program (pods and pids differ per node)."""
    if p.get("workload"):
        return f"workload:{p['workload']}"
    return f"program:{p['comm']}" if p.get("comm") else None


def _gpu_hosts(rt: Any) -> list[str]:
    out = []
    for host in reversed(rt.hot.host_ids()):
        h = rt.hot.host(host)
        status = h.source_status.get("gpu") if h is not None else None
        if status is not None and status[0] in ("ok", "fallback"):
            out.append(host)
    return out


def _evidence(rt: Any, host: str) -> Evidence | None:
    try:
        ev: Evidence | None = rt.workflow.evidence_for(host)
        return ev
    except Exception as exc:  # one host's window must never fail the answer for every host
        rt.workflow.record_failure(host, exc)
        log.exception("GPU view of host %s failed", host)
        return None


@router.get("/nodes", response_model=GpuNodes)
def nodes(rt: Rt, _: Reader, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """Hosts whose GPU source answers, newest first: labels, each device's latest state and
    processes (with pod where the host names one)."""
    hosts = _gpu_hosts(rt)
    out = []
    for host in hosts[:limit]:
        ev = _evidence(rt, host)
        if ev is None:
            continue
        out.append(
            {
                "host_id": host,
                "labels": ev.labels,
                "freshness": ev.freshness.get("gpu"),
                "window": {"start": ev.start, "end": ev.end, "samples": ev.samples},
                "devices": devices_of(ev),
            }
        )
    return {"nodes": out, "count": len(out), "gpu_hosts": len(hosts)}


@router.get("/events", response_model=GpuEvents, responses=errors(404))
def events(
    rt: Rt,
    _: Reader,
    host: Annotated[str | None, Query(pattern=HOST)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """XID, ECC, throttle and NVLink events in the hosts' windows, newest first; an XID names
    the process (and pod) where one process held the device, the candidates where several did."""
    hosts = [host] if host is not None else _gpu_hosts(rt)[:20]
    out: list[dict[str, Any]] = []
    for h in hosts:
        ev = _evidence(rt, h)
        if ev is None:
            if host is not None:
                raise HTTPException(404, f"no telemetry in hot state for host {h!r}")
            continue
        out.extend(events_of(ev))
    out.sort(key=lambda e: -(e.get("ts") or 0.0))
    return {"events": out[:limit], "count": min(len(out), limit)}


@router.get("/correlation", response_model=GpuCorrelation)
def correlation(rt: Rt, _: Reader, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """Starvation, communication and reliability risk per GPU node, from its current
    hypotheses, and per job (the processes on the GPUs, by workload or program across
    nodes): a job is as much at risk as its worst node."""
    nodes_out = []
    jobs: dict[str, dict[str, Any]] = {}
    for host in _gpu_hosts(rt)[:limit]:
        ev = _evidence(rt, host)
        if ev is None:
            continue
        rules = rt.workflow.opts.rules.for_host(host, ev.labels)
        risk = risks_of(ev, rank(ev, detect(ev, rules), rules))
        nodes_out.append({"host_id": host, "labels": ev.labels} | risk)
        for dev in devices_of(ev):
            for p in dev["processes"]:
                name = _job(p)
                if name is None:
                    continue
                job = jobs.setdefault(
                    name, {"job": name, "nodes": set(), "devices": 0} | {k: 0.0 for k in RISKS}
                )
                job["nodes"].add(host)
                job["devices"] += 1
                for k in RISKS:
                    job[k] = max(job[k], risk[k]["risk"])
    out_jobs = [j | {"nodes": sorted(j["nodes"])} for j in jobs.values()]
    out_jobs.sort(key=lambda j: (-max(j[k] for k in RISKS), j["job"]))
    nodes_out.sort(key=lambda n: (-max(n[k]["risk"] for k in RISKS), n["host_id"]))
    return {"nodes": nodes_out, "jobs": out_jobs[:limit]}


@router.get("/timeline", response_model=GpuTimeline, responses=errors(404))
def timeline(
    rt: Rt,
    _: Reader,
    host: Annotated[str, Query(pattern=HOST)],
    points: Annotated[int, Query(ge=2, le=900)] = 300,
) -> dict[str, Any]:
    """One host's GPUs over its window: per device the series of utilisation, memory,
    temperature, power, throttling, ECC and NVLink errors (the last ``points`` of each),
    and its events."""
    ev = _evidence(rt, host)
    if ev is None:
        raise HTTPException(404, f"no telemetry in hot state for host {host!r}")
    return timeline_of(ev, points)


SERIES = ("util_pct", "mem_used_pct", "temp_c", "power_w", "throttled", "ecc_uncorrected", "nvlink_errors")


def timeline_of(ev: Evidence, points: int = 300) -> dict[str, Any]:
    devices = []
    for g in ev.tables.get("gpus", []):
        if not isinstance(g, dict):
            continue
        i = g.get("index")
        series = {k: [[t, v] for t, v in ev.tail(f"gpu{i}_{k}", points)] for k in SERIES}
        devices.append({"index": i, "uuid": g.get("uuid"), "name": g.get("name"), "series": series})
    return {
        "host_id": ev.host_id,
        "window": {"start": ev.start, "end": ev.end, "samples": ev.samples},
        "devices": devices,
        "events": events_of(ev),
    }
