"""A fleet at steady state against the bare asyncio server; writes bench/results/fleet.json.

1,000 simulated hosts each send one real recorded snapshot (17-37 KB of JSON, the calm
lead-ins of testkit/windows/) every 10 s, as a collector does: 100 batches/s. First
every host sends its last 300 s in one batch (30 snapshots), so windows are full when
the clock starts; then bench/loadgen.py, in its own process, sends the paced batches
(each sample's time is when it is sent). Measured over the paced phase:

- CPU per batch of the controller with default settings (its process and its analysis
  workers, evaluation included) and of bench/bare_server.py taking the same bodies at
  the same rate at the same time, from a load generator of its own (gunzip and parse):
  the ratio of the two, and the controller's own ms, split between its ingest process
  and its analysis workers;
- /healthz p99, probed every 50 ms from this process during the phase;
- the analysis queue's overflow, warm-up included (it must stay 0: a batch whose
  evaluation is dropped leaves its host unevaluated until its next batch);
- detection delay: 20 s in, one host starts sending the recorded CPU saturation; the
  seconds (and 10 s intervals) until its run is listed, with the analysis workers and
  with evaluation in the controller's process (analysis.workers: 0), the same run.

Targets (issue 14): <= 0.5 ms of controller CPU per batch; /healthz p99 < 50 ms;
detection delay within two intervals of the in-process evaluation's.

And the fleet correlator (bench/correlator_bench.py, in process): its CPU per evaluation at
100, 1,000 and 5,000 hosts (it must grow no worse than linearly) against the same correlator
pair by pair, and the delay from a member's fault to the fleet incident, in intervals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import probe_core

from bench import correlator_bench
from bench.harness import write_result
from bench.ingest_bench import ROOT, TOKEN, start_bare, start_controller, stop
from bench.peers import proc_cpu_s
from testkit.store import snapshots

OPERATOR = "bench-operator-token-0000000"
INTERVAL_S = 10.0
CALM = ("cpu_saturation", "io_pressure", "listen_queue_overflow", "tcp_retransmit_surge", "runaway_forks")
FAULT_AT_S = 20.0
# Warm-up batches (30 snapshots each) per second: a 30-snapshot batch costs the worker about
# 3 ms, so 200/s sat at the edge of what one niced worker takes beside ingest on 2 cores
# (its overflow came and went between runs); hosts coming online at 120/s leave room.
WARMUP_RATE = 120.0


def _body(host: str, seq: int, snaps: list[dict[str, Any]]) -> bytes:
    batch = {
        "schema": "incidentlab.batch/v1",
        "host_id": host,
        "boot_id": "bench",
        "stream_id": f"s-{host}",
        "seq": seq,
        "sent_at": snaps[-1]["ts"],
        "snapshots": snaps,
        "events": [],
    }
    return probe_core.gzip_compress(msgspec.json.encode(batch), 1)


def _snap(template: dict[str, Any], ts: float) -> dict[str, Any]:
    return template | {"ts": ts, "interval_s": INTERVAL_S}


def make_bodies(hosts: int, seconds: float, start: float) -> tuple[list[bytes], list[bytes], str]:
    """(the warm-up: each host's last 300 s in one batch; the paced batches in send order,
    each sample timed for when it is due; the host that turns faulty)."""
    # Each host replays one recording's calm lead-in: mixing hosts' counters would read as OOM kills.
    calm = [snapshots(fam)[:40] for fam in CALM]
    fault = snapshots("cpu_saturation")[60:]
    faulty = f"fleet-{hosts // 2:04d}"
    warm = []
    for h in range(hosts):
        host = f"fleet-{h:04d}"
        ts0 = start - 300 + h * INTERVAL_S / hosts
        mine = calm[h % len(calm)]
        warm.append(
            _body(host, 1, [_snap(mine[(h + k) % len(mine)], ts0 + k * INTERVAL_S) for k in range(30)])
        )
    paced = []
    rate = hosts / INTERVAL_S
    for i in range(int(seconds * rate)):
        h, k = i % hosts, i // hosts
        host = f"fleet-{h:04d}"
        ts = start + i / rate
        if host == faulty and ts >= start + FAULT_AT_S:
            template = fault[min(k, len(fault) - 1)]
        else:
            mine = calm[h % len(calm)]
            template = mine[(h + 30 + k) % len(mine)]
        paced.append(_body(host, 2 + k, [_snap(template, ts)]))
    return warm, paced, faulty


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def tree_cpu_s(pid: int) -> float:
    return sum(split_cpu_s(pid))


def split_cpu_s(pid: int) -> tuple[float, float]:
    """(the process's CPU seconds, its children's: the analysis workers)."""
    children = 0.0
    for child in _children(pid):
        with contextlib.suppress(OSError):  # it exited meanwhile
            children += proc_cpu_s(child)
    return proc_cpu_s(pid), children


def send(
    url: str, bodies: list[bytes], tmp: Path, *, rate: float, token: str | None
) -> subprocess.Popen[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"bodies-{len(bodies)}-{time.monotonic_ns()}.msgpack"
    path.write_bytes(msgspec.msgpack.encode(bodies))
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url + "/api/v1/ingest",
        "--bodies-file",
        str(path),
        "--mode",
        "open",
        "--rate",
        str(rate),
        "--duration",
        str(len(bodies) / rate),
        "--concurrency",
        "32",
    ]
    if token:
        cmd += ["--token", token]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(gen: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = gen.communicate(timeout=900)
    if gen.returncode != 0:
        raise SystemExit(f"loadgen failed: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def _status(url: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(
        url + "/api/v1/status", headers={"Authorization": f"Bearer {OPERATOR}"}
    ).json()
    return status


class Prober(threading.Thread):
    """/healthz every 50 ms; and, when asked, the moment a run for the faulty host is listed."""

    def __init__(self, url: str, faulty: str) -> None:
        super().__init__(daemon=True)
        self.url, self.faulty = url, faulty
        self.lat: list[float] = []
        self.detected_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            n = 0
            while not self.stop.is_set():
                t = time.perf_counter()
                c.get("/healthz")
                self.lat.append(time.perf_counter() - t)
                n += 1
                if self.detected_at is None and n % 10 == 0:
                    runs = c.get(
                        "/api/v1/agent/workflow/runs",
                        params={"host": self.faulty},
                        headers={"Authorization": f"Bearer {OPERATOR}"},
                    ).json()["runs"]
                    if any(r["family"] == "cpu_saturation" for r in runs):
                        self.detected_at = time.time()
                time.sleep(0.05)


def run_controller(tmp: Path, hosts: int, seconds: float, workers: int) -> dict[str, Any]:
    extra = {
        "auth": {
            "tokens": [
                {"name": "bench", "role": "collector", "token": TOKEN},
                {"name": "ops", "role": "operator", "token": OPERATOR},
            ]
        },
        "hot_state": {"max_hosts": max(hosts, 1000)},
        "workflow": {"enabled": True, "analysis": {"workers": workers}},
    }
    start = time.time() + 90  # bodies are made, the warm-up taken and the idle measured before then
    warm, paced, faulty = make_bodies(hosts, seconds, start)
    ctl, url = start_controller(tmp, hosts, workflow=True, extra=extra)
    # The peer takes the same batches at the same time, from a load generator of its own:
    # this machine's speed drifts over minutes by as much as the difference being measured.
    bare, bare_url = start_bare()
    try:
        # Paced like hosts coming online, not as fast as answers come: a closed loop outruns the
        # analysis queue, and its overflow (counted, dropped) would leave windows unevaluated.
        w = finish(send(url, warm, tmp, rate=WARMUP_RATE, token=TOKEN))
        if time.time() > start - 5:
            raise SystemExit("the warm-up took too long: raise the start margin")
        warm_status = _status(url)
        # The workers take the warm-up in their own time: wait for them to finish with it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and time.time() < start - 15:
            c0 = tree_cpu_s(ctl.pid)
            time.sleep(1.0)
            if tree_cpu_s(ctl.pid) - c0 < 0.05:
                break
        prober = Prober(url, faulty)
        prober.start()
        # What the controller spends with no batch arriving (its threads, the probes): taken
        # off the phase's CPU, so what is left is what the batches cost.
        idle_s = min(10.0, max(1.0, start - time.time() - 8.0))
        idle0, t0 = tree_cpu_s(ctl.pid), time.monotonic()
        time.sleep(idle_s)
        idle_rate = (tree_cpu_s(ctl.pid) - idle0) / (time.monotonic() - t0)
        time.sleep(max(0.0, start - time.time() - 1.0))
        gen = send(url, paced, tmp, rate=hosts / INTERVAL_S, token=TOKEN)
        bgen = send(bare_url, paced, tmp, rate=hosts / INTERVAL_S, token=None)
        for g in (gen, bgen):
            assert g.stderr is not None
            g.stderr.readline()  # ready
        (main0, kids0), b0, p0 = split_cpu_s(ctl.pid), proc_cpu_s(bare.pid), time.monotonic()
        result, bresult = finish(gen), finish(bgen)
        (main1, kids1), b1, p1 = split_cpu_s(ctl.pid), proc_cpu_s(bare.pid), time.monotonic()
        cpu0, cpu1 = main0 + kids0, main1 + kids1
        prober.stop.set()
        prober.join(timeout=15)
        status = _status(url)
    finally:
        stop(ctl)
        stop(bare)
    lat = sorted(prober.lat)
    fault_sent = start + FAULT_AT_S
    delay = None if prober.detected_at is None else prober.detected_at - fault_sent
    return {
        "warmup_codes": w["codes"],
        "warmup_queue_overflow": (warm_status["workflow"].get("analysis") or {}).get("queue_overflow"),
        "codes": result["codes"],
        "batches": result["requests"],
        "rate": round(result["rate"], 1),
        "cpu_ms_per_batch": round((cpu1 - cpu0 - idle_rate * (p1 - p0)) / result["requests"] * 1000, 3),
        "cpu_ms_per_batch_with_idle": round((cpu1 - cpu0) / result["requests"] * 1000, 3),
        # Where it went, idle included: the ingest process, and the analysis workers.
        "ingest_process_ms_per_batch": round((main1 - main0) / result["requests"] * 1000, 3),
        "analysis_workers_ms_per_batch": round((kids1 - kids0) / result["requests"] * 1000, 3),
        "idle_cpu_pct": round(idle_rate * 100, 2),
        "healthz_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2) if lat else None,
        "healthz_probes": len(lat),
        "detection_delay_s": None if delay is None else round(delay, 1),
        "detection_delay_intervals": None if delay is None else round(delay / INTERVAL_S, 2),
        "analysis": status["workflow"].get("analysis"),
        "hot_state_bytes": status["hot_state"]["bytes"],
        "bare_asyncio": {
            "codes": bresult["codes"],
            "batches": bresult["requests"],
            "cpu_ms_per_batch": round((b1 - b0) / bresult["requests"] * 1000, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=90.0, help="the paced phase")
    parser.add_argument(
        "--correlator-only",
        action="store_true",
        help="only the correlator's part (printed, not written: fleet.json holds the whole run)",
    )
    args = parser.parse_args(argv)
    if args.correlator_only:
        print(json.dumps(correlator_bench.run(), indent=2))
        return 0

    def step(msg: str) -> None:
        print(f"[fleet bench] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="incidentlab-fleet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        step(
            f"controller, default settings: {args.hosts} hosts for {args.seconds:.0f} s (and the bare server)"
        )
        pooled = run_controller(tmp / "pooled", args.hosts, args.seconds, workers=1)
        step(f"controller, evaluation in process, and the bare server: {args.seconds:.0f} s")
        inproc = run_controller(tmp / "inproc", args.hosts, args.seconds, workers=0)
    # Each controller's ratio is to the bare server measured beside it; the table's bare
    # figure is the mean of the two.
    pooled_bare, inproc_bare = pooled.pop("bare_asyncio"), inproc.pop("bare_asyncio")
    bare = {
        "batches": pooled_bare["batches"] + inproc_bare["batches"],
        "cpu_ms_per_batch": round((pooled_bare["cpu_ms_per_batch"] + inproc_bare["cpu_ms_per_batch"]) / 2, 3),
        "cpu_ms_per_batch_runs": [pooled_bare["cpu_ms_per_batch"], inproc_bare["cpu_ms_per_batch"]],
        "codes": [pooled_bare["codes"], inproc_bare["codes"]],
    }
    ratio = pooled["cpu_ms_per_batch"] / pooled_bare["cpu_ms_per_batch"]
    inproc["cpu_ratio_to_bare"] = round(inproc["cpu_ms_per_batch"] / inproc_bare["cpu_ms_per_batch"], 2)
    d_pool, d_in = pooled["detection_delay_s"], inproc["detection_delay_s"]
    result = {
        "hosts": args.hosts,
        "interval_s": INTERVAL_S,
        "paced_seconds": args.seconds,
        "bare_asyncio": bare,
        "controller": pooled,
        "controller_in_process_analysis": inproc,
        "cpu_ratio_to_bare": round(ratio, 2),
        "targets": {
            "cpu_ms_per_batch_max": 0.5,
            "healthz_p99_ms_max": 50.0,
            "detection_extra_intervals_max": 2,
        },
    }
    met = {
        "cpu": pooled["cpu_ms_per_batch"] <= 0.5,
        "healthz": pooled["healthz_p99_ms"] is not None and pooled["healthz_p99_ms"] < 50.0,
        "detection": d_pool is not None and d_in is not None and d_pool - d_in <= 2 * INTERVAL_S,
        # Every accepted batch's host evaluated: none dropped from a full analysis queue.
        "no_overflow": (pooled["analysis"] or {}).get("queue_overflow") == 0,
    }
    step("the fleet correlator: CPU per evaluation at 100, 1,000 and 5,000 hosts; delay to the incident")
    corr = correlator_bench.run()
    result["correlator"] = corr
    met["correlator_linear"] = corr["met"]["linear"]
    result["met"] = met
    path = write_result("fleet", result)
    step(
        f"controller {pooled['cpu_ms_per_batch']} ms/batch, bare {bare['cpu_ms_per_batch']} ms "
        f"({ratio:.2f}x); "
        f"healthz p99 {pooled['healthz_p99_ms']} ms; detection {d_pool} s (in process {d_in} s); "
        f"met {met}; wrote {path}"
    )
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
