"""GPU detectors: thermal or power throttling, XID errors (critical codes flagged), ECC
errors, memory pressure with low utilisation, input-pipeline starvation."""

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

# XIDs that mean the GPU (not the application) is in trouble: double-bit ECC (48), internal
# micro-controller faults (61-64), NVLink (74), fallen off the bus (79), high single-bit ECC
# rate (92), contained and uncontained ECC (94, 95), GSP errors (119, 120).
CRITICAL_XIDS = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120})
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
