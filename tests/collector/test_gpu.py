"""gpu: NVML parsed field by field against a fake pynvml at the library boundary.

The real NVML path runs on a GPU machine through bench/gpu_check.py; here there is
no GPU, and the honest answer is ``unavailable`` with NVML's reason.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from collector.info import nvml_presence
from collector.sources.gpu import GpuSource

from .conftest import context_for


def test_the_source_answers_what_this_machine_has() -> None:
    """No GPU: unavailable with NVML's reason. A GPU: NVML's devices (bench/gpu_check.py goes further)."""
    present, _ = nvml_presence()
    src = GpuSource(context_for(Path("/")))
    r = src.sample()
    if present:
        assert r.status == "ok" and r.path == "kernel" and src.plan().path == "kernel"
        assert r.data["devices"] and r.data["driver"]
    else:
        assert r.status == "unavailable" and r.path == "none"
        assert r.reason is not None and "NVML" in r.reason
        assert src.plan().path == "none"
    src.close()


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(3)


class NVMLError_NoPermission(NVMLError):
    def __init__(self) -> None:
        super().__init__(4)


class NVMLError_Timeout(NVMLError):
    def __init__(self) -> None:
        super().__init__(10)


def ns(**kw: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**kw)


def fake_nvml(xids: list[tuple[int, str]], *, events_supported: bool = True) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    setattr(m, "NVMLError", NVMLError)
    setattr(m, "NVMLError_NotSupported", NVMLError_NotSupported)
    setattr(m, "NVMLError_NoPermission", NVMLError_NoPermission)
    setattr(m, "NVMLError_Timeout", NVMLError_Timeout)
    consts = {
        "NVML_MEMORY_ERROR_TYPE_CORRECTED": 0,
        "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
        "NVML_VOLATILE_ECC": 0,
        "NVML_AGGREGATE_ECC": 1,
        "NVML_PCIE_UTIL_TX_BYTES": 0,
        "NVML_PCIE_UTIL_RX_BYTES": 1,
        "NVML_TEMPERATURE_GPU": 0,
        "NVML_CLOCK_GRAPHICS": 0,
        "NVML_CLOCK_SM": 1,
        "NVML_CLOCK_MEM": 2,
        "NVML_NVLINK_MAX_LINKS": 18,
        "nvmlEventTypeXidCriticalError": 8,
    }
    for k, v in consts.items():
        setattr(m, k, v)
    devices = {
        0: ns(name="NVIDIA A100-SXM4-80GB", uuid="GPU-aaaa", nvlinks=2, ecc_ok=True),
        1: ns(name=b"NVIDIA L4", uuid=b"GPU-bbbb", nvlinks=0, ecc_ok=False),
    }
    pending = list(xids)
    calls: dict[str, int] = {"init": 0, "shutdown": 0}

    def not_supported(*_: Any) -> Any:
        raise NVMLError_NotSupported()

    setattr(m, "nvmlInit", lambda: calls.__setitem__("init", calls["init"] + 1))
    setattr(m, "nvmlShutdown", lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1))
    setattr(m, "nvmlDeviceGetCount", lambda: len(devices))
    setattr(m, "nvmlDeviceGetHandleByIndex", lambda i: devices[i])
    setattr(m, "nvmlSystemGetDriverVersion", lambda: "550.54.15")
    setattr(m, "nvmlDeviceGetName", lambda h: h.name)
    setattr(m, "nvmlDeviceGetUUID", lambda h: h.uuid)
    setattr(m, "nvmlDeviceGetPciInfo", lambda h: ns(busId=b"00000000:3B:00.0"))
    setattr(m, "nvmlDeviceGetUtilizationRates", lambda h: ns(gpu=97, memory=41))
    setattr(m, "nvmlDeviceGetMemoryInfo", lambda h: ns(total=80 << 30, used=70 << 30, free=10 << 30))
    bar1 = ns(bar1Total=1 << 30, bar1Used=1 << 20, bar1Free=(1 << 30) - (1 << 20))
    setattr(m, "nvmlDeviceGetBAR1MemoryInfo", lambda h: bar1)
    setattr(m, "nvmlDeviceGetTemperature", lambda h, s: 84)
    setattr(m, "nvmlDeviceGetPowerUsage", lambda h: 398_500)
    setattr(m, "nvmlDeviceGetEnforcedPowerLimit", lambda h: 400_000)
    setattr(m, "nvmlDeviceGetClockInfo", lambda h, c: {0: 1410, 1: 1410, 2: 1593}[c])
    setattr(m, "nvmlDeviceGetMaxClockInfo", lambda h, c: 1410)
    setattr(m, "nvmlDeviceGetCurrentClocksThrottleReasons", lambda h: 0x4 | 0x40)

    def ecc(h: Any, err: int, counter: int) -> int:
        if not h.ecc_ok:
            raise NVMLError_NotSupported()
        return {(0, 0): 5, (0, 1): 50, (1, 0): 1, (1, 1): 2}[(err, counter)]

    setattr(m, "nvmlDeviceGetTotalEccErrors", ecc)
    setattr(m, "nvmlDeviceGetPcieThroughput", lambda h, c: {0: 1000, 1: 2000}[c])
    setattr(m, "nvmlDeviceGetPcieReplayCounter", lambda h: 12)
    setattr(m, "nvmlDeviceGetCurrPcieLinkGeneration", lambda h: 3 if h.ecc_ok else 4)
    setattr(m, "nvmlDeviceGetCurrPcieLinkWidth", lambda h: 8 if h.ecc_ok else 16)
    setattr(m, "nvmlDeviceGetMaxPcieLinkGeneration", lambda h: 4)
    setattr(m, "nvmlDeviceGetMaxPcieLinkWidth", lambda h: 16)

    def fan(h: Any) -> int:
        if h.ecc_ok:  # a passively cooled board: no fan
            raise NVMLError_NotSupported()
        return 35

    setattr(m, "nvmlDeviceGetFanSpeed", fan)
    setattr(m, "nvmlDeviceGetTotalEnergyConsumption", lambda h: 123_456_789)

    def nvlink_state(h: Any, link: int) -> int:
        if link >= h.nvlinks:
            raise NVMLError_NotSupported()
        return 1 if link == 0 else 0

    setattr(m, "nvmlDeviceGetNvLinkState", nvlink_state)
    setattr(m, "nvmlDeviceGetNvLinkErrorCounter", lambda h, link, code: link * 10 + code)
    setattr(
        m,
        "nvmlDeviceGetComputeRunningProcesses",
        lambda h: (
            [ns(pid=4242, usedGpuMemory=60 << 30)]
            if h.ecc_ok
            else [ns(pid=7, usedGpuMemory=1 << 30), ns(pid=8, usedGpuMemory=None)]
        ),
    )
    setattr(m, "nvmlDeviceGetGraphicsRunningProcesses", not_supported)
    if events_supported:
        setattr(m, "nvmlEventSetCreate", lambda: "evset")
        setattr(m, "nvmlDeviceRegisterEvents", lambda h, kind, s: None)
    else:
        setattr(m, "nvmlEventSetCreate", not_supported)
    setattr(m, "nvmlEventSetFree", lambda s: None)

    def wait(s: Any, timeout_ms: int) -> Any:
        if not pending:
            raise NVMLError_Timeout()
        xid, uuid = pending.pop(0)
        dev = devices[0] if uuid == "GPU-aaaa" else devices[1]
        return ns(eventType=8, eventData=xid, device=dev)

    setattr(m, "nvmlEventSetWait_v2", wait)
    setattr(m, "calls", calls)
    return m


def test_every_field_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml([(79, "GPU-aaaa"), (48, "GPU-aaaa"), (79, "GPU-aaaa"), (13, "GPU-bbbb")])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    src = GpuSource(context_for(Path("/")))
    assert src.plan().path == "kernel"
    r = src.sample()
    assert r.status == "ok" and r.path == "kernel"
    d0, d1 = r.data["devices"]
    assert r.data["driver"] == "550.54.15"
    assert d0["name"] == "NVIDIA A100-SXM4-80GB" and d1["name"] == "NVIDIA L4" and d1["uuid"] == "GPU-bbbb"
    assert d0["pci_bus_id"] == "00000000:3B:00.0"
    assert d0["utilization_pct"] == {"gpu": 97, "memory": 41}
    assert d0["memory"] == {"total": 80 << 30, "used": 70 << 30, "free": 10 << 30}
    assert d0["bar1"]["used"] == 1 << 20
    assert d0["temperature_c"] == 84
    assert d0["power_w"] == 398.5 and d0["power_limit_w"] == 400.0
    assert d0["clocks_mhz"] == {"sm": 1410, "memory": 1593, "graphics": 1410, "sm_max": 1410}
    assert d0["throttle_reasons"] == ["sw_power_cap", "hw_thermal_slowdown"] and d0["throttle_mask"] == 0x44
    assert d0["ecc"] == {
        "corrected_volatile": 5,
        "corrected_aggregate": 50,
        "uncorrected_volatile": 1,
        "uncorrected_aggregate": 2,
    }
    assert d1["ecc"] == dict.fromkeys(d0["ecc"])  # not supported: None, not 0
    assert d0["pcie"] == {
        "tx_bytes_per_s": 1000 * 1024,
        "rx_bytes_per_s": 2000 * 1024,
        "replay_counter": 12,
        "link_gen": 3,
        "link_width": 8,
        "max_link_gen": 4,
        "max_link_width": 16,
    }
    assert d1["pcie"]["link_gen"] == 4 and d1["pcie"]["link_width"] == 16
    assert d0["fan_speed_pct"] is None and d1["fan_speed_pct"] == 35  # no fan: None, not 0
    assert d0["energy_mj"] == 123_456_789
    assert d0["nvlink"] == [
        {"link": 0, "active": True, "errors": {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}},
        {
            "link": 1,
            "active": False,
            "errors": {"replay": 10, "recovery": 11, "crc_flit": 12, "crc_data": 13},
        },
    ]
    assert d1["nvlink"] == []
    assert d0["processes"] == [{"pid": 4242, "used_bytes": 60 << 30}]
    assert d1["processes"] == [{"pid": 7, "used_bytes": 1 << 30}, {"pid": 8, "used_bytes": None}]
    # The one process on GPU-aaaa is named; GPU-bbbb's two are candidates, neither blamed.
    src_ = "device_processes"
    assert r.data["xid_events"] == [
        {"xid": 13, "device_uuid": "GPU-bbbb", "count": 1, "pid": None, "pids": [7, 8], "pid_source": src_},
        {"xid": 48, "device_uuid": "GPU-aaaa", "count": 1, "pid": 4242, "pids": [4242], "pid_source": src_},
        {"xid": 79, "device_uuid": "GPU-aaaa", "count": 2, "pid": 4242, "pids": [4242], "pid_source": src_},
    ]
    assert src.sample().data["xid_events"] == []  # drained: each event counted once
    src.close()
    assert getattr(fake, "calls") == {"init": 1, "shutdown": 1}


def test_xid_events_unsupported_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], events_supported=False))
    src = GpuSource(context_for(Path("/")))
    r = src.sample()
    assert r.status == "ok"
    assert r.data["xid_events"] is None and "XID events unavailable" in r.data["xid_note"]
    src.close()


def test_nvml_init_failure_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml([])

    def fail() -> None:
        raise NVMLError(9)  # NVML_ERROR_DRIVER_NOT_LOADED

    setattr(fake, "nvmlInit", fail)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    src = GpuSource(context_for(Path("/")))
    r = src.sample()
    assert r.status == "unavailable" and "NVML did not initialise: NVML error 9" in (r.reason or "")
