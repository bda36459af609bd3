"""GPU detectors: thermal or power throttling, XID errors (critical codes flagged), ECC
errors, memory pressure with low utilisation, a process holding memory on an idle GPU,
NVLink degradation, input-pipeline starvation."""

from __future__ import annotations

from typing import Any

from controller.detectors.base import (
    Culprit,
    Finding,
    Params,
    clamp,
    detector,
    pearson,
    process_culprit,
    top_row,
    weigh,
)
from controller.detectors.evidence import Evidence

# XIDs that end or corrupt the job on the GPU, the seed's set (13, 31, 43, 48, 63, 79, 94) and
# more (README "GPU XIDs" says why each): a graphics engine exception (13) and an MMU fault
# (31) kill the job's context (often its own bug, but a device that keeps raising them under
# different jobs is hardware); a stopped channel (43); double-bit ECC (48); internal
# micro-controller faults (61, 62, 64) and ECC page retirement or row remapping failures
# (63); NVLink (74); fallen off the bus (79); high single-bit ECC rate (92); contained and
# uncontained ECC (94, 95); GSP errors (119, 120).
CRITICAL_XIDS = frozenset({13, 31, 43, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120})
NVLINK_ERRORS = 10.0  # link errors (CRC, replay, recovery) in the window that degrade a link
HELD_IDLE_UTIL_PCT = 2.0  # "idle": at or under this for the whole stretch
HELD_IDLE_S = 60.0
HELD_IDLE_BYTES = 1 << 30
GPU_MEM_USED_PCT = 90.0
GPU_LOW_UTIL_PCT = 20.0
STARVED_GPU_UTIL_PCT = 30.0
STARVED_CPU_BUSY_PCT = 85.0
GPU_IDLE_UTIL_PCT = 10.0


def _gpus(ev: Evidence) -> list[dict[str, Any]]:
    return [g for g in ev.tables.get("gpus", []) if isinstance(g, dict)]


def _device(g: dict[str, Any]) -> Culprit:
    return Culprit(
        "device",
        str(g.get("uuid") or f"gpu{g.get('index')}"),
        {"index": g.get("index"), "name": g.get("name"), "pci_bus_id": g.get("pci_bus_id")},
    )


@detector("gpu_throttling", gpu_idle_util_pct=GPU_IDLE_UTIL_PCT)
def gpu_throttling(ev: Evidence, p: Params) -> list[Finding]:
    out = []
    for g in _gpus(ev):
        i = g.get("index")
        throttled = ev.values(f"gpu{i}_throttled")[-5:]
        if len(throttled) >= 3 and sum(throttled) >= len(throttled) - 1:
            reasons = g.get("throttle_reasons") or []
            temp = g.get("temperature_c")
            util = ev.recent(f"gpu{i}_util_pct")
            against = (
                [f"GPU {i} is {util:.0f}% utilised: lower clocks cost little work"]
                if util is not None and util < p["gpu_idle_util_pct"]
                else []
            )
            base = clamp(0.6 + (0.3 if any("thermal" in r for r in reasons) else 0.15))
            out.append(
                Finding(
                    family="gpu_throttling",
                    method="threshold",
                    signal=f"gpu{i}_throttled",
                    value=sum(throttled) / len(throttled),
                    baseline=None,
                    threshold=0.8,
                    score=weigh(base, against),
                    culprit=_device(g),
                    summary=f"GPU {i} clocks held down: {', '.join(reasons) or 'throttled'}"
                    + (f", {temp} C" if temp is not None else ""),
                    supporting=[f"gpu{i}_throttled", f"gpu{i}_temp_c"],
                    contradicting=against,
                    expected=["SM clock below its maximum", "step time up for the job on it"],
                )
            )
    return out


