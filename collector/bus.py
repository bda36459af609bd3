"""bus: batches through a NATS JetStream stream (``bus`` settings; off by default).

Each batch goes to ``<subject_prefix>.<partition>.<host>``: the partition is a stable
hash of host_id (``collector.wire.partition_of``, the controllers' own), the host token
host_id with the characters NATS gives meaning to escaped. It is published gzip'd, like
an HTTPS body, with ``Nats-Msg-Id: <host_id>:<stream_id>:<seq>``, so a batch published twice (a
crash before its PubAck, a retry after a lost one) is stored once by JetStream's
duplicate window, and the controllers' ledger dedupes past it. ``Nats-Expected-Stream``
makes the server refuse it unless the subject lands in the configured stream. The spool
moves past a record only on the PubAck for that very message: from the configured
stream, with a sequence. A batch larger than the server takes can never go and is
dead-lettered like one the controller refuses; anything else (no server, no stream
yet, a timeout) is retried, the records safe in the spool.

nats-py is asyncio: one event loop on a thread of its own carries the connection; the
shipper's thread waits on each publish. The TLS files, the .creds file and the token
file are read at connect, and a change to any of them reconnects before the next publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from collector.config import BusSettings, NatsSettings
from collector.errors import TooLargeForBus, TransportError
from collector.transport import Transport, TransportStats, compress
from collector.wire import ACK_SCHEMA, LOST_HEADER, Ack, BatchKey, partition_of

T = TypeVar("T")
MSG_ID = "Nats-Msg-Id"
HOST_HEADER = "Incidentlab-Host"
_ESCAPE = {c: f"%{ord(c):02X}" for c in ".*>% \t\r\n"}


def subject_token(host_id: str) -> str:
    """host_id as one subject token: '.', '*', '>', '%' and whitespace %-escaped (reversible)."""
    return "".join(_ESCAPE.get(c, c) for c in host_id)


def host_from_subject(subject: str) -> str | None:
    """The host_id a subject names (its last token, unescaped); None when that token is not
    one subject_token makes (an escape it never writes, a character it always escapes)."""
    token = subject.rsplit(".", 1)[-1]
    host = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), token)
    return host if host and subject_token(host) == token else None


def subject_for(prefix: str, host_id: str, partitions: int) -> str:
    return f"{prefix}.{partition_of(host_id, partitions)}.{subject_token(host_id)}"


def msg_id(key: BatchKey) -> str:
    # The host too: JetStream dedupes across the whole stream, and two hosts' stream ids
    # must never make one host's batch the other's duplicate.
    return f"{key.host_id}:{key.stream_id}:{key.seq}"


def files_key(s: NatsSettings) -> tuple[tuple[int, int] | None, ...]:
    """What the connection's files are now (size and mtime): a change means reconnect."""
    out: list[tuple[int, int] | None] = []
    for p in (s.ca_file, s.cert_file, s.key_file, s.creds_file, s.token_file):
        try:
            st = p.stat() if p is not None else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size) if st is not None else None)
    return tuple(out)


def nats_options(s: NatsSettings, name: str) -> dict[str, Any]:
    """nats.connect's keyword arguments for these settings; reads the token file."""
    options: dict[str, Any] = {
        "servers": s.servers,
        "connect_timeout": s.connect_timeout_s,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "name": name,
    }
    if s.ca_file or s.cert_file or any(u.startswith("tls://") for u in s.servers):
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if s.cert_file is not None:
            ctx.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        options["tls"] = ctx
    if s.creds_file is not None:
        options["user_credentials"] = str(s.creds_file)
    if s.token_file is not None:
        options["token"] = s.token_file.read_text().strip()
    return options


