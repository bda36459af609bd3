"""POST /api/v1/ingest as a bare ASGI handler in front of FastAPI.

FastAPI's per-request machinery (routing, dependency resolution, response
models) costs more than the ingest work itself for a 64 KiB batch, so this path
reads the body (refusing past ``max_body_bytes`` before buffering it), calls the
same IngestService the documented FastAPI route calls, and writes the answer.
Every other request goes to the FastAPI app unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from collector.transport import INGEST_PATH
from controller.ingest import Answer, IngestService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer.body)).encode())]
    headers += list(answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes limit (the rest is not buffered)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class FastIngest:
    def __init__(self, app: ASGIApp, service: IngestService, max_body: int) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != INGEST_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        auth = enc = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"content-encoding":
                enc = value.decode("latin-1").strip().lower()
            elif name == b"content-length":
                length = value
        too_big = Answer(413, b'{"detail":"body over the ingest limit"}')
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await send_answer(
                send, too_big if length.isdigit() else Answer(400, b'{"detail":"bad Content-Length"}')
            )
            return
        body = await read_body(receive, self.max_body)
        if body is None:
            await send_answer(send, too_big)
            return
        await send_answer(send, self.service.handle(auth, enc, body))
