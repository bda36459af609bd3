"""uvicorn's HTTP protocols with the head timeout, head size cap and pending-connection cap they lack.

uvicorn times out idle keep-alive connections, but not a request head that never
completes: its keep-alive timer is cancelled by the first byte, and a new
connection has none at all, so 300 half-sent heads were held for as long as their
senders liked. Here a connection that is waiting for a head (a new one, or a
keep-alive one that has begun the next) has ``header_timeout_s`` to complete it,
then gets 408 and is closed; at most ``max_pending_connections`` may wait at once,
``max_pending_per_peer`` of them from one client address, and the next is answered
503 and closed: one address cannot lock the others out. Keep-alive connections idle
between requests are not counted: uvicorn closes them after ``keep_alive_s``.

Two parsers (``server.http``): httptools (llhttp, in C: the default; h11 was a third
of the event loop's time per batch) and h11 (pure Python). llhttp has no cap on a
head's size and buffers a header until it ends, so the bytes a connection sends while
its head is incomplete are counted as they arrive: past ``MAX_HEAD_BYTES`` (h11's own
cap) it gets 431 and is closed. The event loop is uvloop by default (``server.loop``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from controller.api.guard import Guard
from controller.config import ControllerSettings

TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
FULL_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
)
HEAD_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
# h11's own cap on an incomplete event (its max_incomplete_event_size): the same for both parsers.
MAX_HEAD_BYTES = 16 << 10
Protocol = type[H11Protocol] | type[HttpToolsProtocol]


class _HeadGuard:
    """The head rules, mixed into either uvicorn protocol (both keep ``cycle``, ``loop``,
    ``client`` and ``transport`` and call these hooks the same way)."""

    guard: Guard
    cycle: Any
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    transport: asyncio.Transport
    _head_timer: asyncio.TimerHandle | None = None
    _pending = False
    _peer = "-"
    _head_bytes = 0  # received while waiting for the head in progress

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._peer = self.client[0] if self.client else "-"
        if not self.guard.may_wait(self._peer):
            transport.write(FULL_503)
            transport.close()
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._head_done()
        elif self.cycle is not None and not self.cycle.response_complete:
            self._head_done()  # a complete head: the body's own timeouts take over
        else:
            # Still no complete head: a parser buffers a header's bytes until it ends, so
            # they are counted here, where a chunk arrives (one read, 256 KiB at most).
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.guard.count("heads_too_large")
                self._head_done()
                self.transport.write(HEAD_431)
                self.transport.close()
                return
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)  # type: ignore[misc]

    def _await_head(self) -> None:
        if not self._pending:
            self._pending = True
            self.guard.waiting(self._peer, 1)
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.guard.settings.header_timeout_s, self._head_timeout)

    def _head_done(self) -> None:
        self._head_bytes = 0
        if self._pending:
            self._pending = False
            self.guard.waiting(self._peer, -1)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        self.guard.count("head_timeouts")
        self._head_done()
        self.transport.write(TIMEOUT_408)
        self.transport.close()


def guarded_protocol(guard: Guard, http: str = "httptools") -> Protocol:
    """A protocol class bound to this guard (uvicorn builds one instance per connection)."""
    base = H11Protocol if http == "h11" else HttpToolsProtocol
    return type(f"Guarded{base.__name__}", (_HeadGuard, base), {"guard": guard})


def uvicorn_options(
    settings: ControllerSettings, guard: Guard, *, log_level: str = "warning", access_log: bool = False
) -> dict[str, Any]:
    """What ``uvicorn.run`` takes for these settings: one worker, the guarded protocol."""
    srv = settings.server
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": 1,
        "http": guarded_protocol(guard, srv.http),
        "loop": srv.loop,
        "limit_concurrency": srv.max_connections,
        "timeout_keep_alive": max(1, round(srv.keep_alive_s)),
        "log_level": log_level,
        # Off by default: at a fleet's pace every batch is a request (1,000 hosts: 100 lines/s).
        "access_log": access_log,
        # X-Forwarded-For from any loopback client would name whatever peer it likes, and the
        # per-address shares (controller/api/guard.py) go by the peer: behind a proxy every
        # client is the proxy's one address, which is what the generous shares are sized for.
        "proxy_headers": False,
        "server_header": False,
        "ssl_certfile": str(settings.tls_cert_file) if settings.tls_cert_file else None,
        "ssl_keyfile": str(settings.tls_key_file) if settings.tls_key_file else None,
        "ssl_ca_certs": str(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
        "ssl_cert_reqs": 2 if settings.tls_client_ca_file else 0,  # ssl.CERT_REQUIRED with a client CA
        "timeout_graceful_shutdown": 5,
    }
