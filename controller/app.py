"""create_app(settings): the controller's ASGI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from controller import __version__
from controller.api.fast_ingest import FastIngest
from controller.api.fleet import router as fleet_router
from controller.api.gpu import router as gpu_router
from controller.api.routes import router
from controller.api.workflow import router as workflow_router
from controller.artifacts import ArtifactError
from controller.config import ControllerSettings
from controller.errors import Conflict, Invalid, StoreError, UnknownRun, UnknownSilence
from controller.runtime import Runtime

log = logging.getLogger(__name__)


def _docs(api: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files: a cluster without the
    internet gets it too. The bearer scheme in the OpenAPI document gives it Authorize."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    api.mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static")

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="incidentlab controller",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )


def create_app(
    settings: ControllerSettings, runtime: Runtime | None = None, *, init_store: bool = False
) -> FastIngest:
    """The FastAPI app behind the front door; ``.app`` is the FastAPI object (OpenAPI lives there).
    ``init_store`` lets start initialise an empty database file instead of refusing it."""
    rt = runtime or Runtime(settings, init_store=init_store)

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
        # Starlette's slash redirect builds its Location from the Host and X-Forwarded-Proto
        # headers the client sent: a 404 is the honest answer.
        redirect_slashes=False,
    )
    api.state.runtime = rt
    if settings.server.docs:
        _docs(api)

    @api.exception_handler(ArtifactError)
    @api.exception_handler(StoreError)
    async def _stored_data_failed(_: Request, exc: Exception) -> JSONResponse:
        # A store that fails or a stored artifact that is corrupt: say which, not a bare 500.
        log.error("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)

    # The domain's refusals, each to its status (only controller/api maps errors to HTTP).
    @api.exception_handler(Invalid)
    async def _invalid(_: Request, exc: Invalid) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=400)

    @api.exception_handler(UnknownRun)
    async def _unknown_run(_: Request, exc: UnknownRun) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @api.exception_handler(UnknownSilence)
    async def _unknown_silence(_: Request, exc: UnknownSilence) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @api.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    api.include_router(router)
    api.include_router(workflow_router)
    api.include_router(fleet_router)
    api.include_router(gpu_router)
    return FastIngest(api, rt.ingest, rt.guard, settings.ingest.max_body_bytes, rt.pool)
