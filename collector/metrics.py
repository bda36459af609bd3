"""The collector's own /metrics: Prometheus text from its latest snapshot, so a
ServiceMonitor scrapes each node without a second exporter.

Where node_exporter exports the same quantity it has its name (node_load1,
node_memory_MemAvailable_bytes, node_network_receive_bytes_total, node_procs_running, ...);
what node_exporter does not have, or has as a different quantity (rates and shares where it
exports counters), is ``incidentlab_*``. Rendered when scraped, from the snapshot the agent
last took, once per snapshot (a scrape never samples); the server answers GET /metrics
only, with a bounded request and a timeout, on its own thread.

    render(snapshot, health, host_id) -> bytes       # pure, tested on dicts
    MetricsServer(settings, latest).start()          # the thin HTTP part
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES = 5000  # a scrape's lines at most: a host with 100,000 cgroups still answers small
MAX_LABEL = 200  # characters of a label value
TOP_CGROUPS = 50
TOP_PROCESSES = 20
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
Latest = Callable[[], tuple[int, dict[str, Any], dict[str, Any]] | None]


def _label(value: Any) -> str:
    text = str(value)[:MAX_LABEL]
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if not isinstance(value, int | float):
        return None
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(value)


class Exposition:
    """Families in order, each with its HELP and TYPE once; at most MAX_SERIES samples."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}
        self.samples = 0
        self.cut = 0

    def add(
        self, name: str, type_: str, help_: str, value: Any, /, *, always: bool = False, **labels: Any
    ) -> None:
        shown = _number(value)
        if shown is None:
            return
        if self.samples >= MAX_SERIES and not always:
            self.cut += 1
            return
        fam = self._families.setdefault(name, (type_, help_, []))
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        fam[2].append(f"{name}{{{inner}}} {shown}" if inner else f"{name} {shown}")
        self.samples += 1

    def text(self) -> bytes:
        lines: list[str] = []
        for name, (kind, help_, samples) in self._families.items():
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return ("\n".join(lines) + "\n").encode()


def _meminfo_name(field: str) -> str:
    """node_exporter's: Active(anon) -> node_memory_Active_anon_bytes; page counts
    (HugePages_Total, _Free, _Rsvd, _Surp) are counts, not bytes."""
    base = "node_memory_" + _NAME_BAD.sub("_", field.replace("(", "_").replace(")", ""))
    return base if field.startswith("HugePages_") else base + "_bytes"


def _data(snapshot: dict[str, Any], source: str) -> dict[str, Any]:
    entry = (snapshot.get("sources") or {}).get(source)
    if not isinstance(entry, dict) or entry.get("status") != "ok" or not isinstance(entry.get("data"), dict):
        return {}
    data: dict[str, Any] = entry["data"]
    return data


