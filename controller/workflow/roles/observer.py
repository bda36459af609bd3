"""observer -> observation_summary: the window, freshness and coverage, key signals, what is missing."""

from __future__ import annotations

from controller.workflow.roles import fleet
from controller.workflow.roles.base import Output, Role, StageContext, register, stats

KEY_SIGNALS = (
    "cpu_busy_pct",
    "cpu_iowait_pct",
    "procs_running",
    "procs_blocked",
    "load1",
    "mem_available_pct",
    "psi_cpu_some",
    "psi_memory_some",
    "psi_io_some",
    "disk_util_max_pct",
    "nic_errors_per_s",
    "nic_drops_per_s",
    "ebpf_tcp_retransmit",
    "forks_per_s",
    "max_process_fds",
    "cgroup_throttled_max_pct",
)
MAX_SIGNALS = 24
# Sources named in the summary: a host has a dozen; a window of 600 snapshots may name many
# more, and the summary must stay under its payload cap whatever the collector sent.
MAX_LISTED = 32


@register
class Observer(Role):
    kind = "observation_summary"

    def compute(self, ctx: StageContext) -> Output:
        if fleet.is_fleet(ctx):
            return fleet.observe(ctx)
        ev = ctx.evidence
        names = [n for n in KEY_SIGNALS if ev.series.get(n)]
        names += sorted(n for n in ev.series if n.startswith("gpu") and n not in names)
        signals = {n: stats(ev.values(n)) for n in names[:MAX_SIGNALS]}
        missing = sorted(ev.not_fresh())
        notes = [f"{n} is {ev.freshness[n]}" for n in missing[:MAX_LISTED]]
        if len(missing) > MAX_LISTED:
            notes.append(f"and {len(missing) - MAX_LISTED} more sources not fresh")
        listed = dict(sorted(ev.freshness.items())[:MAX_LISTED])
        if ev.samples < 10:
            notes.append(f"only {ev.samples} samples in the window")
        return Output(
            payload={
                "host_id": ev.host_id,
                "window": {"start": ev.start, "end": ev.end, "samples": ev.samples},
                "freshness": listed,
                "sources_seen": ev.sources_seen[:MAX_LISTED],
                "missing": missing[:MAX_LISTED],
                # Sources this host never had (no GPU, nothing configured): not counted against it.
                "unavailable": sorted(n for n, s in ev.freshness.items() if s == "unavailable")[:MAX_LISTED],
                "signals": signals,
                "tables": sorted(ev.tables),
                "events": len(ev.events),
            },
            status="degraded" if missing or ev.samples < 10 else "ok",
            notes=notes,
        )
