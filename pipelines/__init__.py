"""incidentlab pipelines: papermill postmortem reports and the demo.

Arrives with its own issue; this package holds only its docstring until then.
"""
