"""The workflow engine: triggers, runs, durable stages, resume.

After an accepted batch, ingest only notes the host in a bounded queue (overflow
counted): evaluation runs on the engine's own worker, never on the request path.
The worker builds evidence from the host's hot-state window and runs the detectors;
when the top hypothesis clears ``open_threshold`` it opens a run, unless a run of the
same fingerprint (host, family, culprit) was touched within ``attach_window_s``
(finished or not): then the sighting is attached to it and recorded. A new run of
that shape opens only once it has gone unseen for the window, and consults the
incident memory the earlier one left.

Durability (DESIGN.md): for each stage the artifact JSON is written to the payload
store first, then its metadata row and the run's new stage count commit in one
transaction. On start the engine resumes every running run at its first stage
without a committed artifact; an artifact file written by a stage that never
committed is simply overwritten by the rerun (the ids are deterministic).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from controller import artifacts, audit
from controller.actuators import host_env
from controller.artifacts import KINDS, Artifact
from controller.detectors import Evidence, build_evidence
from controller.errors import StoreError, UnknownRun
from controller.hotstate import HotState
from controller.store.payloads import PayloadStore
from controller.store.repo import where
from controller.workflow.analysis import detect, rank
from controller.workflow.execution import ExecutionService
from controller.workflow.roles import NotReady, Posture, StageContext, role_for
from controller.workflow.roles.base import recorded_posture
from controller.workflow.roles.policy_gate import plan_hash_of

log = logging.getLogger(__name__)
CODE_VERSION = "incidentlab-workflow/0.1.0"

# SQL that SQLite and PostgreSQL both take, named here so the methods read as steps.
ATTACH = text("INSERT INTO workflow_attachments (run_id, at, detail) VALUES (:r, :at, :d)")
BUMP_ATTACHMENTS = text(
    "UPDATE workflow_runs SET attachments = attachments + 1, updated_at = :at WHERE run_id = :r"
)
# An incident stays open while it keeps being seen: a run of its shape touched within the
# attach window takes the sighting, whether its stages are done or not (a dry run completes
# at once, and a fault that lasts an hour is one incident, not 3,600).
OPEN_RUN_OF = text(
    "SELECT run_id FROM workflow_runs WHERE fingerprint = :fp AND status != 'failed' "
    "AND updated_at >= :since ORDER BY created_at DESC LIMIT 1"
)
INSERT_RUN = text(
    "INSERT INTO workflow_runs (run_id, workflow_id, incident_id, correlation_id, host_id, "
    "fingerprint, family, culprit, confidence, status, stage, attachments, created_at, "
    "updated_at, closed_at, code_version, evidence_sha256) VALUES (:run_id, :wf, :inc, :corr, :host, "
    ":fp, :family, :culprit, :conf, 'running', 0, 0, :now, :now, NULL, :cv, :esha)"
)
SELECT_RUN = text("SELECT * FROM workflow_runs WHERE run_id = :r")
CHAIN_PATHS = text(
    "SELECT path, sha256, kind FROM workflow_artifacts WHERE run_id = :r AND replay = :rp "
    "ORDER BY stage_index"
)
FAIL_RUN = text(
    "UPDATE workflow_runs SET status = 'failed', updated_at = :at, closed_at = :at WHERE run_id = :run"
)
SELECT_MEMORY = text("SELECT * FROM incident_memory WHERE fingerprint = :fp")
INSERT_ARTIFACT = text(
    "INSERT INTO workflow_artifacts (artifact_id, run_id, stage_index, kind, status, sha256, "
    "path, replay, created_at) VALUES (:id, :run, :idx, :kind, :status, :sha, :path, :rp, :at)"
)
ADVANCE_RUN = text(
    "UPDATE workflow_runs SET stage = :stage, status = :status, updated_at = :at, "
    "closed_at = :closed WHERE run_id = :run"
)
REMEMBER = text(
    "INSERT INTO incident_memory (fingerprint, family, host_id, culprit, first_seen, last_seen, "
    "occurrences, last_run_id, resolution) VALUES (:fp, :family, :host, :culprit, :now, :now, "
    "1, :run, :res) ON CONFLICT (fingerprint) DO UPDATE SET last_seen = excluded.last_seen, "
    "occurrences = incident_memory.occurrences + 1, last_run_id = excluded.last_run_id, "
    "resolution = excluded.resolution"
)
RUNNING = text(
    "SELECT run_id FROM workflow_runs WHERE status IN ('running', 'verifying') ORDER BY created_at"
)
SET_STATUS = text("UPDATE workflow_runs SET status = :s, updated_at = :at WHERE run_id = :run")
OPEN_RUNS = text("SELECT COUNT(*) FROM workflow_runs WHERE status != 'completed' AND status != 'failed'")
FORGET_REPLAY = text("DELETE FROM workflow_artifacts WHERE run_id = :r AND replay = :rp")
ATTACHMENTS_OF = text(
    "SELECT at, detail FROM workflow_attachments WHERE run_id = :r ORDER BY at DESC LIMIT :n"
)
FAILPOINTS = ("before_commit", "after_commit")
# Stages that act on or read the live host: a failure there may be the moment, not the inputs.
LIVE_STAGES = ("execution_result", "verification_result")
HEALTH_HOSTS = 10_000  # hosts whose evaluation record is kept (least recently failed go first)
Failpoint = Callable[[str, str], None]


@dataclass(frozen=True)
class WorkflowOptions:
    window_s: float = 300.0
    open_threshold: float = 0.5
    attach_window_s: float = 900.0
    queue_max: int = 1024
    posture: Posture = field(default_factory=Posture)


def message_key(run_id: str, art: Artifact, replay: bool = False) -> str:
    folder = "replays" if replay else "messages"
    return f"workflows/{folder}/{run_id}/{art.stage_index:02d}-{art.kind}.json"


def artifact_row(run_id: str, art: Artifact, key: str, *, replay: bool, at: float) -> dict[str, Any]:
    """INSERT_ARTIFACT's parameters."""
    return {
        "id": art.artifact_id,
        "run": run_id,
        "idx": art.stage_index,
        "kind": art.kind,
        "status": art.status,
        "sha": art.sha256,
        "path": key,
        "rp": replay,
        "at": at,
    }