@detector("gpu_xid")
def gpu_xid(ev: Evidence, p: Params) -> list[Finding]:
    xids = [x for x in ev.tables.get("xid_events", []) if isinstance(x, dict)]
    if not xids:
        return []
    worst = max(xids, key=lambda x: (x.get("xid") in CRITICAL_XIDS, x.get("count", 0)))
    critical = sorted({x["xid"] for x in xids if x.get("xid") in CRITICAL_XIDS})
    dev = worst.get("device_uuid") or "unknown"
    return [
        Finding(
            family="gpu_xid",
            method="threshold",
            signal="xid_events",
            value=float(sum(x.get("count", 0) for x in xids)),
            baseline=None,
            threshold=1.0,
            # A recoverable XID alone is the evidence against: it scores as much lower.
            score=0.95 if critical else 0.6,
            culprit=Culprit(
                "device", str(dev), {"xids": sorted({x.get("xid") for x in xids}), "critical": critical}
            ),
            summary=f"XID {worst.get('xid')} on {dev}" + (f" (critical: {critical})" if critical else ""),
            supporting=["xid_events"],
            contradicting=[] if critical else ["no critical XID: recoverable errors a job may survive"],
            expected=["the job on that GPU failing or hanging", "ECC counters rising for memory XIDs"],
        )
    ]


def _last_rise(points: list[tuple[float, float]]) -> float | None:
    """When a counter last went up."""
    for (_, a), (t, b) in zip(reversed(points[:-1]), reversed(points[1:]), strict=True):
        if b > a:
            return t
    return None


@detector("gpu_ecc")
def gpu_ecc(ev: Evidence, p: Params) -> list[Finding]:
    out = []
    for g in _gpus(ev):
        i = g.get("index")
        ecc = ev.values(f"gpu{i}_ecc_uncorrected")
        if len(ecc) >= 2 and ecc[-1] > ecc[0]:
            against = ["a single new uncorrected error in the window"] if ecc[-1] - ecc[0] < 2 else []
            out.append(
                Finding(
                    family="gpu_ecc",
                    method="threshold",
                    signal=f"gpu{i}_ecc_uncorrected",
                    value=ecc[-1] - ecc[0],
                    baseline=ecc[0],
                    threshold=1.0,
                    score=weigh(0.9, against),
                    culprit=_device(g),
                    summary=f"GPU {i}: {ecc[-1] - ecc[0]:.0f} new uncorrected ECC errors in the window",
                    supporting=[f"gpu{i}_ecc_uncorrected"],
                    contradicting=against,
                    last_active=_last_rise(ev.series.get(f"gpu{i}_ecc_uncorrected", [])),
                    expected=["XID 48, 94 or 95", "pages retired on the device"],
                )
            )
    return out


@detector(
    "gpu_memory_pressure_low_util", gpu_mem_used_pct=GPU_MEM_USED_PCT, gpu_low_util_pct=GPU_LOW_UTIL_PCT
)
def gpu_memory_pressure_low_util(ev: Evidence, p: Params) -> list[Finding]:
    out = []
    for g in _gpus(ev):
        i = g.get("index")
        mem, util = ev.recent(f"gpu{i}_mem_used_pct"), ev.recent(f"gpu{i}_util_pct")
        if mem is None or util is None or mem < p["gpu_mem_used_pct"] or util > p["gpu_low_util_pct"]:
            continue
        holder = max(g.get("processes") or [], key=lambda p: p.get("used_bytes") or 0, default=None)
        used = ev.values(f"gpu{i}_mem_used_pct")
        against = (
            ["memory held steady over the window: a caching allocator's reservation, not a leak"]
            if len(used) >= 8 and max(used) - min(used) < 1.0
            else []
        )
        base = clamp(0.5 + (mem - p["gpu_mem_used_pct"]) / 20 + (p["gpu_low_util_pct"] - util) / 100)
        culprit = _device(g)
        if holder:
            culprit.detail["holder_pid"] = holder.get("pid")
        out.append(
            Finding(
                family="gpu_memory_pressure_low_util",
                method="threshold",
                signal=f"gpu{i}_mem_used_pct",
                value=mem,
                baseline=None,
                threshold=p["gpu_mem_used_pct"],
                score=weigh(base, against),
                culprit=culprit,
                summary=f"GPU {i} memory {mem:.0f}% used while only {util:.0f}% utilised",
                supporting=[f"gpu{i}_mem_used_pct", f"gpu{i}_util_pct"],
                contradicting=against,
                expected=["an idle process holding device memory", "new jobs failing to allocate"],
            )
        )
    return out


