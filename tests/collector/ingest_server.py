"""A small real ingest server on loopback that speaks the wire contract, with faults on demand.

It stands in for the controller until the controller's ingest exists: it
decompresses (gzip, zstd), validates every batch with collector.wire, dedupes by
(host, stream, seq) and answers incidentlab.ack/v1. ``faults`` is a queue of
misbehaviours, each used for one request: garbage acks, acks for another seq,
500s, slow answers, permanent rejections, 503 with a leader, 429 with Retry-After,
and a lost ack (the batch is stored, the answer is empty).
"""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import zstandard

from collector.errors import WireError
from collector.wire import Batch, batch_key, encode, make_ack, validate_batch


@dataclass
class Received:
    batches: list[Batch] = field(default_factory=list)  # first deliveries, in order
    duplicates: int = 0
    invalid: list[str] = field(default_factory=list)
    posts: int = 0
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    posted_seqs: list[int] = field(default_factory=list)  # every valid post, retries included
    cut: int = 0  # bodies shorter than their Content-Length: the sender died mid-request
    auth_failures: int = 0


class IngestServer:
    def __init__(
        self,
        *,
        tls: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.received = Received()
        self.faults: deque[tuple[str, Any]] = deque()
        self.token = token
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with server._lock:
                    server.received.posts += 1
                    fault = server.faults.popleft() if server.faults else None
                if server.token is not None and self.headers.get("Authorization") != f"Bearer {server.token}":
                    with server._lock:
                        server.received.auth_failures += 1
                    self._reply(401, b'{"detail": "bad token"}')
                    return
                if len(raw) < length:
                    with server._lock:
                        server.received.cut += 1
                    self.close_connection = True
                    return
                enc = self.headers.get("Content-Encoding")
                try:
                    body = (
                        gzip.decompress(raw)
                        if enc == "gzip"
                        else zstandard.ZstdDecompressor().decompress(raw)
                    )
                    batch = validate_batch(body)
                except (OSError, EOFError, zstandard.ZstdError, WireError) as exc:
                    with server._lock:
                        server.received.invalid.append(f"{exc} ({length} bytes, {enc})")
                    self._reply(400, json.dumps({"detail": str(exc)}).encode())
                    return
                key = batch_key(batch)
                with server._lock:
                    server.received.posted_seqs.append(key.seq)
                if fault is not None:
                    kind, arg = fault
                    if kind == "garbage":
                        self._reply(200, b"<html>not an ack</html>")
                        return
                    if kind == "wrong_seq":
                        wrong = type(key)(key.host_id, key.stream_id, key.seq + 1)
                        self._reply(200, encode(make_ack(wrong, "accepted")))
                        return
                    if kind == "status":
                        self._reply(int(arg), b'{"detail": "injected"}')
                        return
                    if kind == "slow":
                        time.sleep(float(arg))
                    if kind == "reject":
                        self._reply(400, encode(make_ack(key, "rejected", reason=str(arg))))
                        return
                    if kind == "leader":
                        self._reply(
                            503, encode(make_ack(key, "rejected", reason="follower", leader=str(arg)))
                        )
                        return
                    if kind == "throttle":
                        self._reply(429, b'{"detail": "slow down"}', {"Retry-After": str(arg)})
                        return
                ident = (key.host_id, key.stream_id, key.seq)
                with server._lock:
                    if ident in server.received.seen:
                        server.received.duplicates += 1
                        status = "duplicate"
                    else:
                        server.received.seen.add(ident)
                        server.received.batches.append(batch)
                        status = "accepted"
                if fault is not None and fault[0] == "lost_ack":
                    self._reply(200, b"")  # stored, but the answer never makes it back whole
                    return
                self._reply(200, encode(make_ack(key, status)))  # type: ignore[arg-type]

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            if client_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(str(client_ca))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def seqs(self) -> list[int]:
        with self._lock:
            return [b.seq for b in self.received.batches]

    def __enter__(self) -> IngestServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
