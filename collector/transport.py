"""HTTPS delivery of spooled batches to the controller, checking every ack.

One ``send`` delivers one record: compressed (gzip by default, zstd when
configured), bearer token, mTLS with the CA bundle and client certificate
reloaded when their files change, connect and read timeouts, and at most
``max_attempts`` tries with exponential backoff and full jitter. A 503 naming a
leader is followed; a 429 waits for its Retry-After (capped). An answer whose
body is an ack for this very batch with status ``rejected`` (and no leader) is
permanent whatever its status, 4xx or 5xx, and raises PermanentRejection, so the
caller dead-letters the record instead of retrying for ever; only 401, 403, 404,
408, 409 and 429 are about the request, not the batch, and never are. A batch
answered HTTP 500 on ``dead_letter_after_500`` attempts in a row (counted across
send() calls; any other answer, the batch settling or another batch being sent
starts again) raises PoisonBatch, a PermanentRejection: the controller keeps
failing on that batch, and the stream must not stop behind it. 502, 503 and 504
mean the controller or a proxy is away, and are retried for ever. Anything else
that is not an ack answering this very batch raises TransportError: the record
stays in the spool and the acknowledged offset does not move.
"""

from __future__ import annotations

import email.utils
import json
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import probe_core

from collector.config import TransportSettings
from collector.errors import CollectorError, PermanentRejection, PoisonBatch, TransportError, WireError
from collector.wire import INGEST_PATH, LEADER_HEADER, LOST_HEADER, Ack, BatchKey, validate_ack

# Answers about the request rather than the batch (the token, the route, a timeout, a
# conflict, a throttle): even an ack in one of them never makes a batch permanent.
_ABOUT_THE_REQUEST = frozenset({401, 403, 404, 408, 409, 429})
_DETAIL_CHARS = 300  # of a 500's body, kept for the dead-letter reason
_DEFAULTS = TransportSettings()


@dataclass(frozen=True)
class TransportOptions:
    # The settings' knobs take their defaults from TransportSettings, where each is declared once;
    # max_leader_hops and reload_check_s are not settings.
    url: str
    # Other controllers to try when the current one cannot be reached (an HA pair).
    fallback_urls: tuple[str, ...] = tuple(_DEFAULTS.fallback_urls)
    ca_file: Path | None = _DEFAULTS.ca_file
    cert_file: Path | None = _DEFAULTS.cert_file
    key_file: Path | None = _DEFAULTS.key_file
    token_file: Path | None = _DEFAULTS.token_file
    encoding: Literal["gzip", "zstd"] = _DEFAULTS.encoding
    connect_timeout_s: float = _DEFAULTS.connect_timeout_s
    read_timeout_s: float = _DEFAULTS.read_timeout_s
    max_attempts: int = _DEFAULTS.max_attempts
    backoff_base_s: float = _DEFAULTS.backoff_base_s
    backoff_max_s: float = _DEFAULTS.backoff_max_s
    max_leader_hops: int = 3
    # A batch answered HTTP 500 this many attempts in a row is permanent (PoisonBatch); 0: never.
    dead_letter_after_500: int = _DEFAULTS.dead_letter_after_500
    allow_http: bool = _DEFAULTS.allow_http  # plain HTTP only for loopback tests and trusted networks
    reload_check_s: float = 5.0

    @classmethod
    def from_settings(cls, t: TransportSettings) -> TransportOptions:
        if t.url is None:
            raise CollectorError("transport.url is not set: the agent has nowhere to send batches")
        return cls(
            url=t.url,
            fallback_urls=tuple(t.fallback_urls),
            ca_file=t.ca_file,
            cert_file=t.cert_file,
            key_file=t.key_file,
            token_file=t.token_file,
            encoding=t.encoding,
            connect_timeout_s=t.connect_timeout_s,
            read_timeout_s=t.read_timeout_s,
            max_attempts=t.max_attempts,
            backoff_base_s=t.backoff_base_s,
            backoff_max_s=t.backoff_max_s,
            dead_letter_after_500=t.dead_letter_after_500,
            allow_http=t.allow_http,
        )


@dataclass(frozen=True)
class _Outcome:
    reason: str
    ack: Ack | None = None
    wait: float | None = None  # a server-given delay (Retry-After); None: our own backoff
    follow: bool = False  # retry at once: the leader moved
    server_error: str | None = None  # an HTTP 500: its detail


