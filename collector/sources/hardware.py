"""hardware: CPU model, NUMA nodes, NICs, block devices and GPUs; refreshed every hardware.refresh_interval.

Between refreshes the source reports ``unchanged`` with the time of the last
inventory, so the inventory travels once per refresh rather than every interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from collector.sources.base import Source, SourceContext, SourceResult
from collector.sources.registry import register

PCI_CLASS_DISPLAY = "0x03"  # display controllers: VGA (0x0300) and 3D (0x0302)
PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, sockets, cores and threads from /proc/cpuinfo."""
    model = None
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    threads = 0
    physical = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "physical id":
            physical = value
            sockets.add(value)
        elif key == "core id":
            cores.add((physical, value))
    return {
        "model": model,
        "sockets": len(sockets) or 1,
        "cores": len(cores) or threads,
        "threads": threads,
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def numa_nodes(sysfs: Path) -> list[dict[str, Any]]:
    nodes = []
    base = sysfs / "devices" / "system" / "node"
    for entry in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        meminfo = _read(entry / "meminfo") or ""
        total_kb = next((int(line.split()[3]) for line in meminfo.splitlines() if "MemTotal" in line), None)
        nodes.append(
            {
                "node": int(entry.name[4:]),
                "cpus": _read(entry / "cpulist"),
                "mem_total_bytes": None if total_kb is None else total_kb * 1024,
            }
        )
    return nodes


def nics(sysfs: Path) -> list[dict[str, Any]]:
    out = []
    for entry in sorted((sysfs / "class" / "net").glob("*")):
        device = entry / "device"
        speed = _read(entry / "speed")
        out.append(
            {
                "name": entry.name,
                "driver": os.path.basename(os.readlink(device / "driver"))
                if (device / "driver").exists()
                else None,
                "virtual": not device.exists(),
                "speed_mbps": int(speed)
                if speed and speed.lstrip("-").isdigit() and int(speed) > 0
                else None,
                "mtu": int(_read(entry / "mtu") or 0) or None,
                "address": _read(entry / "address"),
            }
        )
    return out


def block_devices(sysfs: Path) -> list[dict[str, Any]]:
    out = []
    for entry in sorted((sysfs / "block").glob("*")):
        size = _read(entry / "size")
        out.append(
            {
                "name": entry.name,
                "size_bytes": int(size) * 512 if size and size.isdigit() else None,
                "rotational": _read(entry / "queue" / "rotational") == "1",
                "model": _read(entry / "device" / "model"),
                "scheduler": _read(entry / "queue" / "scheduler"),
            }
        )
    return out


def pci_gpus(sysfs: Path) -> list[dict[str, Any]]:
    out = []
    for entry in sorted((sysfs / "bus" / "pci" / "devices").glob("*")):
        cls = _read(entry / "class") or ""
        if not cls.startswith(PCI_CLASS_DISPLAY):
            continue
        vendor = _read(entry / "vendor") or ""
        out.append(
            {
                "pci_bus_id": entry.name,
                "vendor": PCI_VENDORS.get(vendor, vendor),
                "device": _read(entry / "device"),
                "numa_node": int(n)
                if (n := _read(entry / "numa_node")) and n.lstrip("-").isdigit()
                else None,
            }
        )
    return out


@register
class HardwareSource(Source):
    name = "hardware"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._at: float | None = None

    def sample(self) -> SourceResult:
        now = self.ctx.clock()
        every = self.ctx.settings.hardware.refresh_interval
        if self._at is not None and now - self._at < every:
            return SourceResult.ok("file", {"unchanged": True, "age_s": round(now - self._at, 3)})
        sysfs = Path(self.ctx.settings.sysfs_root)
        cpuinfo = _read(Path(self.ctx.settings.procfs_root) / "cpuinfo") or ""
        data = {
            "unchanged": False,
            "cpu": parse_cpuinfo(cpuinfo),
            "numa_nodes": numa_nodes(sysfs),
            "nics": nics(sysfs),
            "block_devices": block_devices(sysfs),
            "gpus": pci_gpus(sysfs),
            "refresh_interval_s": every,
        }
        self._at = now
        return SourceResult.ok("file", data)
