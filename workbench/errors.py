"""The workbench's one error root."""

from __future__ import annotations


class WorkbenchError(Exception):
    """A source that cannot answer, a run that is not there, a decision refused."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
