"""The controller's error tree; only controller/api turns these into HTTP answers.

ControllerError
+-- ConfigError        settings refused at start
+-- AuthError          a missing or unknown bearer token (401)
|   +-- Forbidden      a known token whose role may not do this (403)
+-- IngestError        a batch refused at the door, with the HTTP status it maps to
+-- SeqRefused         a far-ahead seq the ledger will not take (a rejected ack)
+-- StoreError         the database or the payload store failed
+-- NotLeader          this controller is a follower; carries the leader's URL (503)
+-- UnknownRun         no workflow run has this id (404)
"""

from __future__ import annotations


class ControllerError(Exception):
    """Root of the controller's errors."""


class ConfigError(ControllerError):
    """Settings were refused at start."""


class AuthError(ControllerError):
    """No token, or one that matches nobody."""


class Forbidden(AuthError):
    """A valid token whose role does not allow the call."""


class IngestError(ControllerError):
    """A batch refused before it changed anything; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class SeqRefused(ControllerError):
    """The ledger refuses a seq so far ahead of its stream that accepting it would turn the
    stream's real batches into duplicates."""


class StoreError(ControllerError):
    """A database or payload-store operation failed."""


class NotLeader(ControllerError):
    """This controller does not hold the writer lock."""

    def __init__(self, leader_url: str | None) -> None:
        super().__init__(f"not the leader; the leader is {leader_url or 'unknown'}")
        self.leader_url = leader_url


class UnknownRun(ControllerError):
    """No workflow run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no workflow run {run_id!r}")
        self.run_id = run_id
