"""Runs the enabled sources into one snapshot per interval, each isolated.

Every source has its own worker thread and a time budget. A source that raises
or overruns is reported ``error`` with the reason and counted; the others go on.
Python cannot kill a thread, so a source stuck past its budget keeps its thread:
until that call returns the source is reported ``error`` ("still running") and
never gets a second thread. At most one call per source is ever in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import Any

from collector.config import CollectorSettings
from collector.errors import CollectorError, ConfigError
from collector.info import Capabilities, CollectorInfo, SourceInfo, build_collector_info, detect_capabilities
from collector.sources import Source, SourceContext, SourceResult, default_sources, source_class, source_names


@dataclass
class SourceStats:
    samples: int = 0
    ok: int = 0
    fallback: int = 0
    unavailable: int = 0
    errors: int = 0
    timeouts: int = 0
    last_duration_s: float = 0.0
    total_duration_s: float = 0.0


def enabled_source_names(settings: CollectorSettings) -> list[str]:
    known = source_names()
    chosen = settings.enabled_sources if settings.enabled_sources is not None else default_sources()
    for name in [*chosen, *settings.disabled_sources, *settings.force_fallback]:
        source_class(name)  # raises UnknownSourceError naming the known ones
    out = [n for n in known if n in chosen and n not in settings.disabled_sources]
    if not out:
        raise ConfigError("no source is enabled")
    return out


class _Slot:
    def __init__(self, source: Source, clock: Callable[[], float]) -> None:
        self.source = source
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"source-{source.name}")
        self.inflight: Future[tuple[SourceResult, float]] | None = None
        self.inflight_since = 0.0
        self.stats = SourceStats()

    def timed_sample(self) -> tuple[SourceResult, float]:
        """Runs in the worker: the duration is the source's own, not the wait to collect it."""
        start = self.clock()
        try:
            result = self.source.sample()
        except CollectorError as exc:
            result = SourceResult.error("none", str(exc))
        except Exception as exc:  # isolation: any failure is this source's error, not the loop's
            result = SourceResult.error("none", f"{type(exc).__name__}: {exc}")
        return result, self.clock() - start


class Sampler:
    def __init__(
        self,
        settings: CollectorSettings,
        capabilities: Capabilities | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.capabilities = capabilities or detect_capabilities(settings)
        self._clock = clock
        self._wall = wall
        self._names = enabled_source_names(settings)
        ctx = SourceContext(settings=settings, capabilities=self.capabilities, clock=clock)
        self._slots: dict[str, _Slot] = {}
        try:
            for name in self._names:
                self._slots[name] = _Slot(source_class(name)(ctx), clock)
        except Exception:
            self.close()
            raise
        self._last_ts: float | None = None

    def info(self) -> CollectorInfo:
        sources: dict[str, SourceInfo] = {}
        for name in source_names():
            slot = self._slots.get(name)
            if slot is None:
                sources[name] = SourceInfo(enabled=False, path="none", reason="disabled by configuration")
            else:
                plan = slot.source.plan()
                sources[name] = SourceInfo(enabled=True, path=plan.path, reason=plan.reason)
        return build_collector_info(self.settings, self.capabilities, sources)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(slot.stats) for name, slot in self._slots.items()}

    def sample(self) -> dict[str, Any]:
        """One snapshot: {ts, interval_s, sources: {name: {status, path, reason, duration_s, data}}}."""
        now = self._clock()
        interval = None if self._last_ts is None else now - self._last_ts
        self._last_ts = now
        budget = self.settings.source_budget_s
        started: dict[str, float] = {}
        for name, slot in self._slots.items():
            if slot.inflight is not None and slot.inflight.done():
                slot.inflight = None  # a late answer to a sample already reported as timed out
            if slot.inflight is None:
                started[name] = self._clock()
                slot.inflight = slot.pool.submit(slot.timed_sample)
                slot.inflight_since = started[name]
        out: dict[str, Any] = {}
        deadline = now + budget
        for name, slot in self._slots.items():
            out[name] = self._collect(name, slot, started.get(name), deadline)
        return {"ts": self._wall(), "interval_s": interval, "sources": out}

    def _collect(self, name: str, slot: _Slot, started: float | None, deadline: float) -> dict[str, Any]:
        stats = slot.stats
        stats.samples += 1
        future = slot.inflight
        assert future is not None
        if started is None:
            stuck = self._clock() - slot.inflight_since
            stats.errors += 1
            return self._entry(
                SourceResult.error("none", f"previous sample still running after {stuck:.1f} s"), 0.0
            )
        try:
            result, duration = future.result(timeout=max(0.0, deadline - self._clock()))
        except FutureTimeout:
            stats.timeouts += 1
            stats.errors += 1
            elapsed = self._clock() - started
            return self._entry(
                SourceResult.error(
                    "none", f"timed out after {elapsed:.2f} s (budget {self.settings.source_budget_s} s)"
                ),
                elapsed,
            )
        slot.inflight = None
        stats.last_duration_s = duration
        stats.total_duration_s += duration
        if result.status == "ok":
            stats.ok += 1
        elif result.status == "fallback":
            stats.fallback += 1
        elif result.status == "unavailable":
            stats.unavailable += 1
        else:
            stats.errors += 1
        return self._entry(result, duration)

    @staticmethod
    def _entry(result: SourceResult, duration: float) -> dict[str, Any]:
        return {
            "status": result.status,
            "path": result.path,
            "reason": result.reason,
            "duration_s": round(duration, 6),
            "data": result.data,
        }

    def close(self) -> None:
        for slot in self._slots.values():
            try:
                slot.source.close()
            finally:
                slot.pool.shutdown(wait=False, cancel_futures=True)
