"""The controller's stores: run metadata in SQLite or PostgreSQL (db, models, repo) and
artifact payloads on a filesystem or S3 through fsspec (payloads)."""