@detector(
    "input_pipeline_starvation",
    starved_gpu_util_pct=STARVED_GPU_UTIL_PCT,
    starved_cpu_busy_pct=STARVED_CPU_BUSY_PCT,
)
def input_pipeline_starvation(ev: Evidence, p: Params) -> list[Finding]:
    busy = ev.recent("cpu_busy_pct")
    if busy is None or busy < p["starved_cpu_busy_pct"]:
        return []
    out = []
    for g in _gpus(ev):
        i = g.get("index")
        util = ev.recent(f"gpu{i}_util_pct")
        if util is None or util > p["starved_gpu_util_pct"]:
            continue
        r = pearson(ev.values("cpu_busy_pct"), ev.values(f"gpu{i}_util_pct"))
        score = clamp(
            0.55 + (busy - p["starved_cpu_busy_pct"]) / 60 + (p["starved_gpu_util_pct"] - util) / 100
        )
        against = []
        if r is not None and r < -0.3:
            score = clamp(score + 0.15)  # the GPU idles exactly when the CPU is pinned
        elif r is not None and r > 0.3:
            against.append(f"GPU utilisation rises with the CPU's (correlation {r:.2f}), not against it")
            score = weigh(score, against)
        hog = top_row(ev.tables.get("processes", []), "cpu_pct")
        culprit = process_culprit(hog, "no process table")
        culprit.detail["gpu"] = g.get("uuid") or f"gpu{i}"
        out.append(
            Finding(
                family="input_pipeline_starvation",
                method="correlation" if r is not None else "threshold",
                signal="cpu_busy_pct",
                value=busy,
                baseline=r,
                threshold=p["starved_cpu_busy_pct"],
                score=score,
                culprit=culprit,
                summary=f"CPU {busy:.0f}% busy while GPU {i} is {util:.0f}% utilised"
                + (f" (correlation {r:.2f})" if r is not None else ""),
                supporting=["cpu_busy_pct", f"gpu{i}_util_pct"],
                contradicting=against,
                expected=["data-loader workers at 100% CPU", "GPU utilisation rising when loaders are added"],
            )
        )
    return out


@detector("gpu_nvlink_degradation", nvlink_errors=NVLINK_ERRORS)
def gpu_nvlink_degradation(ev: Evidence, p: Params) -> list[Finding]:
    """A link that went down in the window, or link errors piling up: collective
    communication over NVLink slows or hangs for every rank of the job."""
    out = []
    for g in _gpus(ev):
        i = g.get("index")
        errs, down = ev.values(f"gpu{i}_nvlink_errors"), ev.values(f"gpu{i}_nvlink_down")
        if len(errs) < 2 or len(down) < 2:
            continue
        new_errors, went_down = errs[-1] - errs[0], down[-1] - min(down)
        if went_down <= 0 and new_errors < p["nvlink_errors"]:
            continue
        links = [x for x in g.get("nvlink") or [] if isinstance(x, dict)]
        replay_only = all(
            (x.get("errors") or {}).get(k) in (0, None)
            for x in links
            for k in ("crc_flit", "crc_data", "recovery")
        )
        against = (
            ["only replay errors: the link retried and recovered each time"]
            if replay_only and went_down <= 0
            else []
        )
        base = 0.9 if went_down > 0 else clamp(0.6 + new_errors / (10 * p["nvlink_errors"]))
        culprit = _device(g)
        culprit.detail["links_down"] = int(down[-1])
        out.append(
            Finding(
                family="gpu_nvlink_degradation",
                method="threshold",
                signal=f"gpu{i}_nvlink_down" if went_down > 0 else f"gpu{i}_nvlink_errors",
                value=down[-1] if went_down > 0 else new_errors,
                baseline=min(down) if went_down > 0 else errs[0],
                threshold=1.0 if went_down > 0 else p["nvlink_errors"],
                score=weigh(base, against),
                culprit=culprit,
                summary=f"GPU {i}: "
                + (f"{went_down:.0f} NVLink link(s) went down" if went_down > 0 else "")
                + (" and " if went_down > 0 and new_errors else "")
                + (f"{new_errors:.0f} NVLink errors in the window" if new_errors else ""),
                supporting=[f"gpu{i}_nvlink_down", f"gpu{i}_nvlink_errors"],
                contradicting=against,
                last_active=_last_rise(ev.series.get(f"gpu{i}_nvlink_errors", []))
                or _last_rise(ev.series.get(f"gpu{i}_nvlink_down", [])),
                expected=["NCCL collectives slowing or timing out", "XID 74 on the device"],
            )
        )
    return out


