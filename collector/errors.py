"""The collector's error tree; every error the collector raises derives from CollectorError.

    CollectorError
    +-- ConfigError            settings refused at start (names the key and why)
    |   +-- UnknownSourceError a source name that is not registered
    |   +-- TopologyError      labels that break the label rules, or a Node object without labels
    +-- SourceError            a source failed to sample (foreign errors wrapped here)
    +-- ParseError             Prometheus text that does not parse (collector/sources/external.py)
    +-- LoadError              the eBPF loader child could not hand the programs over (ebpf_loader.py)
    +-- WireError              a batch or ack breaks the wire contract (names the field)
    |   +-- AckMismatch        a well-formed ack that answers some other batch
    +-- SpoolError             the disk spool cannot be opened or written
    +-- TransportError         a batch could not be delivered this attempt
        +-- PermanentRejection the receiver named the batch invalid: retrying cannot help
            +-- PoisonBatch    the receiver failed (HTTP 500) on the batch too often in a row
            +-- TooLargeForBus the NATS server takes no message that large (collector/bus.py)

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


class TopologyError(ConfigError):
    """Labels that break the label rules (names and values, how many); a node without labels."""


class SourceError(CollectorError):
    """A source failed while sampling."""


class WireError(CollectorError):
    """A batch or ack that breaks the wire contract; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AckMismatch(WireError):
    """An ack that is well formed but does not answer the batch that was sent."""


class SpoolError(CollectorError):
    """The spool directory cannot be opened, locked or written."""


class TransportError(CollectorError):
    """A delivery attempt failed; the record stays in the spool and is retried."""


class PermanentRejection(TransportError):
    """The receiver named the batch invalid (an ack for it with status rejected)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"rejected with HTTP {status_code}: {reason}")
        self.status_code = status_code
        self.reason = reason


class PoisonBatch(PermanentRejection):
    """The receiver answered HTTP 500 to this batch on too many attempts in a row: it keeps
    failing on this batch, and retrying it for ever would stop the stream behind it."""

    def __init__(self, attempts: int, detail: str) -> None:
        super().__init__(500, f"controller answered HTTP 500 {attempts} times: {detail}")
        self.attempts = attempts

    def __str__(self) -> str:
        return self.reason  # the dead-letter reason, as it is


class TooLargeForBus(PermanentRejection):
    """A batch larger than the NATS server's max_payload: it can never be published."""

    def __init__(self, reason: str) -> None:
        TransportError.__init__(self, f"refused by the bus: {reason}")
        self.status_code = 413  # what an HTTP receiver would have said of it
        self.reason = reason
