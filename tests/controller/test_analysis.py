"""Analysis at fleet scale: windows that fit, evaluation on the host's clock, coalesced
bursts, and a supervised worker process whose hosts' faults are found after it dies."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from bench.fleet_bench import _children
from collector.wire import BATCH_SCHEMA, validate_batch
from controller.config import HotStateSettings
from controller.detectors import Evidence
from controller.ingest import Accepted
from controller.workflow import analysis_pool
from controller.workflow.analysis import detect, rank
from controller.workflow.analysis_pool import AnalysisPool, Evaluator, WorkerConfig
from testkit.scenarios import FAULTS, calm

from .conftest import ControllerProc


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def batch(
    host: str, seq: int, ts: float, family: str | None = None, i: int = 0, interval: float = 10.0
) -> bytes:
    d = calm(i)
    if family is not None:
        FAULTS[family][0](d, i)
    sources = {n: {"status": "ok", "path": "file", "reason": None, "data": data} for n, data in d.items()}
    obj = {
        "schema": BATCH_SCHEMA,
        "host_id": host,
        "boot_id": "b",
        "stream_id": "s",
        "seq": seq,
        "sent_at": ts,
        "snapshots": [{"ts": ts, "interval_s": interval, "sources": sources}],
    }
    return msgspec.json.encode(obj)


def config(**hot: Any) -> WorkerConfig:
    return WorkerConfig(HotStateSettings(**hot), window_s=300.0, open_threshold=0.5)


# --- a fleet at steady state ------------------------------------------------------------------------


@pytest.mark.slow
def test_two_thousand_hosts_at_steady_state_keep_full_windows_and_a_fault_is_found() -> None:
    """40 minutes of 2,000 hosts sending every 10 s (the old hot state began evicting live
    hosts at 27): every window holds its full 300 s, within the bounds, nothing evicted."""
    hosts = 2000
    clock = Clock(1_900_000_000.0)
    ev = Evaluator(config(), clock=clock)
    faulty = f"node-{random.Random(7).randrange(hosts):04d}"
    rounds = 240  # 40 minutes
    template = validate_batch(batch("node-0000", 1, clock.t))
    for r in range(rounds):
        clock.t += 10.0
        for h in range(hosts):
            host = f"node-{h:04d}"
            if host == faulty and r >= rounds - 8:
                b = validate_batch(batch(host, r + 1, clock.t, "cpu_saturation", r))
            else:
                snap = msgspec.structs.replace(template.snapshots[0], ts=clock.t + h * 0.001)
                b = msgspec.structs.replace(template, host_id=host, seq=r + 1, snapshots=[snap])
            ev.hot.ingest(b, b"", received_at=clock.t)
    stats = ev.hot.stats()
    assert stats["hosts"] == hosts and stats["evicted_hosts"] == 0 and stats["evicted_live_hosts"] == 0
    assert stats["trimmed_for_total"] == 0 and stats["bytes"] <= HotStateSettings().max_total_bytes
    per_host = stats["bytes"] / hosts
    assert per_host <= 100_000, per_host
    for h in range(0, hosts, 97):
        window = ev.hot.evidence(f"node-{h:04d}", 300)
        assert window is not None and window.end - window.start >= 290 and window.samples >= 30
    fired = []
    for h in range(hosts):  # every host evaluated as its worker would
        found = ev.evaluate(f"node-{h:04d}")
        if found is not None:
            hyps = rank(found[1], detect(found[1]))
            fired.append((found[0], hyps[0].family))
    assert fired == [(faulty, "cpu_saturation")]


# --- the host's clock and bursts --------------------------------------------------------------------


def test_a_burst_is_evaluated_once_and_at_its_last_sample() -> None:
    clock = Clock(1_900_000_000.0)
    ev = Evaluator(config(), clock=clock)
    # A collector back from an outage sends 60 batches at once.
    for i in range(60):
        ev.take(batch("h", i + 1, clock.t - 600 + 10 * i, "cpu_saturation", i), clock.t)
    assert ev.due_hosts() == ["h"]
    fired = ev.evaluate("h")
    assert ev.evaluations == 1 and ev.evaluated_at["h"] == clock.t - 600 + 10 * 59
    assert fired is not None and fired[0] == "h" and fired[1].end == clock.t - 10
    # The hypotheses it found go with it, as the engine would find them in that evidence.
    assert [h.to_dict() for h in fired[2]] == [h.to_dict() for h in rank(fired[1], detect(fired[1]))]
    assert ev.due_hosts() == []


def test_at_most_once_per_interval_and_the_last_sample_is_never_dropped() -> None:
    clock = Clock(1_900_000_000.0)
    ev = Evaluator(config(), clock=clock)
    ev.take(batch("h", 1, clock.t), clock.t)
    ev.evaluate("h")
    # Two seconds of the host's clock later: not a new interval, so not yet...
    clock.t += 1
    second = clock.t + 1
    ev.take(batch("h", 2, second), clock.t)
    assert ev.due_hosts() == []
    # ...but once it has waited a whole interval on the wall clock, it is evaluated.
    clock.t += 10
    assert ev.due_hosts() == ["h"]
    ev.evaluate("h")
    assert ev.evaluated_at["h"] == second
    # A sample a full interval later is due at once.
    ev.take(batch("h", 3, clock.t + 12), clock.t)
    assert ev.due_hosts() == ["h"]


# --- the worker process -----------------------------------------------------------------------------


def wait_for(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_its_hosts_faults_are_still_found() -> None:
    triggers: list[tuple[str, Evidence]] = []
    cleans: list[str] = []
    pool = AnalysisPool(
        config(),
        workers=2,
        queue_max=1000,
        read_timeout_s=5.0,
        on_trigger=lambda host, ev, hyps: triggers.append((host, ev)),
        on_clean=cleans.append,
        live_hosts=lambda: ["node-x", "node-gone"],  # the store's hosts with live runs
    )
    pool.start()
    try:
        host = "node-x"

        def send(n: int, seq0: int, family: str | None = "cpu_saturation") -> None:
            now = time.time()
            for i in range(n):
                ts = now - (n - i) * 10
                raw = batch(host, seq0 + i, ts, family, i)
                pool.submit(Accepted(host, raw, now))

        send(12, 1)
        wait_for(lambda: any(h == host for h, _ in triggers), 30, "the fault to be found")
        ev = pool.evidence(host, 300)
        assert ev is not None and ev.samples == 12
        victim = pool._workers[pool.partition(host)].proc.pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pool.restarts == 1 and pool.stats()["alive"] == 2, 30, "the restart")
        # The new worker never saw it fire, but its run is live: a calm window is reported
        # clean, so the run resolves by its lifecycle, not the sweep an attach window later.
        cleans.clear()
        send(12, 50, None)
        wait_for(lambda: host in cleans, 30, "a clean evaluation of the host with a live run")
        triggers.clear()
        send(12, 100)  # the host's next batches fill its window again
        wait_for(lambda: any(h == host for h, _ in triggers), 30, "the fault to be found again")
        assert triggers[-1][1].samples == 24  # the new worker's calm and faulty batches, none from before
        wait_for(lambda: pool.stats()["evaluations"] > 0, 10, "stats from the new worker")
    finally:
        pool.stop()


def test_what_waits_for_a_worker_is_bounded_by_count_and_bytes() -> None:
    pool = AnalysisPool(
        config(),
        workers=1,
        queue_max=1000,
        read_timeout_s=1.0,
        queue_bytes=1 << 20,
        on_trigger=lambda h, e, hy: None,
    )
    pool._workers = [None]  # type: ignore[list-item]  # taken as started: nothing is flushed
    raw = b"x" * (100 << 10)
    for i in range(50):
        pool.submit(Accepted(f"h{i}", raw, 0.0))
    assert pool.submitted == 11 and pool.overflow == 39  # 1 MiB of 100 KiB batches, and one past it
    small = AnalysisPool(
        config(), workers=1, queue_max=5, read_timeout_s=1.0, on_trigger=lambda h, e, hy: None
    )
    small._workers = [None]  # type: ignore[list-item]
    for i in range(8):
        small.submit(Accepted(f"h{i}", b"{}", 0.0))
    assert small.submitted == 5 and small.overflow == 3


def test_a_worker_behind_makes_batches_wait_not_vanish(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pipe to a worker holds two hand-overs; a flush that finds it full used to drop its
    # batches (counted as overflow) although the pending list had room for them.
    monkeypatch.setattr(analysis_pool, "FLUSH_S", 0.01)  # many flushes try while the pipe is full
    pool = AnalysisPool(
        config(), workers=1, queue_max=100, read_timeout_s=1.0, on_trigger=lambda h, e, hy: None
    )
    inq: queue.Queue[Any] = queue.Queue(2)
    pool._workers = [SimpleNamespace(inq=inq)]  # type: ignore[list-item]
    inq.put(("batches", [(b"0", 0.0)]))
    inq.put(("batches", [(b"1", 1.0, False)]))
    flusher = threading.Thread(target=pool._flusher, daemon=True)
    flusher.start()
    try:
        for i in range(2, 8):
            pool.submit(Accepted("h", str(i).encode(), float(i)))
            time.sleep(0.02)
        time.sleep(0.2)
        assert pool.overflow == 0 and pool._waiting_n == [6]  # all waiting: the pipe is full
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 8 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                got += [raw for raw, *_ in inq.get(timeout=0.1)[1]]
        assert got == [str(i).encode() for i in range(8)]  # every one, in the order they came
        assert pool.overflow == 0 and pool.submitted == 6 and pool._waiting_n == [0]
    finally:
        pool._stop.set()
        flusher.join(timeout=5)


def test_batches_go_over_together_and_a_burst_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis_pool, "FLUSH_S", 5.0)
    monkeypatch.setattr(analysis_pool, "FLUSH_BATCHES", 20)
    pool = AnalysisPool(
        config(), workers=1, queue_max=100, read_timeout_s=1.0, on_trigger=lambda h, e, hy: None
    )
    inq: queue.Queue[Any] = queue.Queue(2)
    pool._workers = [SimpleNamespace(inq=inq)]  # type: ignore[list-item]
    flusher = threading.Thread(target=pool._flusher, daemon=True)
    flusher.start()
    try:
        for i in range(19):
            pool.submit(Accepted("h", b"%d" % i, 0.0))
        time.sleep(0.3)
        assert inq.empty()  # a few batches wait for the flush interval, to go over in one
        t = time.monotonic()
        pool.submit(Accepted("h", b"19", 0.0))  # the 20th: enough to go now
        msg = inq.get(timeout=2)
        assert time.monotonic() - t < 1.0 and [raw for raw, *_ in msg[1]] == [b"%d" % i for i in range(20)]
    finally:
        pool._stop.set()
        flusher.join(timeout=10)


def test_a_read_sees_every_batch_acked_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis_pool, "FLUSH_S", 30.0)  # no flush would come in time
    pool = AnalysisPool(
        config(), workers=1, queue_max=100, read_timeout_s=0.3, on_trigger=lambda h, e, hy: None
    )
    inq: queue.Queue[Any] = queue.Queue(2)
    pool._workers = [SimpleNamespace(inq=inq)]  # type: ignore[list-item]
    for i in range(3):
        pool.submit(Accepted("h", b"%d" % i, 0.0))
    assert pool.evidence("h", 300.0) is None  # nobody answers here: the read times out
    first, second = inq.get_nowait(), inq.get_nowait()
    assert first[0] == "batches" and [raw for raw, *_ in first[1]] == [b"0", b"1", b"2"]
    assert second[0] == "read" and second[2] == "h"
    assert pool._waiting_n == [0] and pool._waiting_bytes == [0] and pool.overflow == 0


def test_batches_held_for_a_worker_behind_count_against_its_bounds() -> None:
    # Taken from the list for a hand-over, batches used to stop counting until it failed and
    # put them back: what arrived meanwhile found room that was not there.
    pool = AnalysisPool(
        config(), workers=1, queue_max=5, read_timeout_s=1.0, on_trigger=lambda h, e, hy: None
    )

    class FullPipe:
        tries = 0

        def put_nowait(self, msg: Any) -> None:
            FullPipe.tries += 1
            for i in range(5):  # batches acked while this hand-over is under way
                pool.submit(Accepted("h", b"late%d" % i, 0.0))
            raise queue.Full

    pool._workers = [SimpleNamespace(inq=FullPipe())]  # type: ignore[list-item]
    for i in range(5):
        pool.submit(Accepted("h", b"%d" % i, 0.0))
    with pool._lock:
        listed = pool._take_listed(0)
    assert not pool._hand_over(0, listed)
    assert FullPipe.tries == 1 and pool.submitted == 5 and pool.overflow == 5
    assert pool._waiting_n == [5] and [raw for raw, *_ in pool._pending[0]] == [b"%d" % i for i in range(5)]


def test_a_worker_behind_is_retried_per_flush_interval_not_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis_pool, "FLUSH_S", 0.1)
    monkeypatch.setattr(analysis_pool, "FLUSH_BATCHES", 2)  # every batch past the first asks to go now
    pool = AnalysisPool(
        config(), workers=1, queue_max=10_000, read_timeout_s=1.0, on_trigger=lambda h, e, hy: None
    )

    class FullPipe:
        tries = 0

        def put_nowait(self, msg: Any) -> None:
            FullPipe.tries += 1
            raise queue.Full

    pool._workers = [SimpleNamespace(inq=FullPipe())]  # type: ignore[list-item]
    flusher = threading.Thread(target=pool._flusher, daemon=True)
    flusher.start()
    try:
        deadline = time.monotonic() + 1.0
        n = 0
        while time.monotonic() < deadline:
            pool.submit(Accepted("h", b"%d" % n, 0.0))
            n += 1
            time.sleep(0.001)
        assert n > 300 and FullPipe.tries <= 12  # about one a flush interval, not one a batch
        assert pool.overflow == 0 and pool._waiting_n == [n] and len(pool._pending[0]) == n
    finally:
        pool._stop.set()
        flusher.join(timeout=5)


# --- clean evaluations, for the runs' lifecycle ----------------------------------------------------


def test_a_host_that_fired_reports_its_clean_evaluations_then_stops() -> None:
    """The controller resolves a run from clean evaluations: a worker reports them for a host
    that fired (as many as report_clean), and never for a host that did not."""
    clock = Clock(1_900_000_000.0)
    ev = Evaluator(
        WorkerConfig(HotStateSettings(), window_s=300.0, open_threshold=0.5, report_clean=3), clock=clock
    )
    seq = 0

    def send(host: str, family: str | None, i: int) -> None:
        nonlocal seq
        seq += 1
        clock.t += 10
        ev.take(batch(host, seq, clock.t, family, i), clock.t)

    for i in range(20):
        send("calm", None, i)
        assert ev.evaluate("calm") is None
    assert ev.cleans == []
    for i in range(20):
        send("sick", None, i)
        ev.evaluate("sick")
    fired = []
    for i in range(8):
        send("sick", "cpu_saturation", i)
        fired.append(ev.evaluate("sick") is not None)
    assert fired[-1] and ev.cleans == []  # (the busy mean needs a few samples to pass 90%)
    reported = []
    for i in range(12):
        send("sick", None, 30 + i)
        ev.evaluate("sick")  # the busy mean trails the fault by a few samples
        reported.append(list(ev.cleans))
        ev.cleans.clear()
    # Once it stops firing: exactly three cleans in a row, then none.
    first = reported.index(["sick"])
    assert reported[first : first + 3] == [["sick"]] * 3 and not any(reported[first + 3 :]), reported
    assert "sick" not in ev.watch


def test_hosts_with_live_runs_from_before_are_watched_from_the_start() -> None:
    clock = Clock(1_900_000_000.0)
    ev = Evaluator(
        WorkerConfig(HotStateSettings(), window_s=300.0, open_threshold=0.5, report_clean=2), clock=clock
    )
    ev.watch_hosts(["live"])
    for i in range(12):
        clock.t += 10
        for host in ("live", "other"):
            ev.take(batch(host, i + 1, clock.t, None, i), clock.t)
            ev.evaluate(host)
    assert ev.cleans == ["live", "live"]  # report_clean of them; none for a host with no run


def test_a_pool_hands_each_worker_the_live_hosts_of_its_partition() -> None:
    hosts = [f"h{i}" for i in range(40)]
    pool = AnalysisPool(
        config(),
        workers=3,
        queue_max=10,
        read_timeout_s=1.0,
        on_trigger=lambda h, e, hy: None,
        live_hosts=lambda: hosts,
    )
    parts = [pool._watched(i) for i in range(3)]
    assert sorted(h for p in parts for h in p) == sorted(hosts)
    assert all(pool.partition(h) == i for i, p in enumerate(parts) for h in p)

    def down() -> list[str]:
        raise OSError("store down")

    assert (
        AnalysisPool(
            config(),
            workers=1,
            queue_max=10,
            read_timeout_s=1.0,
            on_trigger=lambda h, e, hy: None,
            live_hosts=down,
        )._watched(0)
        == []
    )


def test_analysis_workers_exit_when_the_controller_is_killed(
    controller_factory: Callable[..., ControllerProc],
) -> None:
    """A controller killed with SIGKILL leaves no analysis worker behind holding windows."""
    ctl = controller_factory()
    assert ctl.proc is not None
    workers = [p for p in _children(ctl.proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert workers, "the controller runs its analysis in worker processes by default"
    ctl.kill9()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if Path(f"/proc/{p}").exists()], "orphaned analysis workers"
