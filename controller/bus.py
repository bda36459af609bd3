"""The bus, controller side: batches from NATS JetStream (``bus`` settings; off by default).

While this controller leads it creates the stream over ``<subject_prefix>.>`` (file
storage, retention ``max_age_s`` and ``max_bytes``, a ``duplicate_window_s`` that
dedupes a collector's re-publish by its ``Nats-Msg-Id``) and consumes it through one
durable pull consumer per partition, ``incidentlab-p<n>``, acknowledging each message
by hand. A batch goes through the same ingest as an HTTPS body (decompression bombs,
the wire contract, the clock, the ledger, hot state) with the host of its subject as
the only host it may write: a collector that publishes another host's batch under its
own subject is refused like a token bound to another host. The ledger row commits
before the message is acknowledged, so a controller killed between the two sees the
batch again and the ledger calls it a duplicate: exactly once in effect.

What the ingest refuses for good (the batch is invalid, too large, another host's) is
terminated, never redelivered; what fails for now (the store away) is negatively
acknowledged with a delay and comes back, at most ``max_deliveries`` times.

Leadership is the existing single writer's: a follower consumes nothing. Spreading the
partitions over replicas under leases is not built yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from collector.bus import HOST_HEADER, host_from_subject
from collector.wire import LOST_HEADER
from controller.auth import Principal
from controller.config import BusSettings
from controller.ingest import Answer, IngestService, parse_lost

log = logging.getLogger(__name__)
PERMANENT = (400, 403, 413, 415)  # the ingest's refusals that no retry can change


def consumer_name(partition: int) -> str:
    return f"incidentlab-p{partition}"


class BusConsumer:
    def __init__(
        self,
        s: BusSettings,
        ingest: IngestService,
        is_leader: Callable[[], bool],
        workers: int = 2,
    ) -> None:
        self.s = s
        self.ingest = ingest
        self.is_leader = is_leader
        self.counts: Counter[str] = Counter()
        self.pending: dict[int, int] = {}
        self.connected = False
        self.last_error: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bus-ingest")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="controller-bus", daemon=True)
        self._stopping = False
        self._main: Any = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    def stop(self) -> None:
        self._stopping = True
        if self._main is not None:
            with contextlib.suppress(Exception):
                self._main.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

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

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping:
            if not self.is_leader():
                await asyncio.sleep(0.5)
                continue
            try:
                await self._consume()
                backoff = 0.5
            except Exception as exc:  # the server away, a refused stream config: say so, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("bus: %s; retrying in %.1f s", self.last_error, backoff, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.connected = False

    async def _connect(self) -> Any:
        import nats

        options: dict[str, Any] = {
            "servers": self.s.servers,
            "connect_timeout": self.s.connect_timeout_s,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "name": "incidentlab-controller",
        }
        if self.s.ca_file or self.s.cert_file or any(u.startswith("tls://") for u in self.s.servers):
            ctx = ssl.create_default_context(cafile=str(self.s.ca_file) if self.s.ca_file else None)
            if self.s.cert_file is not None:
                ctx.load_cert_chain(str(self.s.cert_file), str(self.s.key_file) if self.s.key_file else None)
            options["tls"] = ctx
        if self.s.creds_file is not None:
            options["user_credentials"] = str(self.s.creds_file)
        if self.s.token_file is not None:
            options["token"] = self.s.token_file.read_text().strip()
        return await nats.connect(**options)

    async def ensure_stream(self, js: Any) -> None:
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        config = StreamConfig(
            name=self.s.stream,
            subjects=[f"{self.s.subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=self.s.max_age_s,
            max_bytes=self.s.max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=self.s.duplicate_window_s,
        )
        try:
            await js.stream_info(self.s.stream)
        except NotFoundError:
            await js.add_stream(config)
            return
        await js.update_stream(config)  # the settings win; what the stream holds stays

    async def _consume(self) -> None:
        nc = await self._connect()
        try:
            js = nc.jetstream()
            await self.ensure_stream(js)
            self.connected = True
            self.last_error = None
            tasks = [asyncio.create_task(self._partition(js, p)) for p in range(self.s.partitions)]
            try:
                while not self._stopping and self.is_leader() and not nc.is_closed:
                    await asyncio.sleep(0.2)
                    done = [t for t in tasks if t.done()]
                    for t in done:
                        exc = t.exception()
                        if exc is not None:
                            raise exc
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.pending.clear()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _partition(self, js: Any, partition: int) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        subject = f"{self.s.subject_prefix}.{partition}.*"
        sub = await js.pull_subscribe(
            subject,
            durable=consumer_name(partition),
            stream=self.s.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.s.ack_wait_s,
                max_ack_pending=self.s.max_ack_pending,
                filter_subject=subject,
            ),
        )
        polled = 0.0
        while True:
            try:
                msgs = await sub.fetch(self.s.fetch_batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own and asyncio's: nothing came
                msgs = []
            for msg in msgs:  # in stream order: a host's batches stay in order
                await self._handle(msg)
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

    async def _handle(self, msg: Any) -> None:
        headers = msg.headers or {}
        host = host_from_subject(msg.subject)
        if host is None or headers.get(HOST_HEADER) not in (None, host):
            self.counts["refused_subject"] += 1
            await msg.term()
            return
        principal = Principal("bus", "collector", (host,))
        encoding = headers.get("Content-Encoding")
        lost = parse_lost(headers.get(LOST_HEADER))
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self._pool, self._ingest, principal, encoding, msg.data, lost)
        self.ingest.count(answer)
        if answer.status == 200:
            await msg.ack()  # after the ledger commit: a crash between the two redelivers a duplicate
            self.counts["accepted" if answer.accepted is not None else "duplicate"] += 1
            await loop.run_in_executor(self._pool, self.ingest.answered, answer)
        elif answer.status in PERMANENT:
            self.counts[f"refused_{answer.status}"] += 1
            await msg.term()
        else:
            delivered = int(getattr(msg.metadata, "num_delivered", 1) or 1)
            if delivered >= self.s.max_deliveries:
                self.counts["given_up"] += 1
                log.warning(
                    "bus: %s failed %d deliveries (HTTP %d): given up", msg.subject, delivered, answer.status
                )
                await msg.term()
            else:
                self.counts[f"retried_{answer.status}"] += 1
                await msg.nak(delay=min(2.0**delivered, 30.0))
