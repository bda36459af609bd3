"""perf: scheduler counters through perf_event_open (kernel), else /proc/stat and /proc/vmstat deltas."""

from __future__ import annotations

import probe_core

from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register


@register
class PerfSource(Source):
    name = "perf"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)
        self._counters: probe_core.PerfCounters | None = None
        if ctx.fallback_forced(self.name):
            self._why_file = "perf_event_open turned off by configuration (force_fallback)"
        else:
            counters = probe_core.PerfCounters(ctx.host_root)
            if counters.available():
                self._counters = counters
            self._why_file = counters.reason()

    def plan(self) -> PathPlan:
        return PathPlan("kernel") if self._counters else PathPlan("file", self._why_file)

    def sample(self) -> SourceResult:
        self._rates.begin()
        if self._counters is not None:
            reading = self._counters.read()
            total = reading["total"]
            data = {
                "context_switches_per_s": self._rates.rate("cs", total["context_switches"]),
                "cpu_migrations_per_s": self._rates.rate("mig", total["cpu_migrations"]),
                "page_faults_per_s": self._rates.rate("pf", total["page_faults"]),
                "major_faults_per_s": self._rates.rate("majf", total["major_faults"]),
                "per_cpu_context_switches_per_s": [
                    self._rates.rate(f"cs{c['cpu']}", c["context_switches"]) for c in reading["per_cpu"]
                ],
            }
            self._rates.end()
            return SourceResult.ok("kernel", data)
        cpu = probe_core.read_cpu(self.ctx.host_root)
        vm = probe_core.read_vmstat(self.ctx.host_root)
        data = {
            "context_switches_per_s": self._rates.rate("cs", cpu["ctxt"]),
            # /proc has no migration count: absent, not zero.
            "cpu_migrations_per_s": None,
            "page_faults_per_s": self._rates.rate("pf", vm["pgfault"]) if "pgfault" in vm else None,
            "major_faults_per_s": self._rates.rate("majf", vm["pgmajfault"]) if "pgmajfault" in vm else None,
            "per_cpu_context_switches_per_s": None,
        }
        self._rates.end()
        return SourceResult.fallback(self._why_file, data)

    def close(self) -> None:
        self._counters = None  # closes the perf fds now rather than at interpreter exit