def _host(m: Exposition, d: dict[str, Any]) -> None:
    load = d.get("load") or []
    for i, name in enumerate(("node_load1", "node_load5", "node_load15")):
        if i < len(load):
            m.add(name, "gauge", f"{name[5:]}-minute load average.", load[i])
    cpu = d.get("cpu") or {}
    m.add("node_procs_running", "gauge", "Number of processes in runnable state.", cpu.get("procs_running"))
    m.add(
        "node_procs_blocked",
        "gauge",
        "Number of processes blocked waiting for I/O.",
        cpu.get("procs_blocked"),
    )
    for mode, pct in (cpu.get("util_pct") or {}).items():
        if isinstance(pct, int | float):
            m.add(
                "incidentlab_cpu_utilization_ratio",
                "gauge",
                "Share of all CPUs' time in each mode over the last interval.",
                round(pct / 100.0, 6),
                mode=mode,
            )
    for i, pct in enumerate(cpu.get("per_cpu_busy_pct") or []):
        if isinstance(pct, int | float):
            m.add(
                "incidentlab_cpu_busy_ratio",
                "gauge",
                "Share of each CPU's time not idle over the last interval.",
                round(pct / 100.0, 6),
                cpu=i,
            )
    for key, name in (
        ("ctxt_per_s", "incidentlab_context_switches_per_second"),
        ("forks_per_s", "incidentlab_forks_per_second"),
        ("intr_per_s", "incidentlab_interrupts_per_second"),
    ):
        m.add(name, "gauge", f"{key[:-6]} per second over the last interval.", cpu.get(key))
    for field, value in (d.get("memory") or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            m.add(_meminfo_name(field), "gauge", f"Memory information field {field}.", value)


def _psi(m: Exposition, d: dict[str, Any]) -> None:
    for resource in ("cpu", "memory", "io", "irq"):
        for kind in ("some", "full"):
            avg = ((d.get(resource) or {}).get(kind) or {}).get("avg10")
            if isinstance(avg, int | float):
                m.add(
                    "incidentlab_pressure_avg10_ratio",
                    "gauge",
                    "Pressure stall information: share of time stalled over the last 10 s.",
                    round(avg / 100.0, 6),
                    resource=resource,
                    kind=kind,
                )


NET_COUNTERS = {
    "rx_bytes": ("node_network_receive_bytes_total", "Network device statistic receive_bytes."),
    "tx_bytes": ("node_network_transmit_bytes_total", "Network device statistic transmit_bytes."),
    "rx_packets": ("node_network_receive_packets_total", "Network device statistic receive_packets."),
    "tx_packets": ("node_network_transmit_packets_total", "Network device statistic transmit_packets."),
    "rx_errors": ("node_network_receive_errs_total", "Network device statistic receive_errs."),
    "tx_errors": ("node_network_transmit_errs_total", "Network device statistic transmit_errs."),
    "rx_dropped": ("node_network_receive_drop_total", "Network device statistic receive_drop."),
    "tx_dropped": ("node_network_transmit_drop_total", "Network device statistic transmit_drop."),
}


def _network(m: Exposition, d: dict[str, Any]) -> None:
    for iface in d.get("interfaces") or []:
        if not isinstance(iface, dict) or not iface.get("name"):
            continue
        dev = iface["name"]
        for key, (name, help_) in NET_COUNTERS.items():
            m.add(name, "counter", help_, (iface.get("counters") or {}).get(key), device=dev)
        m.add(
            "node_network_mtu_bytes",
            "gauge",
            "Network device property mtu_bytes.",
            iface.get("mtu"),
            device=dev,
        )
        m.add(
            "node_network_carrier_changes_total",
            "counter",
            "Network device property carrier_changes_total.",
            iface.get("carrier_changes"),
            device=dev,
        )
        if iface.get("operstate") is not None:
            m.add(
                "node_network_up",
                "gauge",
                "Value is 1 if operstate is 'up', 0 otherwise.",
                1 if str(iface["operstate"]).upper() == "UP" else 0,
                device=dev,
            )


def _disk(m: Exposition, d: dict[str, Any]) -> None:
    for dev in d.get("devices") or []:
        if not isinstance(dev, dict) or not dev.get("name"):
            continue
        name = dev["name"]
        pct = dev.get("util_pct")
        if isinstance(pct, int | float):
            m.add(
                "incidentlab_disk_utilization_ratio",
                "gauge",
                "Share of the last interval the device was busy.",
                round(pct / 100.0, 6),
                device=name,
            )
        for key in ("read_bytes_per_s", "write_bytes_per_s", "reads_per_s", "writes_per_s"):
            metric = "incidentlab_disk_" + key.replace("_per_s", "_per_second")
            m.add(metric, "gauge", f"{key} over the last interval.", dev.get(key), device=name)
        m.add(
            "node_disk_io_now",
            "gauge",
            "The number of I/Os currently in progress.",
            dev.get("in_flight"),
            device=name,
        )


def _sockets(m: Exposition, d: dict[str, Any]) -> None:
    for state, n in (d.get("states") or {}).items():
        m.add("incidentlab_tcp_sockets", "gauge", "TCP sockets by state (sock_diag).", n, state=state)


def _cgroups(m: Exposition, d: dict[str, Any]) -> None:
    rows = [c for c in d.get("cgroups") or [] if isinstance(c, dict) and c.get("path")]
    rows.sort(key=lambda c: -float(((c.get("memory") or {}).get("current")) or 0))
    for c in rows[:TOP_CGROUPS]:
        path = c["path"]
        mem, cpu = c.get("memory") or {}, c.get("cpu") or {}
        m.add(
            "incidentlab_cgroup_memory_bytes",
            "gauge",
            "A cgroup's memory use.",
            mem.get("current"),
            cgroup=path,
        )
        m.add(
            "incidentlab_cgroup_oom_kills_total",
            "counter",
            "OOM kills in a cgroup since it was made.",
            mem.get("oom_kill"),
            cgroup=path,
        )
        pct = cpu.get("throttled_periods_pct")
        if isinstance(pct, int | float):
            m.add(
                "incidentlab_cgroup_cpu_throttled_ratio",
                "gauge",
                "Share of a cgroup's CFS periods throttled over the last interval.",
                round(pct / 100.0, 6),
                cgroup=path,
            )


def _processes(m: Exposition, d: dict[str, Any]) -> None:
    rows = [r for r in d.get("rows") or [] if isinstance(r, dict) and r.get("pid") is not None]
    for r in rows[:TOP_PROCESSES]:
        labels = {"pid": r["pid"], "comm": r.get("comm") or ""}
        if r.get("pod"):
            labels |= {"namespace": r.get("namespace") or "", "pod": r["pod"]}
        pct = r.get("cpu_pct")
        if isinstance(pct, int | float):
            m.add(
                "incidentlab_process_cpu_ratio",
                "gauge",
                "The top processes' share of one CPU over the last interval.",
                round(pct / 100.0, 6),
                **labels,
            )
        m.add(
            "incidentlab_process_resident_memory_bytes",
            "gauge",
            "The top processes' RSS.",
            r.get("rss_bytes"),
            **labels,
        )


def _gpu(m: Exposition, d: dict[str, Any]) -> None:
    for g in d.get("devices") or []:
        if not isinstance(g, dict):
            continue
        gpu = g.get("uuid") or g.get("index")
        util = (g.get("utilization_pct") or {}).get("gpu")
        if isinstance(util, int | float):
            m.add(
                "incidentlab_gpu_utilization_ratio",
                "gauge",
                "GPU busy share (NVML).",
                round(util / 100.0, 6),
                gpu=gpu,
            )
        m.add(
            "incidentlab_gpu_memory_used_bytes",
            "gauge",
            "GPU memory used.",
            (g.get("memory") or {}).get("used"),
            gpu=gpu,
        )
        m.add(
            "incidentlab_gpu_temperature_celsius",
            "gauge",
            "GPU temperature.",
            g.get("temperature_c"),
            gpu=gpu,
        )
        m.add("incidentlab_gpu_power_watts", "gauge", "GPU power draw.", g.get("power_w"), gpu=gpu)
        energy = g.get("energy_mj")
        if isinstance(energy, int | float):
            m.add(
                "incidentlab_gpu_energy_joules_total",
                "counter",
                "GPU energy since the driver loaded.",
                energy / 1000.0,
                gpu=gpu,
            )


SECTIONS: dict[str, Callable[[Exposition, dict[str, Any]], None]] = {
    "host": _host,
    "psi": _psi,
    "network": _network,
    "disk": _disk,
    "sockets": _sockets,
    "cgroup": _cgroups,
    "processes": _processes,
    "gpu": _gpu,
}


def render(snapshot: dict[str, Any], health: dict[str, Any], host_id: str, seq: int = 0) -> bytes:
    """The exposition of one snapshot: each source's path and the agent's own (spool,
    delivery) first, then the node's metrics."""
    m = Exposition()
    for source, entry in sorted((snapshot.get("sources") or {}).items()):
        if isinstance(entry, dict):
            m.add(
                "incidentlab_source_up",
                "gauge",
                "1 if the source answered this snapshot; path says how it read (kernel, file, none).",
                1 if entry.get("status") == "ok" else 0,
                source=source,
                path=entry.get("path") or "none",
                status=entry.get("status") or "unknown",
            )
    m.add(
        "incidentlab_collector_snapshot_timestamp_seconds",
        "gauge",
        "When the snapshot these metrics come from was taken.",
        snapshot.get("ts"),
        host_id=host_id,
    )
    m.add("incidentlab_collector_snapshots_total", "counter", "Snapshots spooled by this collector.", seq)
    for key, help_ in (
        ("spool_bytes", "Bytes in the disk spool."),
        ("unacked_records", "Batches spooled and not yet acknowledged by the controller."),
        ("oldest_unacked_age_s", "Age of the oldest unacknowledged batch."),
        ("dead_letters", "Batches the controller refused for good."),
        ("retries", "Delivery retries since the collector started."),
        ("bad_acks", "Acknowledgements that did not match what was sent."),
    ):
        kind = "counter" if key in ("dead_letters", "retries", "bad_acks") else "gauge"
        suffix = "_total" if kind == "counter" else ""
        name = "incidentlab_collector_" + key.replace("_age_s", "_age_seconds") + suffix
        m.add(name, kind, help_, health.get(key))
    # The node's own last: on a host with more series than a scrape holds, those are cut.
    for source, section in SECTIONS.items():
        data = _data(snapshot, source)
        if data:
            try:
                section(m, data)
            except (TypeError, ValueError, AttributeError) as exc:  # a malformed source: the rest goes on
                log.warning("metrics of source %s: %s", source, exc)
    if m.cut:
        m.add(
            "incidentlab_collector_metrics_cut",
            "gauge",
            "Samples left out of this scrape past MAX_SERIES.",
            m.cut,
            always=True,
        )
    return m.text()


class MetricsServer:
    """GET /metrics on its own thread; renders the latest snapshot once per snapshot."""

    def __init__(self, host: str, port: int, latest: Latest, host_id: str, timeout_s: float = 5.0) -> None:
        self.latest, self.host_id = latest, host_id
        self._cache: tuple[int, bytes] | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # a slow client holds its own thread only, this long at most
            server_version = "incidentlab-collector"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path != "/metrics":
                    self._answer(404, b"only /metrics here\n")
                    return
                body = server.body()
                if body is None:
                    self._answer(503, b"no snapshot yet\n")
                    return
                self._answer(200, body, CONTENT_TYPE)

            def _answer(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def body(self) -> bytes | None:
        got = self.latest()
        if got is None:
            return None
        seq, snapshot, health = got
        with self._lock:
            if self._cache is None or self._cache[0] != seq:
                self._cache = (seq, render(snapshot, health, self.host_id, seq))
            return self._cache[1]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="collector-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
