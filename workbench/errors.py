"""The workbench's one error root; every error the workbench raises is a WorkbenchError.

    WorkbenchError             a source that cannot answer, a run that is not there, a
                               decision refused (``status``: the controller's HTTP status)

Foreign exceptions (httpx's, the run store's) are translated with ``raise ... from``.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A source that cannot answer, a run that is not there, a decision refused."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
