"""The front door: a bare ASGI layer in front of FastAPI.

POST /api/v1/ingest is served here, without FastAPI's per-request machinery (it costs
more than the ingest work itself for a 64 KiB batch): the token, its role and
leadership are checked on the headers alone, before a byte of the body is read; an
oversized Content-Length, or no decode slot left (all clients', or this client
address's share), ends the request at once; body bytes count against the in-flight
bounds as they arrive (429 past them). The body is read under the Guard's timeouts;
a batch that decompresses to at most ``inline_decode_bytes`` (256 KiB: a few
milliseconds of work at the very worst) is checked and validated on the loop,
anything larger is handed to a bounded thread pool for decompression, the JSON check
and validation. The ledger commit and hot state run on the loop only when they cannot
wait: SQLite's write lock free (tried without waiting), the stream already in memory,
hot state keeping no window (analysis in its workers); otherwise, and always on
PostgreSQL, on the pool (the workflow can hold SQLite's write lock for a while), so
the event loop keeps answering /healthz and the rest. Every early answer carries
Connection: close, so an unread body is never taken in.

Every other request that carries a body is authenticated on its headers first, read
under the same timeouts and a small cap (max_api_body_bytes), and refused with 400
naming the place if it is not strict JSON (depth, UTF-8, finite numbers) before
FastAPI parses it. Requests without a body go to FastAPI unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import probe_core

from collector.wire import INGEST_PATH
from controller.api.deps import Refusal, auth_refusal, follower_refusal
from controller.api.guard import Guard, Ticket
from controller.auth import Principal
from controller.errors import AuthError, BodyTimeout, BodyTooLarge, ClientGone, NoRoom, NotLeader
from controller.ingest import CLOSE, Answer, IngestService, Prepared, json_answer, parse_lost

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Approval, rejection and replay bodies are a few flat fields.
API_JSON_DEPTH, API_JSON_NODES = 16, 10_000


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer.body)).encode())]
    headers += list(answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


_WANTED = frozenset(
    (b"authorization", b"content-encoding", b"content-length", b"transfer-encoding", b"x-incidentlab-lost")
)


def refusal_answer(r: Refusal) -> Answer:
    """A refusal on the raw path, sent with Connection: close so an unread body is never taken in."""
    headers = tuple((k.lower().encode(), v.encode()) for k, v in r.headers.items())
    return json_answer(r.status, {"detail": r.detail}, (*headers, CLOSE))


def admit(service: IngestService, authorization: str | None) -> Principal | Answer:
    """The principal, or the answer that ends the request, from the headers alone."""
    try:
        return service.admit(authorization)
    except AuthError as exc:
        refusal = auth_refusal(exc)
    except NotLeader:
        found = follower_refusal(service.leadership)
        assert found is not None
        refusal = found
        # The leader's URL travels in the body for the collector; the detail stays short.
        body = {"detail": "this controller is a follower", "leader": service.leadership.leader_url}
        return service.refuse(refusal.reason, json_answer(503, body, refusal_answer(refusal).headers))
    return service.refuse(refusal.reason, refusal_answer(refusal))


def handle(service: IngestService, authorization: str | None, encoding: str | None, body: bytes) -> Answer:
    """Admission, checks and commit in one call: the documented route, which serves an app
    mounted without the front door."""
    admitted = admit(service, authorization)
    if isinstance(admitted, Answer):
        service.count(admitted)
        return admitted
    answer = service.process(admitted, encoding, body)
    assert isinstance(answer, Answer)
    service.count(answer)
    service.answered(answer)
    return answer


def _headers(scope: Scope) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            out.setdefault(name, value)  # the first of repeated headers, as Starlette reads them
    return out


def _length(headers: dict[bytes, bytes]) -> int | Answer | None:
    """The declared Content-Length, None when there is none, or the answer to a bad one."""
    raw = headers.get(b"content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        return json_answer(400, {"detail": "bad Content-Length"}, (CLOSE,))
    return int(raw)


class FastIngest:
    def __init__(
        self,
        app: ASGIApp,
        service: IngestService,
        guard: Guard,
        max_body: int,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.app = app
        self.service = service
        self.guard = guard
        self.max_body = max_body
        self.pool = pool
        self.inline_bytes = guard.settings.inline_decode_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        client = scope.get("client")
        peer = str(client[0]) if client else "-"
        if scope["path"] == INGEST_PATH and scope["method"] == "POST":
            await self._ingest(peer, headers, receive, send)
        elif b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
            await self._with_body(peer, scope, headers, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _answer(self, send: Send, answer: Answer) -> None:
        self.service.count(answer)
        await send_answer(send, answer)

    async def _read(
        self, send: Send, receive: Receive, limit: int, ticket: Ticket, ingest: bool
    ) -> bytes | None:
        """The body, or None once the refusal is sent (or the client has gone); ``ingest``:
        the refusal counts in the ingest metrics."""
        try:
            return await self.guard.read_body(receive, limit, ticket)
        except BodyTimeout as exc:
            reason, answer = "timeout", json_answer(408, {"detail": str(exc)}, (CLOSE,))
        except BodyTooLarge as exc:
            reason, answer = "too_large", json_answer(413, {"detail": str(exc)}, (CLOSE,))
        except NoRoom:
            reason, answer = "busy", _busy()
        except ClientGone:
            return None  # nobody to answer; not an error worth a traceback
        if ingest:
            await self._answer(send, self.service.refuse(reason, answer))
        else:
            await send_answer(send, answer)
        return None

    async def _ingest(self, peer: str, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        auth = headers.get(b"authorization")
        admitted = admit(self.service, auth.decode("latin-1") if auth is not None else None)
        if isinstance(admitted, Answer):
            await self._answer(send, admitted)
            return
        length = _length(headers)
        if isinstance(length, Answer):
            await self._answer(send, length)
            return
        if length is not None and length > self.max_body:
            answer = json_answer(413, {"detail": "body over the ingest limit"}, (CLOSE,))
            await self._answer(send, self.service.refuse("too_large", answer))
            return
        ticket = self.guard.admit(peer, batch=True)
        if ticket is None:
            await self._answer(send, self.service.refuse("busy", _busy()))
            return
        try:
            limit = length if length is not None else self.max_body
            body = await self._read(send, receive, limit, ticket, ingest=True)
            if body is None:
                return
            enc = headers.get(b"content-encoding")
            encoding = enc.decode("latin-1").strip().lower() if enc is not None else None
            lost = parse_lost(headers.get(b"x-incidentlab-lost"))
            loop = asyncio.get_running_loop()
            result = None
            if len(body) <= self.inline_bytes:
                # A small batch is checked here (cheaper than a thread and back); one that
                # decompresses past inline_bytes is left untouched for the pool.
                result = self.service.process(admitted, encoding, body, lost, inline_limit=self.inline_bytes)
            if result is None:
                result = await loop.run_in_executor(
                    self.pool, self.service.process, admitted, encoding, body, lost
                )
            if isinstance(result, Prepared):
                # Committed here when nothing must be waited for (SQLite's write lock free,
                # the stream in memory); else on the pool, which may wait.
                prepared = result
                result = self.service.commit(prepared, lost, inline=True)
                if result is None:
                    result = await loop.run_in_executor(self.pool, self.service.commit, prepared, lost)
            assert isinstance(result, Answer)
            answer = result
        finally:
            self.guard.release(ticket)
        await self._answer(send, answer)
        self.service.answered(answer)

    async def _with_body(
        self, peer: str, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        auth = headers.get(b"authorization")
        try:
            self.service.auth.authenticate(auth.decode("latin-1") if auth is not None else None)
        except AuthError as exc:
            await send_answer(send, refusal_answer(auth_refusal(exc)))
            return
        limit = self.guard.settings.max_api_body_bytes
        length = _length(headers)
        if isinstance(length, Answer):
            await send_answer(send, length)
            return
        if length is not None and length > limit:
            await send_answer(send, json_answer(413, {"detail": f"body over {limit} bytes"}, (CLOSE,)))
            return
        ticket = self.guard.admit(peer, batch=False)
        assert ticket is not None  # only batches take a slot; bytes are counted as they come
        try:
            body = await self._read(send, receive, limit, ticket, ingest=False)
            if body is None:
                return
            if body:
                verdict = probe_core.json_check(body, API_JSON_DEPTH, API_JSON_NODES)
                if not verdict["ok"]:
                    detail = f"not acceptable JSON: {verdict['error']} (byte {verdict['offset']})"
                    await send_answer(send, json_answer(400, {"detail": detail, "field": verdict["path"]}))
                    return
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.guard.release(ticket)


def _busy() -> Answer:
    detail = {"detail": "too many bodies in flight; retry shortly"}
    return json_answer(429, detail, ((b"retry-after", b"1"), CLOSE))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own events."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
