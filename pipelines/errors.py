"""The pipelines' one error root."""

from __future__ import annotations


class PipelineError(Exception):
    """A report that could not be made: the message names the run and, for a notebook
    that failed, the cell."""
