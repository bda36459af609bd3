"""HTTP: FastAPI routers and the lean ASGI ingest path. The only place that turns
controller errors into HTTP answers."""
