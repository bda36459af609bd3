"""The bus, controller side: batches from NATS JetStream (``bus`` settings; off by default).

Each controller that consumes makes sure of the stream: one subject pattern per
partition, ``<subject_prefix>.<n>.*`` (a subject no consumer reads is refused at publish,
not stored to age out), file storage, ``replicas``, and limits that refuse rather than
discard: a full stream (``max_bytes``) or a host past its own share
(``max_msgs_per_host``) answers the collector's publish with an error, and the collector
keeps the batch in its spool, as it does when the controller is away. Every batch ages out
after ``max_age_s``, read or not (limits retention: a rebuild reads what was read), so
``max_bytes`` must hold that long of the fleet's batches; how full it is is watched. It
updates only the fields it owns and leaves the rest of an existing stream's configuration
as it found it.

It consumes through one durable pull consumer per partition, ``<prefix>-p<n>``, acknowledging
each message by hand, a few at a time (``fetch_batch``); one that waited behind slow ones
in its fetch is marked in progress when its turn comes, so that the ack timer runs only
while it is worked on. A batch goes through the
same ingest as an HTTPS body (decompression bombs, the wire contract, the clock, the ledger,
hot state), allowed to write exactly the host its subject names, and only from the
partition that host hashes to: a collector that publishes another host's batch, or under a
name that is not a host id, or into another partition, is refused. The ledger row commits
before the message is acknowledged, so a controller killed between the two sees the batch
again and the ledger calls it a duplicate: exactly once in effect.

What the ingest refuses for good is terminated, never redelivered. A store that is away
(503) is waited out: the message is negatively acknowledged with a delay, for ever, as the
collector would retry an HTTPS 503 for ever. A batch the ingest fails on (500) is given up
after ``max_deliveries`` (counted and logged; it stays in the stream until it ages out).

It consumes the partitions this controller owns (controller/partitions.py): all of them
on the single writer, its share when replicas share the fleet. A partition it stops owning
is stopped between two messages, the rest of its fetch handed back. A partition it comes to
own is first **rebuilt**: the stream's last ``window_s`` of that partition, up to what its
durable consumer has acknowledged, is read through a short-lived ephemeral consumer into hot
state and the analysis windows (no ledger: those batches are already counted) without
evaluating; then each rebuilt host is evaluated once on its full window, and the durable
consumer takes over from where the last owner acknowledged. A fault that runs through a
failover is found again at once, and attaches to the run the last owner opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector.bus import HOST_HEADER, files_key, host_from_subject, nats_options
from collector.wire import LOST_HEADER, partition_of
from controller.auth import Principal
from controller.config import BusSettings
from controller.ingest import Accepted, Answer, IngestService, parse_lost

log = logging.getLogger(__name__)
PERMANENT = (400, 403, 413, 415)  # the ingest's refusals that no retry can change
WAIT_OUT = (503,)  # the store away: waited out, never given up
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")  # the wire contract's


def _delivery(msg: Any) -> tuple[int, int] | None:
    try:
        md = msg.metadata
        return int(md.sequence.stream), int(md.num_delivered)
    except Exception:  # not a JetStream delivery: nothing to tell it by
        return None


def consumer_name(prefix: str, partition: int) -> str:
    return f"{prefix.replace('.', '_')}-p{partition}"


REBUILD_FETCH = 32  # messages per fetch of a rebuild: at most this x max_body_bytes held per rebuild
REBUILDS_AT_ONCE = 4  # partitions rebuilt at the same time (the others wait their turn)
REBUILD_FETCH_TIMEOUT_S = 5.0
STREAM_LOOK_S = 10.0  # how often the stream's use is read
STREAM_WARN = 0.8  # past this share of max_bytes, said in the log and the status


@dataclass
class Rebuild:
    """One partition's rebuild: the stream sequences it reads, and how far it got."""

    first: int = 0  # the first message's stream sequence (0: none read yet)
    upto: int = 0  # the durable consumer's ack floor: the last message already counted
    at: int = 0
    messages: int = 0
    hosts: int = 0
    refused: int = 0
    started: float = 0.0
    seconds: float | None = None  # None while it runs
    failed: str | None = None  # why it stopped short (the partition is consumed all the same)

    def progress(self) -> float:
        if self.seconds is not None:
            return 1.0
        if self.upto <= self.first or self.first == 0:
            return 0.0
        return round(min(1.0, (self.at - self.first + 1) / (self.upto - self.first + 1)), 3)

    def view(self) -> dict[str, Any]:
        return {
            "progress": self.progress(),
            "messages": self.messages,
            "hosts": self.hosts,
            "refused": self.refused,
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "failed": self.failed,
        }


