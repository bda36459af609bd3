"""kill -9 the agent at random points, 50 times: the spool always reopens, nothing corrupt
is shipped, and no record whose ack was persisted before a kill is ever shipped again."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .ingest_server import IngestServer

KILLS = 50


def write_config(tmp_path: Path, url: str, fsync: str) -> Path:
    cfg = tmp_path / f"agent-{fsync}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "interval_s": 0.1,
                "enabled_sources": ["psi", "host"],
                "spool": {"dir": str(tmp_path / "spool"), "fsync": fsync, "fsync_interval_ms": 20},
                "transport": {
                    "url": url,
                    "allow_http": True,
                    "max_attempts": 2,
                    "backoff_base_s": 0.01,
                    "backoff_max_s": 0.05,
                },
            }
        )
    )
    return cfg


def persisted_ack(spool: Path) -> int:
    try:
        return int(json.loads((spool / "acked").read_text())["seq"])
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_9_loop(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    spool = tmp_path / "spool"
    cmd = [sys.executable, "-m", "collector.cli", "run", "--config"]
    with IngestServer() as srv:
        violations: list[str] = []
        acked_floor = 0
        checked = 0
        for i in range(KILLS):
            cfg = write_config(tmp_path, srv.url, "always" if i % 2 == 0 else "interval")
            if i % 7 == 3:
                srv.faults.extend([("status", 500)] * 3)  # some kills land mid-retry
            proc = subprocess.Popen([*cmd, str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.25, 0.9))
            assert proc.poll() is None, (
                f"agent {i} exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
            # Posts since the last kill must not repeat anything acknowledged on disk before it.
            posted = srv.received.posted_seqs[checked:]
            violations += [
                f"kill {i}: seq {s} re-sent after ack {acked_floor}" for s in posted if s <= acked_floor
            ]
            checked += len(posted)
            acked_floor = max(acked_floor, persisted_ack(spool))
        # A last, clean run drains everything that is left.
        began = time.time()
        final = subprocess.Popen(
            [*cmd, str(write_config(tmp_path, srv.url, "always"))], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        state = json.loads((spool / "status.json").read_text())
        while time.monotonic() < deadline:
            state = json.loads((spool / "status.json").read_text())
            # Its own status (the killed agents' file is there too): only then is its SIGTERM
            # handler installed, and only its count says what is left.
            if state["written_at"] >= began and state["unacked_records"] <= 1:
                break
            time.sleep(0.1)
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=30) == 0
        assert final.stderr is not None
        final.stderr.close()
        posted = srv.received.posted_seqs[checked:]
        violations += [f"final: seq {s} re-sent after ack {acked_floor}" for s in posted if s <= acked_floor]
        assert violations == []
        # Nothing corrupt was ever shipped; a body cut short by a kill is a broken transfer (the
        # record stays unacknowledged and goes again), counted apart.
        assert srv.received.invalid == []
        delivered = srv.seqs()
        last = json.loads((spool / "status.json").read_text())
        # Every record the spool holds was delivered, in order, once in effect.
        assert delivered == sorted(delivered)
        assert len(delivered) == len(set(delivered))
        assert delivered[-1] == last["acked"]
        # kill -9 is not a power cut: the page cache keeps every completed write. A write the
        # kill tore is truncated on open; the seq its header still shows is never reused (after a
        # power cut it may have reached the controller) and is counted lost instead. So the only
        # gaps are those torn writes, each counted once: the controller is told of every one.
        gaps = set(range(1, last["acked"] + 1)) - set(delivered)
        assert len(gaps) == last["corrupt_records"], sorted(gaps)[:10]
        assert len(gaps) <= sum(last["recovered"].values())  # each a torn tail found at an open
        assert last["evicted_records"] == 0
        assert acked_floor >= KILLS  # the loop made real progress
