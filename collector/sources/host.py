"""host: CPU, memory, vmstat and loadavg through probe_core (/proc files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import probe_core

from collector.sources.base import Rates, Source, SourceContext, SourceResult
from collector.sources.registry import register

# The vmstat counters detectors read; a kernel that lacks one simply omits it.
VMSTAT_KEYS = (
    "oom_kill",
    "pgfault",
    "pgmajfault",
    "pswpin",
    "pswpout",
    "pgpgin",
    "pgpgout",
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "allocstall_normal",
    "allocstall_movable",
    "compact_stall",
    "compact_fail",
    "workingset_refault_anon",
    "workingset_refault_file",
    "thp_fault_alloc",
    "nr_dirty",
    "nr_writeback",
)
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


def cpu_shares(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> dict[str, float] | None:
    """Percent of CPU time per mode between two /proc/stat readings (guest is inside user)."""
    deltas: dict[str, int] = {k: int(cur[k]) - int(prev[k]) for k in CPU_FIELDS}
    if any(v < 0 for v in deltas.values()):
        return None
    # guest and guest_nice are already counted in user and nice (kernel/sched/cputime.c).
    total = sum(v for k, v in deltas.items() if k not in ("guest", "guest_nice"))
    if total <= 0:
        return None
    return {k: round(v * 100.0 / total, 3) for k, v in deltas.items()}


def busy_share(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> float | None:
    shares = cpu_shares(prev, cur)
    if shares is None:
        return None
    return round(100.0 - shares["idle"] - shares["iowait"], 3)


@register
class HostSource(Source):
    name = "host"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._rates = Rates(ctx.clock)
        self._prev_cpu: probe_core.CpuStat | None = None

    def sample(self) -> SourceResult:
        root = self.ctx.host_root
        host = probe_core.sysinfo_host(root)
        cpu = probe_core.read_cpu(root)
        mem = probe_core.read_meminfo(root)
        vm = probe_core.read_vmstat(root)
        self._rates.begin()
        prev = self._prev_cpu
        self._prev_cpu = cpu
        cpu_out: dict[str, Any] = {
            "count": host["cpu_count"],
            "util_pct": cpu_shares(prev["total"], cpu["total"]) if prev else None,
            "per_cpu_busy_pct": (
                [busy_share(p, c) for p, c in zip(prev["per_cpu"], cpu["per_cpu"], strict=True)]
                if prev and len(prev["per_cpu"]) == len(cpu["per_cpu"])
                else None
            ),
            "ctxt_per_s": self._rates.rate("ctxt", cpu["ctxt"]),
            "forks_per_s": self._rates.rate("forks", cpu["processes"]),
            "intr_per_s": self._rates.rate("intr", cpu["intr"]),
            "procs_running": cpu["procs_running"],
            "procs_blocked": cpu["procs_blocked"],
        }
        vmstat = {k: vm[k] for k in VMSTAT_KEYS if k in vm}
        vm_rates = {
            f"{k}_per_s": self._rates.rate(f"vm.{k}", v) for k, v in vmstat.items() if not k.startswith("nr_")
        }
        self._rates.end()
        data = {
            "hostname": host["hostname"],
            "kernel": host["kernel_release"],
            "uptime_s": host["uptime_s"],
            "load": [host["load1"], host["load5"], host["load15"]],
            "tasks": host["tasks"],
            "cpu": cpu_out,
            "memory": mem,
            "vmstat": vmstat,
            "vmstat_rates": vm_rates,
        }
        return SourceResult.ok("file", data)
