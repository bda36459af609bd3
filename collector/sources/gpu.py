"""gpu: NVIDIA GPUs through NVML (nvidia-ml-py, imported as pynvml); never nvidia-smi.

Per device: utilisation, memory, BAR1, temperature, power and its limit, clocks,
the throttle-reason bitmask decoded to names, ECC counts, PCIe throughput and
replay counter, NVLink state and errors, per-process GPU memory; and XID errors
counted per code through NVML's event API. A field the device does not support
is None. Without libnvidia-ml or a GPU the source is ``unavailable`` with NVML's
own reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from collector.info import nvml_library_missing
from collector.sources.base import PathPlan, Source, SourceContext, SourceResult
from collector.sources.registry import register

T = TypeVar("T")

# nvmlClocksThrottleReason* / nvmlClocksEventReason* bits (nvml.h).
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
MAX_XID_EVENTS = 1000  # drained per sample; the rest wait for the next one
NVLINK_ERRORS = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}  # NVML_NVLINK_ERROR_DL_*


def decode_throttle_reasons(mask: int) -> list[str]:
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(f"unknown_0x{unknown:x}")
    return names


class _Nvml:
    """The slice of pynvml this source uses, looked up at call time so tests can replace it."""

    def __init__(self) -> None:
        import pynvml

        self.m = pynvml

    def opt(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call an NVML function; None where the device does not support it."""
        try:
            return fn(*args)
        except self.m.NVMLError as exc:
            if isinstance(exc, self.m.NVMLError_NotSupported | self.m.NVMLError_NoPermission):
                return None
            if getattr(exc, "value", None) in (
                getattr(self.m, "NVML_ERROR_NOT_SUPPORTED", 3),
                getattr(self.m, "NVML_ERROR_NO_PERMISSION", 4),
                getattr(self.m, "NVML_ERROR_FUNCTION_NOT_FOUND", 13),
            ):
                return None
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_device(nv: _Nvml, index: int, handle: Any) -> dict[str, Any]:
    m = nv.m
    util = nv.opt(m.nvmlDeviceGetUtilizationRates, handle)
    mem = nv.opt(m.nvmlDeviceGetMemoryInfo, handle)
    bar1 = nv.opt(m.nvmlDeviceGetBAR1MemoryInfo, handle)
    power = nv.opt(m.nvmlDeviceGetPowerUsage, handle)
    limit = nv.opt(m.nvmlDeviceGetEnforcedPowerLimit, handle)
    throttle = nv.opt(m.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
    pci = nv.opt(m.nvmlDeviceGetPciInfo, handle)
    ecc: dict[str, int | None] = {}
    for kind, err_type in (
        ("corrected", m.NVML_MEMORY_ERROR_TYPE_CORRECTED),
        ("uncorrected", m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
    ):
        for scope, counter in (("volatile", m.NVML_VOLATILE_ECC), ("aggregate", m.NVML_AGGREGATE_ECC)):
            ecc[f"{kind}_{scope}"] = nv.opt(m.nvmlDeviceGetTotalEccErrors, handle, err_type, counter)
    tx = nv.opt(m.nvmlDeviceGetPcieThroughput, handle, m.NVML_PCIE_UTIL_TX_BYTES)
    rx = nv.opt(m.nvmlDeviceGetPcieThroughput, handle, m.NVML_PCIE_UTIL_RX_BYTES)
    links = []
    for link in range(getattr(m, "NVML_NVLINK_MAX_LINKS", 18)):
        state = nv.opt(m.nvmlDeviceGetNvLinkState, handle, link)
        if state is None:
            break  # no NVLink, or no more links
        errors = {
            name: nv.opt(m.nvmlDeviceGetNvLinkErrorCounter, handle, link, code)
            for name, code in NVLINK_ERRORS.items()
        }
        links.append({"link": link, "active": bool(state), "errors": errors})
    procs = []
    for getter in (m.nvmlDeviceGetComputeRunningProcesses, m.nvmlDeviceGetGraphicsRunningProcesses):
        for p in nv.opt(getter, handle) or []:
            used = getattr(p, "usedGpuMemory", None)
            procs.append({"pid": p.pid, "used_bytes": used if isinstance(used, int) and used >= 0 else None})
    return {
        "index": index,
        "name": _text(nv.opt(m.nvmlDeviceGetName, handle)),
        "uuid": _text(nv.opt(m.nvmlDeviceGetUUID, handle)),
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "utilization_pct": None if util is None else {"gpu": util.gpu, "memory": util.memory},
        "memory": None if mem is None else {"total": mem.total, "used": mem.used, "free": mem.free},
        "bar1": None
        if bar1 is None
        else {"total": bar1.bar1Total, "used": bar1.bar1Used, "free": bar1.bar1Free},
        "temperature_c": nv.opt(m.nvmlDeviceGetTemperature, handle, m.NVML_TEMPERATURE_GPU),
        # Percent of the fan's maximum; None on passively cooled boards (most data-centre GPUs).
        "fan_speed_pct": nv.opt(m.nvmlDeviceGetFanSpeed, handle),
        # Millijoules since the driver loaded (Volta and later): a counter, so rates survive gaps.
        "energy_mj": nv.opt(m.nvmlDeviceGetTotalEnergyConsumption, handle),
        "power_w": None if power is None else power / 1000.0,
        "power_limit_w": None if limit is None else limit / 1000.0,
        "clocks_mhz": {
            "sm": nv.opt(m.nvmlDeviceGetClockInfo, handle, m.NVML_CLOCK_SM),
            "memory": nv.opt(m.nvmlDeviceGetClockInfo, handle, m.NVML_CLOCK_MEM),
            "graphics": nv.opt(m.nvmlDeviceGetClockInfo, handle, m.NVML_CLOCK_GRAPHICS),
            "sm_max": nv.opt(m.nvmlDeviceGetMaxClockInfo, handle, m.NVML_CLOCK_SM),
        },
        "throttle_reasons": None if throttle is None else decode_throttle_reasons(throttle),
        "throttle_mask": throttle,
        "ecc": ecc,
        "pcie": {
            "tx_bytes_per_s": None if tx is None else tx * 1024,  # NVML reports KB/s
            "rx_bytes_per_s": None if rx is None else rx * 1024,
            "replay_counter": nv.opt(m.nvmlDeviceGetPcieReplayCounter, handle),
            # A link trained below its maximum (a bad riser or slot) halves or worse its bandwidth.
            "link_gen": nv.opt(m.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            "link_width": nv.opt(m.nvmlDeviceGetCurrPcieLinkWidth, handle),
            "max_link_gen": nv.opt(m.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            "max_link_width": nv.opt(m.nvmlDeviceGetMaxPcieLinkWidth, handle),
        },
        "nvlink": links,
        "processes": procs,
    }


XID_PIDS = 8  # processes named on one XID event


def attribute_xids(events: list[dict[str, Any]], devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """XID events with the processes on their device when they were drained. NVML's XID
    event carries no pid (nvmlEventData_t has none); the processes running on the device
    then are the candidates (``pids``), and ``pid`` is set only when there was exactly one,
    so a shared GPU never blames the wrong job. ``pid_source`` says where they came from."""
    on: dict[str | None, list[int]] = {
        d.get("uuid"): [p["pid"] for p in d.get("processes") or [] if isinstance(p.get("pid"), int)]
        for d in devices
    }
    out = []
    for e in events:
        pids = sorted(set(on.get(e.get("device_uuid"), [])))[:XID_PIDS]
        out.append(
            e | {"pid": pids[0] if len(pids) == 1 else None, "pids": pids, "pid_source": "device_processes"}
        )
    return out


@register
class GpuSource(Source):
    name = "gpu"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._nv: _Nvml | None = None
        self._handles: list[Any] = []
        self._events: Any = None
        self._why: str | None = None
        self._xid_note: str | None = None
        self._why = nvml_library_missing()
        if self._why is not None:
            return
        try:
            nv = _Nvml()
        except ImportError:
            self._why = "nvidia-ml-py is not installed (pip install incidentlab[gpu])"
            return
        try:
            nv.m.nvmlInit()
        except nv.m.NVMLError as exc:
            self._why = f"NVML did not initialise: {exc}"
            return
        self._nv = nv
        count = nv.m.nvmlDeviceGetCount()
        self._handles = [nv.m.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        if not self._handles:
            self._why = "NVML found no GPU"
            return
        try:
            self._events = nv.m.nvmlEventSetCreate()
            for h in self._handles:
                nv.m.nvmlDeviceRegisterEvents(h, nv.m.nvmlEventTypeXidCriticalError, self._events)
        except nv.m.NVMLError as exc:
            self._xid_note = f"XID events unavailable: {exc}"

    def plan(self) -> PathPlan:
        return PathPlan("none", self._why) if self._why else PathPlan("kernel")

    def _drain_xids(self) -> list[dict[str, Any]]:
        assert self._nv is not None
        m = self._nv.m
        counts: Counter[tuple[int, str | None]] = Counter()
        for _ in range(MAX_XID_EVENTS):
            try:
                event = m.nvmlEventSetWait_v2(self._events, 0)
            except m.NVMLError_Timeout:
                break
            device = None
            if getattr(event, "device", None) is not None:
                uuid = self._nv.opt(m.nvmlDeviceGetUUID, event.device)
                device = _text(uuid) if uuid is not None else None
            counts[(int(event.eventData), device)] += 1
        return [
            {"xid": xid, "device_uuid": dev, "count": n, "pid": None}
            for (xid, dev), n in sorted(counts.items(), key=str)
        ]

    def sample(self) -> SourceResult:
        if self._why or self._nv is None:
            return SourceResult.unavailable(self._why or "NVML unavailable")
        devices = [read_device(self._nv, i, h) for i, h in enumerate(self._handles)]
        data: dict[str, Any] = {
            "driver": _text(self._nv.opt(self._nv.m.nvmlSystemGetDriverVersion)),
            "devices": devices,
        }
        if self._events is not None:
            data["xid_events"] = attribute_xids(self._drain_xids(), devices)
        else:
            data["xid_events"] = None
            data["xid_note"] = self._xid_note
        return SourceResult.ok("kernel", data)

    def close(self) -> None:
        if self._nv is None:
            return
        if self._events is not None:
            self._nv.opt(self._nv.m.nvmlEventSetFree, self._events)
        self._nv.m.nvmlShutdown()
        self._nv = None
