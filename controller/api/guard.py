"""What one client may hold: request heads, bodies, bytes and decode slots.

``Guard`` is shared by the HTTP protocol (controller/api/server.py: head timeouts and
the cap on connections still waiting for a head) and the ASGI front door
(controller/api/fast_ingest.py: bodies). Everything here runs on the event loop, so
the counters need no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from controller.config import ServerSettings
from controller.errors import BodyTimeout, BodyTooLarge, ClientGone, NoRoom

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


@dataclass
class Ticket:
    """What one request holds of the in-flight bounds; released once, when it is done."""

    peer: str
    batch: bool
    bytes: int = 0


@dataclass
class Guard:
    """Global bounds, and each peer's (client address's) share of them, so that one
    client cannot take what every other needs: connections waiting for a head, bodies in
    flight (counted when admitted) and their bytes (counted as they arrive)."""

    settings: ServerSettings
    peer_bytes_cap: int = 16 << 20  # ControllerSettings.peer_inflight_bytes
    pending: int = 0  # connections waiting for a complete request head
    inflight_bytes: int = 0
    inflight_batches: int = 0
    peer_pending: dict[str, int] = field(default_factory=dict)
    peer_batches: dict[str, int] = field(default_factory=dict)
    peer_bytes: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "head_timeouts",
                "heads_too_large",
                "pending_refused",
                "body_timeouts",
                "clients_gone",
                "busy",
            ),
            0,
        )
    )

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # --- connections waiting for a head (the protocol) -------------------------------------------

    def may_wait(self, peer: str) -> bool:
        s = self.settings
        ok = self.pending < s.max_pending_connections and (
            self.peer_pending.get(peer, 0) < s.max_pending_per_peer
        )
        if not ok:
            self.count("pending_refused")
        return ok

    def waiting(self, peer: str, delta: int) -> None:
        self.pending += delta
        _bump(self.peer_pending, peer, delta)

    # --- bodies in flight (the front door) -------------------------------------------------------

    def admit(self, peer: str, batch: bool) -> Ticket | None:
        """A ticket for one more body (a decode slot when batch), or None (429)."""
        s = self.settings
        if batch and (
            self.inflight_batches >= s.max_inflight_batches
            or self.peer_batches.get(peer, 0) >= s.max_inflight_batches_per_peer
        ):
            self.count("busy")
            return None
        if batch:
            self.inflight_batches += 1
            _bump(self.peer_batches, peer, 1)
        return Ticket(peer, batch)

    def take(self, ticket: Ticket, nbytes: int) -> None:
        """Count nbytes more of a body as they arrive; NoRoom past a bound (nothing taken)."""
        s = self.settings
        if (
            self.inflight_bytes + nbytes > s.max_inflight_body_bytes
            or self.peer_bytes.get(ticket.peer, 0) + nbytes > self.peer_bytes_cap
        ):
            self.count("busy")
            raise NoRoom("too many body bytes in flight; retry shortly")
        self.inflight_bytes += nbytes
        _bump(self.peer_bytes, ticket.peer, nbytes)
        ticket.bytes += nbytes

    def release(self, ticket: Ticket) -> None:
        self.inflight_bytes -= ticket.bytes
        _bump(self.peer_bytes, ticket.peer, -ticket.bytes)
        ticket.bytes = 0
        if ticket.batch:
            self.inflight_batches -= 1
            _bump(self.peer_batches, ticket.peer, -1)
            ticket.batch = False

    def stats(self) -> dict[str, Any]:
        s = self.settings
        return {
            "peers": len(self.peer_pending.keys() | self.peer_batches.keys() | self.peer_bytes.keys()),
            "pending_connections": self.pending,
            "inflight_body_bytes": self.inflight_bytes,
            "inflight_batches": self.inflight_batches,
            **self.counts,
            "bounds": {
                "header_timeout_s": s.header_timeout_s,
                "body_timeout_s": s.body_timeout_s,
                "body_min_rate_bytes_s": s.body_min_rate_bytes_s,
                "max_pending_connections": s.max_pending_connections,
                "max_pending_per_peer": s.max_pending_per_peer,
                "max_inflight_batches_per_peer": s.max_inflight_batches_per_peer,
                "max_inflight_bytes_per_peer": self.peer_bytes_cap,
                "max_connections": s.max_connections,
                "max_inflight_body_bytes": s.max_inflight_body_bytes,
                "max_inflight_batches": s.max_inflight_batches,
            },
        }

    async def read_body(self, receive: Receive, limit: int, ticket: Ticket) -> bytes:
        """The whole body, counted against the ticket as it arrives; BodyTooLarge past
        limit, BodyTimeout when it stalls for body_timeout_s or falls below
        body_min_rate_bytes_s after that, NoRoom past the in-flight bounds, ClientGone."""
        s = self.settings
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks: list[bytes] = []
        size = 0
        while True:
            now = loop.time()
            # Apache's mod_reqtimeout model: an initial allowance, extended by each byte at the floor rate.
            deadline = min(now + s.body_timeout_s, start + s.body_timeout_s + size / s.body_min_rate_bytes_s)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                self.count("body_timeouts")
                raise BodyTimeout(
                    f"the body stalled or arrived slower than {s.body_min_rate_bytes_s} bytes/s "
                    f"({size} bytes in {loop.time() - start:.1f} s)"
                ) from None
            if message["type"] == "http.disconnect":
                self.count("clients_gone")
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body over the limit of {limit} bytes")
            self.take(ticket, len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    """Add delta to a per-peer count, forgetting a peer at 0 (the maps stay as small as the load)."""
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)
