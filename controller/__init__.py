"""incidentlab controller: the headless FastAPI service.

It ingests collector batches exactly once, keeps bounded hot state, and runs the
incident workflow (observer, analyzer, planner, policy gate, executor, verifier,
memory). The service arrives with its own issue; this package holds only its
docstring until then.
"""