def evidence_key(run_id: str) -> str:
    return f"workflows/evidence/{run_id}/package.json"


def after_key(run_id: str) -> str:
    """The window the verifier compared against: kept so a replay compares the same."""
    return f"workflows/evidence/{run_id}/after.json"


class WorkflowEngine:
    def __init__(
        self,
        db: Engine,
        store: PayloadStore,
        hot: HotState,
        options: WorkflowOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        advisor: Any = None,
        code_version: str = CODE_VERSION,
        failpoint: Failpoint | None = None,
        execution: ExecutionService | None = None,
    ) -> None:
        self.db = db
        # Without one passed in: this host's interfaces, default options (the posture still decides).
        self.execution = execution or ExecutionService(db, host_env(), clock=clock)
        self.store = store
        self.hot = hot
        self.opts = options or WorkflowOptions()
        self.clock = clock
        self.advisor = advisor
        self.code_version = code_version
        # Called with (stage kind, "before_commit" | "after_commit"): the crash tests kill here.
        self.failpoint = failpoint
        self._queue: deque[str] = deque()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Whether this controller may run stages now (the HA leader); a deposed leader stops.
        self.active: Callable[[], bool] = lambda: True
        self._due: list[tuple[float, str]] = []  # (when, run_id): approved runs, verifier retries
        self._after: dict[str, Evidence] = {}  # run_id -> the window the verifier last read
        # host -> its evaluation record: failures, the last error and when, the last success.
        self._health: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.overflow = 0
        self.evaluations = 0
        self.runs_opened = 0
        self.attached = 0
        self.failures = 0

    # --- triggers ----------------------------------------------------------------------------

    def notify(self, host_id: str) -> None:
        """Called after an accepted batch: cheap, bounded, never blocks ingest."""
        with self._lock:
            if host_id in self._pending:
                return
            if len(self._queue) >= self.opts.queue_max:
                self.overflow += 1
                return
            self._queue.append(host_id)
            self._pending.add(host_id)
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self.resume()
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
                    self.execute(run_id)
                except Exception:
                    self.failures += 1
                    log.exception("continuing run %s failed", run_id)
            while not self._stop.is_set():
                with self._lock:
                    if not self._queue:
                        break
                    host = self._queue.popleft()
                    self._pending.discard(host)
                try:
                    self.evaluate(host)
                except Exception as exc:  # one host's failure must not stop the engine for the others
                    self.record_failure(host, exc)
                    log.exception("workflow evaluation of %s failed", host)
                else:
                    self.record_success(host)

    def stats(self) -> dict[str, int]:
        with self._lock:
            queued = len(self._queue)
        return {
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
        with self._lock:
            self.failures += 1
            h = self._health.pop(host_id, None) or {"failures": 0, "last_ok_at": None}
            h["failures"] += 1
            h["last_error"] = f"{type(exc).__name__}: {exc}"[:500]
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

    def evidence_for(self, host_id: str) -> Evidence | None:
        w = self.hot.read(host_id, self.opts.window_s)
        if not w.snapshots:
            return None
        return build_evidence(host_id, w.snapshots, w.events, self.hot.freshness(host_id))

    def evaluate(self, host_id: str) -> str | None:
        """Open or attach a run for this host if its detectors fire; returns the run id."""
        self.evaluations += 1
        ev = self.evidence_for(host_id)
        if ev is None:
            return None
        hyps = rank(ev, detect(ev))
        if not hyps or hyps[0].confidence < self.opts.open_threshold:
            return None
        top = hyps[0]
        now = self.clock()
        with self.db.begin() as conn:
            row = conn.execute(
                OPEN_RUN_OF, {"fp": top.fingerprint, "since": now - self.opts.attach_window_s}
            ).first()
            if row is not None:
                detail = json.dumps({"confidence": top.confidence, "summary": top.summary})
                conn.execute(ATTACH, {"r": row[0], "at": now, "d": detail})
                conn.execute(BUMP_ATTACHMENTS, {"r": row[0], "at": now})
                self.attached += 1
                return str(row[0])
        run_id = self.open_run(ev, top.fingerprint, top.family, top.culprit, top.confidence)
        self.execute(run_id)
        return run_id

    def open_run(self, ev: Evidence, fp: str, family: str, culprit: dict[str, Any], confidence: float) -> str:
        now = self.clock()
        seed = hashlib.sha256(f"{fp}|{now}".encode()).hexdigest()
        run_id = f"run-{seed[:16]}"
        # Evidence first: a run row never points at evidence that is not there.
        window = msgspec.json.encode(ev.to_dict(), order="sorted")
        self.store.put(evidence_key(run_id), window)
        params = {
            "esha": hashlib.sha256(window).hexdigest(),
            "run_id": run_id,
            "wf": f"wf-{seed[16:32]}",
            "inc": f"inc-{fp[:16]}",
            "corr": f"corr-{seed[32:48]}",
            "host": ev.host_id,
            "fp": fp,
            "family": family,
            "culprit": json.dumps(culprit, sort_keys=True),
            "conf": confidence,
            "now": now,
            "cv": self.code_version,
        }
        with self.db.begin() as conn:
            conn.execute(INSERT_RUN, params)
        self.runs_opened += 1
        return run_id

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            row = conn.execute(SELECT_RUN, {"r": run_id}).first()
        return dict(row._mapping) if row else None

    def load_evidence(self, run_id: str, committed: str | None = None) -> Evidence:
        """The run's evidence window, its sha256 checked against the one its row recorded at
        open (``committed``; runs from before that column are not checked). Raises
        ArtifactTampered naming the file when it is missing, unreadable or changed."""
        key = evidence_key(run_id)
        try:
            doc = msgspec.json.decode(self.store.get(key))
            # A completed run's file is the full package; before that, the window alone.
            window = doc["window"] if "manifest" in doc else doc
            if committed is not None:
                actual = hashlib.sha256(msgspec.json.encode(window, order="sorted")).hexdigest()
                if actual != committed:
                    why = f"hashes to {actual[:12]}..., not the {committed[:12]}... recorded at open"
                    raise artifacts.ArtifactTampered(run_id, "evidence window", key, why)
            return Evidence.from_dict(window)
        except FileNotFoundError as exc:
            raise artifacts.ArtifactTampered(run_id, "evidence window", key, "is missing") from exc
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise artifacts.ArtifactTampered(
                run_id, "evidence window", key, f"cannot be read: {exc}"
            ) from exc

    def _stored_chain(self, run_id: str, replay: bool) -> list[tuple[Artifact, str, str]]:
        """(artifact, payload key, the sha256 its row recorded at commit), in stage order."""
        with self.db.connect() as conn:
            rows = conn.execute(CHAIN_PATHS, {"r": run_id, "rp": replay}).all()
        out = []
        for key, sha, kind in rows:
            try:
                out.append((artifacts.decode(self.store.get(key)), key, sha))
            except FileNotFoundError as exc:  # committed, then removed: what acts on it must refuse
                raise artifacts.ArtifactTampered(run_id, kind, key, "is missing") from exc
            except artifacts.ArtifactError as exc:  # say which file, so it can be found and looked at
                raise artifacts.ArtifactTampered(run_id, kind, key, f"cannot be read: {exc}") from exc
        return out

    def load_chain(self, run_id: str, replay: bool = False) -> list[Artifact]:
        """The chain as stored, unchecked (integrity_problems says what is wrong with it)."""
        return [art for art, _, _ in self._stored_chain(run_id, replay)]

    @staticmethod
    def _tampering(art: Artifact, committed: str) -> str | None:
        actual = artifacts.digest(art)
        if actual != committed:
            return f"hashes to {actual[:12]}..., not the {committed[:12]}... committed for it"
        if actual != art.sha256:
            return f"hashes to {actual[:12]}..., not the {art.sha256[:12]}... it claims"
        if art.kind == "execution_plan":
            p = art.payload
            if plan_hash_of(p.get("posture", {}), p.get("steps", [])) != p.get("plan_hash"):
                return "has a plan_hash that its posture and steps do not give"
        return None

    def _checked_chain(
        self, run_id: str, replay: bool
    ) -> list[tuple[Artifact, artifacts.ArtifactTampered | None]]:
        out = []
        for art, key, committed in self._stored_chain(run_id, replay):
            why = self._tampering(art, committed)
            out.append((art, artifacts.ArtifactTampered(run_id, art.kind, key, why) if why else None))
        return out

    def integrity_problems(self, run_id: str, replay: bool = False) -> list[str]:
        return [str(bad) for _, bad in self._checked_chain(run_id, replay) if bad is not None]

    def verified_chain(self, run_id: str) -> list[Artifact]:
        """The chain, each artifact's sha256 recomputed from its stored content and compared
        with the one its row recorded at commit (and the plan's hash with its steps): what
        approval and execution act on. Raises ArtifactTampered naming the first that differs."""
        checked = self._checked_chain(run_id, False)
        bad = next((b for _, b in checked if b is not None), None)
        if bad is not None:
            raise bad
        return [art for art, _ in checked]

    def fail_run(self, run_id: str, kind: str, why: str) -> None:
        """A run that cannot go on (its stored chain changed, or a stage cannot be computed):
        failed, and said so in the audit log, so neither the engine nor a restart retries it."""
        now = self.clock()
        with self.db.begin() as conn:
            conn.execute(FAIL_RUN, {"at": now, "run": run_id})
            audit.record(conn, at=now, actor="engine", kind=kind, run_id=run_id, detail={"why": why[:2000]})

    def _memory(self, fingerprint: str) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            row = conn.execute(SELECT_MEMORY, {"fp": fingerprint}).first()
        if row is None:
            return None
        mem = dict(row._mapping)
        mem["resolution"] = json.loads(mem["resolution"])
        return mem

    def execute(self, run_id: str, stop_after: int | None = None) -> list[Artifact]:
        """Run the stages a run has not committed yet, in order, each durably. Stops at the
        executor while the plan awaits a decision, and at the verifier while it waits for
        fresh samples (the run is scheduled again)."""
        run = self.load_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        if run["status"] in ("completed", "failed"):
            return self.load_chain(run_id)
        try:
            ev = self.load_evidence(run_id, run.get("evidence_sha256"))
            chain = self.verified_chain(run_id)
        except artifacts.ArtifactTampered as exc:
            log.error("%s: the run is failed, nothing more of it runs", exc)
            self.fail_run(run_id, "integrity_failure", str(exc))
            raise
        memory = self._memory(run["fingerprint"])
        for index in range(len(chain), len(KINDS)):
            if stop_after is not None and index > stop_after:
                break
            approval = None
            if KINDS[index] == "execution_result":
                wait, approval = self._approval_gate(run_id, chain[-1])
                if wait:
                    return chain
            ctx = StageContext(
                run=run,
                evidence=ev,
                chain=chain,
                clock=self.clock,
                code_version=self.code_version,
                posture=self.opts.posture,
                memory=memory,
                advisor=self.advisor,
                actions=self.execution,
                approval=approval,
                fresh=functools.partial(self._fresh, run_id, run["host_id"]),
            )
            try:
                art = role_for(KINDS[index]).run(ctx)
            except NotReady as wait:
                self._set_status(run_id, "verifying")
                self.schedule(run_id, wait.retry_at)
                return chain
            except (StoreError, SQLAlchemyError, OSError):
                raise  # the store or the host hiccupped: resume tries the stage again
            except Exception as exc:
                if KINDS[index] not in LIVE_STAGES:
                    # A pure stage fails the same way on the same inputs: end the run, say why.
                    self.fail_run(run_id, "stage_failure", f"{KINDS[index]}: {type(exc).__name__}: {exc}")
                raise
            self.commit(run, art, chain, ev)
            chain = [*chain, art]
        return chain

    def _set_status(self, run_id: str, status: str) -> None:
        with self.db.begin() as conn:
            conn.execute(SET_STATUS, {"s": status, "at": self.clock(), "run": run_id})

    def _approval_gate(self, run_id: str, plan_art: Artifact) -> tuple[bool, dict[str, Any] | None]:
        """(wait, the operator's decision on this plan); wait: the run is parked until one comes."""
        plan = plan_art.payload
        if not plan.get("needs_approval") or self.execution is None:
            return False, None
        decision = self.execution.decision(run_id, plan["plan_hash"])
        if decision is None:
            self.execution.wait_for_approval(run_id)
            return True, None
        # Expiry counts only before anything ran: a stage rerun after a crash finishes what began.
        started = bool(self.execution.intents(run_id))
        if decision["decision"] == "approved" and decision["expires_at"] < self.clock() and not started:
            self.execution.expire(run_id, plan["plan_hash"], decision)
            return True, None
        return False, decision

    def _fresh(self, run_id: str, host_id: str, since: float) -> Evidence | None:
        w = self.hot.read(host_id, self.opts.window_s, since=since)
        if not w.snapshots:
            return None
        ev = build_evidence(host_id, w.snapshots, w.events, self.hot.freshness(host_id))
        self._after[run_id] = ev
        return ev

    def commit(
        self, run: dict[str, Any], art: Artifact, chain: list[Artifact], ev: Evidence | None = None
    ) -> None:
        run_id = run["run_id"]
        key = message_key(run_id, art)
        after = self._after.pop(run_id, None)
        if art.kind == "verification_result" and after is not None:
            self.store.put(after_key(run_id), msgspec.json.encode(after.to_dict(), order="sorted"))
        self.store.put(key, artifacts.encode(art))  # the payload first
        now = self.clock()
        final = art.kind == KINDS[-1]
        if final:  # the package too, so a committed final stage always has one
            self.write_package(run_id, [*chain, art], ev)
        if self.failpoint is not None:
            self.failpoint(art.kind, "before_commit")
        with self.db.begin() as conn:  # then the metadata and the stage, in one transaction
            conn.execute(INSERT_ARTIFACT, artifact_row(run_id, art, key, replay=False, at=now))
            self._audit_stage(conn, run_id, art, now)
            conn.execute(
                ADVANCE_RUN,
                {
                    "stage": art.stage_index + 1,
                    "status": "completed" if final else "running",
                    "at": now,
                    "closed": now if final else None,
                    "run": run_id,
                },
            )
            if final:
                self._remember(conn, run, art, now)
        if self.failpoint is not None:
            self.failpoint(art.kind, "after_commit")

    @staticmethod
    def _audit_stage(conn: Connection, run_id: str, art: Artifact, now: float) -> None:
        """Gate decisions and verdicts enter the audit log with the artifact that holds them."""
        if art.kind == "execution_plan":
            for step in art.payload.get("steps", []):
                audit.record(
                    conn,
                    at=now,
                    actor="policy_gate",
                    kind="gate_decision",
                    run_id=run_id,
                    plan_hash=art.payload["plan_hash"],
                    step=step["step"],
                    detail={
                        "action": step["action"],
                        "target": step["target"],
                        "safety_class": step["safety_class"],
                        "decision": step["decision"],
                        "reason": step["reason"],
                    },
                )
        elif art.kind == "verification_result" and art.payload.get("verdict") != "skipped":
            audit.record(
                conn,
                at=now,
                actor="verifier",
                kind="verification",
                run_id=run_id,
                detail={"verdict": art.payload.get("verdict"), "reason": art.payload.get("reason")},
            )

    @staticmethod
    def _remember(conn: Connection, run: dict[str, Any], report: Artifact, now: float) -> None:
        resolution = {
            "actions": report.payload.get("actions", []),
            "verification": report.payload.get("verification"),
            "run_id": run["run_id"],
        }
        conn.execute(
            REMEMBER,
            {
                "fp": run["fingerprint"],
                "family": run["family"],
                "host": run["host_id"],
                "culprit": run["culprit"],
                "now": now,
                "run": run["run_id"],
                "res": json.dumps(resolution, sort_keys=True),
            },
        )

    def write_package(self, run_id: str, chain: list[Artifact], ev: Evidence | None = None) -> None:
        """The evidence package: the chain, its manifest, and the evidence its refs point at."""
        package = {
            "run_id": run_id,
            "manifest": artifacts.manifest(chain),
            "chain": [msgspec.to_builtins(a) for a in chain],
            "window": (ev or self.load_evidence(run_id)).to_dict(),
        }
        self.store.put(evidence_key(run_id), msgspec.json.encode(package, order="sorted"))

    def resume(self) -> list[str]:
        """Finish every run a crash or stop left running."""
        with self.db.connect() as conn:
            ids = [r[0] for r in conn.execute(RUNNING)]
        for run_id in ids:
            try:
                self.execute(run_id)
            except Exception:  # a broken run must not keep the others from resuming
                self.failures += 1
                log.exception("resuming run %s failed", run_id)
        return ids

    def replay(self, run_id: str, clock: Callable[[], float] | None = None) -> list[Artifact]:
        """Re-run every stage from the stored evidence with the current code; stored apart
        (the latest replay of a run replaces the one before), each artifact carrying
        replay_of. Same inputs and clock: same sha256s."""
        chain = self.compute_replay(run_id, clock)
        rows = []
        for art in chain:
            key = message_key(run_id, art, replay=True)
            self.store.put(key, artifacts.encode(art))
            rows.append(artifact_row(run_id, art, key, replay=True, at=art.finished_at))
        with self.db.begin() as conn:
            conn.execute(FORGET_REPLAY, {"r": run_id, "rp": True})
            conn.execute(INSERT_ARTIFACT, rows)
        return chain

    def compute_replay(self, run_id: str, clock: Callable[[], float] | None = None) -> list[Artifact]:
        """The replayed chain, written nowhere: what a read-only workbench compares."""
        clock = clock or self.clock
        run = self.load_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        stored = self.load_chain(run_id)
        original = {a.kind: a.artifact_id for a in stored}
        ev = self.load_evidence(run_id, run.get("evidence_sha256"))
        memory = _recorded_memory(stored)
        # The advisor is an outside input, like the memory: a replay reuses what it said then.
        said = next((a.payload.get("advisor") for a in stored if a.kind == "root_cause_hypothesis"), None)
        advisor = _RecordedAdvice(said) if said is not None else None
        actions = _RecordedExecution(stored)
        # The posture is an outside input too: the plan is re-decided under the recorded one.
        plan = next((a.payload for a in stored if a.kind == "execution_plan"), None)
        posture = recorded_posture(plan, run["host_id"]) if plan is not None else self.opts.posture
        chain: list[Artifact] = []
        for kind in KINDS:
            ctx = StageContext(
                run=run,
                evidence=ev,
                chain=chain,
                clock=clock,
                code_version=self.code_version,
                posture=posture,
                memory=memory,
                replay_of=original,
                advisor=advisor,
                actions=actions,
            )
            chain.append(role_for(kind).run(ctx))
        return chain

    # --- reads for the API ------------------------------------------------------------------------

    def open_runs(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(OPEN_RUNS).scalar_one())

    def attachments(self, run_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            rows = conn.execute(ATTACHMENTS_OF, {"r": run_id, "n": limit}).all()
        return [{"at": r[0], "detail": json.loads(r[1])} for r in rows]

    def list_runs(
        self,
        *,
        status: str | None = None,
        host_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Newest first; ``after`` is the (created_at, run_id) of the last row of the previous page."""
        clauses, params = where(
            [
                ("status", "=", "status", status),
                ("host_id", "=", "host", host_id),
                ("created_at", ">=", "since", since),
                ("created_at", "<", "until", until),
            ]
        )
        params["n"] = limit
        if after is not None:
            clauses.append("(created_at < :ac OR (created_at = :ac AND run_id < :ar))")
            params |= {"ac": after[0], "ar": after[1]}
        sql = "SELECT * FROM workflow_runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT :n"
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _recorded_memory(chain: list[Artifact]) -> dict[str, Any] | None:
    """The incident memory the original hypothesis stage saw, so a replay sees the same."""
    for art in chain:
        if art.kind == "root_cause_hypothesis":
            mem = art.payload.get("memory", {})
            if mem.get("seen_before"):
                return {
                    "occurrences": mem["occurrences"],
                    "last_run_id": mem["last_run_id"],
                    "resolution": mem["last_resolution"],
                }
    return None


class _RecordedAdvice:
    """Stands in for the advisor in a replay: answers what the original run recorded."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def annotate(self, chain: list[Artifact], hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
        return self.record


class _RecordedExecution:
    """Stands in for the execution service in a replay: a replay never acts and never
    reads live state, so the executor and verifier answer what the run recorded."""

    def __init__(self, chain: list[Artifact]) -> None:
        by_kind = {a.kind: a.payload for a in chain}
        results = by_kind.get("execution_result", {}).get("results", [])
        self.recorded_results = {r["idempotency_key"]: r for r in results}
        verification = by_kind.get("verification_result")
        self.recorded_verification = verification
