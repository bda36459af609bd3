"""Collector sources, one module each, found through one registry.

Importing this package registers every built-in source.
"""

from __future__ import annotations

from collector.sources import (  # noqa: F401 - imported for their @register side effect
    cgroup,
    disk,
    ebpf,
    external,
    gpu,
    hardware,
    host,
    network,
    perf,
    processes,
    psi,
    sockets,
)
from collector.sources.base import PathPlan, Rates, Source, SourceContext, SourceResult
from collector.sources.registry import default_sources, register, source_class, source_names

__all__ = [
    "PathPlan",
    "Rates",
    "Source",
    "SourceContext",
    "SourceResult",
    "default_sources",
    "register",
    "source_class",
    "source_names",
]
