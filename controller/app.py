"""create_app(settings): the controller's ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller import __version__
from controller.api.fast_ingest import FastIngest
from controller.api.routes import router
from controller.api.workflow import router as workflow_router
from controller.config import ControllerSettings
from controller.runtime import Runtime


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
    api.include_router(router)
    api.include_router(workflow_router)
    return FastIngest(api, rt.ingest, settings.ingest.max_body_bytes)
