"""The HTTP API of the builder service (FastAPI): ``create_app(host, settings)``.

The app is a projection of one :class:`~imagenodes.server.service.JobService`, made by
the one composition root (:func:`imagenodes.server.compose.build_service`, which
``imagenodes serve`` and ``imagenodes worker`` use too).  Routes live in
:mod:`imagenodes.server.routers` (jobs, flows, events, files and uploads, queue and
health, the builder page); request bodies are validated once, here at the edge, by
per-node request models built for this host (:mod:`imagenodes.server.requests`);
errors keep the library's codes and map to HTTP statuses by code (:data:`HTTP_STATUS`).
Mountable in a builder backend: ``app.mount("/imagenodes", create_app(host, settings))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagenodes.errors import (
    USER_ERROR_CODES,
    ImageNodesError,
    InputError,
    InvalidJson,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from imagenodes.registry.host import Host
from imagenodes.registry.validation import to_error
from imagenodes.server.compose import build_service
from imagenodes.server.openapi import build_openapi
from imagenodes.server.protocols import comfy
from imagenodes.server.requests import (
    body_kind_for,
    build_flow_request,
    build_job_request,
    coded_request_error,
    job_models,
)
from imagenodes.server.routers import events, files, flows, jobs, queue
from imagenodes.server.routers.page import WEB_DIR, BuilderPage
from imagenodes.server.security import (
    HostGuard,
    NumberError,
    SecurityMiddleware,
    default_number_error,
    is_upload,
    number_message,
)
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import JobStore

__all__ = ["HTTP_STATUS", "WEB_DIR", "create_app", "error_response"]

#: HTTP status of each error code (anything else: 500).
HTTP_STATUS: dict[str, int] = {
    **dict.fromkeys(USER_ERROR_CODES, 422),
    "CONNECTION_ERROR": 400,
    "UNKNOWN_NODE": 404,
    "UNKNOWN_JOB": 404,
    "FILE_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "JOB_CONFLICT": 409,
    "QUEUE_FULL": 429,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "SERVICE_UNAVAILABLE": 503,
    "CANCELLED": 409,
    "INVALID_JSON": 400,
    "INVALID_CURSOR": 400,
    "UNTRUSTED_HOST": 421,
}


def error_response(exc: ImageNodesError) -> JSONResponse:
    """A coded error as its HTTP answer."""
    status = HTTP_STATUS.get(exc.code, 500)
    headers = {"Retry-After": "5"} if status == 429 else None
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


def routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own HTTP errors in the coded shape, each with its own code: no such
    path or method (404/405 ``NOT_FOUND``, the ``Allow`` header kept), a body it could
    not parse (a multipart upload: ``INVALID_INPUT`` naming ``file``; else
    ``INVALID_JSON``), a body or type it refused."""
    where = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 400 and is_upload(request.url.path):
        return error_response(InputError(f"{where} (multipart/form-data)", field="file"))
    if exc.status_code == 400:
        return error_response(InvalidJson(where, field=None))
    if exc.status_code == 413:
        return error_response(PayloadTooLarge(where, field=None))
    if exc.status_code == 415:
        return error_response(UnsupportedMediaType(where, field="Content-Type"))
    error = NotFound(where, field=None)
    return JSONResponse(
        {"error": error.to_dict()}, status_code=exc.status_code, headers=exc.headers
    )


def node_number_error(host: Host) -> NumberError:
    """The error of a refused JSON number (NaN, Infinity, 1e999, a 5000-digit literal)
    found by the body parser (:func:`~imagenodes.server.security.parse_json_body`): in a
    job's ``inputs``, the one the node gives for a non-finite number in that field
    (``INVALID_STEPS`` naming ``inputs.steps`` with the allowed range, as for any other
    bad ``steps``); elsewhere ``INVALID_INPUT`` naming the field as it sits in the body."""

    def number_error(
        route: str, document: Any, loc: tuple[str | int, ...], literal: str
    ) -> ImageNodesError:
        node_id = document.get("node") if isinstance(document, dict) else None
        model = job_models(host).get(node_id) if isinstance(node_id, str) else None
        if (
            model is None
            or not route.startswith("/v1/jobs")
            or loc[:1] != ("inputs",)
            or len(loc) < 2
        ):
            return default_number_error(route, document, loc, literal)
        node = model.node_class
        shown = literal if len(literal) <= 24 else f"{literal[:12]}…({len(literal)} characters)"
        problem = {
            "type": "finite_number",
            "loc": loc[1:],
            "msg": number_message(loc, literal),
            "input": shown,
        }
        try:
            error = to_error(
                [problem],
                node.Input,
                node.field_codes,
                schema=node.input_schema(model.catalog),
                prefix="inputs.",
            )
        except (AttributeError, KeyError, TypeError):
            # A schema the walk to the field cannot follow: the place, named plainly.
            return default_number_error(route, document, loc, literal)
        return node.localise_error(error)

    return number_error


def create_app(
    host: Host | None = None,
    settings: ServerSettings | None = None,
    *,
    store: JobStore | None = None,
    service: JobService | None = None,
) -> FastAPI:
    """The service as an ASGI app; workers start with the app's lifespan.

    ``service`` is one :func:`~imagenodes.server.compose.build_service` made already
    (``imagenodes serve`` does); otherwise it is built here from the other arguments.
    """
    if service is None:
        service = build_service(settings or ServerSettings(), host=host, store=store)
    settings = service.settings
    host = service.host
    job_body = build_job_request(host)
    flow_body = build_flow_request()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    import imagenodes

    app = FastAPI(
        title="imagenodes",
        version=imagenodes.__version__,
        description="Image-generation nodes for visual workflow builders: catalog, durable "
        "job queue, live events, uploads.",
        lifespan=lifespan,
    )
    app.state.service = service
    token = settings.resolved_token()
    # Token, CORS (a listed origin's preflight needs no token), origins, content types,
    # body caps and the one strict JSON parse of every body.
    app.add_middleware(
        SecurityMiddleware,
        token=token,
        allowed_origins=settings.cors_origins,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_depth=settings.max_json_depth,
        number_error=node_number_error(host),
    )
    # In front of the token check: the page loads before a token is typed.
    app.add_middleware(BuilderPage, token_required=token is not None)
    # Outermost: without a token, a rebinding name gets neither the API nor the page.
    app.add_middleware(HostGuard, allowed_hosts=settings.allowed_hosts, enabled=token is None)

    @app.exception_handler(ImageNodesError)
    async def coded_error(request: Request, exc: ImageNodesError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return routing_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A body the request models refused, with the library's code and field."""
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":  # the middleware parses
            # every JSON body first; a body FastAPI alone took for JSON is still JSON's
            reason = (errors[0].get("ctx") or {}).get("error", "")
            return error_response(InvalidJson(f"the request body is not valid JSON: {reason}"))
        return error_response(coded_request_error(exc, body_kind_for(request.url.path), host))

    app.include_router(queue.router(service, settings))
    app.include_router(jobs.router(service, settings, job_body))
    app.include_router(flows.router(service, settings, flow_body))
    app.include_router(events.router(service))
    app.include_router(files.router(service, settings))
    # ComfyUI's protocol on the same service (docs/comfyui.md); the editor's static
    # files are its last router, a catch-all under /comfy/.
    for comfy_router in comfy.routers(service, settings):
        app.include_router(comfy_router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, host)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
    return app
