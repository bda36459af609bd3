"""Windows recorded with the real collector on this machine while a fault ran
(testkit/windows/record.py): the analysis must rank the fault first and name
the process that caused it. Families whose fault cannot be made here stay synthetic."""

from __future__ import annotations

import gzip
import json

import pytest

from collector.wire import validate_batch
from controller.config import HotStateSettings
from controller.hotstate import HotState
from controller.workflow.analysis import detect, rank
from testkit.store import WINDOWS, batches


@pytest.mark.parametrize(
    ("family", "culprit"),
    [
        ("cpu_saturation", "sha256sum"),
        ("runaway_forks", "bash"),
        ("cgroup_cpu_throttling", "/ilab-throttled"),
        # Idle, so never among the CPU-ranked rows: found by the fd_holders walk.
        ("fd_exhaustion", "conn-leaker"),
        # A listener with a backlog of 16 that never accepts.
        ("listen_queue_overflow", "127.0.0.1:18080"),
        # Bulk TCP into a namespace behind a veth that drops 8% of TCP packets.
        ("tcp_retransmit_surge", "10.123.0.2:5201"),
        # A program allocating past its cgroup's 128 MiB limit, OOM-killed and restarted.
        ("memory_pressure", "mem-hog"),
        # Direct 1 MiB writes: the writer waits on the disk, not the CPU, so io_top names it.
        ("io_pressure", "io-writer"),
    ],
)
def test_a_recorded_fault_ranks_first_with_its_culprit(family: str, culprit: str) -> None:
    lines = gzip.decompress((WINDOWS / f"{family}.jsonl.gz").read_bytes()).splitlines()
    snapshots = [json.loads(line) for line in lines]
    last = snapshots[-1]["ts"]
    hot = HotState(HotStateSettings(samples_per_host=1000, bytes_per_host=256 << 20), clock=lambda: last + 1)
    for raw in batches(snapshots, "recorded"):
        hot.ingest(validate_batch(raw), raw)
    ev = hot.evidence("recorded", 300)
    assert ev is not None
    hyps = rank(ev, detect(ev))
    assert hyps, "no detector fired"
    top = hyps[0]
    assert top.family == family, [(h.family, h.confidence) for h in hyps]
    # The owner's name, or (a process tree, a cgroup) the program among its members.
    assert culprit in top.culprit["id"] or culprit in top.culprit.get("comms", {}), top.culprit
