"""Prometheus metrics of one controller, in a registry of its own (one per app)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Label sets (host, device, xid) the XID counter keeps; past it, counted apart. A fleet of
# 10,000 eight-GPU nodes each with two XID codes is 160,000: raise it for such a fleet.
XID_SERIES = 50_000


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
        self.stage_seconds = Histogram(
            "incidentlab_stage_seconds",
            "Time each workflow stage took, by artifact kind",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0),
            registry=r,
        )
        self.build = Info("incidentlab_build", "The running controller's version", registry=r)
        self.xids = Counter(
            "incidentlab_gpu_xid_errors",
            "GPU XID errors seen, per host, device (UUID) and XID code, since this controller started",
            ["host", "device", "xid"],
            registry=r,
        )
        self.xid_overflow = Counter(
            "incidentlab_gpu_xid_errors_unlabelled",
            "XID errors past the counter's label-set bound (metrics.XID_SERIES), counted here instead",
            registry=r,
        )
        self._xid_keys: set[tuple[str, str, str]] = set()
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

    def add_xids(self, host: str, events: list[Any]) -> None:
        """Count a snapshot's XID events: a counter per host, device and code, so no XID is lost
        to a scrape that comes late (the last-value gauge dcgm-exporter users complain of)."""
        for e in events:
            if not isinstance(e, dict):
                continue
            xid, n = e.get("xid"), e.get("count", 1)
            if not isinstance(xid, int) or isinstance(xid, bool) or not isinstance(n, int) or n <= 0:
                continue
            key = (host, str(e.get("device_uuid") or "unknown")[:64], str(xid))
            if key not in self._xid_keys:
                if len(self._xid_keys) >= XID_SERIES:
                    self.xid_overflow.inc(n)
                    continue
                self._xid_keys.add(key)
            self.xids.labels(*key).inc(n)

    def bind(self, is_leader: Callable[[], bool], hot_stats: Callable[[], dict[str, int]]) -> None:
        self.leader.set_function(lambda: 1.0 if is_leader() else 0.0)
        self.hot_hosts.set_function(lambda: float(hot_stats()["hosts"]))
        self.hot_bytes.set_function(lambda: float(hot_stats()["bytes"]))
        self.registry.register(_HotCounters(hot_stats))

    def bind_operations(self, state: Callable[[], dict[str, Any]]) -> None:
        """What operators alert on, read when scraped: runs by status, family and lifecycle,
        runs awaiting approval, and per host the last time it was heard from."""
        self.registry.register(_Operations(state))

    def bind_bus(self, status: Callable[[], dict[str, Any]], lag: Callable[[], dict[int, int]]) -> None:
        """The bus consumer, read when scraped: connected, messages by outcome, and the lag
        (messages not yet acknowledged) of each partition it consumes."""
        self.registry.register(_Bus(status, lag))

    def bind_analysis(self, analysis_stats: Callable[[], dict[str, Any]]) -> None:
        for key, gauge in self.analysis.items():
            gauge.set_function(functools.partial(_stat, analysis_stats, key))


def _stat(stats: Callable[[], dict[str, Any]], key: str) -> float:
    return float(stats().get(key, 0))


class _HotCounters(Collector):
    """Hot state's eviction counts as counters (they only ever grow), read when scraped."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Any:
        s = self.stats()
        for name, key, doc in (
            (
                "incidentlab_hot_evicted_hosts",
                "evicted_hosts",
                "Hosts evicted from hot state (quiet ones first)",
            ),
            ("incidentlab_hot_evicted_live_hosts", "evicted_live_hosts", "Hosts evicted while still sending"),
            (
                "incidentlab_hot_labels_refused",
                "labels_refused",
                "Collector labels dropped for breaking the rules",
            ),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(s.get(key, 0)))
            yield c


class _Bus(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]], lag: Callable[[], dict[int, int]]) -> None:
        self.status, self.lag = status, lag

    def collect(self) -> Any:
        st = self.status()
        up = GaugeMetricFamily("incidentlab_bus_connected", "1 while the bus consumer holds a connection")
        up.add_metric([], 1.0 if st.get("connected") else 0.0)
        yield up
        outcomes = CounterMetricFamily(
            "incidentlab_bus_messages",
            "Bus messages by outcome (accepted, duplicate, refused_*, ...)",
            labels=["outcome"],
        )
        for outcome, n in sorted((st.get("counts") or {}).items()):
            outcomes.add_metric([outcome], float(n))
        yield outcomes
        lag = GaugeMetricFamily(
            "incidentlab_bus_partition_lag",
            "Messages a partition's consumer has not acknowledged yet",
            labels=["partition"],
        )
        for partition, n in sorted(self.lag().items()):
            lag.add_metric([str(partition)], float(n))
        yield lag


class _Operations(Collector):
    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Any:
        st = self.state()
        runs = GaugeMetricFamily(
            "incidentlab_runs",
            "Runs by stage status, family, lifecycle state and scope",
            labels=["status", "family", "state", "scope"],
        )
        for (status, family, state, scope), n in sorted(st["runs"].items()):
            runs.add_metric([status, family, state, scope], float(n))
        yield runs
        waiting = GaugeMetricFamily(
            "incidentlab_runs_awaiting_approval", "Runs whose plan waits for an operator"
        )
        waiting.add_metric([], float(st["awaiting_approval"]))
        yield waiting
        seen = GaugeMetricFamily(
            "incidentlab_host_last_seen_timestamp_seconds",
            "When each host's last batch arrived (Unix seconds)",
            labels=["host"],
        )
        for host, t in st["last_seen"]:
            seen.add_metric([host], t)
        yield seen
        fresh = GaugeMetricFamily(
            "incidentlab_hosts_by_freshness", "Hosts by their worst source's freshness", labels=["freshness"]
        )
        for state, n in sorted(st["freshness"].items()):
            fresh.add_metric([state], float(n))
        yield fresh
