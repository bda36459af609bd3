"""Collector readings on the live host against psutil and node_exporter read at the same moment.

Monotonic counters are bracketed: our reading before <= peer <= our reading after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import probe_core
import psutil
import pytest

from bench.peers import NodeExporter, node_exporter
from collector.sources.external import parse_prometheus_text
from collector.sources.host import HostSource
from collector.sources.network import NetworkSource

from .conftest import context_for

TCK = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def nx() -> Iterator[NodeExporter]:
    with node_exporter() as peer:
        yield peer


def scrape(nx: NodeExporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s["name"], tuple(sorted(s["labels"].items()))): float(s["value"])
        for s in parse_prometheus_text(nx.scrape(), limit=100_000)
    }


def test_cpu_seconds_bracket_node_exporter(nx: NodeExporter) -> None:
    before = probe_core.read_cpu()
    metrics = scrape(nx)
    after = probe_core.read_cpu()
    for b, a in zip(before["per_cpu"], after["per_cpu"], strict=True):
        for mode in ("user", "system", "idle", "iowait", "softirq"):
            value = metrics[("node_cpu_seconds_total", (("cpu", str(b["cpu"])), ("mode", mode)))]
            lo = b[mode] / TCK
            hi = a[mode] / TCK
            assert lo - 0.01 <= value <= hi + 0.01, (b["cpu"], mode)


def test_memory_matches_node_exporter_and_psutil(nx: NodeExporter) -> None:
    r = HostSource(context_for(Path("/"))).sample()
    mem = r.data["memory"]
    metrics = scrape(nx)
    assert metrics[("node_memory_MemTotal_bytes", ())] == mem["MemTotal"] == psutil.virtual_memory().total
    assert abs(metrics[("node_memory_MemAvailable_bytes", ())] - mem["MemAvailable"]) < 256 << 20


def test_disk_counters_bracket_node_exporter(nx: NodeExporter) -> None:
    before = {d["name"]: d for d in probe_core.read_diskstats(queue_attrs=False)["devices"]}
    metrics = scrape(nx)
    after = {d["name"]: d for d in probe_core.read_diskstats(queue_attrs=False)["devices"]}
    compared = 0
    for (name, labels), value in metrics.items():
        if name != "node_disk_reads_completed_total":
            continue
        dev = dict(labels)["device"]
        if dev in before:
            assert before[dev]["reads_completed"] <= value <= after[dev]["reads_completed"]
            compared += 1
    assert compared >= 1


def test_network_kernel_counters_bracket_node_exporter_and_psutil(nx: NodeExporter) -> None:
    src = NetworkSource(context_for(Path("/")))
    try:
        assert src.plan().path == "kernel"
        before = {i["name"]: i["counters"] for i in src.sample().data["interfaces"]}
        metrics = scrape(nx)
        ps = psutil.net_io_counters(pernic=True)
        after = {i["name"]: i["counters"] for i in src.sample().data["interfaces"]}
    finally:
        src.close()
    compared = 0
    for name in before:
        ne_rx = metrics.get(("node_network_receive_bytes_total", (("device", name),)))
        if ne_rx is not None:  # node_exporter leaves some devices out (lo, by default)
            assert before[name]["rx_bytes"] <= ne_rx <= after[name]["rx_bytes"]
            compared += 1
        assert before[name]["rx_bytes"] <= ps[name].bytes_recv <= after[name]["rx_bytes"]
        assert before[name]["tx_packets"] <= ps[name].packets_sent <= after[name]["tx_packets"]
    assert compared >= 1
