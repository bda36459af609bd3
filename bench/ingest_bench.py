"""Controller ingest against a bare asyncio server, in one run; writes bench/results/ingest.json.

(a) the controller's ingest path (`incidentlab-controller serve`, one uvicorn worker,
    SQLite ledger, bearer token checked before the body, the body read under the
    front door's timeouts, decompression, probe_core.json_check, validation, dedupe
    and hot state on the decode pool; the workflow off) and (b) bench/bare_server.py
    (gunzip, parse, answer) each take the same 64 KiB JSON batch (197 snapshots, gzip,
    a new seq per request) from bench/loadgen.py in its own process, on loopback:
  1. peak: closed loop, 16 connections, batches per second; and the peak of (c), the
     controller with default settings (the workflow on: each accepted batch also goes
     to an analysis worker process, which drops what it cannot keep up with, counted);
  2. latency: open loop at half of (a)'s peak, p50 and p99 from when each request was due;
  3. memory: 1,000 simulated hosts send for 60 s (at half of (a)'s peak, capped at one
     batch per host per second); the controller's RSS sampled each second.
Targets (issues 5, 12 and 14): (a) and (c) each >= 75% of (b)'s peak, every hardening check on;
p99 < 10 ms at half of (a)'s peak; RSS flat within 10% over the last 45 s of the memory
run (hot state fills in its first seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import write_result
from bench.peers import free_port

TOKEN = "bench-collector-token-000000"
ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start_controller(
    tmp: Path, hosts: int, workflow: bool = False, extra: dict[str, Any] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A controller process on loopback with the bench token; ``extra`` overrides settings."""
    port = free_port()
    cfg: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(tmp / "data"),
        "server": {"allow_http": True},
        "auth": {"tokens": [{"name": "bench", "role": "collector", "token": TOKEN}]},
        "hot_state": {"max_hosts": max(hosts, 1000)},
        "workflow": {"enabled": workflow},
    } | (extra or {})
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "controller.yaml"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return proc, url


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_server.py"), str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, f"http://127.0.0.1:{port}"


def loadgen(url: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--url", url + "/api/v1/ingest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per peak or latency run")
    parser.add_argument("--memory-seconds", type=float, default=60.0)
    parser.add_argument("--hosts", type=int, default=1000)
    args = parser.parse_args(argv)

    def step(msg: str) -> None:
        print(f"[ingest bench] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="incidentlab-ingest-bench-") as tmpdir:
        tmp = Path(tmpdir)
        peak_bodies = str(int(args.duration * 4000))

        def peak(url: str) -> dict[str, Any]:
            closed = ["--mode", "closed", "--duration", str(args.duration), "--bodies", peak_bodies]
            return loadgen(url, *closed, "--token", TOKEN)

        bare, bare_url = start_bare()
        try:
            step("peak of the bare asyncio server")
            peak_b = loadgen(
                bare_url, "--mode", "closed", "--duration", str(args.duration), "--bodies", peak_bodies
            )
        finally:
            stop(bare)
        ops = "bench-operator-token-0000000"
        tokens = [
            {"name": "bench", "role": "collector", "token": TOKEN},
            {"name": "ops", "role": "operator", "token": ops},
        ]
        ctl, ctl_url = start_controller(
            tmp / "defaults", args.hosts, workflow=True, extra={"auth": {"tokens": tokens}}
        )
        try:
            step("peak of the controller with default settings (workflow on)")
            peak_c = peak(ctl_url)
            # How much of that its analysis worker took, and how much it let go (counted).
            analysis = httpx.get(
                ctl_url + "/api/v1/status", headers={"Authorization": f"Bearer {ops}"}
            ).json()["workflow"]["analysis"]
        finally:
            stop(ctl)
        ctl, ctl_url = start_controller(tmp / "peak", args.hosts)
        try:
            step("peak of the controller's ingest path")
            peak_a = peak(ctl_url)
            half = peak_a["rate"] / 2
            step(f"latency at half the controller's peak ({half:.0f}/s)")
            lat = loadgen(
                ctl_url,
                "--mode",
                "open",
                "--rate",
                str(half),
                "--duration",
                str(args.duration),
                "--bodies",
                str(int(half * args.duration) + 10),
                "--token",
                TOKEN,
                "--hosts",
                "50",
            )
        finally:
            stop(ctl)
        ctl, ctl_url = start_controller(tmp / "memory", args.hosts)
        try:
            rate = min(half, float(args.hosts))
            step(f"memory: {args.hosts} hosts for {args.memory_seconds:.0f} s at {rate:.0f} batches/s")
            gen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "--url",
                    ctl_url + "/api/v1/ingest",
                    "--mode",
                    "open",
                    "--rate",
                    str(rate),
                    "--duration",
                    str(args.memory_seconds),
                    "--hosts",
                    str(args.hosts),
                    "--bodies",
                    str(int(rate * args.memory_seconds) + 10),
                    "--token",
                    TOKEN,
                    "--concurrency",
                    "32",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert gen.stderr is not None
            gen.stderr.readline()  # "ready": bodies made, the clock starts
            samples = []
            t0 = time.monotonic()
            while gen.poll() is None:
                samples.append((round(time.monotonic() - t0, 1), rss_mb(ctl.pid)))
                time.sleep(1.0)
            out, _ = gen.communicate()
            mem_run = json.loads(out)
            status = httpx.get(ctl_url + "/healthz").status_code
        finally:
            stop(ctl)

    settled = [mb for t, mb in samples if t >= 15]
    drift = (max(settled) - min(settled)) / min(settled) if settled else None
    ratio = peak_a["rate"] / peak_b["rate"]
    result = {
        "batch": {
            "json_bytes": peak_a["json_bytes"],
            "compressed_bytes": peak_a["compressed_bytes"],
            "snapshots": 197,
        },
        "bare_asyncio": {"peak_batches_per_s": round(peak_b["rate"], 1), "codes": peak_b["codes"]},
        "controller_defaults": {
            "peak_batches_per_s": round(peak_c["rate"], 1),
            "codes": peak_c["codes"],
            "ratio": round(peak_c["rate"] / peak_b["rate"], 3),
            "analysis": {
                k: analysis.get(k) for k in ("submitted", "queue_overflow", "evaluations", "lag_max_s")
            },
        },
        "controller": {
            "peak_batches_per_s": round(peak_a["rate"], 1),
            "codes": peak_a["codes"],
            "latency_at_half_peak": {
                k: round(lat[k], 3) for k in ("target_rate", "rate", "p50_ms", "p99_ms", "max_ms")
            },
            "memory_run": {
                "hosts": args.hosts,
                "rate": round(mem_run["rate"], 1),
                "codes": mem_run["codes"],
                "rss_mb": samples,
                "rss_drift_after_15s": None if drift is None else round(drift, 4),
                "healthy_after": status == 200,
            },
        },
        "ratio": round(ratio, 3),
        "targets": {"ratio_min": 0.75, "p99_ms_max": 10.0, "rss_drift_max": 0.10},
    }
    met = {
        "ratio": ratio >= 0.75,
        "defaults_ratio": peak_c["rate"] / peak_b["rate"] >= 0.75,
        "p99": lat["p99_ms"] < 10.0,
        "rss_flat": drift is not None and drift <= 0.10,
    }
    result["met"] = met
    path = write_result("ingest", result)
    step(
        f"controller {peak_a['rate']:.0f}/s vs bare {peak_b['rate']:.0f}/s = {ratio:.2f}; "
        f"p99 {lat['p99_ms']:.2f} ms at {half:.0f}/s; RSS drift {drift}; met {met}; wrote {path}"
    )
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
