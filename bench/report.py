"""Renders the README's "Measured" section from bench/results/*.json.

`make bench` runs it after the benchmarks; tests/test_layout.py checks that the
README holds exactly what this renders, so the quoted numbers cannot drift from
the recorded ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START = "<!-- measured:start (bench/report.py writes this section) -->"
END = "<!-- measured:end -->"


def _probe_core(doc: dict[str, Any]) -> list[str]:
    host = doc["host"]
    snap = doc["snapshot"]
    lines = [
        f"`bench/probe_core_bench.py`, recorded {doc['recorded_at']} on a {host['cpus']}-core "
        f"{host['machine']} VM, Linux {host['kernel']}. CPU time, medians of 5 trials.",
        "",
        "| measure | probe_core | peer | ratio | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for scan in doc["process_scan"]:
        lines.append(
            f"| process scan, {scan['pids']} pids ({scan['extra_processes']} extra sleeping) "
            f"| {scan['probe_core_us_per_pid']} us/pid | psutil {scan['psutil_us_per_pid']} us/pid "
            f"| **{scan['ratio']}x** | >= {doc['targets']['process_scan_ratio_min']:g}x |"
        )
    lines += [
        f"| full host snapshot | {snap['probe_core_cpu_ms']} ms | psutil + Python reads "
        f"{snap['psutil_python_cpu_ms']} ms | **{snap['ratio_vs_psutil_python']}x** | |",
        f"| full host snapshot | {snap['probe_core_cpu_ms']} ms | one node_exporter scrape "
        f"{snap['node_exporter_scrape_cpu_ms']} ms | **{snap['ratio_vs_node_exporter']}x** "
        f"| >= {doc['targets']['snapshot_vs_node_exporter_ratio_min']:g}x |",
        f"| snapshot, every cold read each time | {snap['probe_core_every_cold_read_cpu_ms']} ms "
        f"| one node_exporter scrape | {snap['ratio_vs_node_exporter_every_cold_read']}x | |",
        "",
        "The scan peer is psutil's `process_iter()` with `oneshot()` reading cpu_times, memory_info, "
        "io_counters, num_fds and name for every process; ProcessScanner returns the totals and the "
        "top 20 rows by CPU with uid, cgroup, IO, fd count and smaps_rollup. The snapshot is cpu, "
        "memory, vmstat, PSI, disk counters, network, netstat and the top 20 processes. The "
        f"node_exporter figure is the exporter's own CPU per scrape (Debian prometheus-node-exporter, "
        f"default collectors, {snap['node_exporter_samples_per_scrape']} samples) over "
        f"{snap.get('node_exporter_scrapes', 300)} scrapes. The last row re-reads cgroup and "
        "smaps_rollup of every top row on every pass (`cold_ttl_s=0`).",
    ]
    return lines


def _collector(doc: dict[str, Any]) -> list[str]:
    c, p, load = doc["collector"], doc["psutil_collector"], doc["load"]
    procs, conns, pids = load["extra_processes"], load["loopback_connections"], load["host_pids"]
    share_max, ratio_min = doc["targets"]["share_pct_max"], doc["targets"]["ratio_min"]
    return [
        f"`bench/collector_bench.py`, recorded {doc['recorded_at']}: each collector in its own process at a "
        f"{doc['interval_s']:g} s interval for {c['wall_s']:.0f} s, with {procs} extra sleeping processes "
        f"and {conns} loopback TCP connections ({pids} pids).",
        "",
        "| measure | collector | psutil collector | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| CPU share of one core, all sources on | {c['share_pct']}% | {p['share_pct']}% "
        f"| **{doc['ratio']}x** | <= {share_max:g}%, >= {ratio_min:g}x |",
        "",
        "The psutil collector gathers the same process table (process_iter with oneshot, top 20) and TCP "
        "socket summary (/proc/net/tcp and tcp6 parsed in Python) plus psutil's host counters. The eBPF "
        f"programs' own run time, charged to the tasks that hit the tracepoints, was "
        f"{c.get('bpf_programs_share_pct', 'not measured')}% of one core on top.",
        *_collector_memory(doc),
    ]


def _collector_memory(doc: dict[str, Any]) -> list[str]:
    m, loader = doc.get("memory"), doc.get("ebpf_loader")
    if m is None:
        return []
    rss_max = doc["targets"]["rss_mb_max"]
    lines = [
        "",
        "Memory, in the same run: the agent as a node runs it (`incidentlab-collector run`: every source "
        "on, eBPF included, the spool, shipping to a controller on loopback, /metrics served) beside "
        "Debian's prometheus-node-exporter with its default collectors, both at 1 s and both scraped once "
        f"a second for {m['window_s']:.0f} s.",
        "",
        "| measure | collector | node_exporter | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| RSS, the most seen | {m['collector_rss_mb']} MB | {m['node_exporter_rss_mb']} MB "
        f"| {doc['rss_ratio_to_node_exporter']}x | <= {rss_max:g} MB |",
        f"| samples per /metrics scrape | {m['metrics_samples']['collector']} "
        f"| {m['metrics_samples']['node_exporter']} | | |",
        "",
        f"Of the collector's RSS, {m['collector_rss_anon_mb']} MB is its own heap and "
        f"{m['collector_rss_file_mb']} MB shared library pages; its peak over the whole run, start "
        f"included, was {m['collector_peak_rss_mb']} MB.",
    ]
    if loader is not None:
        lines[-1] += (
            f" The eBPF loader child took {loader['load_s']} s and a peak of {loader['peak_rss_mb']} MB "
            "to compile and load the programs, then exited."
        )
    return lines


def _spool(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"`bench/spool_bench.py`, recorded {doc['recorded_at']}: appends against a plain loop that "
        "writes and fdatasyncs the same bytes under the same rule (the floor), wall-clock, medians of "
        f"{doc['trials']} trials.",
        "",
        "| record | fsync | spool | floor | ratio | target |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        lines.append(
            f"| {r['record_bytes'] // 1024} KiB | {r['policy']} | {r['spool_mb_per_s']} MB/s "
            f"| {r['floor_mb_per_s']} MB/s | **{r['ratio']}** | >= {doc['target_ratio_min']} |"
        )
    return lines


def _ingest(doc: dict[str, Any]) -> list[str]:
    c, b, t = doc["controller"], doc["bare_asyncio"], doc["targets"]
    lat, mem, batch = c["latency_at_half_peak"], c["memory_run"], doc["batch"]
    d = doc.get("controller_defaults")
    defaults = (
        [
            f"| peak batches/s, default settings (the workflow on, analysis in its worker) "
            f"| {d['peak_batches_per_s']} | {b['peak_batches_per_s']} | {d['ratio']} | >= {t['ratio_min']} |"
        ]
        if d
        else []
    )
    return [
        f"`bench/ingest_bench.py`, recorded {doc['recorded_at']}: the same {batch['json_bytes'] // 1024} KiB "
        f"batch ({batch['snapshots']} snapshots, {batch['compressed_bytes'] // 1024} KiB gzip, "
        "a new seq each) from a load generator in its own process, one server worker each, on loopback.",
        "",
        "| measure | controller | bare asyncio server | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| peak batches/s, the ingest path (closed loop, 16 connections) | {c['peak_batches_per_s']} "
        f"| {b['peak_batches_per_s']} | **{doc['ratio']}** | >= {t['ratio_min']} |",
        *defaults,
        f"| p99 at half the controller's peak ({lat['target_rate']:.0f}/s, open loop) | {lat['p99_ms']} ms "
        f"| | | < {t['p99_ms_max']:g} ms |",
        f"| RSS drift, {mem['hosts']} hosts for 60 s at {mem['rate']:.0f} batches/s "
        f"| {mem['rss_drift_after_15s']:.2%} | | | <= {t['rss_drift_max']:.0%} |",
        "",
        "The controller (uvicorn with httptools and uvloop, the defaults) authenticates on the headers, "
        "reads the body under its timeouts, decompresses under "
        "its cap (a batch this small on the event loop, a larger one on the decode pool), runs "
        "probe_core.json_check (strict JSON, UTF-8, finite numbers, depth and value bounds, without the "
        "GIL), validates through the wire contract, commits the dedupe ledger (SQLite, WAL) before each ack "
        "and updates hot state; the bare server only gunzips, json.loads and answers. msgspec decoding and "
        "validating in one pass, with each source's data left as raw JSON, is what pays for the rest. "
        "With default settings each accepted batch also goes to an analysis worker process (the second "
        "row); a worker that falls behind a load like this one drops batches from analysis, counted, and "
        "never slows an ack"
        + (
            f" (here {d['analysis']['queue_overflow']:,} of {d['codes'].get('200', 0):,} accepted batches "
            f"of {batch['snapshots']} snapshots each went unanalysed)"
            if d and d.get("analysis")
            else ""
        )
        + ". bench/fleet_bench.py measures analysis at a fleet's real pace.",
    ]


def _fleet(doc: dict[str, Any]) -> list[str]:
    c, i, b, t = doc["controller"], doc["controller_in_process_analysis"], doc["bare_asyncio"], doc["targets"]
    return [
        f"`bench/fleet_bench.py`, recorded {doc['recorded_at']}: {doc['hosts']:,} simulated hosts each send "
        f"one real recorded snapshot every {doc['interval_s']:g} s ({doc['hosts'] / doc['interval_s']:.0f} "
        f"batches/s) for {doc['paced_seconds']:g} s, windows full at the start; CPU of the controller's "
        "process and its analysis workers, less what it spends with nothing arriving; the bare server takes "
        "the same bodies at the same rate at the same time, from a load generator of its own, beside each "
        "controller ("
        f"{' and '.join(f'{x} ms' for x in b.get('cpu_ms_per_batch_runs', [b['cpu_ms_per_batch']]))}"
        "; the table has their mean, and each controller's ratio is to the bare server beside it). "
        "Runs of the same code on this shared VM have differed by over half in this ratio: "
        "read it as a range.",
        "",
        "| measure | controller (default) | evaluation in process | bare asyncio server | target |",
        "|---|---:|---:|---:|---:|",
        f"| CPU per batch, evaluation included | {c['cpu_ms_per_batch']} ms | {i['cpu_ms_per_batch']} ms "
        f"| {b['cpu_ms_per_batch']} ms | <= {t['cpu_ms_per_batch_max']} ms |",
        f"| ratio to the bare server | **{doc['cpu_ratio_to_bare']}x** "
        f"| {i.get('cpu_ratio_to_bare', round(i['cpu_ms_per_batch'] / b['cpu_ms_per_batch'], 2))}x | 1x | |",
        *(
            [
                f"| of which the ingest process, the analysis workers (idle included) "
                f"| {c['ingest_process_ms_per_batch']} ms, {c['analysis_workers_ms_per_batch']} ms | | | |",
                f"| batches not analysed (analysis queue overflow, warm-up included) "
                f"| {c['analysis']['queue_overflow']} | | | 0 |",
            ]
            if "ingest_process_ms_per_batch" in c
            else []
        ),
        f"| /healthz p99 under that load | {c['healthz_p99_ms']} ms | {i['healthz_p99_ms']} ms | "
        f"| < {t['healthz_p99_ms_max']:g} ms |",
        f"| detection delay of a CPU saturation | {c['detection_delay_s']} s | {i['detection_delay_s']} s | "
        f"| within {t['detection_extra_intervals_max']} intervals of in process |",
        "",
        f"The analysis worker held {c['analysis']['bytes'] / c['analysis']['hosts'] / 1024:.0f} KiB per host "
        f"({c['analysis']['samples'] // c['analysis']['hosts']} samples each), evaluated "
        f"{c['analysis']['evaluations']:,} times and lagged at most {c['analysis']['lag_max_s']} s. "
        "Detection takes as many intervals as the detectors need fresh samples (a mean of the last five).",
        *_correlator(doc.get("correlator")),
    ]


def _correlator(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    rows = {r["hosts"]: r for r in c["cpu_per_evaluation"]}
    peer = {r["hosts"]: r for r in c["peer_pairwise_python"]}
    d = c["delay"]
    return [
        "",
        "The fleet correlator (`bench/correlator_bench.py`, in the same run), every host with a live "
        "sighting (a fleet-wide event) over 10 zones, a fifth in same-service groups and the rest left to "
        "correlation, against the same correlator building its matrix pair by pair in Python:",
        "",
        "| hosts | CPU per evaluation | per host | pair by pair (peer) |",
        "|---:|---:|---:|---:|",
        *(
            f"| {n:,} | {r['cpu_ms_per_evaluation']} ms | {r['cpu_us_per_host']} us "
            f"| {peer[n]['cpu_ms_per_evaluation'] if n in peer else '-'}" + (" ms |" if n in peer else " |")
            for n, r in rows.items()
        ),
        "",
        f"Per-host cost from 100 to 5,000 hosts: x{c['per_host_growth_100_to_5000']} (it is bounded by "
        "`fleet.max_group`, the hosts correlated pairwise at once); the peer costs "
        f"{c['ratio_to_peer_at_1000']}x as much at 1,000 hosts. Six hosts replaying the recorded CPU "
        f"saturation at a {d['interval_s']:g} s interval, faults 2 s apart: the fleet incident opened "
        f"{d['fleet_incident_after_third_fault_intervals']} intervals after the third member's fault began "
        f"(each member's own run took {max(d['member_detect_intervals'].values()):g}; the correlator passes "
        f"every {d['evaluate_every_s']:g} s), and a member joined at most "
        f"{d['join_after_member_run_intervals_max']} intervals after its run opened.",
    ]


def _scale(doc: dict[str, Any]) -> list[str]:
    h, n, t = doc["https"], doc["nats"], doc["takeover"]
    every = all(x["passes"] for x in doc["steps"])
    at_least = " (the largest step tried: at least that many)" if every else ""

    def delay(s: dict[str, Any]) -> str:
        d = s["detection_delay_intervals"]
        return "not seen" if d is None else f"{s['detection_delay_s']} s ({d} intervals)"

    steps = [
        f"| {s['hosts']:,} | {s['ingest_p99_ms']} ms | "
        f"{'-' if s['detection_delay_intervals'] is None else s['detection_delay_intervals']} | "
        f"{s['analysis_overflow']} | {s['cpu_ms_per_batch']} ms | {s['cpu_share_of_one_core_pct']}% | "
        f"{'yes' if s['passes'] else 'no'} |"
        if "error" not in s
        else f"| {s['hosts']:,} | - | - | - | - | - | no: {s['error']} |"
        for s in doc["steps"]
    ]
    return [
        f"`bench/scale_bench.py`, recorded {doc['recorded_at']}: one controller replica with default "
        f"settings on PostgreSQL with the bus on ({doc['partitions']} partitions, leases running), "
        f"{h['hosts']:,} hosts sending one recorded snapshot every {doc['interval_s']:g} s after a warm-up "
        "of each host's last 300 s, through HTTPS and then through NATS JetStream (a fresh database and "
        "stream each), a host turning CPU-saturated 20 s in; CPU of the replica's process and its "
        "analysis workers, less its idle.",
        "",
        "| measure | NATS JetStream | HTTPS | ratio |",
        "|---|---:|---:|---:|",
        f"| CPU per batch, evaluation included | {n['cpu_ms_per_batch']} ms | {h['cpu_ms_per_batch']} ms "
        f"| **{doc['nats_over_https_cpu_ratio']}x** |",
        f"| of which the ingest process (idle included) | {n['ingest_process_ms_per_batch']} ms "
        f"| {h['ingest_process_ms_per_batch']} ms | |",
        f"| detection delay of the CPU saturation | {delay(n)} | {delay(h)} | |",
        f"| ingest p99 (HTTPS: request to ack); consumer lag, most (NATS) | {n['consumer_lag_max']} messages "
        f"| {h['ingest_p99_ms']} ms | |",
        f"| idle CPU (leases, consumers and workers polling), taken off | {n['idle_cpu_pct']}% | "
        f"{h['idle_cpu_pct']}% | |",
        "",
        "The most hosts one replica serves at a 10 s interval on this machine (two cores shared with the "
        "load generator, PostgreSQL and nats-server): steps over HTTPS; a step passes with ingest p99 "
        f"under 100 ms, detection within {doc['detection_limit_intervals']} intervals (two past the "
        "detectors' own need of five fresh samples) and no analysis overflow.",
        "",
        "| hosts | ingest p99 | detection (intervals) | analysis overflow | CPU per batch | CPU, one core "
        "| passes |",
        "|---:|---:|---:|---:|---:|---:|---|",
        *steps,
        "",
        f"Most hosts served here: **{doc['most_hosts_one_replica_here']:,}**{at_least}. The cost per batch "
        "falls as batches come faster (the ledger's commits are grouped). Takeover: a second replica "
        f"joined the NATS fleet, took {t['partitions_moved']} of {t['of_partitions']} partitions and "
        f"rebuilt their windows from the stream ({t['rebuilt_batches']:,} batches of "
        f"{t['rebuilt_hosts']:,} hosts): every partition moved and rebuilt "
        f"{t['moved_and_rebuilt_after_ready_s']} s after it was ready, "
        f"**{t['moved_and_rebuilt_after_ready_s'] / t['rebuilt_hosts'] * 1000:.1f} s per 1,000 hosts** "
        f"(the longest single partition's rebuild: {t['rebuild_wall_s']} s; four rebuild at once; "
        f"rebuilt batches not analysed: {t.get('analysis_overflow', '-')}). The "
        f"window held {t['rebuilt_batches'] / t['rebuilt_hosts']:.0f} batches per host; a full 300 s of "
        "batches every 10 s holds 30, and reads in proportion.",
        "",
        *_projection(doc),
    ]


def _projection(doc: dict[str, Any]) -> list[str]:
    """50,000 hosts from the per-replica figures: arithmetic, not a measurement."""
    n, t = doc["nats"], doc["takeover"]
    hosts, interval, use = 50_000, doc["interval_s"], 0.6
    rate = hosts / interval
    total_ms, ingest_ms = n["cpu_ms_per_batch"], n["ingest_process_ms_per_batch"]
    workers_ms = n["analysis_workers_ms_per_batch"]
    # A replica's ingest is one Python process: about one core, whatever the machine.
    per_replica = int(use * 1000 * interval / ingest_ms)
    # Partitions move whole, and shares differ by one: the fewest replicas R (P a power of two,
    # at least eight per replica) whose survivors of one loss each hold at most per_replica.
    replicas = -(-hosts // per_replica)
    while True:
        parts = 1 << (8 * replicas - 1).bit_length()
        if -(-parts // (replicas - 1)) * hosts / parts <= per_replica:
            break
        replicas += 1
    per_part = hosts / parts
    # The takeover as measured: from the joining replica's start to every partition rebuilt.
    rebuild = t["moved_and_rebuilt_after_ready_s"] / t["rebuilt_hosts"] * 1000
    lost = -(-parts // replicas)  # partitions the dead replica held, at most
    each = -(-lost // (replicas - 1))  # partitions a survivor takes of them, at most
    return [
        f"**Projection to {hosts:,} hosts** (arithmetic on the figures above, not a measurement: this "
        f"machine has two cores). {hosts:,} hosts every {interval:g} s are {rate:,.0f} batches/s. A "
        f"replica's ingest is one Python process, so about one core: at {use:.0%} of it (headroom for "
        f"bursts and for p99) and {ingest_ms} ms per batch (idle included) it takes {use * 1000:.0f} / "
        f"{ingest_ms} = {use * 1000 / ingest_ms:.0f} batches/s, **{per_replica:,} hosts per replica**, and "
        f"its analysis worker {per_replica / interval * workers_ms / 10:.0f}% of another core. Partitions "
        f"move whole and shares differ by one, so with `bus.partitions` = {parts} ({per_part:.0f} hosts "
        f"each; at least eight per replica, a power of two, fixed for the fleet's life since it maps "
        f"hosts) the fewest replicas whose survivors of one loss each stay within {per_replica:,} hosts "
        f"is **{replicas}**: ceil({parts} / {replicas - 1}) x {per_part:.0f} = "
        f"{-(-parts // (replicas - 1)) * per_part:,.0f}. That is {rate * total_ms / 1000:.1f} cores of "
        f"controller CPU in all ({rate:,.0f} x {total_ms} ms). A replica that dies leaves at most {lost} "
        f"partitions, at most {each} to a survivor: {each * per_part:,.0f} hosts rebuilt at "
        f"{rebuild:.1f} s per 1,000 (the takeover above, start to last partition rebuilt), about "
        f"{each * per_part / 1000 * rebuild:.1f} s before they evaluate again, after the partitions move "
        f"(one poll for a killed replica, `ha.lease_s` for a hung one). Around the replicas: PostgreSQL "
        f"commits {rate:,.0f} ledger rows/s (one per batch, each before its ack: the store to size and "
        f"test first); nats-server takes {rate:,.0f} messages/s of about 4 KB (the recorded snapshots' "
        f"batches, gzip'd: {rate * 4 / 1000:.0f} MB/s), and the stream holds `max_age_s` of them: "
        f"{rate * 4 * 3600 / 1e6:.0f} GB for the default hour, {rate * 4 * 300 / 1e6:.0f} GB for the "
        "300 s window alone (`bus.max_bytes` sized to match). The per-batch figure is the 1,000-host one "
        "through NATS, the dearest measured: at the steps' higher rates a batch cost less, so the "
        "replica count is the cautious one.",
    ]


def _hostile(doc: dict[str, Any]) -> list[str]:
    idle, slow = doc["healthz_idle"], doc["slowloris"]
    lines = [
        f"`bench/hostile_bench.py`, recorded {doc['recorded_at']}: a controller with default settings (plain "
        "HTTP on loopback), /healthz timed from another process (400 requests, 10 ms apart) while one "
        "client sends worst-case batches back to back, against the same controller idle.",
        "",
        "| while one client sends | /healthz p50 | p99 | max | target |",
        "|---|---:|---:|---:|---:|",
        f"| nothing (the peer) | {idle['p50_ms']} ms | {idle['p99_ms']} ms | {idle['max_ms']} ms | |",
    ]
    for name, lat in doc["healthz_under_worst_case"].items():
        lines.append(
            f"| {name} | {lat['p50_ms']} ms | **{lat['p99_ms']} ms** | {lat['max_ms']} ms "
            f"| p99 < {doc['targets']['healthz_p99_ms_max']:g} ms |"
        )
    lines += [
        "",
        "| slowloris wave from 8 client addresses, held 20 s | RSS growth | answers "
        "| bound (docs/hardening.md) |",
        "|---|---:|---|---:|",
    ]
    for name, wave in slow["waves"].items():
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(wave["answers"].items()))
        lines.append(f"| {name} | **+{wave['rss_growth_mb']} MB** | {answers} | {doc['rss_bound_mb']} MB |")
    lines += [
        "",
        f"RSS went from {slow['rss_baseline_mb']} to at most {slow['rss_peak_mb']} MB over the three waves, "
        f"and /healthz {'answered' if slow['healthy_after'] else 'did not answer'} after them. "
        "408 is a head or body cut by its timeout, 401 a body refused before it was read, 429 no room in "
        "the in-flight bounds (all clients', or one address's share), 503 past the cap on connections "
        "waiting for a head (all, or one address's share).",
    ]
    return lines


def _workflow(doc: dict[str, Any]) -> list[str]:
    r, t, c = doc["run"], doc["targets"], doc["chain_bytes"]
    return [
        f"`bench/workflow_bench.py`, recorded {doc['recorded_at']}: {doc['runs']} runs, one per host, over "
        f"{doc['families']} fault families ({doc['window_snapshots']}-snapshot windows), SQLite and local "
        "payload files; this process's CPU from the trigger to the committed incident report.",
        "",
        "| measure | run | analysis alone | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| CPU per run, median | {r['cpu_ms_median']} ms | {doc['analysis_floor_cpu_ms_median']} ms "
        f"| **{doc['ratio_run_to_floor']}x** | < {t['cpu_ms_max']:g} ms |",
        f"| CPU per run, p95 | {r['cpu_ms_p95']} ms | | | < {t['cpu_ms_max']:g} ms |",
        f"| chain of eight artifacts, encoded | median {c['median'] / 1024:.1f} KiB, "
        f"max {c['max'] / 1024:.1f} KiB | | | < {t['chain_bytes_max'] // 1024} KiB |",
        "",
        '"Analysis alone" is evidence, detectors and ranking for the same window: what any rules '
        "pass over it costs. A run adds the eight stages, a payload file and a transaction per stage, "
        "the incident-memory record and the evidence package.",
    ]


def _rca(doc: dict[str, Any]) -> list[str]:
    s, m = doc["summary"], doc["met"]
    lines = [
        f"`bench/rca_bench.py`, recorded {doc['recorded_at']}: {s['windows']} windows recorded on this "
        "machine with the real collector while a real fault ran (testkit/windows/manifest.json), each "
        "replayed a sample at a time through the real engine, evaluated after every sample.",
        "",
        "| measure | result | target |",
        "|---|---:|---:|",
        f"| runs per fault (not explained as a symptom) | **{s['runs_per_fault']}** "
        f"({s['windows_with_one_run']} of {s['windows']} windows exactly 1) | 1.0 |",
        f"| runs per fault, culprit per pid as before owners (peer) | {s['runs_per_fault_per_pid_peer']} | |",
        f"| top-1 family / top-3 family / culprit (owner) right | {s['top1_accuracy']:.0%} / "
        f"{s['top3_accuracy']:.0%} / {s['culprit_accuracy']:.0%} | |",
        "| evaluations during the fault with the right top-1 (once found), worst "
        f"window / median | {s['top1_share_during_fault_min']:.0%} / "
        f"{s['top1_share_during_fault_median']:.0%} "
        f"| >= {doc['targets']['top1_share_during_fault_min']:.0%} |",
        f"| time to detect, samples (1 s), median / max | {s['time_to_detect_samples_median']} / "
        f"{s['time_to_detect_samples_max']} | |",
        f"| faults that ended, resolved in the window; samples from the end, median | "
        f"{s['ended_faults_resolved']} of {s['ended_faults']}; {s['time_to_resolve_samples_median']} | |",
        "| false hypotheses on the calm lead-ins (evaluations) / false runs | "
        f"{s['false_hypotheses_quiet']} / "
        f"{s['false_runs']} | 0 |",
        "",
        "Targets met: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m.items()) + ".",
    ]
    missed = [
        w for w in doc["windows"] if w["runs_per_fault"] != 1 or w["false_hypotheses_quiet"] or not w["top1"]
    ]
    for w in missed:
        lines.append(
            f"- `{w['window']}`: {w['runs_per_fault']} run(s), top-1 {'right' if w['top1'] else 'wrong'}, "
            f"{w['false_hypotheses_quiet']} false hypotheses before the fault"
            + (f" ({', '.join(w['false_run_families'])})" if w["false_run_families"] else "")
        )
    return lines


def _workbench(doc: dict[str, Any]) -> list[str]:
    return [
        f"`bench/workbench_bench.py`, recorded {doc['recorded_at']}: a SQLite store of {doc['runs']:,} runs; "
        f"medians of {doc['trials']} trials.",
        "",
        "| measure | workbench | pandas read_sql_query | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| `Workbench(dir).runs()`, {doc['runs']:,} runs | {doc['runs_frame_s_median'] * 1000:.0f} ms "
        f"| {doc['read_sql_query_s_median'] * 1000:.0f} ms | **{doc['ratio_to_read_sql']}x** "
        f"| < {doc['target_s'] * 1000:.0f} ms |",
        "",
        "read_sql_query leaves the culprit as JSON text and status and family as plain objects; runs() "
        "parses the culprit and types every column (UTC datetimes, categories). Reading the runs one by "
        f"one through the per-run view instead would take {doc['per_run_reads_s_for_all']} s "
        "for all of them.",
    ]


def render() -> str:
    body = [START, ""]
    sections = (
        ("probe_core", _probe_core),
        ("collector", _collector),
        ("spool", _spool),
        ("ingest", _ingest),
        ("fleet", _fleet),
        ("scale", _scale),
        ("hostile", _hostile),
        ("workflow", _workflow),
        ("rca", _rca),
        ("workbench", _workbench),
    )
    found = False
    for name, fn in sections:
        path = RESULTS / f"{name}.json"
        if path.exists():
            body += [*fn(json.loads(path.read_text())), ""]
            found = True
    if not found:
        body += ["No results recorded yet: run `make bench`.", ""]
    body.append(END)
    return "\n".join(body)


def current() -> str:
    text = README.read_text()
    start, end = text.index(START), text.index(END) + len(END)
    return text[start:end]


def main() -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print("README.md lacks the measured-section markers", file=sys.stderr)
        return 1
    README.write_text(text.replace(current(), render()))
    print("README.md: measured section updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
