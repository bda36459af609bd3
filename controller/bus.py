"""The bus, controller side: batches from NATS JetStream (``bus`` settings; off by default).

While this controller leads it makes sure of the stream: one subject pattern per
partition, ``<subject_prefix>.<n>.*`` (a subject no consumer reads is refused at publish,
not stored to age out), file storage, ``replicas``, and limits that refuse rather than
discard: a full stream (``max_bytes``) or a host past its own share
(``max_msgs_per_host``) answers the collector's publish with an error, and the collector
keeps the batch in its spool, as it does when the controller is away. Only what the
controller already acknowledged ages out (``max_age_s``). It updates only the fields it
owns and leaves the rest of an existing stream's configuration as it found it.

It consumes through one durable pull consumer per partition, ``<prefix>-p<n>``, acknowledging
each message by hand, a few at a time (``fetch_batch``), each marked in progress when its
turn comes so that the ack timer runs only while it is worked on. A batch goes through the
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

Leadership is the existing single writer's: a follower consumes nothing, and a controller
that stops leading stops between two messages and hands the rest of its fetch back.
Spreading the partitions over replicas under leases is not built yet.
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
from typing import Any

from collector.bus import HOST_HEADER, files_key, host_from_subject, nats_options
from collector.wire import LOST_HEADER, partition_of
from controller.auth import Principal
from controller.config import BusSettings
from controller.ingest import Answer, IngestService, parse_lost

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


class BusConsumer:
    def __init__(
        self,
        s: BusSettings,
        ingest: IngestService,
        is_leader: Callable[[], bool],
        workers: int = 4,
        max_body_bytes: int = 8 << 20,
    ) -> None:
        self.s = s
        self.ingest = ingest
        self.is_leader = is_leader
        self.max_body_bytes = max_body_bytes
        self.counts: Counter[str] = Counter()
        self.pending: dict[int, int] = {}
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
        return {
            "enabled": True,
            "connected": self.connected,
            "stream": self.s.stream,
            "partitions": self.s.partitions,
            "owned": sorted(lag) if self.connected else [],
            "pending": sum(lag.values()),
            "pending_max": max(lag.values(), default=0),
            "counts": dict(self.counts),
            "last_error": self.last_error,
        }

    # --- the loop ----------------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if not self.is_leader():
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
            tasks = [asyncio.create_task(self._partition(js, p)) for p in range(self.s.partitions)]
            try:
                while not self._stop.is_set() and self.is_leader() and not nc.is_closed:
                    await self._pause(0.2)
                    if files_key(self.s) != files:
                        log.warning("bus: TLS or credential files changed: reconnecting")
                        return
                    for t in [t for t in tasks if t.done()]:
                        exc = t.exception()
                        if exc is not None:
                            raise exc
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.pending.clear()
            self._nc = None
            with contextlib.suppress(Exception):
                await nc.close()

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

    async def _partition(self, js: Any, partition: int) -> None:
        sub = await self._subscribe(js, partition)
        polled = 0.0
        # nats-py can hand one delivery to two fetches (a pull request that timed out here is
        # still served); a delivery is its (stream sequence, delivery count): seen, skipped.
        done: OrderedDict[tuple[int, int], None] = OrderedDict()
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(self.s.fetch_batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own and asyncio's: nothing came
                msgs = []
            for i, msg in enumerate(msgs):  # in stream order: a host's batches stay in order
                if not self.is_leader() or self._stop.is_set():
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
                wait = await self._handle(msg, partition)
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

    def _ingest(self, principal: Principal, encoding: str | None, data: bytes, lost: int) -> Answer:
        answer = self.ingest.process(principal, encoding, data, lost)
        assert isinstance(answer, Answer)  # without inline_limit it always answers
        return answer

    def _host_of(self, msg: Any, partition: int) -> str | None:
        """The host a message may write: its subject's, when that is a host id, hashes to the
        partition it came in on, and agrees with the Incidentlab-Host header."""
        host = host_from_subject(msg.subject)
        if host is None or not _HOST_ID.match(host) or partition_of(host, self.s.partitions) != partition:
            return None
        said = (msg.headers or {}).get(HOST_HEADER)
        return host if said in (None, host) else None

    async def _handle(self, msg: Any, partition: int) -> float:
        """One message to its end; the seconds to hold the partition back (the store away), or 0."""
        host = self._host_of(msg, partition)
        if host is None:
            self.counts["refused_subject"] += 1
            await msg.term()
            return 0.0
        await msg.in_progress()  # its ack timer starts now, not when it was fetched
        headers = msg.headers or {}
        principal = Principal("bus", "collector", (host,))  # the id has no glob characters
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            self._pool,
            self._ingest,
            principal,
            headers.get("Content-Encoding"),
            msg.data,
            parse_lost(headers.get(LOST_HEADER)),
        )
        self.ingest.count(answer)
        if answer.status == 200:
            await msg.ack()  # after the ledger commit: a crash between the two redelivers a duplicate
            self.counts["accepted" if answer.accepted is not None else "duplicate"] += 1
            await loop.run_in_executor(self._pool, self.ingest.answered, answer)
            return 0.0
        if answer.status in PERMANENT:
            self.counts[f"refused_{answer.status}"] += 1
            await msg.term()
            return 0.0
        delivered = int(getattr(msg.metadata, "num_delivered", 1) or 1)
        wait = min(2.0**delivered, 30.0)
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
