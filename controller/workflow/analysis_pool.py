"""Analysis off the ingest path: worker processes, each owning the windows of its hosts.

Ingest hands each accepted batch, after its ack is on its way, to the worker its host
hashes to (a bounded queue; a batch that finds it full is not analysed, counted). The
worker keeps the host's window (controller/detectors/window.py) and evaluates a host on
the host's clock: at most once per collection interval, after every batch waiting has
been applied, so a collector catching up after an outage costs one evaluation, not a
hundred, and the last sample of a burst is always evaluated (within one interval on the
wall clock, if no later sample comes). When the top hypothesis clears the open
threshold the worker sends the host's full evidence to the controller, whose trigger
side opens or attaches the run. The verifier and /rca read a window from its worker.

Workers are supervised: one that dies is started again and counted; its hosts'
windows fill again from their next batches, and their faults are found again once the
detectors have their samples. Evaluation never shares the GIL with the event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import msgspec

from collector.wire import BatchEnvelope
from controller.config import HotStateSettings
from controller.detectors import Evidence
from controller.detectors.rules import Rules
from controller.hotstate import HotState
from controller.ingest import Accepted
from controller.workflow.analysis import Hypothesis, detect, fires, rank

log = logging.getLogger(__name__)
TELL_WAIT_S = 2.0  # how long a forget, kick or watch waits for room in a worker's pipe
DEFAULT_INTERVAL_S = 10.0  # a batch without interval_s is taken to come every 10 s
DRAIN_MAX = 2000  # messages a worker applies before it evaluates
# Accepted batches go to a worker together, at most this long after the first of them, or
# sooner once this many (or this many bytes) wait: one queue write, and one wakeup of the
# worker, per flush instead of per batch. A worker woken for a few batches pays for
# caches gone cold since its last wakeup about as much as for the batches themselves
# (measured: ~0.33 ms a batch at 50 ms, ~0.2 ms at 1 s, 1,000 hosts at a 10 s interval);
# evaluation runs on the hosts' clock, which half a second hardly moves.
FLUSH_S = 0.5
FLUSH_BATCHES = 256
FLUSH_BYTES = 8 << 20
STATS_EVERY_S = 1.0
XIDS_MAX = 10_000  # snapshots with XID events a worker holds for the controller between reports


@dataclass(frozen=True)
class WorkerConfig:
    hot_state: HotStateSettings
    window_s: float
    open_threshold: float
    rules: Rules = field(default_factory=Rules)
    nice: int = 10
    # Clean evaluations reported after a host fired: what resolves its runs (the controller
    # needs resolve_after_clean of them; a few more cover a trigger still on its way).
    report_clean: int = 5


# --- the worker process ------------------------------------------------------------------------


@dataclass
class _Due:
    dirty_since: float  # wall clock: the oldest batch not yet evaluated arrived then
    newest: float  # the host's newest sample time when last marked
    interval: float


class Evaluator:
    """One worker's state and loop body, kept apart from the process so tests drive it."""

    def __init__(self, config: WorkerConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.hot = HotState(config.hot_state, clock=clock, on_error=self._failed, on_xids=self._xids)
        self.xids: list[tuple[str, list[Any]]] = []  # XID events to report (bounded: XIDS_MAX)
        self.xids_dropped = 0
        # Per-host evaluation records for the controller: errors to report, and hosts that
        # failed and have since been evaluated cleanly.
        self.failed: dict[str, str] = {}
        self.recovered: set[str] = set()
        self._failing: set[str] = set()
        # The envelope: source data stays raw until a sample the window lacks needs it.
        self.decoder = msgspec.json.Decoder(BatchEnvelope)
        self.dirty: dict[str, _Due] = {}
        self.evaluated_at: dict[str, float] = {}  # host -> the sample time it was last evaluated at
        self.evaluations = 0
        self.triggers = 0
        self.errors = 0
        self.lag_max = 0.0
        # Hosts that fired lately -> clean evaluations still to report; the hosts to report now.
        self.watch: OrderedDict[str, int] = OrderedDict()
        self.cleans: list[str] = []

    def watch_hosts(self, hosts: Iterable[str]) -> None:
        """Report these hosts' clean evaluations, as for hosts that fired here (their runs
        are live from before this worker started)."""
        for host in hosts:
            self.watch[host] = self.config.report_clean
        while len(self.watch) > self.config.hot_state.max_hosts:
            self.watch.popitem(last=False)

    def _xids(self, host: str, events: list[Any]) -> None:
        if len(self.xids) >= XIDS_MAX:
            self.xids_dropped += 1
            return
        self.xids.append((host, events))

    def _failed(self, host: str, error: str) -> None:
        self.errors += 1
        self.failed[host] = error
        self._failing.add(host)
        self.recovered.discard(host)

    def kick(self, hosts: Iterable[str]) -> None:
        """Evaluate these hosts at once, on what their windows hold (a rebuild's end)."""
        now = self.clock()
        for host in hosts:
            h = self.hot.host(host)
            if h is not None:
                self.dirty[host] = _Due(now - DEFAULT_INTERVAL_S, h.newest(), DEFAULT_INTERVAL_S)

    def forget(self, hosts: set[str]) -> None:
        """Drop these hosts: their partition moved to another replica."""
        self.hot.forget(hosts.__contains__)
        for host in hosts:
            self.dirty.pop(host, None)
            self.evaluated_at.pop(host, None)
            self.watch.pop(host, None)

    def take(self, raw: bytes, received_at: float, quiet: bool = False) -> None:
        """A batch into the host's window; ``quiet`` (a rebuild's): not evaluated on its account."""
        batch = self.decoder.decode(raw)
        self.hot.ingest(batch, raw, received_at=received_at)
        if quiet:
            return
        intervals = [snap.interval_s for snap in batch.snapshots if snap.interval_s]
        interval = intervals[-1] if intervals else DEFAULT_INTERVAL_S
        h = self.hot.host(batch.host_id)
        newest = h.newest() if h is not None else 0.0
        due = self.dirty.get(batch.host_id)
        if due is None:
            self.dirty[batch.host_id] = _Due(self.clock(), newest, interval)
        else:
            due.newest, due.interval = newest, interval

    def due_hosts(self) -> list[str]:
        """Hosts to evaluate now: a full interval of the host's clock since the last
        evaluation, or dirty for a full interval of the wall clock (the end of a burst)."""
        now = self.clock()
        out = []
        for host, d in self.dirty.items():
            last = self.evaluated_at.get(host)
            if last is None or d.newest >= last + 0.9 * d.interval or now - d.dirty_since >= d.interval:
                out.append(host)
        return out

    def evaluate(self, host: str) -> tuple[str, Evidence, list[Hypothesis]] | None:
        """Evaluate one host; its full evidence when the top hypothesis clears the threshold."""
        d = self.dirty.pop(host, None)
        self.evaluations += 1
        if d is not None:
            self.lag_max = max(self.lag_max, self.clock() - d.dirty_since)
        ev = self.hot.evidence(host, self.config.window_s, lazy=True)
        if ev is None:
            self.evaluated_at.pop(host, None)  # evicted: nothing to remember it by
            return None
        self.evaluated_at[host] = ev.end
        if host in self._failing and host not in self.failed:
            self._failing.discard(host)
            self.recovered.add(host)
        if len(self.evaluated_at) > 2 * self.config.hot_state.max_hosts:
            self.evaluated_at = {h: t for h, t in self.evaluated_at.items() if self.hot.host(h) is not None}
        rules = self.config.rules.for_host(host, ev.labels)
        hyps = rank(ev, detect(ev, rules), rules)
        if not fires(hyps, self.config.open_threshold):
            left = self.watch.pop(host, 0)
            if left > 0:
                self.cleans.append(host)
                if left > 1:
                    self.watch[host] = left - 1
            return None
        self.watch.pop(host, None)
        self.watch[host] = self.config.report_clean
        while len(self.watch) > self.config.hot_state.max_hosts:
            self.watch.popitem(last=False)
        self.triggers += 1
        full = self.hot.evidence(host, self.config.window_s)
        # The hypotheses go with it: the engine takes them rather than detect again.
        return (host, full, hyps) if full is not None else None

    def stats(self) -> dict[str, Any]:
        s = self.hot.stats()
        out = {
            "hosts": s["hosts"],
            "samples": s["samples"],
            "bytes": s["bytes"],
            "evicted_hosts": s["evicted_hosts"],
            "evicted_live_hosts": s["evicted_live_hosts"],
            "dropped_signals": s["dropped_signals"],
            "evaluations": self.evaluations,
            "triggers": self.triggers,
            "errors": self.errors,
            "xids_dropped": self.xids_dropped,
            "waiting": len(self.dirty),
            "lag_max_s": round(self.lag_max, 3),
        }
        self.lag_max = 0.0
        return out


def _worker_main(
    index: int,
    config: WorkerConfig,
    inq: Any,
    outq: Any,
    watch: Sequence[str] = (),
    parent: int | None = None,
) -> None:
    """A worker process: apply what came, evaluate what is due, answer reads; ``watch``: the
    hosts of its partition with live runs, reported clean when found so; ``parent``: the
    controller's pid (passed in: it may be gone before this process gets to ask)."""
    if config.nice:
        os.nice(config.nice)
    parent = parent if parent is not None else os.getppid()
    ev = Evaluator(config)
    ev.watch_hosts(watch)
    last_stats = 0.0
    while True:
        if os.getppid() != parent:
            # The controller died (kill -9, OOM): nothing reads this worker any more. Without
            # this, every crash left its workers behind, each holding its hosts' windows.
            log.warning("analysis worker %d: the controller is gone; exiting", index)
            outq.cancel_join_thread()  # nobody reads it: do not wait at exit to flush it
            return
        try:
            msgs = [inq.get(timeout=0.1 if ev.dirty else 0.5)]
        except queue.Empty:
            msgs = []
        while msgs and len(msgs) < DRAIN_MAX:
            try:
                msgs.append(inq.get_nowait())
            except queue.Empty:
                break
        for msg in msgs:
            kind = msg[0]
            if kind == "batches":
                for raw, received_at, quiet in msg[1]:
                    try:
                        ev.take(raw, received_at, quiet)
                    except Exception:  # one bad batch must not stop the worker for the others
                        ev.errors += 1
                        log.exception("analysis worker %d could not take a batch", index)
            elif kind == "read":
                _, req, host, seconds, since = msg
                outq.put(("reply", req, ev.hot.evidence(host, seconds, since)))
            elif kind == "forget":
                ev.forget(set(msg[1]))
            elif kind == "kick":
                ev.kick(msg[1])
            elif kind == "watch":
                ev.watch_hosts(msg[1])
            elif kind == "stop":
                return
        for host in ev.due_hosts():
            try:
                fired = ev.evaluate(host)
            except Exception as exc:
                ev._failed(host, f"{type(exc).__name__}: {exc}")
                log.exception("analysis worker %d: evaluating %s failed", index, host)
                continue
            if fired is not None:
                outq.put(("trigger", *fired))
        for host in ev.cleans:
            outq.put(("clean", host))
        ev.cleans.clear()
        for host, error in ev.failed.items():
            outq.put(("failure", host, error))
        ev.failed.clear()
        for host in ev.recovered:
            outq.put(("ok", host))
        ev.recovered.clear()
        if ev.xids:
            outq.put(("xids", ev.xids))
            ev.xids = []
        now = time.monotonic()
        if now - last_stats >= STATS_EVERY_S:
            last_stats = now
            outq.put(("stats", index, ev.stats()))


# --- the controller's side ---------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    proc: Any
    inq: Any
    # Each worker writes to a queue of its own: a worker killed while holding a shared
    # queue's write lock would leave it held, and every other worker stuck behind it.
    outq: Any
    started: float = field(default_factory=time.time)


class AnalysisPool:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        workers: int,
        queue_max: int,
        read_timeout_s: float,
        queue_bytes: int = 64 << 20,
        on_trigger: Callable[[str, Evidence, list[Hypothesis]], None],
        on_failure: Callable[[str, str], None] | None = None,
        on_ok: Callable[[str], None] | None = None,
        on_clean: Callable[[str], None] | None = None,
        on_xids: Callable[[str, list[Any]], None] | None = None,
        live_hosts: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.config = config
        # Hosts with live runs: a worker that starts (or starts again) watches them, so their
        # clean evaluations resolve those runs rather than the sweep, an attach window later.
        self.live_hosts = live_hosts
        self.n = workers
        self.queue_max = queue_max
        self.queue_bytes = queue_bytes
        self.read_timeout_s = read_timeout_s
        self.on_trigger = on_trigger
        self.on_failure = on_failure
        self.on_ok = on_ok
        self.on_clean = on_clean
        self.on_xids = on_xids
        self._ctx = multiprocessing.get_context("spawn")  # a fork of a threaded process can hang
        self._workers: list[_Worker] = []
        self._replies: dict[int, Future[Evidence | None]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stats: dict[int, dict[str, Any]] = {}
        # Per worker: the batches listed for its next hand-over; and what waits for it in all,
        # counted until it is in the pipe (listed, or being handed over): the bounds' measure.
        self._pending: list[list[tuple[bytes, float, bool]]] = [[] for _ in range(workers)]
        self._listed_bytes = [0] * workers
        self._waiting_n = [0] * workers
        self._waiting_bytes = [0] * workers
        self._flush = threading.Event()  # something waits
        self._full = threading.Event()  # enough waits to hand over now
        # Held while batches are taken from pending and put in a pipe: they reach a worker
        # in the order they were accepted, whoever hands them over.
        self._handover = threading.Lock()
        self.restarts = 0
        self.submitted = 0
        self.overflow = 0
        self.untold = 0  # forget, kick and watch messages a worker could not be sent

    def _watched(self, index: int) -> list[str]:
        if self.live_hosts is None:
            return []
        try:
            hosts = self.live_hosts()
        except Exception:  # the store down: the sweep still resolves them
            log.exception("reading the hosts with live runs for analysis worker %d failed", index)
            return []
        return [h for h in hosts if self.partition(h) == index][: self.config.hot_state.max_hosts]

    def _spawn(self, index: int) -> _Worker:
        # Two hand-overs in the pipe at most: the bound on what waits is the pending list's.
        inq, outq = self._ctx.Queue(2), self._ctx.Queue()
        proc = self._ctx.Process(
            target=_worker_main,
            args=(index, self.config, inq, outq, self._watched(index), os.getpid()),
            name=f"incidentlab-analysis-{index}",
            daemon=True,
        )
        proc.start()
        w = _Worker(index, proc, inq, outq)
        t = threading.Thread(target=self._read, args=(w,), name=f"analysis-results-{index}", daemon=True)
        t.start()
        self._threads = [*(x for x in self._threads if x.is_alive()), t]
        return w

    def start(self) -> None:
        if self._workers:
            return
        self._workers = [self._spawn(i) for i in range(self.n)]
        for target, name in ((self._supervise, "analysis-supervisor"), (self._flusher, "analysis-flush")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            with contextlib.suppress(queue.Full, ValueError, OSError):
                w.inq.put_nowait(("stop",))
        for w in self._workers:
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.terminate()
        for t in self._threads:
            t.join(timeout=5)

    def partition(self, host_id: str) -> int:
        return zlib.crc32(host_id.encode()) % self.n

    def forget(self, hosts: Sequence[str]) -> None:
        """Have the workers drop these hosts (their partition moved to another replica)."""
        self._tell("forget", hosts)

    def kick(self, hosts: Sequence[str]) -> None:
        """Have the workers evaluate these hosts now (a partition's rebuild ended)."""
        self._tell("kick", hosts)

    def watch(self, hosts: Sequence[str]) -> None:
        """Have the workers report these hosts' clean evaluations (their live runs came here)."""
        self._tell("watch", hosts)

    def _tell(self, kind: str, hosts: Sequence[str]) -> None:
        """A message about some hosts to the workers holding them, after the batches already
        listed for them (flushed first, so that it never overtakes one of those)."""
        by: dict[int, list[str]] = {}
        for h in hosts:
            by.setdefault(self.partition(h), []).append(h)
        with self._handover:
            for i, names in by.items():
                if i >= len(self._workers):
                    continue
                with self._lock:
                    batches = self._take_listed(i)
                try:
                    # Waiting (bounded) for room: these go in front of the message, in order.
                    if batches:
                        self._workers[i].inq.put(("batches", batches), timeout=TELL_WAIT_S)
                        with self._lock:
                            self._waiting_n[i] -= len(batches)
                            self._waiting_bytes[i] -= sum(len(raw) for raw, *_ in batches)
                        batches = []
                    self._workers[i].inq.put((kind, names), timeout=TELL_WAIT_S)
                except (queue.Full, ValueError, OSError):
                    if batches:
                        with self._lock:  # not handed over: listed again, in front
                            self._pending[i][:0] = batches
                            self._listed_bytes[i] += sum(len(raw) for raw, *_ in batches)
                    self.untold += 1
                    log.warning("analysis worker %d was not told to %s %d hosts", i, kind, len(names))

    def submit_when_room(self, accepted: Accepted, timeout_s: float = 10.0) -> None:
        """A rebuild's batch (quiet): waits, bounded, for room in its worker's queue rather than
        be dropped as overflow. Off the event loop only: it sleeps."""
        i = self.partition(accepted.host_id)
        size = len(accepted.raw)
        deadline = time.monotonic() + timeout_s
        while self._workers and time.monotonic() < deadline:
            with self._lock:
                room = (
                    self._waiting_n[i] < self.queue_max and self._waiting_bytes[i] + size <= self.queue_bytes
                )
            if room:
                break
            self._flush.set()
            self._full.set()
            time.sleep(0.02)
        self.submit(accepted, quiet=True)

    def submit(self, accepted: Accepted, quiet: bool = False) -> None:
        """After the ack: cheap and bounded (a list append); the flusher hands the batches
        over. Past queue_max waiting for one worker, a batch is not analysed, counted.
        ``quiet``: a rebuild's batch, into the window without an evaluation of its own."""
        if not self._workers:
            return
        i = self.partition(accepted.host_id)
        size = len(accepted.raw)
        with self._lock:
            if self._waiting_n[i] >= self.queue_max or self._waiting_bytes[i] >= self.queue_bytes:
                self.overflow += 1
                return
            listed = self._pending[i]
            listed.append((accepted.raw, accepted.received_at, quiet))
            self._listed_bytes[i] += size
            self._waiting_n[i] += 1
            self._waiting_bytes[i] += size
            self.submitted += 1
            full = len(listed) >= FLUSH_BATCHES or self._listed_bytes[i] >= FLUSH_BYTES
        self._flush.set()
        if full:
            self._full.set()

    def _take_listed(self, i: int) -> list[tuple[bytes, float, bool]]:
        """Worker i's listed batches, to hand over (still counted as waiting). Under _lock."""
        batches, self._pending[i] = self._pending[i], []
        self._listed_bytes[i] = 0
        return batches

    def _flusher(self) -> None:
        while not self._stop.is_set():
            if not self._flush.wait(0.5):
                continue
            self._full.wait(FLUSH_S)  # let the batches of the next moments join these
            self._flush.clear()
            self._full.clear()
            with self._handover:
                with self._lock:
                    listed = [self._take_listed(i) for i in range(self.n)]
                behind = [not self._hand_over(i, batches) for i, batches in enumerate(listed) if batches]
            if any(behind):
                self._stop.wait(FLUSH_S)  # a worker is behind: try again later, not per batch

    def _hand_over(self, i: int, batches: list[tuple[bytes, float, bool]]) -> bool:
        try:
            self._workers[i].inq.put_nowait(("batches", batches))
        except queue.Full:
            # The worker has two hand-overs still to take: these wait in front of the
            # batches that came since, still counted against the bounds.
            with self._lock:
                self._pending[i][:0] = batches
                self._listed_bytes[i] += sum(len(raw) for raw, *_ in batches)
            self._flush.set()
            return False
        with self._lock:
            self._waiting_n[i] -= len(batches)
            self._waiting_bytes[i] -= sum(len(raw) for raw, *_ in batches)
        return True

    def evidence(self, host_id: str, seconds: float, since: float | None = None) -> Evidence | None:
        """The host's window, read from its worker (None when it has none or does not answer in time)."""
        if not self._workers:
            return None
        req = next(self._ids)
        fut: Future[Evidence | None] = Future()
        i = self.partition(host_id)
        # What was acked before this read is in the window it reads: the batches waiting
        # for the next flush go ahead of it.
        with self._handover:
            with self._lock:
                batches = self._take_listed(i)
                self._replies[req] = fut
            if batches:
                self._hand_over(i, batches)
        try:
            self._workers[i].inq.put(("read", req, host_id, seconds, since), timeout=self.read_timeout_s)
            return fut.result(timeout=self.read_timeout_s)
        except (queue.Full, FutureTimeout):
            log.warning("analysis worker for %s did not answer a window read in time", host_id)
            return None
        finally:
            with self._lock:
                self._replies.pop(req, None)

    def _read(self, w: _Worker) -> None:
        """One worker's messages, until it is replaced (it died) or the pool stops."""
        while not self._stop.is_set():
            try:
                msg = w.outq.get(timeout=0.5)
            except queue.Empty:
                if self._workers[w.index] is not w:
                    return
                continue
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "reply":
                with self._lock:
                    fut = self._replies.get(msg[1])
                if fut is not None and not fut.done():
                    fut.set_result(msg[2])
            elif kind == "trigger":
                try:
                    self.on_trigger(msg[1], msg[2], msg[3])
                except Exception:
                    log.exception("taking the trigger for %s failed", msg[1])
            elif kind == "clean" and self.on_clean is not None:
                self.on_clean(msg[1])
            elif kind == "failure" and self.on_failure is not None:
                self.on_failure(msg[1], msg[2])
            elif kind == "ok" and self.on_ok is not None:
                self.on_ok(msg[1])
            elif kind == "xids" and self.on_xids is not None:
                for host, events in msg[1]:
                    self.on_xids(host, events)
            elif kind == "stats":
                self._stats[msg[1]] = msg[2]

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            for i, w in enumerate(self._workers):
                if w.proc.is_alive() or self._stop.is_set():
                    continue
                log.error(
                    "analysis worker %d (pid %s) exited with %s: starting it again; its hosts' windows "
                    "fill again from their next batches",
                    i,
                    w.proc.pid,
                    w.proc.exitcode,
                )
                self.restarts += 1
                self._stats.pop(i, None)
                self._workers[i] = self._spawn(i)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def stats(self) -> dict[str, Any]:
        per = [self._stats.get(i, {}) for i in range(len(self._workers))]

        def total(key: str) -> int:
            return int(sum(p.get(key, 0) for p in per))

        return {
            "workers": self.n,
            "alive": sum(1 for w in self._workers if w.proc.is_alive()),
            "restarts": self.restarts,
            "submitted": self.submitted,
            "queue_overflow": self.overflow,
            "untold": self.untold,
            "hosts": total("hosts"),
            "samples": total("samples"),
            "bytes": total("bytes"),
            "evaluations": total("evaluations"),
            "dropped_signals": total("dropped_signals"),
            "triggers": total("triggers"),
            "errors": total("errors"),
            "waiting": total("waiting"),
            "lag_max_s": max((p.get("lag_max_s", 0.0) for p in per), default=0.0),
        }
