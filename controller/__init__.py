"""incidentlab controller: the headless FastAPI service.

It ingests collector batches exactly once in effect (``controller.ingest``,
deduplicated through a durable per-stream ledger), keeps bounded hot state per
host (``controller.hotstate``), stores run metadata in SQLite or PostgreSQL and
payloads on disk or S3 (``controller.store``), elects one writer among several
controllers on PostgreSQL (``controller.leader``), and serves its API
(``controller.api``). ``controller.app.create_app`` builds the ASGI app.
Errors derive from ``controller.errors.ControllerError``.
"""

__version__ = "0.1.0"
