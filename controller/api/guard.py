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

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class BodyTooLarge(Exception):
    """The body passed its cap; the rest is not read."""


class BodyTimeout(Exception):
    """The body stalled, or arrives slower than the floor rate."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


@dataclass
class Guard:
    settings: ServerSettings
    pending: int = 0  # connections waiting for a complete request head
    inflight_bytes: int = 0
    inflight_batches: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("head_timeouts", "pending_refused", "body_timeouts", "clients_gone", "busy"), 0
        )
    )

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def reserve(self, nbytes: int, batch: bool) -> bool:
        """Room for a body of nbytes (and a decode slot when batch): taken, or False (429)."""
        s = self.settings
        if self.inflight_bytes + nbytes > s.max_inflight_body_bytes or (
            batch and self.inflight_batches >= s.max_inflight_batches
        ):
            self.count("busy")
            return False
        self.inflight_bytes += nbytes
        self.inflight_batches += batch
        return True

    def release(self, nbytes: int, batch: bool) -> None:
        self.inflight_bytes -= nbytes
        self.inflight_batches -= batch

    def stats(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pending_connections": self.pending,
            "inflight_body_bytes": self.inflight_bytes,
            "inflight_batches": self.inflight_batches,
            **self.counts,
            "bounds": {
                "header_timeout_s": s.header_timeout_s,
                "body_timeout_s": s.body_timeout_s,
                "body_min_rate_bytes_s": s.body_min_rate_bytes_s,
                "max_pending_connections": s.max_pending_connections,
                "max_connections": s.max_connections,
                "max_inflight_body_bytes": s.max_inflight_body_bytes,
                "max_inflight_batches": s.max_inflight_batches,
            },
        }

    async def read_body(self, receive: Receive, limit: int) -> bytes:
        """The whole body, or BodyTooLarge past limit, BodyTimeout when it stalls for
        body_timeout_s or falls below body_min_rate_bytes_s after that, ClientGone."""
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
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
