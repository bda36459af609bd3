"""Spool append throughput against the floor: a plain loop writing and fdatasyncing the same bytes.

Both run in one process, one after the other, on the same filesystem, per record
size (4 KiB and 64 KiB) and fsync policy:
  always    - the floor fdatasyncs after every write; the spool appends with fsync=always;
  interval  - the floor fdatasyncs once 200 ms or 1 MiB are unsynced; the spool appends
              with fsync=interval and the same thresholds.
Throughput is wall-clock (fsync-bound work is what it measures); medians of 3 trials.
Writes bench/results/spool.json. Target (issue 4): the spool at >= 70% of the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import write_result
from collector.spool import Spool, SpoolOptions

TARGET = 0.70
INTERVAL_MS = 200
INTERVAL_BYTES = 1 << 20


def floor_run(path: Path, payload: bytes, count: int, policy: str) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    unsynced = 0
    last = time.monotonic()
    start = time.perf_counter()
    try:
        for _ in range(count):
            os.write(fd, payload)
            unsynced += len(payload)
            now = time.monotonic()
            if policy == "always" or unsynced >= INTERVAL_BYTES or (now - last) * 1000 >= INTERVAL_MS:
                os.fdatasync(fd)
                unsynced, last = 0, now
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def spool_run(directory: Path, payload: bytes, count: int, policy: str) -> float:
    opts = SpoolOptions(
        max_bytes=8 << 30,
        segment_bytes=64 << 20,
        max_record_bytes=1 << 20,
        fsync=policy,  # type: ignore[arg-type]
        fsync_interval_ms=INTERVAL_MS,
        fsync_bytes=INTERVAL_BYTES,
    )
    start = time.perf_counter()
    with Spool(directory, opts) as sp:
        for _ in range(count):
            sp.append(payload)
        sp.flush()
    return time.perf_counter() - start


def measure(workdir: Path, size: int, policy: str, count: int, trials: int) -> dict[str, Any]:
    payload = os.urandom(size)
    floors, spools = [], []
    for t in range(trials):
        f = workdir / f"floor-{t}"
        floors.append(floor_run(f, payload, count, policy))
        f.unlink()
        d = workdir / f"spool-{t}"
        spools.append(spool_run(d, payload, count, policy))
        shutil.rmtree(d)
    mb = size * count / 1e6
    floor_s, spool_s = statistics.median(floors), statistics.median(spools)
    return {
        "record_bytes": size,
        "policy": policy,
        "records": count,
        "floor_mb_per_s": round(mb / floor_s, 2),
        "spool_mb_per_s": round(mb / spool_s, 2),
        "floor_records_per_s": round(count / floor_s, 1),
        "spool_records_per_s": round(count / spool_s, 1),
        "ratio": round(floor_s / spool_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir in /var/tmp)"
    )
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="incidentlab-spool-bench-", dir=args.dir or "/var/tmp"))
    # Counts sized for a few seconds a run on a virtio disk: fsync-per-record runs are the slow ones.
    plan = [
        (4096, "always", 1500),
        (65536, "always", 600),
        (4096, "interval", 60000),
        (65536, "interval", 8000),
    ]
    try:
        rows = []
        for size, policy, count in plan:
            row = measure(workdir, size, policy, count, args.trials)
            rows.append(row)
            print(
                f"[spool bench] {size // 1024} KiB, fsync={policy}: spool {row['spool_mb_per_s']} MB/s, "
                f"floor {row['floor_mb_per_s']} MB/s, ratio {row['ratio']}",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    met = all(r["ratio"] >= TARGET for r in rows)
    path = write_result(
        "spool", {"runs": rows, "target_ratio_min": TARGET, "met": met, "trials": args.trials}
    )
    print(f"[spool bench] target met: {met}; wrote {path}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
