"""What this collector can do here: capabilities, BPF and NVML presence, and CollectorInfo.

CollectorInfo travels in the first batch of a stream and whenever it changes: it
says, per source, whether it is enabled, which path it uses (kernel, file or none)
and why, so the controller never mistakes a fallback for the kernel path.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import probe_core

from collector import __version__
from collector.config import CollectorSettings

# Bit numbers from linux/capability.h.
CAPABILITY_BITS = {
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,  # Linux 5.8
    "CAP_BPF": 39,  # Linux 5.8
}


def parse_cap_mask(mask: int) -> frozenset[str]:
    """The names (of those we care about) set in a capability bitmask."""
    return frozenset(name for name, bit in CAPABILITY_BITS.items() if mask >> bit & 1)


def parse_paranoid(text: str) -> int:
    return int(text.strip())


@dataclass(frozen=True)
class Capabilities:
    effective: frozenset[str]
    perf_event_paranoid: int | None
    bpf: bool
    bpf_reason: str | None
    nvml: bool
    nvml_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "effective": sorted(self.effective),
            "perf_event_paranoid": self.perf_event_paranoid,
            "bpf": self.bpf,
            "bpf_reason": self.bpf_reason,
            "nvml": self.nvml,
            "nvml_reason": self.nvml_reason,
        }


def bpf_availability(effective: frozenset[str], host_root: str) -> tuple[bool, str | None]:
    """Whether bcc can load tracepoint programs here, and why not when it cannot."""
    # Linux 5.8+ splits CAP_BPF (load) and CAP_PERFMON (attach to tracepoints).
    if "CAP_SYS_ADMIN" not in effective and not {"CAP_BPF", "CAP_PERFMON"} <= effective:
        return False, "needs CAP_BPF and CAP_PERFMON (Linux 5.8+) or CAP_SYS_ADMIN"
    if importlib.util.find_spec("bcc") is None:
        return False, "the bcc Python module is not importable (Debian python3-bpfcc and the venv shim)"
    tracing = Path(host_root) / "sys" / "kernel" / "tracing" / "events"
    debug = Path(host_root) / "sys" / "kernel" / "debug" / "tracing" / "events"
    if not tracing.is_dir() and not debug.is_dir():
        return False, "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
    return True, None


NVML_LIBRARY = "libnvidia-ml.so.1"


def nvml_library_missing() -> str | None:
    """Why NVML cannot load here, looking for the library pynvml itself loads, before pynvml
    is imported: a node without the driver never pays for it (about 2 MB of RSS). None: go on
    (also when pynvml is already imported, as tests replace it)."""
    if "pynvml" in sys.modules:
        return None
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError as exc:
        return f"NVML did not initialise: the driver's {NVML_LIBRARY} is not here ({exc})"
    return None


def nvml_presence() -> tuple[bool, str | None]:
    """Whether NVML initialises here; the reason names the missing library or device."""
    missing = nvml_library_missing()
    if missing is not None:
        return False, missing
    try:
        import pynvml
    except ImportError:
        return False, "nvidia-ml-py is not installed (pip install incidentlab[gpu])"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return False, f"NVML did not initialise: {exc}"
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        return False, "NVML found no GPU"
    return True, None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def detect_capabilities(settings: CollectorSettings) -> Capabilities:
    effective = parse_cap_mask(probe_core.capget()["effective"])
    paranoid_text = _read(Path(settings.host_root) / "proc" / "sys" / "kernel" / "perf_event_paranoid")
    paranoid = parse_paranoid(paranoid_text) if paranoid_text else None
    bpf, bpf_reason = bpf_availability(effective, settings.host_root)
    nvml, nvml_reason = nvml_presence()
    return Capabilities(effective, paranoid, bpf, bpf_reason, nvml, nvml_reason)


@dataclass(frozen=True)
class SourceInfo:
    enabled: bool
    path: str
    reason: str | None


@dataclass(frozen=True)
class CollectorInfo:
    host_id: str
    boot_id: str
    hostname: str
    kernel: str
    versions: dict[str, str]
    capabilities: dict[str, Any]
    sources: dict[str, SourceInfo] = field(default_factory=dict)
    # Where the host sits, and where those labels came from (collector/topology.py).
    labels: dict[str, str] = field(default_factory=dict)
    topology: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_identity(settings: CollectorSettings) -> tuple[str, str, str, str]:
    """(host_id, boot_id, hostname, kernel release) of the host under settings.host_root."""
    host = probe_core.sysinfo_host(settings.host_root)
    if settings.host_id:
        host_id = settings.host_id
    elif host["machine_id"]:
        host_id = host["machine_id"]
    else:
        # Minimal containers lack /etc/machine-id; the hostname is the next stable name.
        host_id = f"hostname:{host['hostname']}"
    return host_id, host["boot_id"], host["hostname"], host["kernel_release"]


def build_collector_info(
    settings: CollectorSettings, capabilities: Capabilities, sources: dict[str, SourceInfo]
) -> CollectorInfo:
    host_id, boot_id, hostname, kernel = host_identity(settings)
    versions = {
        "incidentlab": __version__,
        "probe_core": probe_core.__version__,
        "python": platform.python_version(),
        "event_format": str(probe_core.EVENT_FORMAT_VERSION),
    }
    return CollectorInfo(
        host_id=host_id,
        boot_id=boot_id,
        hostname=hostname,
        kernel=kernel,
        versions=versions,
        capabilities=capabilities.to_dict() | {"euid": os.geteuid()},
        sources=sources,
    )
