"""The real NVML path of the gpu source, for a machine with an NVIDIA GPU.

Run on a GPU machine (`python -m bench.gpu_check`): it samples every device twice
through collector.sources.gpu and checks that the fields every data-centre GPU
supports came back, printing the snapshot as JSON. Exit 0 on success, 1 on a
missing field, 2 when NVML or a GPU is absent (nothing to check).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from collector.config import CollectorSettings
from collector.info import detect_capabilities, nvml_presence
from collector.sources import SourceContext
from collector.sources.gpu import GpuSource

REQUIRED = (
    "name",
    "uuid",
    "pci_bus_id",
    "utilization_pct",
    "memory",
    "temperature_c",
    "power_w",
    "throttle_reasons",
    "energy_mj",  # Volta and later
)
# Not every board has these (a passively cooled card has no fan; a VM may hide the PCIe
# link): reported, never failed on.
OPTIONAL = ("fan_speed_pct", "pcie.link_gen", "pcie.link_width", "pcie.max_link_gen", "pcie.max_link_width")


def _field(d: dict[str, object], path: str) -> object:
    cur: object = d
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def main() -> int:
    present, reason = nvml_presence()
    if not present:
        print(f"no GPU to check: {reason}", file=sys.stderr)
        return 2
    settings = CollectorSettings(interval_s=1.0)
    src = GpuSource(SourceContext(settings=settings, capabilities=detect_capabilities(settings)))
    try:
        src.sample()
        time.sleep(1.0)
        result = src.sample()
    finally:
        src.close()
    print(
        json.dumps(
            {"status": result.status, "reason": result.reason, "data": result.data}, indent=2, default=str
        )
    )
    missing = [
        f"gpu {d['index']}: {field}"
        for d in result.data.get("devices", [])
        for field in REQUIRED
        if d.get(field) is None
    ]
    absent = [
        f"gpu {d['index']}: {f}"
        for d in result.data.get("devices", [])
        for f in OPTIONAL
        if _field(d, f) is None
    ]
    if absent:
        print(f"not reported by this board (allowed): {absent}", file=sys.stderr)
    if result.status != "ok" or not result.data.get("devices") or missing:
        print(f"gpu check failed: status {result.status}, missing {missing}", file=sys.stderr)
        return 1
    out = Path(__file__).resolve().parent / "results" / "gpu_check.json"
    out.write_text(json.dumps(result.data, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
