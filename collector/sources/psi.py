"""psi: /proc/pressure/* (a file interface by nature); absent PSI is unavailable, never zeros."""

from __future__ import annotations

from typing import Any

import probe_core

from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register


@register
class PsiSource(Source):
    name = "psi"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)

    def plan(self) -> PathPlan:
        p = probe_core.read_pressure(self.ctx.host_root)
        return PathPlan("file") if p["available"] else PathPlan("none", p["reason"])

    def sample(self) -> SourceResult:
        p = probe_core.read_pressure(self.ctx.host_root)
        if not p["available"]:
            return SourceResult.unavailable(p["reason"] or "PSI not available")
        self._rates.begin()
        data: dict[str, Any] = {}
        for res in ("cpu", "memory", "io", "irq"):
            value: probe_core.PsiFile | None = p.get(res)  # type: ignore[assignment]
            if value is None:
                continue
            entry: dict[str, Any] = {}
            for kind in ("some", "full"):
                line = value["some"] if kind == "some" else value["full"]
                if line is None:
                    continue
                rate = self._rates.rate(f"{res}.{kind}", line["total_us"])
                entry[kind] = {
                    "avg10": line["avg10"],
                    "avg60": line["avg60"],
                    "avg300": line["avg300"],
                    # Share of wall time stalled over the interval: us stalled per s / 1e4.
                    "stall_pct": None if rate is None else round(rate / 1e4, 3),
                }
            data[res] = entry
        self._rates.end()
        data["absent"] = p["absent"]
        return SourceResult.ok("file", data)
