"""create_app(settings): the controller's ASGI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from controller import __version__
from controller.api.fast_ingest import FastIngest
from controller.api.routes import router
from controller.api.workflow import router as workflow_router
from controller.artifacts import ArtifactError
from controller.config import ControllerSettings
from controller.errors import StoreError
from controller.runtime import Runtime

log = logging.getLogger(__name__)


def create_app(settings: ControllerSettings, runtime: Runtime | None = None) -> FastIngest:
    """The FastAPI app behind the lean ingest path; ``.app`` is the FastAPI object (OpenAPI lives there)."""
    rt = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        rt.start()
        try:
            yield
        finally:
            rt.stop()

    api = FastAPI(
        title="incidentlab controller",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    api.state.runtime = rt

    @api.exception_handler(ArtifactError)
    @api.exception_handler(StoreError)
    async def _stored_data_failed(_: Request, exc: Exception) -> JSONResponse:
        # A store that fails or a stored artifact that is corrupt: say which, not a bare 500.
        log.error("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)

    api.include_router(router)
    api.include_router(workflow_router)
    return FastIngest(api, rt.ingest, settings.ingest.max_body_bytes)