async def _cancel_others() -> None:
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class BusTransport:
    """Delivers one batch at a time to JetStream; the same interface as Transport."""

    def __init__(
        self, s: BusSettings, encoding: str = "gzip", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.s = s
        self.encoding = encoding
        self.url = s.servers[0]
        self.stats = TransportStats()
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="collector-bus", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None
        self._files: tuple[tuple[int, int] | None, ...] | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout=timeout)
        except TimeoutError:
            fut.cancel()
            raise

    async def _connect(self, options: dict[str, Any]) -> None:
        import nats

        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = self._js = None
        self._nc = await nats.connect(**options)
        self._js = self._nc.jetstream()

    def _ensure(self) -> None:
        files = files_key(self.s)
        if self._nc is not None and not self._nc.is_closed and files == self._files:
            return
        if self._nc is not None and files != self._files:
            self.stats.tls_reloads += 1
        try:  # the files first, so that their errors are not taken for the network's
            options = nats_options(self.s, "incidentlab-collector")
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot read the bus credentials or TLS files: {exc}") from exc
        try:
            self._run(self._connect(options), self.s.connect_timeout_s + 2)
        except Exception as exc:  # nats-py's NoServersError, a timeout, a refused connection
            raise TransportError(f"cannot reach the bus at {', '.join(self.s.servers)}: {exc!r}") from exc
        self._files = files

    def send(self, body: bytes, key: BatchKey, lost: int | None = None) -> Ack:
        """Publish one batch and return its ack once its own PubAck came back; raises
        TransportError (retry later) or PermanentRejection (it can never go)."""
        import nats.errors
        import nats.js.errors

        self._ensure()
        subject = subject_for(self.s.subject_prefix, key.host_id, self.s.partitions)
        headers = {MSG_ID: msg_id(key), HOST_HEADER: key.host_id, "Content-Encoding": self.encoding}
        if lost is not None:
            headers[LOST_HEADER] = str(lost)
        payload = compress(body, self.encoding)
        # The server counts the headers too, and answers a message past max_payload by closing
        # the connection: a publish that would only ever time out. Refused here, for good.
        size = len(payload) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 16
        limit = int(getattr(self._nc, "max_payload", 0) or 0)
        if limit and size > limit:
            self.stats.rejected += 1
            raise TooLargeForBus(
                f"batch {key.seq} is {size} bytes with its headers; the server takes {limit}"
            )
        start = self._clock()
        self.stats.sent += 1
        try:
            ack = self._run(
                self._js.publish(
                    subject, payload, timeout=self.s.publish_timeout_s, stream=self.s.stream, headers=headers
                ),
                self.s.publish_timeout_s + 2,
            )
        except nats.errors.MaxPayloadError as exc:
            self.stats.rejected += 1
            raise TooLargeForBus(f"batch {key.seq} is {len(payload)} bytes: {exc}") from exc
        except nats.js.errors.APIError as exc:
            self._failed(f"the bus refused batch {key.seq}: {exc}")
        except Exception as exc:  # timeouts, no responders (no stream yet), a closed connection
            self._failed(f"batch {key.seq} not published: {type(exc).__name__}: {exc}")
        if (
            getattr(ack, "stream", None) != self.s.stream
            or not isinstance(getattr(ack, "seq", None), int)
            or ack.seq < 1
        ):
            self.stats.bad_acks += 1
            self._failed(f"a PubAck for batch {key.seq} that is not from stream {self.s.stream}: {ack!r}")
        if ack.duplicate and not self._stored_here(ack.seq, subject):
            # Another publisher took this message id (it can name any): the batch is not
            # stored. Retried; once the duplicate window has passed it goes through.
            self.stats.bad_acks += 1
            self._failed(f"batch {key.seq}: its message id was taken by a message on another subject")
        latency = self._clock() - start
        self.stats.last_latency_s = latency
        self.stats.latencies = [*self.stats.latencies[-99:], latency]
        if ack.duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.accepted += 1
        return Ack(
            ACK_SCHEMA, key.host_id, key.stream_id, key.seq, "duplicate" if ack.duplicate else "accepted"
        )

    def _stored_here(self, seq: int, subject: str) -> bool:
        """Whether the stream's message ``seq`` is on ``subject``: a duplicate PubAck names the
        message stored first. True when it cannot be read (no permission): trusted, as before."""
        try:  # a collector may not be allowed to read the stream: then it waits no longer than this
            stored = self._run(self._js.get_msg(self.s.stream, seq), min(2.0, self.s.publish_timeout_s))
        except Exception:
            return True
        return bool(getattr(stored, "subject", subject) == subject)

    def _failed(self, reason: str) -> Any:
        self.stats.retries += 1
        self.stats.last_error = reason
        raise TransportError(reason)

    def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                self._run(self._nc.close(), 5)
            self._nc = None
        with contextlib.suppress(Exception):  # a connect given up on: let it end, not linger
            self._run(_cancel_others(), 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()


class Fanout:
    """HTTPS to the controller and the bus, both: a record is settled when both acked it
    (each side dedupes the other's retries)."""

    def __init__(self, https: Transport, bus: BusTransport) -> None:
        self.https, self.bus = https, bus

    @property
    def url(self) -> str:
        return self.https.url

    @property
    def stats(self) -> TransportStats:
        """Both sides' counts, the latest error of either."""
        h, b = self.https.stats, self.bus.stats
        return TransportStats(
            sent=h.sent + b.sent,
            accepted=h.accepted + b.accepted,
            duplicates=h.duplicates + b.duplicates,
            rejected=h.rejected + b.rejected,
            retries=h.retries + b.retries,
            bad_acks=h.bad_acks + b.bad_acks,
            leader_hops=h.leader_hops,
            tls_reloads=h.tls_reloads + b.tls_reloads,
            last_latency_s=h.last_latency_s,
            last_error=b.last_error or h.last_error,
            latencies=h.latencies,
        )

    def send(self, body: bytes, key: BatchKey, lost: int | None = None) -> Ack:
        ack = self.https.send(body, key, lost=lost)
        self.bus.send(body, key, lost=lost)
        return ack

    def close(self) -> None:
        self.https.close()
        self.bus.close()