@dataclass
class TransportStats:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    bad_acks: int = 0
    leader_hops: int = 0
    tls_reloads: int = 0
    last_latency_s: float | None = None
    last_error: str | None = None
    latencies: list[float] = field(default_factory=list)


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return probe_core.gzip_compress(body, 6)
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(body)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _file_key(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class Transport:
    def __init__(
        self,
        options: TransportOptions,
        *,
        http_transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.opts = options
        for u in (options.url, *options.fallback_urls):
            self._check_url(u)
        self.url = options.url.rstrip("/")
        self._candidates = [u.rstrip("/") for u in (options.url, *options.fallback_urls)]
        self._http_transport = http_transport  # an httpx.MockTransport in tests
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self.stats = TransportStats()
        self._client: httpx.Client | None = None
        self._files: tuple[object, ...] = ()
        self._checked_at = -1e18
        self._token: str | None = None
        # The batch the last attempts answered HTTP 500 to, and how many in a row.
        self._failing: BatchKey | None = None
        self._500s = 0
        self._ensure_client()

    def _check_url(self, url: str) -> None:
        if url.startswith("https://"):
            return
        if url.startswith("http://") and self.opts.allow_http:
            return
        raise TransportError(f"refusing controller URL {url!r}: https:// required (allow_http is off)")

    # --- TLS and token material, reloaded when the files change --------------------------------

    def _ensure_client(self) -> None:
        now = self._clock()
        if self._client is not None and now - self._checked_at < self.opts.reload_check_s:
            return
        self._checked_at = now
        o = self.opts
        files = tuple(_file_key(p) for p in (o.ca_file, o.cert_file, o.key_file, o.token_file))
        if self._client is not None and files == self._files:
            return
        if o.token_file is not None:
            try:
                self._token = o.token_file.read_text().strip() or None
            except OSError as exc:
                raise TransportError(f"cannot read token file {o.token_file}: {exc.strerror}") from exc
        verify: ssl.SSLContext | bool = True
        if self.url.startswith("https://") or o.ca_file is not None:
            try:
                ctx = ssl.create_default_context(cafile=str(o.ca_file) if o.ca_file else None)
                if o.cert_file is not None:
                    ctx.load_cert_chain(str(o.cert_file), str(o.key_file) if o.key_file else None)
            except (OSError, ssl.SSLError) as exc:
                raise TransportError(f"cannot load TLS material: {exc}") from exc
            verify = ctx
        timeout = httpx.Timeout(o.read_timeout_s, connect=o.connect_timeout_s)
        # TCP_NODELAY: h11 writes headers and body separately, and Nagle holding the body back
        # for the peer's delayed ACK costs 40 ms a batch.
        transport = self._http_transport or httpx.HTTPTransport(
            verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        old = self._client
        self._client = httpx.Client(timeout=timeout, transport=transport)
        if old is not None:
            old.close()
            self.stats.tls_reloads += 1
        self._files = files

    # --- sending -----------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        cap = min(self.opts.backoff_max_s, self.opts.backoff_base_s * (2**attempt))
        return self._rng.uniform(0.0, cap)  # full jitter

    def send(self, body: bytes, key: BatchKey, lost: int | None = None) -> Ack:
        """Deliver one batch; returns its ack (accepted or duplicate) or raises. ``lost`` is
        the stream's loss count now (sent as X-Incidentlab-Lost)."""
        payload = compress(body, self.opts.encoding)
        headers = {"Content-Type": "application/json", "Content-Encoding": self.opts.encoding}
        if lost is not None:
            headers[LOST_HEADER] = str(lost)
        if self._failing != key:
            self._failing, self._500s = key, 0  # another record: its own count
        hops = 0
        attempt = 0
        reason = "no attempt made"
        while attempt < self.opts.max_attempts:
            self._ensure_client()
            assert self._client is not None
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            start = self._clock()
            self.stats.sent += 1
            wait: float | None = None
            server_error: str | None = None
            try:
                resp = self._client.post(self.url + INGEST_PATH, content=payload, headers=headers)
            except httpx.TimeoutException as exc:
                reason = f"timed out: {type(exc).__name__}"
            except httpx.ConnectError as exc:
                reason = f"cannot reach {self.url}: {exc}"
                self._next_candidate()
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                try:
                    out = self._answer(resp, key, self._clock() - start)
                except PermanentRejection:
                    self._500s = 0  # settled
                    raise
                if out.ack is not None:
                    self._500s = 0  # settled
                    return out.ack
                reason, wait, server_error = out.reason, out.wait, out.server_error
                if out.follow and hops < self.opts.max_leader_hops:
                    hops += 1
                    self._500s = 0
                    continue  # a new leader: try it now, without spending an attempt
            attempt += 1
            self.stats.retries += 1
            self.stats.last_error = reason
            self._count_500(server_error)
            if attempt < self.opts.max_attempts:
                self._sleep(
                    min(wait, self.opts.backoff_max_s) if wait is not None else self._backoff(attempt)
                )
        raise TransportError(
            f"batch {key.seq} not delivered after {self.opts.max_attempts} attempts: {reason}"
        )

    def _count_500(self, detail: str | None) -> None:
        """One more attempt for the current batch: only an unbroken run of HTTP 500s counts."""
        if detail is None:
            self._500s = 0
            return
        self._500s += 1
        limit = self.opts.dead_letter_after_500
        if limit and self._500s >= limit:
            n, self._500s = self._500s, 0
            raise PoisonBatch(n, detail)

    def _next_candidate(self) -> None:
        """After a connect failure, the next configured controller (a leader may have died);
        from a leader hint that cannot be reached (gone, or a name its certificate lacks),
        back to the first configured one rather than stuck on the hint."""
        if self.url not in self._candidates:
            self.url = self._candidates[0]
            return
        if len(self._candidates) < 2:
            return
        i = self._candidates.index(self.url) if self.url in self._candidates else -1
        self.url = self._candidates[(i + 1) % len(self._candidates)]

    def _answer(self, resp: httpx.Response, key: BatchKey, latency: float) -> _Outcome:
        code = resp.status_code
        if code == 200:
            try:
                ack = validate_ack(resp.content, key)
            except WireError as exc:
                self.stats.bad_acks += 1
                return _Outcome(f"bad ack: {exc}")
            if ack.status == "rejected":
                self.stats.rejected += 1
                raise PermanentRejection(code, ack.reason or "rejected")
            self.stats.last_latency_s = latency
            self.stats.latencies = [*self.stats.latencies[-99:], latency]  # bounded: the last 100
            if ack.status == "duplicate":
                self.stats.duplicates += 1
            else:
                self.stats.accepted += 1
            self.stats.last_error = None
            return _Outcome("ok", ack=ack)
        named = self._ack_in(resp, key)  # an ack for this batch, in a non-200
        if code == 503:
            leader = resp.headers.get(LEADER_HEADER) or (named.leader if named is not None else None)
            if leader:
                try:
                    self._check_url(leader)
                except TransportError as exc:
                    return _Outcome(str(exc))
                if leader.rstrip("/") == self.url:
                    return _Outcome("HTTP 503 naming this controller as the leader")
                self.url = leader.rstrip("/")
                self.stats.leader_hops += 1
                return _Outcome(f"leader moved to {self.url}", follow=True)
        rejected = named is not None and named.status == "rejected" and named.leader is None
        if named is not None and rejected and code not in _ABOUT_THE_REQUEST:
            # The controller named this very batch invalid: 4xx or 5xx, retrying cannot help.
            self.stats.rejected += 1
            raise PermanentRejection(code, named.reason or f"HTTP {code}")
        if code == 413:
            # Larger than this controller takes: no retry can make it smaller.
            self.stats.rejected += 1
            raise PermanentRejection(
                code, f"HTTP 413: the controller refuses a body this large ({self._detail(resp)})"
            )
        if code == 503:
            return _Outcome("HTTP 503 without a leader hint")
        if code == 429:
            after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            return _Outcome("HTTP 429: throttled", wait=after)
        if 400 <= code < 500 and code not in _ABOUT_THE_REQUEST:
            if named is None:
                return _Outcome(f"HTTP {code} without an ack")
            return _Outcome(f"HTTP {code} with ack status {named.status}")
        if code == 500:
            return _Outcome("HTTP 500", server_error=self._detail(resp))
        return _Outcome(f"HTTP {code}")

    @staticmethod
    def _ack_in(resp: httpx.Response, key: BatchKey) -> Ack | None:
        """The body as an ack answering this very batch, or None."""
        try:
            return validate_ack(resp.content, key)
        except WireError:
            return None

    @staticmethod
    def _detail(resp: httpx.Response) -> str:
        """What a 500 said: its JSON ``detail``, else its text (bounded)."""
        text = resp.content[: _DETAIL_CHARS * 4].decode("utf-8", "replace")
        try:
            body = json.loads(resp.content)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            text = body["detail"]
        return " ".join(text.split())[:_DETAIL_CHARS] or "no detail"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