class BusConsumer:
    def __init__(
        self,
        s: BusSettings,
        ingest: IngestService,
        owned: Callable[[], frozenset[int]],
        workers: int = 4,
        max_body_bytes: int = 8 << 20,
        window_s: float = 0.0,
        rebuilt: Callable[[Accepted], None] | None = None,
        rebuild_done: Callable[[int, list[str]], None] | None = None,
        epoch: Callable[[int], int] | None = None,
    ) -> None:
        self.s = s
        self.ingest = ingest
        self.owned = owned
        self.max_body_bytes = max_body_bytes
        # The analysis window a new owner rebuilds (0: none), where each rebuilt batch goes
        # (the analysis windows, quietly), and who is told that a partition's rebuild ended and
        # which hosts it read.
        self.window_s = window_s
        self.rebuilt = rebuilt
        self.rebuild_done = rebuild_done
        # Which time the partition came here: a rebuild is due once per coming, not per
        # (re)connection; a task of an earlier coming stops.
        self.epoch: Callable[[int], int] = epoch or (lambda p: 0)
        self._built: dict[int, int] = {}  # partition -> the epoch its last rebuild was for
        self._rebuild_slots: asyncio.Semaphore | None = None
        self.counts: Counter[str] = Counter()
        self.pending: dict[int, int] = {}
        self.rebuilds: dict[int, Rebuild] = {}  # the latest per partition owned now
        self.rebuilds_done = 0
        self.stream_bytes = 0
        self.stream_full = 0.0  # the stream's bytes as a share of its max_bytes
        # Messages being ingested or rebuilt, per partition: held from before the ownership check
        # until the work on the pool has ended (a cancelled await does not end it).
        self._busy: Counter[int] = Counter()
        self._busy_lock = threading.Lock()
        self.last_error: str | None = None
        self._nc: Any = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bus-ingest")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="controller-bus", daemon=True)
        self._stop = asyncio.Event()
        self._main: Any = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        if self._main is not None:
            with contextlib.suppress(Exception):
                self._main.result(timeout=self.s.connect_timeout_s + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def connected(self) -> bool:
        nc = self._nc
        return bool(nc is not None and nc.is_connected)

    def status(self) -> dict[str, Any]:
        lag = dict(self.pending)
        rebuilds = dict(self.rebuilds)
        return {
            "enabled": True,
            "connected": self.connected,
            "stream": self.s.stream,
            "partitions": self.s.partitions,
            "owned": sorted(lag) if self.connected else [],
            "pending": sum(lag.values()),
            "pending_max": max(lag.values(), default=0),
            "counts": dict(self.counts),
            "rebuilding": {str(p): r.view() for p, r in sorted(rebuilds.items()) if r.seconds is None},
            "rebuilt": {str(p): r.view() for p, r in sorted(rebuilds.items()) if r.seconds is not None},
            "rebuilds_done": self.rebuilds_done,
            "stream_bytes": self.stream_bytes,
            "stream_full": round(self.stream_full, 4),
            "last_error": self.last_error,
        }

    def quiesce(self, parts: frozenset[int], timeout_s: float = 10.0) -> bool:
        """Wait (bounded) until no message of ``parts`` is being ingested or rebuilt: called when
        they are given up, after ``owned()`` stopped naming them, before their locks go."""
        deadline = time.monotonic() + timeout_s
        while any(self._busy.get(p, 0) > 0 for p in parts):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _hold(self, partition: int) -> None:
        with self._busy_lock:
            self._busy[partition] += 1

    def _let_go(self, partition: int) -> None:
        with self._busy_lock:
            self._busy[partition] -= 1

    async def _on_pool(self, partition: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` on the pool, the partition busy until it has run (not until the await ends)."""
        self._hold(partition)
        try:
            cf = self._pool.submit(fn, *args)
        except BaseException:
            self._let_go(partition)
            raise
        cf.add_done_callback(lambda _: self._let_go(partition))
        return await asyncio.wrap_future(cf)

    def forget(self, parts: frozenset[int]) -> None:
        """Partitions gone elsewhere: their lag and rebuilds are no longer this replica's to show."""
        for p in parts:
            self.rebuilds.pop(p, None)
            self.pending.pop(p, None)

    # --- the loop ----------------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if not self.owned():
                await self._pause(0.5)
                continue
            try:
                await self._consume()
                backoff = 0.5
            except Exception as exc:  # the server away, a refused stream config: say so, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("bus: %s; retrying in %.1f s", self.last_error, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _connect(self) -> Any:
        import nats

        options = nats_options(self.s, "incidentlab-controller") | {"error_cb": self._on_error}
        # nats-py retries a first connect for ever with unlimited reconnects: bounded here.
        return await asyncio.wait_for(nats.connect(**options), self.s.connect_timeout_s + 1)

    def stream_config(self, existing: Any = None) -> Any:
        """The stream as this controller needs it; an existing one keeps every field it does not set."""
        from dataclasses import replace

        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        owned: dict[str, Any] = {
            "subjects": [f"{self.s.subject_prefix}.{p}.*" for p in range(self.s.partitions)],
            "retention": RetentionPolicy.LIMITS,
            "max_age": self.s.max_age_s,
            "max_bytes": self.s.max_bytes,
            "max_msgs_per_subject": self.s.max_msgs_per_host,
            "max_msg_size": self.max_body_bytes,
            "discard": DiscardPolicy.NEW,
            "discard_new_per_subject": True,
            "duplicate_window": self.s.duplicate_window_s,
            "num_replicas": self.s.replicas,
        }
        if existing is not None:
            return replace(existing, **owned)
        return StreamConfig(name=self.s.stream, storage=StorageType.FILE, **owned)

    async def ensure_stream(self, js: Any) -> None:
        from nats.js.errors import NotFoundError

        try:
            info = await js.stream_info(self.s.stream)
        except NotFoundError:
            await js.add_stream(self.stream_config())
            return
        want = self.stream_config(info.config)
        if want != info.config:
            try:
                await js.update_stream(want)
            except Exception as exc:  # consume what is there; say why the settings did not take
                self.last_error = f"the stream's settings could not be updated: {exc}"
                log.warning("bus: %s", self.last_error)

    async def _consume(self) -> None:
        nc = await self._connect()
        self._nc = nc
        files = files_key(self.s)
        try:
            js = nc.jetstream()
            await self.ensure_stream(js)
            self.last_error = None
            self._rebuild_slots = asyncio.Semaphore(REBUILDS_AT_ONCE)
            tasks: dict[int, asyncio.Task[None]] = {}
            epochs: dict[int, int] = {}
            looked = 0.0
            try:
                while not self._stop.is_set() and self.owned() and not nc.is_closed:
                    for p in sorted(self.owned()):
                        if not 0 <= p < self.s.partitions:
                            continue
                        e = self.epoch(p)
                        if p in tasks and epochs.get(p) != e:
                            tasks.pop(p).cancel()  # an earlier coming's, still winding down
                        if p not in tasks:
                            epochs[p] = e
                            tasks[p] = asyncio.create_task(self._partition(js, p, e))
                    await self._pause(0.2)
                    if time.monotonic() - looked >= STREAM_LOOK_S:
                        looked = time.monotonic()
                        await self._look_at_stream(js)
                    if files_key(self.s) != files:
                        log.warning("bus: TLS or credential files changed: reconnecting")
                        return
                    for p, t in [(p, t) for p, t in tasks.items() if t.done()]:
                        del tasks[p]
                        exc = t.exception()
                        if exc is not None:
                            raise exc
            finally:
                for t in tasks.values():
                    t.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            self.pending.clear()
            self._nc = None
            with contextlib.suppress(Exception):
                await nc.close()

    async def _look_at_stream(self, js: Any) -> None:
        """How full the stream is: past ``max_bytes`` it refuses publishes (the collectors keep
        their batches, and the controllers see nothing new), so say it before it comes."""
        try:
            info = await js.stream_info(self.s.stream)
        except Exception:
            return
        used, cap = int(info.state.bytes), int(info.config.max_bytes or 0)
        self.stream_bytes = used
        full = used / cap if cap > 0 else 0.0
        if full >= STREAM_WARN and self.stream_full < STREAM_WARN:
            log.warning(
                "bus: the stream holds %.0f%% of bus.max_bytes (%d of %d bytes): raise max_bytes, or "
                "publishes will be refused (size it as hosts x batch bytes x max_age_s / interval)",
                full * 100,
                used,
                cap,
            )
        self.stream_full = full

    async def _subscribe(self, js: Any, partition: int) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        subject = f"{self.s.subject_prefix}.{partition}.*"
        durable = consumer_name(self.s.subject_prefix, partition)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.s.ack_wait_s,
            max_ack_pending=self.s.max_ack_pending,
            filter_subject=subject,
        )
        sub = await js.pull_subscribe(subject, durable=durable, stream=self.s.stream, config=config)
        # An existing durable keeps its own config (nats-py creates one only when none is there):
        # the settings' ack_wait and max_ack_pending are put on it, its position kept.
        info = await sub.consumer_info()
        if (info.config.ack_wait, info.config.max_ack_pending) != (config.ack_wait, config.max_ack_pending):
            await js.add_consumer(self.s.stream, config)
        return sub

    def _mine(self, partition: int, epoch: int) -> bool:
        return partition in self.owned() and self.epoch(partition) == epoch

    async def _partition(self, js: Any, partition: int, epoch: int) -> None:
        """One owned partition: rebuilt first (once per coming here), then consumed until it is
        no longer ours."""
        if self.window_s > 0 and self._built.get(partition) != epoch:
            assert self._rebuild_slots is not None
            async with self._rebuild_slots:
                done = self._mine(partition, epoch) and await self._rebuild(js, partition, epoch)
            if not done:
                return  # stopped short: the next task of this coming does it again
            self._built[partition] = epoch
        if not self._mine(partition, epoch):
            return
        sub = await self._subscribe(js, partition)
        try:
            await self._consume_partition(sub, partition, epoch)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if partition not in self.owned():
                self.pending.pop(partition, None)

    async def _consume_partition(self, sub: Any, partition: int, epoch: int) -> None:
        polled = 0.0
        # nats-py can hand one delivery to two fetches (a pull request that timed out here is
        # still served); a delivery is its (stream sequence, delivery count): seen, skipped.
        done: OrderedDict[tuple[int, int], None] = OrderedDict()
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(self.s.fetch_batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own and asyncio's: nothing came
                msgs = []
            fetched = time.monotonic()
            if not msgs and not self._mine(partition, epoch):
                return
            for i, msg in enumerate(msgs):  # in stream order: a host's batches stay in order
                if not self._mine(partition, epoch) or self._stop.is_set():
                    for rest in msgs[i:]:  # not ours to work on now: back to whoever leads next
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    return
                delivery = _delivery(msg)
                if delivery is not None:
                    if delivery in done:
                        self.counts["delivered_twice"] += 1
                        continue
                    done[delivery] = None
                    if len(done) > 4 * self.s.fetch_batch + 64:
                        done.popitem(last=False)
                self._hold(partition)  # before the check: a release waits for it from here
                try:
                    if not self._mine(partition, epoch):  # given up since the check above
                        with contextlib.suppress(Exception):
                            await msg.nak()
                        continue
                    wait = await self._handle(msg, partition, fetched, epoch)
                finally:
                    self._let_go(partition)
                if wait:
                    for rest in msgs[i + 1 :]:  # the store is away: the rest wait too, in order
                        with contextlib.suppress(Exception):
                            await rest.nak(delay=wait)
                    await self._pause(wait)
                    break
            now = time.monotonic()
            if now - polled >= 2.0:
                polled = now
                with contextlib.suppress(Exception):
                    info = await sub.consumer_info()
                    self.pending[partition] = int(info.num_pending) + int(info.num_ack_pending)

    async def _rebuild(self, js: Any, partition: int, epoch: int) -> bool:
        """Read the partition's last window, up to its durable consumer's ack floor, into hot
        state and the analysis windows; then have each host it held evaluated once. Best
        effort: a failure is counted and said, and the partition is consumed all the same."""
        r = Rebuild(started=time.monotonic())
        self.rebuilds[partition] = r
        hosts: set[str] = set()
        complete = True
        try:
            complete = await self._read_window(js, partition, epoch, r, hosts)
        except Exception as exc:
            r.failed = f"{type(exc).__name__}: {exc}"
            self.counts["rebuild_failed"] += 1
            log.warning("bus: partition %d's rebuild failed: %s", partition, r.failed)
        r.hosts = len(hosts)
        if not complete:
            r.failed = "stopped: done again when the partition is consumed here next"
            r.seconds = time.monotonic() - r.started
            return False
        if self.rebuild_done is not None and self._mine(partition, epoch):
            await self._on_pool(partition, self.rebuild_done, partition, sorted(hosts))
        self._rebuilt(partition, r)
        return True

    async def _read_window(self, js: Any, partition: int, epoch: int, r: Rebuild, hosts: set[str]) -> bool:
        """True when it read what it set out to (or failed for good): False when it was stopped
        (the partition went, or this controller stops) and is to be done again."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            info = await js.consumer_info(self.s.stream, consumer_name(self.s.subject_prefix, partition))
            r.upto = int(info.ack_floor.stream_seq)
        except NotFoundError:
            r.upto = 0  # never consumed: nothing was counted, nothing to rebuild
        if r.upto == 0:
            return True
        subject = f"{self.s.subject_prefix}.{partition}.*"
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(time.time() - self.window_s, UTC),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,  # gone by itself if this controller dies mid-way
            mem_storage=True,
            filter_subject=subject,
        )
        sub = await js.pull_subscribe(subject, stream=self.s.stream, config=config)
        try:
            while r.at < r.upto:
                if self._stop.is_set():
                    return False
                try:
                    msgs = await sub.fetch(REBUILD_FETCH, timeout=REBUILD_FETCH_TIMEOUT_S)
                except TimeoutError:
                    if r.first:
                        r.failed = f"the stream went quiet at {r.at} of {r.upto}"
                    break  # nothing (more) in the window
                for msg in msgs:
                    delivery = _delivery(msg)
                    seq = delivery[0] if delivery is not None else r.at + 1
                    if seq > r.upto:
                        r.at = r.upto
                        break
                    r.first = r.first or seq
                    r.at = seq
                    self._hold(partition)  # before the check: a release waits for it from here
                    try:
                        if not self._mine(partition, epoch):
                            return False  # given up meanwhile: what it read goes with the partition
                        got = await self._on_pool(partition, self._rebuild_one, msg, partition)
                    finally:
                        self._let_go(partition)
                    if got is None:
                        r.refused += 1
                        continue
                    r.messages += 1
                    hosts.add(got.host_id)
        finally:
            with contextlib.suppress(Exception):
                await js.delete_consumer(self.s.stream, (await sub.consumer_info()).name)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return True

    def _rebuilt(self, partition: int, r: Rebuild) -> None:
        r.seconds = time.monotonic() - r.started
        self.rebuilds_done += 1
        if r.messages:
            log.info(
                "bus: partition %d rebuilt from %d batches of %d hosts in %.2f s",
                partition,
                r.messages,
                r.hosts,
                r.seconds,
            )

    def _rebuild_one(self, msg: Any, partition: int) -> Accepted | None:
        host = self._host_of(msg, partition)
        if host is None:
            return None
        at = time.time()
        with contextlib.suppress(Exception):
            at = msg.metadata.timestamp.timestamp()  # when the stream stored it: when it came
        headers = msg.headers or {}
        got = self.ingest.rebuild(host, headers.get("Content-Encoding"), msg.data, at)
        if got is not None and self.rebuilt is not None:
            self.rebuilt(got)  # on the pool: it may wait for the analysis queue's room
        return got

    def _ingest(self, principal: Principal, encoding: str | None, data: bytes, lost: int) -> Answer:
        """The ingest, and for an accepted batch its queueing for analysis, in one hop to the
        pool (in memory: a crash before the ack redelivers it, and the ledger calls it a duplicate)."""
        answer = self.ingest.process(principal, encoding, data, lost)
        assert isinstance(answer, Answer)  # without inline_limit it always answers
        self.ingest.count(answer)
        if answer.status == 200:
            self.ingest.answered(answer)
        return answer

    def _host_of(self, msg: Any, partition: int) -> str | None:
        """The host a message may write: its subject's, when that is a host id, hashes to the
        partition it came in on, and agrees with the Incidentlab-Host header."""
        host = host_from_subject(msg.subject)
        if host is None or not _HOST_ID.match(host) or partition_of(host, self.s.partitions) != partition:
            return None
        said = (msg.headers or {}).get(HOST_HEADER)
        return host if said in (None, host) else None

    async def _handle(
        self, msg: Any, partition: int, fetched: float | None = None, epoch: int | None = None
    ) -> float:
        """One message to its end; the seconds to hold the partition back (the store away), or 0."""
        host = self._host_of(msg, partition)
        if host is None:
            self.counts["refused_subject"] += 1
            await msg.term()
            return 0.0
        if fetched is None or time.monotonic() - fetched > self.s.ack_wait_s / 4:
            # It waited behind slow ones in its fetch: its ack timer starts again now (one more
            # message to the server, saved while the fetch goes at the usual pace).
            await msg.in_progress()
        headers = msg.headers or {}
        principal = Principal("bus", "collector", (host,))  # the id has no glob characters
        answer = await self._on_pool(
            partition,
            self._ingest,
            principal,
            headers.get("Content-Encoding"),
            msg.data,
            parse_lost(headers.get(LOST_HEADER)),
        )
        if answer.status == 200:
            if epoch is not None and not self._mine(partition, epoch):
                # Given up while it was stored: its next owner, whose rebuild read only to the
                # acknowledged floor, gets it again (a duplicate to the ledger, counted once).
                await msg.nak()
                self.counts["handed_back"] += 1
                return 0.0
            await msg.ack()  # after the ledger commit: a crash between the two redelivers a duplicate
            self.counts["accepted" if answer.accepted is not None else "duplicate"] += 1
            return 0.0
        if answer.status in PERMANENT:
            self.counts[f"refused_{answer.status}"] += 1
            await msg.term()
            return 0.0
        delivered = int(getattr(msg.metadata, "num_delivered", 1) or 1)
        wait = min(2.0**delivered, 30.0)
        if answer.status == 503 and partition not in self.owned():
            await msg.nak()  # the partition moved on: its next owner takes it at once
            return 0.0
        if answer.status in WAIT_OUT:
            self.counts[f"waited_{answer.status}"] += 1
            await msg.nak(delay=wait)
            return wait
        if delivered >= self.s.max_deliveries:
            self.counts["given_up"] += 1
            log.warning(
                "bus: %s failed %d deliveries (HTTP %d): given up", msg.subject, delivered, answer.status
            )
            await msg.term()
            return 0.0
        self.counts[f"retried_{answer.status}"] += 1
        await msg.nak(delay=wait)
        return 0.0
