"""uvicorn's h11 protocol with the head timeout and the pending-connection cap it lacks.

uvicorn times out idle keep-alive connections, but not a request head that never
completes: its keep-alive timer is cancelled by the first byte, and a new
connection has none at all, so 300 half-sent heads were held for as long as their
senders liked. Here a connection that is waiting for a head (a new one, or a
keep-alive one that has begun the next) has ``header_timeout_s`` to complete it,
then gets 408 and is closed; at most ``max_pending_connections`` may wait at once,
``max_pending_per_peer`` of them from one client address, and the next is answered
503 and closed: one address cannot lock the others out. Keep-alive connections idle
between requests are not counted: uvicorn closes them after ``keep_alive_s``.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

from controller.api.guard import Guard

TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
FULL_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
)


def guarded_protocol(guard: Guard) -> type[H11Protocol]:
    """An H11Protocol class bound to this guard (uvicorn builds one instance per connection)."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _pending = False
        _peer = "-"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else "-"
            if not guard.may_wait(self._peer):
                transport.write(FULL_503)
                transport.close()
                return
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._head_done()
            elif self.cycle is not None and not self.cycle.response_complete:
                self._head_done()  # a complete head: the body's own timeouts take over
            else:
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if not self._pending:
                self._pending = True
                guard.waiting(self._peer, 1)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(guard.settings.header_timeout_s, self._head_timeout)

        def _head_done(self) -> None:
            if self._pending:
                self._pending = False
                guard.waiting(self._peer, -1)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            guard.count("head_timeouts")
            self._head_done()
            self.transport.write(TIMEOUT_408)
            self.transport.close()

    return GuardedH11Protocol
