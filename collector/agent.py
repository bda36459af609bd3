"""The collector agent: sample -> spool -> ship.

The sampling loop turns each snapshot into one batch and appends it to the spool
(seq assigned there); the shipping thread sends the oldest unacknowledged record,
moves the acknowledged offset only when the ack answers that very batch, moves a
permanent rejection (a rejected ack for it, or HTTP 500 on it
``transport.dead_letter_after_500`` times in a row) to the dead-letter file, and
otherwise leaves the record where it is and retries with backoff. At most one batch is in flight; the spool
bounds everything waiting. SIGTERM finishes the write in progress, flushes the
spool and persists the offsets before exiting.

The agent's own health (spool bytes, oldest unacked age, drops, dead letters,
send latency) goes into every batch as ``agent`` and into ``status.json`` in the
spool directory, which ``incidentlab-collector status`` reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from collector.config import CollectorSettings
from collector.errors import CollectorError, PermanentRejection, SpoolError, TransportError
from collector.info import CollectorInfo
from collector.metrics import MetricsServer
from collector.sampler import Sampler
from collector.spool import Spool, SpoolOptions, atomic_write_json
from collector.topology import Topology, topology_from
from collector.transport import Transport, TransportOptions
from collector.wire import BATCH_SCHEMA, BatchKey, validate_batch

STATUS_FILE = "status.json"
log = logging.getLogger(__name__)
INFO_EVERY_S = 600.0
FAILURE_LOG_EVERY_S = 60.0
EVENT_DROPS = ("event_overflow", "perf_lost", "undecodable")


def delivery(settings: CollectorSettings) -> Any:
    """HTTPS to the controller (the default), the bus, or both (``bus.also_https``)."""
    https = settings.transport
    if not settings.bus.enabled:
        return Transport(TransportOptions.from_settings(https))
    from collector.bus import BusTransport, Fanout

    bus = BusTransport(settings.bus, https.encoding)
    if not settings.bus.also_https:
        return bus
    try:
        return Fanout(Transport(TransportOptions.from_settings(https)), bus)
    except Exception:
        bus.close()
        raise


class Agent:
    def __init__(
        self,
        settings: CollectorSettings,
        *,
        sampler: Sampler | None = None,
        transport: Any = None,
        topology: Topology | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._wall = wall
        self.spool = Spool(settings.spool.dir, SpoolOptions.from_settings(settings.spool))
        try:
            self.transport = transport or delivery(settings)
            self.sampler = sampler or Sampler(settings)
        except Exception:
            self.spool.close()
            raise
        self._info: CollectorInfo = self.sampler.info()
        # Labels change on their own thread (the Node object re-read): a change resends the info.
        self.topology = topology or topology_from(settings)
        self._info_sent: dict[str, Any] | None = None
        self._info_at = -float("inf")
        self._event_drops: dict[str, int] = dict.fromkeys(EVENT_DROPS, 0)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ship_error: str | None = None
        self._failures = 0  # delivery attempts failed since the last that went through
        self._failure_logged_at = -float("inf")
        # (seq, snapshot, health) of the latest sample: what /metrics renders, off this path.
        self._latest: tuple[int, dict[str, Any], dict[str, Any]] | None = None
        self.metrics: MetricsServer | None = None

    # --- batches ---------------------------------------------------------------------------------

    def _health(self) -> dict[str, Any]:
        spool = self.spool.stats()
        t = self.transport.stats
        lat = sorted(t.latencies)
        return {
            "spool_bytes": spool["spool_bytes"],
            "unacked_records": spool["unacked_records"],
            "oldest_unacked_age_s": spool["oldest_unacked_age_s"],
            "dead_letters": spool["dead_letters"],
            "send_latency_s": t.last_latency_s,
            "send_latency_p50_s": lat[len(lat) // 2] if lat else None,
            "retries": t.retries,
            "bad_acks": t.bad_acks,
            "leader": self.transport.url,
            "last_error": self._ship_error,
            "sources": self.sampler.stats(),
        }

    def build_batch(self, snapshot: dict[str, Any], seq: int, health: dict[str, Any]) -> bytes:
        """The batch for one snapshot; runs under the spool's lock, so it must not call the spool."""
        self.topology.name_pods(snapshot)
        events: list[dict[str, Any]] = []
        ebpf = snapshot["sources"].get("ebpf")
        if ebpf is not None and ebpf["status"] == "ok":
            data = ebpf["data"]
            events = data.pop("events", [])
            for key in EVENT_DROPS:
                self._event_drops[key] += int(data.get("dropped", {}).get(key, 0))
        state = self.spool.state
        info = self._info.to_dict() | {"labels": self.topology.labels(), "topology": self.topology.state()}
        # Sent when it changes, and now and then regardless: a controller that restarted (or a
        # replica that took the host over) learns the host's labels within INFO_EVERY_S.
        now = time.monotonic()
        resend = info != self._info_sent or now - self._info_at >= INFO_EVERY_S
        batch = {
            "schema": BATCH_SCHEMA,
            "host_id": self._info.host_id,
            "boot_id": self._info.boot_id,
            "stream_id": self.spool.stream_id,
            "seq": seq,
            "sent_at": self._wall(),
            "snapshots": [snapshot],
            "events": events,
            # Cumulative for the stream: a receiver takes the latest, so a lost batch loses no count.
            "dropped": {
                "spool_evicted": state.evicted_records,
                "spool_corrupt": state.corrupt_records,
                "dead_letters": state.dead_letters,
                **self._event_drops,
            },
            "collector": info if resend else None,
            "agent": health,
        }
        body = msgspec.json.encode(batch)
        validate_batch(body)  # never spool a batch the receiver would refuse (the bytes it will get)
        self._info_sent = info
        if resend:
            self._info_at = now
        return body

    def sample_once(self) -> int:
        snapshot = self.sampler.sample()
        health = self._health()
        seq = self.spool.append_with(lambda s: self.build_batch(snapshot, s, health))
        self._latest = (seq, snapshot, health)
        self._wake.set()
        return seq

    def start_metrics(self) -> None:
        """Serve /metrics when metrics.enabled; a port it cannot have is CollectorError."""
        m = self.settings.metrics
        if not m.enabled or self.metrics is not None:
            return
        try:
            self.metrics = MetricsServer(m.host, m.port, lambda: self._latest, self._info.host_id)
        except OSError as exc:
            raise CollectorError(
                f"metrics: cannot listen on {m.host}:{m.port}: {exc.strerror or exc}"
            ) from None
        self.metrics.start()

    # --- shipping ----------------------------------------------------------------------------------

    def ship_once(self) -> bool:
        """Try to deliver the oldest unacknowledged record; True when one was settled."""
        rec = self.spool.next_unacked()
        if rec is None:
            return False
        key = BatchKey(self._info.host_id, self.spool.stream_id, rec.seq)
        state = self.spool.state
        lost = state.evicted_records + state.corrupt_records + state.dead_letters
        try:
            self.transport.send(rec.payload, key, lost=lost)
        except PermanentRejection as exc:
            self.spool.dead_letter(rec, str(exc))
            return True
        except TransportError as exc:
            self._ship_error = str(exc)
            self._log_failure(str(exc))
            return False
        if self._failures:
            log.warning("delivering again after %d failed attempts", self._failures)
            self._failures = 0
        self._ship_error = None
        self.spool.ack(rec.seq)
        return True

    def _log_failure(self, why: str) -> None:
        """Delivery failures, at most one line a minute (a controller away for an hour is one
        line a minute, not one per retry), with how many there were since the last."""
        self._failures += 1
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_EVERY_S:
            self._failure_logged_at = now
            log.warning(
                "cannot deliver (%d failed attempts so far; records stay in the spool): %s",
                self._failures,
                why,
            )

    def _ship_loop(self) -> None:
        backoff = self.settings.transport.backoff_base_s
        while not self._stop.is_set():
            try:
                settled = self.ship_once()
            except SpoolError as exc:
                self._ship_error = str(exc)
                settled = False
            if settled:
                backoff = self.settings.transport.backoff_base_s
                continue
            pending = self.spool.stats()["unacked_records"] > 0
            if pending:
                self._stop.wait(backoff)  # the controller is away: wait, the records are safe on disk
                backoff = min(backoff * 2, self.settings.transport.backoff_max_s)
            else:
                self._wake.wait(1.0)
                self._wake.clear()

    def write_status(self) -> None:
        status = self.spool.stats() | {"agent": self._health(), "written_at": self._wall()}
        atomic_write_json(Path(self.settings.spool.dir) / STATUS_FILE, status)

    # --- running -------------------------------------------------------------------------------------

    def _send_bound_s(self) -> float:
        """The longest one send can take: HTTPS's read timeout, or the bus's connect, publish
        and duplicate check."""
        t, b = self.settings.transport, self.settings.bus
        bus = b.connect_timeout_s + b.publish_timeout_s + 4 if b.enabled else 0.0
        https = t.read_timeout_s if not b.enabled or b.also_https else 0.0
        return https + bus

    def stop(self, *_: object) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, max_samples: int | None = None) -> None:
        self.start_metrics()  # a port it cannot have stops the start, before anything runs
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        shipper = threading.Thread(target=self._ship_loop, name="collector-shipper", daemon=True)
        shipper.start()
        self.topology.start()
        n = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.sample_once()
                self.write_status()
                n += 1
                if max_samples is not None and n >= max_samples:
                    break
                self._stop.wait(max(0.0, self.settings.interval_s - (time.monotonic() - started)))
        finally:
            self.stop()
            shipper.join(timeout=self._send_bound_s() + 5)
            self.close()
            signal.signal(signal.SIGTERM, previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def close(self) -> None:
        # The spool itself is what must be saved; the status file is a convenience.
        with contextlib.suppress(OSError, SpoolError):
            self.write_status()
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        self.topology.stop()
        self.sampler.close()
        self.transport.close()
        self.spool.close()  # flushes pending appends and keeps the acked offset


def read_status(spool_dir: Path) -> dict[str, Any]:
    path = Path(spool_dir) / STATUS_FILE
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CollectorError(f"no agent status at {path}: has the agent run with this spool?") from None
    except (OSError, ValueError) as exc:
        raise CollectorError(f"unreadable agent status {path}: {exc}") from exc
    status["age_s"] = round(time.time() - float(status.get("written_at", 0)), 3)
    return status
