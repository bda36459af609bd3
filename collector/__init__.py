"""incidentlab collector: the node daemon.

Sources under ``collector.sources`` sample a host through ``probe_core`` (C++),
netlink, eBPF, NVML and file fallbacks; ``collector.sampler`` runs them, each
isolated under its own time budget, into one snapshot per interval;
``collector.info`` says which path each source uses and why. Errors derive from
``collector.errors.CollectorError``.
"""

__version__ = "0.1.0"
