"""The collector's error tree; every error the collector raises derives from CollectorError.

    CollectorError
    +-- ConfigError            settings refused at start (names the key and why)
    |   +-- UnknownSourceError a source name that is not registered
    +-- SourceError            a source failed to sample (foreign errors wrapped here)
        +-- SourceTimeout      a source overran its time budget

Foreign exceptions (OSError, probe_core.ProbeError, pyroute2's NetlinkError,
pynvml's NVMLError) are translated at the source boundary with ``raise ... from``.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Root of the collector's errors."""


class ConfigError(CollectorError):
    """Settings were refused at start."""


class UnknownSourceError(ConfigError):
    """A source name that no module registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown source {name!r}; known sources: {', '.join(sorted(known))}")
        self.name = name


class SourceError(CollectorError):
    """A source failed while sampling."""


class SourceTimeout(SourceError):
    """A source overran its time budget."""
