"""Prometheus metrics of one controller, in a registry of its own (one per app)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "incidentlab_ingest_requests", "Ingest requests by HTTP status", ["code"], registry=r
        )
        self.refused = Counter(
            "incidentlab_ingest_refused",
            "Ingest requests refused, by reason (unauthenticated, forbidden, host_forbidden, follower, "
            "too_large, encoding, bad_encoding, invalid, future, seq_ahead, store, busy, timeout)",
            ["reason"],
            registry=r,
        )
        self.batches = Counter("incidentlab_ingest_batches", "Batches by verdict", ["verdict"], registry=r)
        self.seconds = Histogram(
            "incidentlab_ingest_seconds",
            "Time to handle one ingest request",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.body_bytes = Counter("incidentlab_ingest_body_bytes", "Compressed bytes received", registry=r)
        self.leader = Gauge("incidentlab_leader", "1 when this controller holds the writer lock", registry=r)
        self.hot_hosts = Gauge("incidentlab_hot_hosts", "Hosts in hot state", registry=r)
        self.hot_bytes = Gauge(
            "incidentlab_hot_bytes",
            "Bytes held in hot state (batches, agent and collector objects)",
            registry=r,
        )
        self.hot_evicted = Gauge("incidentlab_hot_evicted_hosts", "Hosts evicted from hot state", registry=r)
        self.analysis = {
            key: Gauge(f"incidentlab_analysis_{key}", doc, registry=r)
            for key, doc in (
                ("restarts", "Analysis workers started again after they died"),
                ("queue_overflow", "Accepted batches not analysed: their worker's queue was full"),
                ("lag_max_s", "Longest wait of a batch for its evaluation, over the last second"),
                ("bytes", "Bytes of host windows the analysis workers hold"),
                ("evaluations", "Host evaluations by the analysis workers"),
            )
        }

    def bind(self, is_leader: Callable[[], bool], hot_stats: Callable[[], dict[str, int]]) -> None:
        self.leader.set_function(lambda: 1.0 if is_leader() else 0.0)
        self.hot_hosts.set_function(lambda: float(hot_stats()["hosts"]))
        self.hot_bytes.set_function(lambda: float(hot_stats()["bytes"]))
        self.hot_evicted.set_function(lambda: float(hot_stats()["evicted_hosts"]))

    def bind_analysis(self, analysis_stats: Callable[[], dict[str, Any]]) -> None:
        for key, gauge in self.analysis.items():
            gauge.set_function(functools.partial(_stat, analysis_stats, key))


def _stat(stats: Callable[[], dict[str, Any]], key: str) -> float:
    return float(stats().get(key, 0))
