"""The pipelines' one error root; every error the pipelines raise is a PipelineError.

    PipelineError              a report that could not be made (names the run and, for a
                               notebook that failed, the cell)

Foreign exceptions (papermill's, a kernel's, the workbench's) are translated into it where they arise.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A report that could not be made: the message names the run and, for a notebook
    that failed, the cell."""
