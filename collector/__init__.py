"""incidentlab collector: the node daemon.

It samples a host through ``probe_core`` (C++), netlink, eBPF, NVML and file
fallbacks, and ships batches through a crash-safe disk spool. The sources,
spool and transport arrive with their own issues; this package holds only its
docstring until then.
"""