@detector(
    "gpu_memory_held_idle",
    held_idle_util_pct=HELD_IDLE_UTIL_PCT,
    held_idle_s=HELD_IDLE_S,
    held_idle_bytes=HELD_IDLE_BYTES,
)
def gpu_memory_held_idle(ev: Evidence, p: Params) -> list[Finding]:
    """A process holding device memory on a GPU that has done nothing for a while: a
    finished notebook kernel or a stuck job keeping the GPU from the next one."""
    out = []
    for g in _gpus(ev):
        i = g.get("index")
        series = ev.series.get(f"gpu{i}_util_pct", [])
        idle = []
        for t, v in reversed(series):
            if v > p["held_idle_util_pct"]:
                break
            idle.append(t)
        if not idle or idle[0] - idle[-1] < p["held_idle_s"]:
            continue
        procs = [
            x
            for x in g.get("processes") or []
            if isinstance(x, dict) and isinstance(x.get("used_bytes"), int)
        ]
        holder = max(procs, key=lambda x: x["used_bytes"], default=None)
        if holder is None or holder["used_bytes"] < p["held_idle_bytes"]:
            continue
        total = (g.get("memory") or {}).get("total") if isinstance(g.get("memory"), dict) else None
        share = holder["used_bytes"] / total if isinstance(total, int) and total > 0 else None
        against = (
            ["it holds under a tenth of the device's memory: little for the next job to miss"]
            if share is not None and share < 0.1
            else []
        )
        row = next((r for r in ev.tables.get("processes", []) if r.get("pid") == holder.get("pid")), None)
        culprit = process_culprit(row, "the holder is not among the process rows")
        if row is None:
            culprit = Culprit(
                "process", f"pid {holder.get('pid')}", {"pid": holder.get("pid")}, key="gpu-holder"
            )
        culprit.detail.update(gpu=g.get("uuid") or f"gpu{i}", gpu_bytes=holder["used_bytes"])
        gib = holder["used_bytes"] / (1 << 30)
        out.append(
            Finding(
                family="gpu_memory_held_idle",
                method="threshold",
                signal=f"gpu{i}_util_pct",
                value=ev.recent(f"gpu{i}_util_pct") or 0.0,
                baseline=None,
                threshold=p["held_idle_util_pct"],
                score=weigh(clamp(0.6 + 0.3 * (share or 0.0)), against),
                culprit=culprit,
                summary=f"pid {holder.get('pid')} holds {gib:.1f} GiB on GPU {i}, "
                f"idle for {idle[0] - idle[-1]:.0f} s",
                supporting=[f"gpu{i}_util_pct", f"gpu{i}_mem_used_pct"],
                contradicting=against,
                expected=[
                    "the next job on this GPU failing to allocate",
                    "an idle notebook kernel or a hung job",
                ],
            )
        )
    return out
