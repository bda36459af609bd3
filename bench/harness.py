"""Shared benchmark plumbing: CPU timing over trials, host facts, and the JSON result file.

CPU time (user + system of this process) is the measure, not wall time: the
machines are shared and noisy, and what a node agent costs its host is CPU.
Results quote medians over trials and the ratio against the peer of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_seconds_per_call(fn: Callable[[], object], calls: int, trials: int) -> dict[str, float]:
    """Median and spread of this process's CPU seconds per call of fn."""
    fn()  # warm caches and lazy imports outside the timed region
    samples = []
    for _ in range(trials):
        start = time.process_time()
        for _ in range(calls):
            fn()
        samples.append((time.process_time() - start) / calls)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "trials": trials,
        "calls_per_trial": calls,
    }


def host_facts() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "clock_ticks": os.sysconf("SC_CLK_TCK"),
    }


def write_result(name: str, body: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host_facts(),
    }
    doc |= body
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


@contextmanager
def sleeping_processes(n: int) -> Iterator[None]:
    """n extra sleeping processes for the duration of the block, killed and reaped after."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
