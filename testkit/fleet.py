"""A fleet in process: many hosts fed one sample a second through the real hot state and
engine, labelled through their CollectorInfo as a collector sends it, the fleet
correlator passing as the engine's loop would (tests and bench/correlator_bench.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgspec

from collector.wire import validate_batch
from controller.config import FleetSettings, HotStateSettings
from controller.hotstate import HotState
from controller.store.db import make_engine, migrate
from controller.store.payloads import PayloadStore
from controller.workflow.engine import WorkflowEngine
from controller.workflow.options import WorkflowOptions
from controller.workflow.roles import Posture
from testkit.scenarios import T0, calm
from testkit.store import snapshots


class Fleet:
    """Hosts fed one sample a second through hot state and evaluated, as collectors drive them."""

    def __init__(
        self, tmp: Path, db_url: str | None = None, posture: Posture | None = None, **fleet: Any
    ) -> None:
        self.t = 0.0
        # The controller's own layout (data/agent/...), so a workbench can read what it made.
        (tmp / "agent").mkdir(parents=True, exist_ok=True)
        self.db = make_engine(db_url or f"sqlite:///{tmp / 'agent' / 'workflow_runs.db'}")
        migrate(self.db)
        hot = HotState(
            HotStateSettings(samples_per_host=400, bytes_per_host=64 << 20), clock=lambda: self.t + 0.5
        )
        opts = WorkflowOptions(
            fleet=FleetSettings(**({"evaluate_every_s": 1.0} | fleet)), posture=posture or Posture()
        )
        self.eng = WorkflowEngine(
            self.db, PayloadStore(str(tmp / "agent")), hot, opts, clock=lambda: self.t + 0.5
        )
        self.seq: dict[str, int] = {}
        self.opened: dict[str, str] = {}  # run -> host

    def feed(self, host: str, snap: dict[str, Any], labels: dict[str, str], evaluate: bool = True) -> None:
        n = self.seq[host] = self.seq.get(host, 0) + 1
        doc: dict[str, Any] = {
            "schema": "incidentlab.batch/v1",
            "host_id": host,
            "boot_id": "b",
            "stream_id": f"s-{host}",
            "seq": n,
            "sent_at": snap["ts"],
            "snapshots": [snap],
        }
        if n == 1:
            doc["collector"] = {"host_id": host, "labels": labels}
        raw = msgspec.json.encode(doc)
        self.eng.hot.ingest(validate_batch(raw), raw)
        if evaluate:
            run_id = self.eng.evaluate(host)
            if run_id is not None:
                self.opened.setdefault(run_id, host)

    def runs(self, **kw: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self.eng.list_runs(limit=500, **kw)]


class Playback:
    """Hosts' recorded windows fed to a fleet as its clock reaches each sample."""

    def __init__(self, plays: dict[str, list[dict[str, Any]]], labels: dict[str, dict[str, str]]) -> None:
        self.plays = plays
        self.labels = labels
        self.cursor = dict.fromkeys(plays, 0)

    def feed(self, fleet: Fleet) -> None:
        """Every sample before the fleet's next second, each host's in order."""
        for h, snaps in self.plays.items():
            while self.cursor[h] < len(snaps) and snaps[self.cursor[h]]["ts"] < fleet.t + 1:
                fleet.feed(h, snaps[self.cursor[h]], self.labels[h])
                self.cursor[h] += 1


def play_together(
    fleet: Fleet, plays: dict[str, list[dict[str, Any]]], labels: dict[str, dict[str, str]], steps: int
) -> None:
    """Each host's recorded window, one second at a time, the correlator passing after each."""
    playback = Playback(plays, labels)
    for step in range(steps):
        fleet.t = T0 + step
        playback.feed(fleet)
        fleet.eng.triggers.fleet_pass()


def calm_snap(i: int, ts: float) -> dict[str, Any]:
    sources = {
        n: {"status": "ok", "path": "file", "reason": None, "data": copy.deepcopy(v)}
        for n, v in calm(i).items()
    }
    return {"ts": ts, "interval_s": 1.0, "sources": sources}


def recorded(name: str, t0: float) -> list[dict[str, Any]]:
    """A recorded window moved to start at ``t0`` (its fault then runs from t0 + 60 to t0 + 90)."""
    snaps = snapshots(name)
    base = snaps[0]["ts"]
    for s in snaps:
        s["ts"] = t0 + (s["ts"] - base)
        ebpf = s["sources"].get("ebpf")
        if ebpf and ebpf["status"] == "ok":
            ebpf["data"].pop("events", None)
    return snaps
