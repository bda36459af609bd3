"""disk: probe_core diskstats (/sys/block, falling back to /proc/diskstats), rates from deltas.

Queue attributes (rotational, nr_requests, scheduler) are configuration: they are
re-read with the hardware inventory, every ``hardware.refresh_interval``.
"""

from __future__ import annotations

from typing import Any

import probe_core

from collector.sources.base import Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register

SECTOR = 512  # /proc/diskstats sectors are 512 bytes whatever the device's block size


def device_rates(dev: probe_core.DiskStat, rates: Rates, interval: float | None) -> dict[str, Any]:
    n = dev["name"]

    def r(field: str) -> float | None:
        value = dev[field]  # type: ignore[literal-required]
        return None if value is None else rates.rate(f"{n}.{field}", value)

    reads, writes = r("reads_completed"), r("writes_completed")
    rd_ms, wr_ms = r("read_time_ms"), r("write_time_ms")
    busy_ms = r("io_time_ms")
    rd_sec, wr_sec = r("sectors_read"), r("sectors_written")
    return {
        "name": n,
        "major": dev["major"],
        "minor": dev["minor"],
        "reads_per_s": reads,
        "writes_per_s": writes,
        "read_bytes_per_s": None if rd_sec is None else rd_sec * SECTOR,
        "write_bytes_per_s": None if wr_sec is None else wr_sec * SECTOR,
        # io_time_ms grows by 1000 per second of busy time: ms per s / 10 is percent.
        "util_pct": None if busy_ms is None else round(min(busy_ms / 10.0, 100.0), 3),
        "read_await_ms": None if not reads or rd_ms is None else round(rd_ms / reads, 3),
        "write_await_ms": None if not writes or wr_ms is None else round(wr_ms / writes, 3),
        "in_flight": dev["io_in_progress"],
    }


@register
class DiskSource(Source):
    name = "disk"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)
        self._attrs: dict[str, dict[str, Any]] = {}
        self._attrs_at: float | None = None

    def _queue_attrs(self) -> dict[str, dict[str, Any]]:
        now = self.ctx.clock()
        if self._attrs_at is None or now - self._attrs_at >= self.ctx.settings.hardware.refresh_interval:
            full = probe_core.read_diskstats(self.ctx.host_root, queue_attrs=True)
            self._attrs = {
                d["name"]: {
                    "rotational": d["rotational"],
                    "nr_requests": d["nr_requests"],
                    "scheduler": d["scheduler"],
                }
                for d in full["devices"]
            }
            self._attrs_at = now
        return self._attrs

    def sample(self) -> SourceResult:
        stats = probe_core.read_diskstats(self.ctx.host_root, queue_attrs=False)
        attrs = self._queue_attrs()
        interval = self._rates.begin()
        devices = []
        never_used = []
        for dev in stats["devices"]:
            if dev["reads_completed"] == 0 and dev["writes_completed"] == 0 and dev["io_in_progress"] == 0:
                never_used.append(dev["name"])  # unused loop and ram devices: named, not detailed
                continue
            entry = device_rates(dev, self._rates, interval)
            entry.update(attrs.get(dev["name"], {}))
            devices.append(entry)
        self._rates.end()
        data = {"source": stats["source"], "devices": devices, "never_used": never_used}
        if stats["source"] == "sys":
            return SourceResult.ok("file", data)
        return SourceResult.fallback(stats["reason"] or "/sys/block unavailable", data)
