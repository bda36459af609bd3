"""The controller's error tree; only controller/api turns these into HTTP answers.

ControllerError
+-- ConfigError            settings refused at start
+-- AuthError              a missing or unknown bearer token (401)
|   +-- Forbidden          a known token whose role may not do this (403)
+-- IngestError            a batch refused at the door, with the HTTP status it answers
+-- SeqRefused             a far-ahead seq the ledger will not take (a rejected ack)
+-- StoreError             the database or the payload store failed
+-- NotLeader              this controller is a follower; carries the leader's URL (503)
+-- UnknownRun             no workflow run has this id (404)
+-- UnknownSilence         no silence has this id (404)
+-- Conflict               the run is not in a state for this, or a stale plan (409)
|   +-- DecisionConflict   another decision moved the run first
+-- Invalid                a parameter the rules refuse, naming it (400)
+-- BodyError              api/guard.py: a request body the front door stops reading
|   +-- BodyTooLarge       past its cap (413)
|   +-- BodyTimeout        stalled, or slower than the floor rate (408)
|   +-- ClientGone         the client left before its body was complete
+-- NoRoom                 api/guard.py: the in-flight bounds are full (429)
+-- ArtifactError          artifacts.py: an artifact that breaks the contract
|   +-- ArtifactTampered   a stored artifact that no longer hashes to its commit (409)
+-- ActuatorError          actuators/base.py: an action refused or failed
|   +-- BudgetExhausted    actuators/validate.py: validation's call budget is spent
|   +-- CommandFailed      actuators/command.py: a runbook command that ran and failed (never rerun)
+-- UnknownDetectorError   detectors/base.py: a detector name nobody registered
+-- RulesError             detectors/rules.py: a rules file refused at start
+-- ExprError              detectors/expr.py: an alert expression that cannot be read
+-- UnknownRoleError       workflow/roles/base.py: an artifact kind no role produces
+-- NotReady               workflow/roles/base.py: the verifier waits for fresh samples

tests/test_layout.py checks that every exception class in controller/ is drawn here.
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


class UnknownSilence(ControllerError):
    """No silence or maintenance window has this id."""

    def __init__(self, silence_id: str) -> None:
        super().__init__(f"no silence {silence_id!r}")


class Conflict(ControllerError):
    """The run is not in a state for this request (not awaiting approval, a stale plan,
    nothing executed)."""


class DecisionConflict(Conflict):
    """The run is no longer awaiting a decision (another one got there first)."""


class Invalid(ControllerError):
    """A request the rules refuse, naming the parameter or body field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class BodyError(ControllerError):
    """A request body the front door stops reading."""


class BodyTooLarge(BodyError):
    """The body passed its cap; the rest is not read."""


class BodyTimeout(BodyError):
    """The body stalled, or arrives slower than the floor rate."""


class ClientGone(BodyError):
    """The client disconnected before its body was complete."""


class NoRoom(ControllerError):
    """The in-flight bounds (all clients, or this peer's share) are full: 429."""
