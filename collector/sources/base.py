"""What every source is: a name, a default-enabled flag, a planned path, and sample().

A source never raises out of sample() for "no data": a missing device or
privilege is a SourceResult with status ``unavailable`` or ``fallback`` and the
reason. Exceptions are for the unexpected, and the sampler turns them into
``error`` results without stopping the other sources.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from collector.config import CollectorSettings
from collector.info import Capabilities
from collector.wire import PathKind, Status


@dataclass(frozen=True)
class SourceResult:
    status: Status
    path: PathKind
    reason: str | None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, path: PathKind, data: dict[str, Any]) -> SourceResult:
        return cls("ok", path, None, data)

    @classmethod
    def fallback(cls, reason: str, data: dict[str, Any]) -> SourceResult:
        return cls("fallback", "file", reason, data)

    @classmethod
    def unavailable(cls, reason: str) -> SourceResult:
        return cls("unavailable", "none", reason, {})

    @classmethod
    def error(cls, path: PathKind, reason: str) -> SourceResult:
        return cls("error", path, reason, {})


@dataclass(frozen=True)
class PathPlan:
    """The path a source expects to use, for CollectorInfo: decided once at start."""

    path: PathKind
    reason: str | None = None


@dataclass(frozen=True)
class SourceContext:
    settings: CollectorSettings
    capabilities: Capabilities
    clock: Callable[[], float] = time.monotonic

    @property
    def host_root(self) -> str:
        return self.settings.host_root

    def fallback_forced(self, source: str) -> bool:
        return source in self.settings.force_fallback


class Source(ABC):
    name: ClassVar[str]
    default_enabled: ClassVar[bool] = True

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx

    def plan(self) -> PathPlan:
        """The path this source will use and, when it is not the kernel's, why."""
        return PathPlan("file")

    @abstractmethod
    def sample(self) -> SourceResult:
        """One reading. Runs in the source's own worker thread under a time budget."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release kernel handles (sockets, perf fds, BPF programs)."""


class Rates:
    """Per-second rates of cumulative counters between two samples.

    A counter that went backwards (a reset, a device that came back) gives None
    for that interval rather than a huge or negative rate.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._prev: dict[str, float] = {}
        self._prev_t: float | None = None
        self._now: float | None = None
        self._next: dict[str, float] = {}

    def begin(self) -> float | None:
        """Start a sample; returns the interval since the last one (None the first time)."""
        self._now = self._clock()
        self._next = {}
        return None if self._prev_t is None else self._now - self._prev_t

    def rate(self, key: str, value: float) -> float | None:
        self._next[key] = value
        prev = self._prev.get(key)
        if prev is None or self._prev_t is None or self._now is None or value < prev:
            return None
        dt = self._now - self._prev_t
        return (value - prev) / dt if dt > 0 else None

    def end(self) -> None:
        self._prev = self._next
        self._prev_t = self._now
