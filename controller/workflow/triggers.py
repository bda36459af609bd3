"""The trigger side: which hosts to evaluate, the worker that does it, and opening or
attaching runs.

After an accepted batch, ingest only notes the host in a bounded queue (overflow
counted): evaluation runs on this worker, never on the request path. The worker
builds evidence from the host's hot-state window and runs the detectors; when the top
hypothesis clears ``open_threshold`` it opens a run, unless a run of the same
fingerprint (host, family, culprit) was touched within ``attach_window_s`` (finished
or not): then the sighting is attached to it and recorded. A new run of that shape
opens only once it has gone unseen for the window, and consults the incident memory
the earlier one left. The same worker continues runs that are due (approved, or a
verification to retry), through the stage runner.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec

from controller.detectors import Evidence
from controller.hotstate import HotState
from controller.store.payloads import PayloadStore
from controller.store.runs import RunStore
from controller.workflow.analysis import detect, rank
from controller.workflow.analysis_pool import AnalysisPool
from controller.workflow.options import WorkflowOptions
from controller.workflow.reads import evidence_key
from controller.workflow.runner import StageRunner

log = logging.getLogger(__name__)
HEALTH_HOSTS = 10_000  # hosts whose evaluation record is kept (least recently failed go first)


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
        self.code_version = code_version
        self.runner: StageRunner | None = None  # set by the engine that wires the two
        # Where windows live when analysis workers keep them (None: this process's hot state).
        self.pool: AnalysisPool | None = None
        self._queue: deque[str] = deque()
        self._given: dict[str, Evidence] = {}  # host -> the evidence a worker sent with its trigger
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Whether this controller may run stages now (the HA leader); a deposed leader stops.
        self.active: Callable[[], bool] = lambda: True
        self._due: list[tuple[float, str]] = []  # (when, run_id): approved runs, verifier retries
        # host -> its evaluation record: failures, the last error and when, the last success.
        self._health: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.overflow = 0
        self.evaluations = 0
        self.runs_opened = 0
        self.attached = 0
        self.failures = 0

    def _runner(self) -> StageRunner:
        assert self.runner is not None, "the engine wires a stage runner before anything runs"
        return self.runner

    # --- the queue and the worker -----------------------------------------------------------------

    def notify(self, host_id: str, evidence: Evidence | None = None) -> None:
        """Called after an accepted batch, or by an analysis worker whose evaluation fired
        (with the host's evidence): cheap, bounded, never blocks ingest."""
        with self._lock:
            if evidence is not None:
                self._given[host_id] = evidence  # the newest replaces one still waiting
            if host_id in self._pending:
                return
            if len(self._queue) >= self.opts.queue_max:
                self.overflow += 1
                self._given.pop(host_id, None)
                return
            self._queue.append(host_id)
            self._pending.add(host_id)
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        _, failed = self._runner().resume()
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
        while not self._stop.is_set():
            self._wake.wait(0.25 if self._due else 1.0)
            self._wake.clear()
            if not self.active():
                continue
            while (run_id := self._next_due()) is not None and not self._stop.is_set():
                try:
                    self._runner().execute(run_id)
                except Exception:
                    self.failures += 1
                    log.exception("continuing run %s failed", run_id)
            while not self._stop.is_set():
                with self._lock:
                    if not self._queue:
                        break
                    host = self._queue.popleft()
                    self._pending.discard(host)
                    given = self._given.pop(host, None)
                try:
                    self.evaluate(host, given)
                except Exception as exc:  # one host's failure must not stop the engine for the others
                    self.record_failure(host, exc)
                    log.exception("workflow evaluation of %s failed", host)
                else:
                    self.record_success(host)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        return {
            "analysis": self.pool.stats() if self.pool is not None else {"workers": 0},
            "queued": queued,
            "queue_overflow": self.overflow,
            "evaluations": self.evaluations,
            "runs_opened": self.runs_opened,
            "attached": self.attached,
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

    def evaluate(self, host_id: str, ev: Evidence | None = None) -> str | None:
        """Open or attach a run for this host if its detectors fire on its window (``ev``,
        when a worker sent it); returns the run id."""
        self.evaluations += 1
        ev = ev or self.evidence_for(host_id)
        if ev is None:
            return None
        hyps = rank(ev, detect(ev))
        if not hyps or hyps[0].confidence < self.opts.open_threshold:
            return None
        top = hyps[0]
        now = self.clock()
        with self.runs.begin() as tx:
            open_id = tx.open_run_of(top.fingerprint, since=now - self.opts.attach_window_s)
            if open_id is not None:
                tx.attach(open_id, at=now, detail={"confidence": top.confidence, "summary": top.summary})
                self.attached += 1
                return open_id
        run_id = self.open_run(ev, top.fingerprint, top.family, top.culprit, top.confidence)
        self._runner().execute(run_id)
        return run_id

    def open_run(self, ev: Evidence, fp: str, family: str, culprit: dict[str, Any], confidence: float) -> str:
        now = self.clock()
        seed = hashlib.sha256(f"{fp}|{now}".encode()).hexdigest()
        run_id = f"run-{seed[:16]}"
        # Evidence first: a run row never points at evidence that is not there.
        window = msgspec.json.encode(ev.to_dict(), order="sorted")
        self.payloads.put(evidence_key(run_id), window)
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
                    }
                ]
            )
        self.runs_opened += 1
        return run_id
