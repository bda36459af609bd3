"""The trigger side: which hosts to evaluate, the worker that does it, and opening or
attaching runs.

After an accepted batch, ingest only notes the host in a bounded queue (overflow
counted): evaluation runs on this worker, never on the request path. The worker
builds evidence from the host's hot-state window and runs the detectors; when the top
hypothesis clears ``open_threshold`` it opens a run, unless a run of the same
fingerprint (host, family, culprit owner) was touched within ``attach_window_s``
(finished or not): then the sighting is attached to it and recorded. A new run of that
shape opens only once it has gone unseen for the window, and consults the incident
memory the earlier one left. The same worker continues runs that are due (approved, or a
verification to retry), through the stage runner.

Each run also has a lifecycle, apart from its stages: ``firing`` while an evaluation
finds its fault active, ``recovering`` from the first evaluation that does not, and
``resolved`` after ``resolve_after_clean`` such evaluations in a row. A resolved fault
that comes back within the attach window re-opens its run and counts a flap. Live runs
whose fault is a symptom of a newly found cause become ``explained`` (parent_run_id):
they stop paging and travel with the cause's run. A live run not seen active for the
attach window (its host went quiet) is resolved as of when it was last seen.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from controller.actuators import ACTUATORS
from controller.detectors import FAMILIES, Evidence
from controller.hotstate import HotState
from controller.store.payloads import PayloadStore
from controller.store.runs import IntentRow, RunStore
from controller.workflow.analysis import Hypothesis, detect, firing, onset, rank, top_firing
from controller.workflow.analysis_pool import AnalysisPool
from controller.workflow.fleet import (
    FLEET_HOST,
    Correlator,
    FleetGroup,
    SharedSightings,
    blast_radius,
    fleet_culprit,
    fleet_evidence,
)
from controller.workflow.options import WorkflowOptions
from controller.workflow.reads import evidence_key
from controller.workflow.runner import StageRunner
from controller.workflow.silences import Silences

log = logging.getLogger(__name__)
HEALTH_HOSTS = 10_000  # hosts whose evaluation record is kept (least recently failed go first)
LIVE_HOSTS = 10_000  # hosts whose live runs are cached (a host dropped is read again when touched)
CLEANS_MAX = 100_000  # clean evaluations waiting to be counted (past it: dropped, counted)
SEEN_PERSIST_S = 60.0  # a live run's last sighting is written at most this often
SWEEP_EVERY_S = 30.0  # how often live runs not seen for the attach window are resolved
SWEEP_BATCH = 500
EXPECTED_EFFECT_S = 3600.0  # how long a change of ours explains the effect it is made to have
UNDONE_GRACE_S = 60.0  # a change rolled back this recently still explains what it did
EXPECTED_SEEN_MAX = 10_000  # (run, fingerprint) pairs already attached as an expected effect
EXPECTED_FAMILIES = frozenset(f for a in ACTUATORS.values() for f in a.expected_effects)


@dataclass
class _Live:
    run_id: str
    fingerprint: str
    family: str
    state: str
    seen: float | None  # last found active (as written; ``seen_now`` is newer)
    seen_now: float | None = None
    clean: int = 0


class Triggers:
    def __init__(
        self,
        runs: RunStore,
        payloads: PayloadStore,
        hot: HotState,
        options: WorkflowOptions,
        *,
        clock: Callable[[], float],
        code_version: str,
    ) -> None:
        self.runs = runs
        self.payloads = payloads
        self.hot = hot
        self.opts = options
        self.clock = clock
        # The clock as it is set later; a silence may name the rules' own alerts too.
        self.silences = Silences(
            runs, lambda: self.clock(), FAMILIES + tuple(options.rules.spec.alert_names())
        )
        self.code_version = code_version
        self.runner: StageRunner | None = None  # set by the engine that wires the two
        # Where windows live when analysis workers keep them (None: this process's hot state).
        self.pool: AnalysisPool | None = None
        # Hosts to evaluate (gen -1) and clean evaluations to count (the host's trigger
        # generation when the clean came), in arrival order: a clean never overtakes the
        # trigger before it, and one older than a later trigger is dropped when its turn comes.
        self._queue: deque[tuple[str, int]] = deque()
        self._gen: dict[str, int] = {}
        self._queued_cleans = 0
        # host -> the evidence a worker sent with its trigger, and its hypotheses of it
        self._given: dict[str, tuple[Evidence, list[Hypothesis] | None]] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Whether this controller may run stages now (the HA leader); a deposed leader stops.
        self.active: Callable[[], bool] = lambda: True
        # Whose runs are ours when replicas share the fleet (controller/partitions.py): a host's
        # are its partition owner's; fleet incidents are the coordinator's (the HA leader).
        self.owns: Callable[[str], bool] = lambda host_id: True
        self.coordinator: Callable[[], bool] = lambda: True
        # Replicas share the fleet: a due run is checked to be ours, and unfinished runs of ours
        # are looked for every sweep.
        self.sharded = False
        # Sightings shared through the store, for a correlator on another replica (None: in memory).
        self.shared: SharedSightings | None = None
        self._due: list[tuple[float, str]] = []  # (when, run_id): approved runs, verifier retries
        # host -> its evaluation record: failures, the last error and when, the last success.
        self._health: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # host -> its firing and recovering runs (read from the store on first touch).
        self._live: OrderedDict[str, list[_Live]] = OrderedDict()
        self._swept_at = 0.0
        self.overflow = 0
        self.evaluations = 0
        self.runs_opened = 0
        self.attached = 0
        self.failures = 0
        self.resolved = 0
        self.reopened = 0  # flaps: a resolved fault back within the attach window
        self.explained = 0
        self.expected_effects = 0
        self._expected_seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.cleans_dropped = 0
        # The fleet correlator: host sightings in, fleet incidents out (controller/workflow/fleet.py).
        self.fleet = Correlator(options.fleet)
        self._fleet_at = 0.0
        self._fleet_live: dict[str, str] = {}  # live fleet run -> its state as last written
        self.fleet_opened = 0
        self.fleet_joined = 0
        self.fleet_resolved = 0
        # Told of each run that resolves (its postmortem is made then: controller/workflow/postmortems.py).
        self.on_ended: Callable[[str, str], None] | None = None
        # Told what somebody should hear of (controller/workflow/notify.py): (kind, run_id).
        self.on_event: Callable[[str, str], None] | None = None
        # Hosts known, with labels: the blast radius's denominator (this process's hot state).
        self.known: Callable[[dict[str, str]], tuple[int, int]] = hot.label_counts

    def _runner(self) -> StageRunner:
        assert self.runner is not None, "the engine wires a stage runner before anything runs"
        return self.runner

    # --- the queue and the worker -----------------------------------------------------------------

    def notify(
        self, host_id: str, evidence: Evidence | None = None, hyps: list[Hypothesis] | None = None
    ) -> None:
        """Called after an accepted batch, or by an analysis worker whose evaluation fired
        (with the host's evidence and what it found in it): cheap, bounded, never blocks ingest."""
        with self._lock:
            self._gen[host_id] = self._gen.get(host_id, 0) + 1  # cleans queued before this are stale
            if evidence is not None:
                self._given[host_id] = (evidence, hyps)  # the newest replaces one still waiting
            if host_id in self._pending:
                return
            if len(self._queue) - self._queued_cleans >= self.opts.queue_max:
                self.overflow += 1
                self._given.pop(host_id, None)
                return
            self._queue.append((host_id, -1))
            self._pending.add(host_id)
        self._wake.set()

    def live_hosts(self) -> list[str]:
        """Hosts of ours with a live run (at most LIVE_HOSTS): what an analysis worker that starts watches."""
        with self.runs.begin() as tx:
            return [h for h in tx.live_hosts(LIVE_HOSTS) if self.owns(h)]

    def notify_clean(self, host_id: str) -> None:
        """An analysis worker's evaluation of a host that had fired found nothing live: counted
        toward resolving the host's runs, on the engine's thread, after what came before it."""
        with self._lock:
            if self._queued_cleans >= CLEANS_MAX:
                self.cleans_dropped += 1
                return
            if len(self._gen) > LIVE_HOSTS * 10:
                self._gen.clear()  # bounded: at worst a stale clean counts once
            self._queue.append((host_id, self._gen.get(host_id, 0)))
            self._queued_cleans += 1
        self._wake.set()

    def mine(self, host_id: str) -> bool:
        return self.coordinator() if host_id == FLEET_HOST else self.owns(host_id)

    def _run_is_mine(self, run_id: str) -> bool:
        with self.runs.read() as tx:
            row = tx.run(run_id)
        return row is not None and self.mine(row["host_id"])

    def take_over(self, hosts: Callable[[str], bool], delay_s: float = 0.0) -> int:
        """Hosts that became ours (a partition moved here, or leading did): their unfinished
        runs continue on the worker, ``delay_s`` from now. Returns how many were scheduled."""
        with self.runs.read() as tx:
            ids = tx.running_ids(hosts)
        for run_id in ids:
            self.schedule(run_id, self.clock() + delay_s)
        return len(ids)

    def let_go(self, hosts: Callable[[str], bool]) -> None:
        """Hosts no longer ours: what is cached or queued for them goes (their new owner reads
        the store)."""
        with self._lock:
            for host in [h for h in self._live if hosts(h)]:
                del self._live[host]
            for host in [h for h in self._given if hosts(h)]:
                del self._given[host]
            self._pending = {h for h in self._pending if not hosts(h)}
            self._queue = deque((h, g) for h, g in self._queue if g >= 0 or not hosts(h))
        for host in [s.host for s in self.fleet.current(self.clock()) if hosts(s.host)]:
            self.fleet.forget(host)

    def start(self) -> None:
        if self._thread is not None:
            return
        _, failed = self._runner().resume(self.mine)
        self.failures += failed
        self._thread = threading.Thread(target=self._loop, name="workflow-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def schedule(self, run_id: str, when: float | None = None) -> None:
        """Continue a run on the worker at ``when`` (now if None): after an approval, or to
        retry a verification. Bounded like the trigger queue; overflow is counted."""
        with self._lock:
            if any(r == run_id for _, r in self._due):
                return
            if len(self._due) >= self.opts.queue_max:
                self.overflow += 1
                return
            heapq.heappush(self._due, (when if when is not None else self.clock(), run_id))
        self._wake.set()

    def _next_due(self) -> str | None:
        with self._lock:
            if self._due and self._due[0][0] <= self.clock():
                return heapq.heappop(self._due)[1]
        return None

    def _loop(self) -> None:
        was_active = True
        while not self._stop.is_set():
            self._wake.wait(0.25 if self._due else 1.0)
            self._wake.clear()
            if not self.active():
                was_active = False
                continue
            if not was_active:
                self.forget_live()  # another leader moved runs meanwhile: read them again
                was_active = True
            while (run_id := self._next_due()) is not None and not self._stop.is_set():
                try:
                    if self.sharded and not self._run_is_mine(run_id):
                        continue  # its host moved to another replica: continued there
                    self._runner().execute(run_id)
                except Exception:
                    with self._lock:
                        self.failures += 1
                    log.exception("continuing run %s failed", run_id)
            if (
                self.opts.fleet.enabled
                and self.coordinator()
                and self.clock() - self._fleet_at >= self.opts.fleet.evaluate_every_s
            ):
                self._fleet_at = self.clock()
                try:
                    self.fleet_pass()
                except Exception:
                    with self._lock:
                        self.failures += 1
                    log.exception("the fleet correlator's pass failed")
            if self.clock() - self._swept_at >= SWEEP_EVERY_S:
                self._swept_at = self.clock()
                try:
                    self.sweep()
                    if self.sharded:
                        # Unfinished runs of ours nobody scheduled here: approved on another
                        # replica, or scheduled there just before their host moved here.
                        self.take_over(self.mine)
                except Exception:
                    with self._lock:
                        self.failures += 1
                    log.exception("resolving unseen runs failed")
            self.drain()

    def drain(self) -> None:
        """Evaluate the queued hosts and count the queued cleans, in arrival order."""
        while not self._stop.is_set():
            with self._lock:
                if not self._queue:
                    break
                host, gen = self._queue.popleft()
                given: tuple[Evidence, list[Hypothesis] | None] | None = None
                stale = False
                if gen >= 0:
                    self._queued_cleans -= 1
                    stale = gen < self._gen.get(host, 0)
                else:
                    self._pending.discard(host)
                    given = self._given.pop(host, None)
            if gen >= 0:
                if not stale and self.owns(host):
                    self._count_clean(host)
                continue
            if not self.owns(host):
                continue  # its partition moved away since it was queued
            try:
                self.evaluate(host, *(given or (None, None)))
            except Exception as exc:  # one host's failure must not stop the engine for the others
                self.record_failure(host, exc)
                log.exception("workflow evaluation of %s failed", host)
            else:
                self.record_success(host)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue) - self._queued_cleans
        return {
            "analysis": self.pool.stats() if self.pool is not None else {"workers": 0},
            "queued": queued,
            "queue_overflow": self.overflow,
            "evaluations": self.evaluations,
            "runs_opened": self.runs_opened,
            "attached": self.attached,
            "resolved": self.resolved,
            "reopened": self.reopened,
            "explained": self.explained,
            "expected_effects": self.expected_effects,
            "cleans_dropped": self.cleans_dropped,
            "fleet": {
                "sightings": len(self.fleet),
                "opened": self.fleet_opened,
                "joined": self.fleet_joined,
                "resolved": self.fleet_resolved,
                "live": len(self._fleet_live),
            },
            "failures": self.failures,
        }

    # --- per-host evaluation health -------------------------------------------------------------

    def record_failure(self, host_id: str, exc: BaseException) -> None:
        """A host whose window makes evaluation fail is recorded (and the others go on)."""
        self.record_failure_text(host_id, f"{type(exc).__name__}: {exc}")

    def record_failure_text(self, host_id: str, error: str) -> None:
        """The same, from an error already put in words (by hot state or an analysis worker)."""
        with self._lock:
            self.failures += 1
            h = self._health.pop(host_id, None) or {"failures": 0, "last_ok_at": None}
            h["failures"] += 1
            h["last_error"] = error[:500]
            h["last_failed_at"] = self.clock()
            self._health[host_id] = h
            while len(self._health) > HEALTH_HOSTS:
                self._health.popitem(last=False)

    def record_success(self, host_id: str) -> None:
        with self._lock:
            h = self._health.get(host_id)
            if h is not None:
                h["last_ok_at"] = self.clock()

    def failure_of(self, host_id: str) -> dict[str, Any] | None:
        with self._lock:
            h = self._health.get(host_id)
            return dict(h) if h is not None else None

    def failing_hosts(self, limit: int = 20) -> list[dict[str, Any]]:
        """Hosts whose latest evaluation failed, most recent first."""
        with self._lock:
            items = list(self._health.items())
        out = [
            {"host_id": k} | v
            for k, v in reversed(items)
            if v["last_ok_at"] is None or v["last_ok_at"] < v["last_failed_at"]
        ]
        return out[:limit]

    # --- evaluation and runs --------------------------------------------------------------------

    def evidence_for(self, host_id: str, since: float | None = None) -> Evidence | None:
        if self.pool is not None:
            return self.pool.evidence(host_id, self.opts.window_s, since)
        return self.hot.evidence(host_id, self.opts.window_s, since=since)

    def evaluate(
        self, host_id: str, ev: Evidence | None = None, hyps: list[Hypothesis] | None = None
    ) -> str | None:
        """Open or attach a run for this host if its detectors fire on its window (``ev``,
        when a worker sent it), and move its live runs along their lifecycle; returns the
        run id the top hypothesis went to."""
        self.evaluations += 1
        ev = ev or self.evidence_for(host_id)
        if ev is None:
            return None
        if hyps is None:  # a worker's are of this very evidence, under the same rules
            rules = self.opts.rules.for_host(host_id, ev.labels)
            hyps = rank(ev, detect(ev, rules), rules)
        self.lifecycle(host_id, firing(hyps, self.opts.open_threshold))
        hyps = self._unexpected(host_id, hyps)
        top = top_firing(hyps, self.opts.open_threshold)
        if top is None:
            return None
        now = self.clock()
        detail: dict[str, Any] = {"confidence": top.confidence, "summary": top.summary}
        if top.symptoms:
            detail["symptoms"] = [{"family": s["family"], "why": s["why"]} for s in top.symptoms]
        same_family = self._live_of_family(host_id, top.family)
        with self.runs.begin() as tx:
            open_id = tx.open_run_of(top.fingerprint, since=now - self.opts.attach_window_s)
            if open_id is None and same_family is not None:
                if tx.is_live(same_family):
                    open_id = same_family
                    detail["culprit"] = {"kind": top.culprit.get("kind"), "id": top.culprit.get("id")}
                else:
                    self._untrack(host_id, same_family)  # failed or moved on since it was cached
            reopened = False
            if open_id is not None:
                if tx.reopen(open_id, at=now):
                    self.reopened += 1
                    detail["reopened"] = True
                    reopened = True
                tx.attach(open_id, at=now, detail=detail)
                self.attached += 1
        if open_id is not None:
            if reopened:
                self._event("firing", open_id)  # a flap: it pages again
            self._track(host_id, open_id, top.fingerprint, top.family, now)
            self._absorb(host_id, open_id, top)
            self._sight(host_id, open_id, top, ev, now, onset(ev, top))
            return open_id
        started = onset(ev, top)
        run_id = self.open_run(ev, top.fingerprint, top.family, top.culprit, top.confidence, started)
        self._track(host_id, run_id, top.fingerprint, top.family, now)
        self._absorb(host_id, run_id, top)
        self._sight(host_id, run_id, top, ev, now, started)
        self._event("firing", run_id)
        self._runner().execute(run_id)
        return run_id

    def _unexpected(self, host_id: str, hyps: list[Hypothesis]) -> list[Hypothesis]:
        """The hypotheses less those that are one of this controller's own changes working:
        a cgroup it capped, throttled at exactly the cap it set. Such a sighting opens no run
        and takes no run over as its symptom; it is attached, once, to the run that made the
        change. Anything else (another target, another host, a quota it raised, a cap someone
        changed since, a change rolled back or older than the hour) is a fault as before."""
        threshold = self.opts.open_threshold
        candidates = [
            h
            for h in hyps
            if h.family in EXPECTED_FAMILIES and h.state == "active" and h.confidence >= threshold
        ]
        if not candidates:
            return hyps
        actions = [name for name, a in ACTUATORS.items() if a.expected_effects]
        now = self.clock()
        with self.runs.read() as tx:
            # A change undone a moment ago still shows in the window's newest samples.
            standing = tx.standing_changes(
                host_id, actions, since=now - EXPECTED_EFFECT_S, undone_since=now - UNDONE_GRACE_S
            )
        if not standing:
            return hyps
        dropped: list[tuple[Hypothesis, IntentRow]] = []
        for h in candidates:
            row = next((r for r in standing if expected_effect(h.family, h.culprit, r)), None)
            if row is not None:
                dropped.append((h, row))
        if not dropped:
            return hyps
        fresh = [(h, r) for h, r in dropped if self._note_expected(r["run_id"], h.fingerprint)]
        if fresh:
            with self.runs.begin() as tx:
                for h, r in fresh:
                    effect = {"family": h.family, "culprit": h.culprit.get("id"), "step": r["step"]}
                    tx.attach(
                        r["run_id"], at=now, detail={"expected_effect": effect | {"action": r["action"]}}
                    )
                    self.expected_effects += 1
        gone = {id(h) for h, _ in dropped}
        return [h for h in hyps if id(h) not in gone]

    def _note_expected(self, run_id: str, fingerprint: str) -> bool:
        """True the first time this run's change is seen having this effect (one attachment)."""
        key = (run_id, fingerprint)
        with self._lock:
            if key in self._expected_seen:
                return False
            self._expected_seen[key] = None
            while len(self._expected_seen) > EXPECTED_SEEN_MAX:
                self._expected_seen.popitem(last=False)
            return True

    def _sight(
        self, host_id: str, run_id: str, top: Hypothesis, ev: Evidence, now: float, started: float | None
    ) -> None:
        if not self.opts.fleet.enabled:
            return
        if not ev.labels:  # a worker that restarted may not have them yet; this process may
            ev.labels = self.hot.labels(host_id)
        sighting = self.fleet.observe(host_id, run_id, top, ev, now, started)
        if self.shared is not None:
            self.shared.put(sighting)

    # --- fleet incidents -------------------------------------------------------------------------

    def fleet_pass(self) -> int:
        """Group the current sightings; open, join and move fleet incidents. Returns how many
        groups there were."""
        if not self.opts.fleet.enabled:
            return 0
        now = self.clock()
        if self.shared is not None:  # every replica's sightings, not only this one's
            self.fleet.replace(self.shared.load(now - self.opts.fleet.window_s, self.opts.fleet.max_hosts))
        groups = self.fleet.groups(now)
        seen: set[str] = set()
        for g in groups:
            seen.add(self._fleet_incident(g, now))
        for fid in [f for f in self._fleet_live if f not in seen]:
            self._fleet_settle(fid, now)
        return len(groups)

    def _fleet_incident(self, g: FleetGroup, now: float) -> str:
        radius = blast_radius(g, self.known)
        fp = g.fingerprint
        with self.runs.begin() as tx:
            # Its members' live incident first: a fault whose sightings change shape as it goes
            # on (its culprit tails off to another program) is still the one incident.
            held = tx.live_fleets_of([m.run_id for m in g.members])
            fid = held[0] if held else tx.open_run_of(fp, since=now - self.opts.attach_window_s)
            if fid is not None:
                tx.reopen(fid, at=now)
                tx.set_state(fid, state="firing", at=now, seen=now, resolved=None)
        new = fid is None
        if fid is None:
            conf = sum(m.confidence for m in g.members) / len(g.members)
            starts = [m.started for m in g.members if m.started is not None]
            fid = self.open_run(
                fleet_evidence(g, radius, now),
                fp,
                g.family,
                fleet_culprit(g, radius),
                conf,
                min(starts) if starts else None,
                scope="fleet",
            )
            self.fleet_opened += 1
        joined: list[str] = []
        with self.runs.begin() as tx:
            for m in g.members:
                if tx.join_fleet(m.run_id, fid, at=now):
                    joined.append(m.run_id)
                    tx.attach(fid, at=now, detail={"member": m.host, "run_id": m.run_id, "family": m.family})
        self.fleet_joined += len(joined)
        self._fleet_live[fid] = "firing"
        if new:
            self._event("firing", fid)
        for member in joined:
            self._event("absorbed", member)  # the fleet incident pages for it now
        if new:
            self._runner().execute(fid)
        return fid

    def _fleet_settle(self, fid: str, now: float) -> None:
        """A fleet incident its members no longer make: recovering while any member is live,
        resolved when every member is (as of the last member's resolution)."""
        with self.runs.begin() as tx:
            row = tx.run(fid)
            if row is None or row["state"] not in ("firing", "recovering"):
                self._fleet_live.pop(fid, None)  # resolved by the sweep, or gone
                return
            members = tx.fleet_members(fid, limit=10_000)
            seen = row["last_seen_at"]
            if any(m["state"] in ("firing", "recovering") for m in members):
                if self._fleet_live.get(fid) != "recovering":
                    tx.set_state(fid, state="recovering", at=now, seen=seen, resolved=None)
                    self._fleet_live[fid] = "recovering"
                return
            ends = [m["resolved_at"] for m in members if m["resolved_at"] is not None]
            tx.set_state(fid, state="resolved", at=now, seen=seen, resolved=max(ends) if ends else now)
        self._fleet_live.pop(fid, None)
        self.fleet_resolved += 1
        self._ended(fid)

    # --- the lifecycle ---------------------------------------------------------------------------

    def forget_live(self) -> None:
        """Drop the cached live runs (and their clean counts) and the cleans still queued:
        read from the store again on each host's next evaluation. For a controller that
        becomes leader again (the cleans came while another leader held the runs)."""
        with self._lock:
            self._live.clear()
            self._queue = deque(item for item in self._queue if item[1] < 0)
            self._queued_cleans = 0

    def _count_clean(self, host: str) -> None:
        try:
            self.lifecycle(host, set())
        except Exception:
            with self._lock:
                self.failures += 1
            log.exception("the lifecycle of %s's runs failed", host)

    def _lives(self, host_id: str) -> list[_Live]:
        with self._lock:
            got = self._live.get(host_id)
            if got is not None:
                self._live.move_to_end(host_id)
                return got
        with self.runs.read() as tx:
            rows = tx.live_runs_of(host_id)
        lives = [_Live(*row) for row in rows]
        with self._lock:
            lives = self._live.setdefault(host_id, lives)
            while len(self._live) > LIVE_HOSTS:
                self._live.popitem(last=False)
        return lives

    def _track(self, host_id: str, run_id: str, fp: str, family: str, now: float) -> None:
        lives = self._lives(host_id)
        with self._lock:
            if not any(lv.run_id == run_id for lv in lives):
                lives.append(_Live(run_id, fp, family, "firing", now, now))

    def _untrack(self, host_id: str, run_id: str) -> None:
        lives = self._lives(host_id)
        with self._lock:
            lives[:] = [lv for lv in lives if lv.run_id != run_id]

    def _live_of_family(self, host_id: str, family: str) -> str | None:
        """The host's live run of this family: a sighting with another culprit belongs to it
        (the same fault seen through another of its processes, or as it tails off)."""
        lives = self._lives(host_id)
        with self._lock:
            return next((lv.run_id for lv in lives if lv.family == family), None)

    def lifecycle(self, host_id: str, active: set[str]) -> None:
        """One evaluation's verdict on the host's live runs: ``active`` is what it found
        live, as ``firing`` gives it (fingerprints and ``family:<name>``; an empty set: a
        clean evaluation)."""
        lives = self._lives(host_id)
        if not lives:
            return
        now = self.clock()
        writes: list[tuple[_Live, float | None]] = []
        with self._lock:
            for lv in lives:
                before = lv.state
                last = lv.seen_now if lv.seen_now is not None else lv.seen
                if last is not None and last < now - self.opts.attach_window_s:
                    lv.state = "resolved"  # unseen for the window: what comes now is a new run
                    writes.append((lv, last))
                    continue
                if lv.fingerprint in active or f"family:{lv.family}" in active:
                    lv.clean, lv.seen_now, lv.state = 0, now, "firing"
                    stale = lv.seen is None or now - lv.seen >= SEEN_PERSIST_S
                    if before != "firing" or stale:
                        writes.append((lv, None))
                    continue
                lv.clean += 1
                if lv.clean >= self.opts.resolve_after_clean:
                    lv.state = "resolved"
                    writes.append((lv, now))
                    self.fleet.forget(host_id, lv.run_id)
                elif before == "firing":
                    lv.state = "recovering"
                    writes.append((lv, None))
            lives[:] = [lv for lv in lives if lv.state != "resolved"]
        if not writes:
            return
        with self.runs.begin() as tx:
            for lv, resolved in writes:
                seen = lv.seen_now if lv.seen_now is not None else lv.seen
                tx.set_state(lv.run_id, state=lv.state, at=now, seen=seen, resolved=resolved)  # type: ignore[arg-type]
                lv.seen = seen
        self.resolved += sum(1 for _, r in writes if r is not None)
        for lv, resolved in writes:
            if resolved is not None:
                if self.shared is not None:
                    self.shared.forget(host_id, lv.run_id)
                self._ended(lv.run_id)

    def _absorb(self, host_id: str, run_id: str, top: Hypothesis) -> None:
        """Live runs of the host whose fault is a symptom of ``top`` become part of its run."""
        symptoms = {s["fingerprint"] for s in top.symptoms}
        if not symptoms:
            return
        lives = self._lives(host_id)
        with self._lock:
            taken = [lv for lv in lives if lv.fingerprint in symptoms and lv.run_id != run_id]
            lives[:] = [lv for lv in lives if lv not in taken]
        if not taken:
            return
        now = self.clock()
        absorbed: list[str] = []
        with self.runs.begin() as tx:
            for lv in taken:
                if tx.explain_run(lv.run_id, parent=run_id, at=now):
                    self.explained += 1
                    tx.attach(run_id, at=now, detail={"explains_run": lv.run_id})
                    absorbed.append(lv.run_id)
        for symptom in absorbed:
            self._event("absorbed", symptom)

    def sweep(self) -> int:
        """Resolve live runs not seen active for the attach window (their host went quiet, or
        the worker that watched them restarted), as of when they were last seen."""
        before = self.clock() - self.opts.attach_window_s
        with self.runs.read() as tx:
            stale = [r for r in tx.live_seen_before(before, limit=SWEEP_BATCH) if self.mine(r[1])]
        if not stale:
            return 0
        now = self.clock()
        with self._lock:
            cached = {lv.run_id: lv for lives in self._live.values() for lv in lives}
        done = 0
        ended: list[str] = []
        with self.runs.begin() as tx:
            for run_id, _, seen in stale:
                lv = cached.get(run_id)
                if lv is not None and lv.seen_now is not None and lv.seen_now >= before:
                    continue  # seen since, not yet written
                tx.set_state(run_id, state="resolved", at=now, seen=seen, resolved=seen or now)
                done += 1
                ended.append(run_id)
        with self._lock:
            for run_id, host_id, _ in stale:
                lives = self._live.get(host_id)
                if lives is not None:
                    lives[:] = [lv for lv in lives if lv.run_id != run_id or (lv.seen_now or 0) >= before]
        self.resolved += done
        for run_id in ended:
            self._ended(run_id)
        return done

    def _ended(self, run_id: str) -> None:
        if self.on_ended is not None:
            self.on_ended(run_id, "resolved")
        self._event("resolved", run_id)

    def _event(self, kind: str, run_id: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, run_id)

    def open_run(
        self,
        ev: Evidence,
        fp: str,
        family: str,
        culprit: dict[str, Any],
        confidence: float,
        started: float | None = None,
        *,
        scope: str = "host",
    ) -> str:
        now = self.clock()
        seed = hashlib.sha256(f"{fp}|{now}".encode()).hexdigest()
        run_id = f"run-{seed[:16]}"
        # Evidence first: a run row never points at evidence that is not there.
        window = msgspec.json.encode(ev.to_dict(), order="sorted")
        self.payloads.put(evidence_key(run_id), window)
        silenced_by = self.silences.silencing(ev.host_id, family)
        with self.runs.begin() as tx:
            tx.insert_runs(
                [
                    {
                        "run_id": run_id,
                        "workflow_id": f"wf-{seed[16:32]}",
                        "incident_id": f"inc-{fp[:16]}",
                        "correlation_id": f"corr-{seed[32:48]}",
                        "host_id": ev.host_id,
                        "fingerprint": fp,
                        "family": family,
                        "culprit": json.dumps(culprit, sort_keys=True),
                        "confidence": confidence,
                        "status": "running",
                        "stage": 0,
                        "attachments": 0,
                        "created_at": now,
                        "updated_at": now,
                        "closed_at": None,
                        "code_version": self.code_version,
                        "evidence_sha256": hashlib.sha256(window).hexdigest(),
                        "state": "firing",
                        "fault_started_at": started if started is not None else ev.end,
                        "last_seen_at": now,
                        "resolved_at": None,
                        "flaps": 0,
                        "parent_run_id": None,
                        "silenced_by": silenced_by,
                        "scope": scope,
                        "fleet_run_id": None,
                    }
                ]
            )
        self.runs_opened += 1
        return run_id


def expected_effect(family: str, culprit: dict[str, Any], change: IntentRow) -> bool:
    """Whether a sighting of ``family`` on ``culprit`` is what ``change`` (a standing action
    of this controller's) was made to do: the action's actuator says."""
    act = ACTUATORS.get(change["action"])
    return act is not None and act.explains(family, culprit, change["params"] or {}, change["before"] or {})
