"""The HTTP API of the builder service (FastAPI): ``create_app(host, settings)``.

Routes are thin: validation, queueing, cancellation and events are the
:class:`~imagenodes.server.service.JobService`'s; errors keep the library's codes and
map to HTTP statuses by code (:data:`HTTP_STATUS`).  Mountable in a builder backend:
``app.mount("/imagenodes", create_app(host, settings))``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagenodes.errors import (
    USER_ERROR_CODES,
    FileNotFound,
    ImageNodesError,
    InputError,
    NotFound,
    PayloadTooLarge,
    SourceImageError,
    UnknownJob,
)
from imagenodes.registry.host import Host
from imagenodes.server.security import SecurityMiddleware
from imagenodes.server.service import JobService
from imagenodes.server.settings import WEBHOOK_SECRET_ENV, ServerSettings
from imagenodes.server.store import TERMINAL, JobRecord, JobStore, SQLiteJobStore
from imagenodes.server.webhooks import EVENT_TYPES as WEBHOOK_EVENT_TYPES
from imagenodes.server.webhooks import EventType, WebhookPolicy, WebhookSender, load_secret

API_VERSION = "1"

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
}

#: What GET /v1/files serves: images of runs the service made, and uploads.
_FILE_PATH = re.compile(
    r"^(?:runs/[0-9a-f]{32}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png"
    r"|uploads/[0-9a-f]{64}\.(?:png|jpg|webp|gif|bmp|tiff))$"
)
_MEDIA_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
_FORMAT_EXT = {
    "PNG": "png",
    "JPEG": "jpg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}


# -- request and response models (they are the OpenAPI document) ----------------------
class ErrorBody(BaseModel):
    code: str
    field: str | None = None
    message: str
    solution: str = ""
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobRequest(BaseModel):
    """A node run: the node id and its inputs (the node's input schema)."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="A node id of GET /v1/nodes.", max_length=128)
    inputs: dict[str, Any] = Field(default_factory=dict, description="The node's inputs.")
    connections: dict[str, str] | None = Field(
        default=None, description="Category → connection name (default: the server's)."
    )
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        description="URL that receives the job's events (must be on the server's allow-list).",
    )
    webhook_events: list[EventType] | None = Field(
        default=None, description="Event types sent to the webhook (default: all)."
    )


class FlowRequest(BaseModel):
    """A seed-003 flow document run as one job."""

    model_config = ConfigDict(extra="forbid")

    flow: dict[str, Any] = Field(description="The flow document (title, input, steps).")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The flow's input.")
    connections: dict[str, str] | None = None
    webhook: str | None = Field(default=None, max_length=2048)
    webhook_events: list[EventType] | None = None


class Job(BaseModel):
    id: str
    kind: str
    node: str
    status: str
    position: int | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    attempts: int
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    seeds: list[int] | None = None
    notices: list[dict[str, Any]] | None = None
    timings: dict[str, float] | None = None
    error: ErrorBody | None = None
    urls: list[str] | None = None
    links: dict[str, str]


class JobPage(BaseModel):
    jobs: list[Job]
    next: str | None = Field(default=None, description="Cursor of the next page (?after=).")


class CancelResult(BaseModel):
    cancelled: bool


class Upload(BaseModel):
    ref: str = Field(description="Workspace reference: usable as any image input.")
    path: str
    url: str
    sha256: str
    format: str
    width: int
    height: int
    bytes: int


class Envelope(BaseModel):
    """Every event: SSE ``data``, WebSocket message and webhook body."""

    type: str = Field(
        description="job.queued, job.started, model.loading, model.loaded, "
        "node.progress, image.stored or job.completed"
    )
    job_id: str
    seq: int = Field(description="Strictly increasing per job; the SSE event id.")
    ts: float
    node: str
    step_id: str | None = None
    data: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 415, 422, 429)
}
#: Submissions: 202 while queued or running, 200 once finished (Prefer: wait, or a PUT
#: of a job that has finished).
SUBMITTED: dict[int | str, dict[str, Any]] = {
    200: {"model": Job, "description": "The job has finished."},
    **ERRORS,
}


def _job_view(service: JobService, job: JobRecord) -> Job:
    result = job.result or {}
    base = f"/v1/jobs/{job.id}"
    return Job(
        id=job.id,
        kind=job.kind,
        node=job.node,
        status=job.status,
        position=service.store.position(job.id) if job.status == "queued" else None,
        created=job.created,
        started=job.started,
        finished=job.finished,
        attempts=job.attempts,
        inputs=job.body.get("inputs"),
        outputs=result.get("outputs") if job.kind == "node" else result or None,
        seeds=result.get("seeds"),
        notices=result.get("notices"),
        timings=result.get("timings"),
        error=ErrorBody(**job.error) if job.error else None,
        urls=result.get("urls"),
        links={"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    )


def _parse_wait(prefer: str | None, limit: float) -> float | None:
    """``Prefer: wait=N`` (RFC 7240) → seconds, capped."""
    if not prefer:
        return None
    match = re.search(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)", prefer)
    return min(float(match.group(1)), limit) if match else None


def create_app(
    host: Host | None = None,
    settings: ServerSettings | None = None,
    *,
    store: JobStore | None = None,
) -> FastAPI:
    """The service as an ASGI app; workers start with the app's lifespan."""
    host = host or Host()
    settings = settings or ServerSettings()
    if store is None:
        state = settings.state_dir or _default_state_dir(host)
        store = SQLiteJobStore(Path(state) / "jobs.sqlite3")
    state_dir = Path(settings.state_dir or _default_state_dir(host))
    webhooks = WebhookSender(
        load_secret(state_dir, settings.webhook_secret or os.environ.get(WEBHOOK_SECRET_ENV)),
        WebhookPolicy(settings.webhook_allow, settings.webhook_allow_private),
    )
    service = JobService(host, settings, store, webhooks)
    store.on_event = service.published

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
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Prefer", "Last-Event-ID"],
        )
    app.add_middleware(
        SecurityMiddleware,
        token=settings.resolved_token(),
        allowed_origins=settings.cors_origins,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    # Outermost: the page loads before a token is typed.
    app.add_middleware(BuilderPage, token_required=settings.resolved_token() is not None)

    @app.exception_handler(ImageNodesError)
    async def coded_error(request: Request, exc: ImageNodesError) -> JSONResponse:
        status = HTTP_STATUS.get(exc.code, 500)
        headers = {"Retry-After": "5"} if status == 429 else None
        return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (no such path or method) in the same coded shape."""
        error = NotFound(f"{request.method} {request.url.path}: {exc.detail}", field=None)
        return JSONResponse(
            {"error": error.to_dict()}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or None
        error = InputError(f"{field or 'request'}: {err.get('msg')}", field=field)
        return JSONResponse({"error": error.to_dict()}, status_code=422)

    # -- discovery and health ---------------------------------------------------------
    @app.get("/v1", summary="Discovery: version and links")
    async def discovery() -> dict[str, Any]:
        return {
            "name": "imagenodes",
            "version": imagenodes.__version__,
            "api": API_VERSION,
            "links": {
                "nodes": "/v1/nodes",
                "jobs": "/v1/jobs",
                "uploads": "/v1/uploads",
                "queue": "/v1/queue",
                "health": "/v1/healthz",
                "ready": "/v1/readyz",
                "openapi": "/openapi.json",
            },
        }

    @app.get("/v1/healthz", summary="Liveness: answers at once, also while generating")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/readyz", summary="Readiness: STARTING, READY or BUSY, with queue depth")
    async def readyz() -> JSONResponse:
        counts = await asyncio.to_thread(service.store.counts)
        running = len(service.running())
        state = "STARTING" if not service.ready else ("BUSY" if running else "READY")
        body = {
            "status": state,
            "queue_depth": counts["queued"],
            "running": running,
            "paused": await asyncio.to_thread(service.store.get_flag, "paused"),
        }
        return JSONResponse(body, status_code=503 if state == "STARTING" else 200)

    # -- catalog ----------------------------------------------------------------------
    @app.get("/v1/nodes", summary="The node catalog")
    async def nodes() -> dict[str, Any]:
        return {"nodes": host.catalog()}

    @app.get("/v1/nodes/{node_id}", summary="One catalog entry", responses=ERRORS)
    async def node(node_id: str) -> dict[str, Any]:
        return host.catalog_entry(node_id)  # UNKNOWN_NODE → 404

    # -- jobs -------------------------------------------------------------------------
    async def _submitted(job: JobRecord, prefer: str | None) -> JSONResponse:
        """202 while the job is queued or running, 200 once it has finished."""
        wait = _parse_wait(prefer, settings.max_wait_s)
        if wait:
            job = await _wait_for(service, job.id, wait)
        status = 200 if job.status in TERMINAL else 202
        view = _job_view(service, job)
        headers = {"Location": view.links["self"]}
        return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=Job,
        summary="Queue a node run (Prefer: wait=N answers when done)",
        responses=SUBMITTED,
    )
    async def post_job(
        request_: JobRequest, prefer: str | None = Header(default=None)
    ) -> JSONResponse:
        job, _ = await asyncio.to_thread(service.submit, request_.model_dump(exclude_none=True))
        return await _submitted(job, prefer)

    @app.put(
        "/v1/jobs/{job_id}",
        status_code=202,
        response_model=Job,
        summary="Queue a node run under a client-chosen UUID (idempotent)",
        responses=SUBMITTED,
    )
    async def put_job(
        job_id: str, request_: JobRequest, prefer: str | None = Header(default=None)
    ) -> JSONResponse:
        job, _ = await asyncio.to_thread(
            service.submit, request_.model_dump(exclude_none=True), job_id=_uuid(job_id)
        )
        return await _submitted(job, prefer)

    @app.post(
        "/v1/flows/run",
        status_code=202,
        response_model=Job,
        summary="Run a seed-003 flow as one job (events name the step)",
        responses=SUBMITTED,
    )
    async def post_flow(
        request_: FlowRequest, prefer: str | None = Header(default=None)
    ) -> JSONResponse:
        from imagenodes.flows.runner import FlowRunner

        # Every step that can be checked before anything runs is (a wired step too).
        await asyncio.to_thread(FlowRunner(host).preflight, request_.flow, request_.inputs)
        job, _ = await asyncio.to_thread(
            service.submit, request_.model_dump(exclude_none=True), kind="flow"
        )
        return await _submitted(job, prefer)

    @app.get("/v1/jobs", response_model=JobPage, summary="Jobs, newest first", responses=ERRORS)
    async def list_jobs(
        status: str | None = Query(
            default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"
        ),
        after: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> JobPage:
        jobs = await asyncio.to_thread(
            service.store.list_jobs, status=status, after=after, limit=limit + 1
        )
        page = [_job_view(service, j) for j in jobs[:limit]]
        return JobPage(jobs=page, next=page[-1].id if len(jobs) > limit else None)

    @app.get("/v1/jobs/{job_id}", response_model=Job, summary="One job", responses=ERRORS)
    async def get_job(job_id: str) -> Job:
        return _job_view(service, service.job(job_id))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        response_model=CancelResult,
        summary="Cancel (idempotent; queued, loading or generating)",
        responses=ERRORS,
    )
    async def cancel_job(job_id: str) -> CancelResult:
        return CancelResult(cancelled=await asyncio.to_thread(service.cancel, job_id))

    @app.post(
        "/v1/jobs/{job_id}/retry",
        status_code=202,
        response_model=Job,
        summary="Queue a failed or cancelled job again (same inputs, same seed)",
        responses=ERRORS,
    )
    async def retry_job(job_id: str) -> Job:
        return _job_view(service, await asyncio.to_thread(service.retry, job_id))

    @app.delete(
        "/v1/jobs/{job_id}", status_code=204, summary="Forget a finished job", responses=ERRORS
    )
    async def delete_job(job_id: str) -> Response:
        await asyncio.to_thread(service.delete, job_id)
        return Response(status_code=204)

    @app.get(
        "/v1/jobs/{job_id}/events",
        summary="Server-Sent Events of a job (resumable with Last-Event-ID)",
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    )
    async def job_events(
        job_id: str,
        request: Request,
        last_event_id: str | None = Header(default=None),
        after: int | None = Query(default=None, ge=0),
    ) -> EventSourceResponse:
        service.job(job_id)
        start = after if after is not None else _int(last_event_id)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            async for event in _follow(service, job_id, start):
                if await request.is_disconnected():
                    return
                yield {"id": str(event["seq"]), "event": event["type"], "data": json.dumps(event)}

        return EventSourceResponse(stream(), ping=15)

    @app.websocket("/v1/ws")
    async def ws(socket: WebSocket) -> None:
        """Subscribe to several jobs: send ``{"subscribe": [ids], "after": {id: seq}}``."""
        await socket.accept()
        tasks: dict[str, asyncio.Task[None]] = {}

        async def pump(job_id: str, after: int) -> None:
            async for event in _follow(service, job_id, after):
                await socket.send_json(event)

        try:
            while True:
                message = await socket.receive_json()
                after = message.get("after") or {}
                for job_id in message.get("subscribe") or []:
                    if not isinstance(job_id, str) or job_id in tasks:
                        continue
                    if service.store.get(job_id) is None:
                        await socket.send_json(
                            {"error": UnknownJob(f"no job {job_id!r}").to_dict()}
                        )
                        continue
                    tasks[job_id] = asyncio.create_task(pump(job_id, int(after.get(job_id, 0))))
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks.values():
                task.cancel()

    # -- uploads and files --------------------------------------------------------------
    @app.post(
        "/v1/uploads",
        status_code=201,
        response_model=Upload,
        summary="Upload an image (multipart field 'file', or the raw image as the body)",
        responses=ERRORS,
    )
    async def upload(request: Request) -> Upload:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            item = form.get("file")
            if item is None or isinstance(item, str):
                raise InputError("multipart upload needs a file field named 'file'", field="file")
            data = await item.read()  # the client's file name is never used
        else:
            data = await request.body()
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"upload exceeds {settings.max_upload_bytes} bytes")
        return await asyncio.to_thread(_store_upload, host, service, data)

    @app.get(
        "/v1/files/{path:path}",
        summary="An image the service produced or received",
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
    )
    async def files(path: str) -> Response:
        if not _FILE_PATH.match(path) or not service.store.has_file(path):
            raise FileNotFound(f"no file {path!r} produced by this service", field="path")
        data = await asyncio.to_thread(host.workspace.read_bytes, path, field="path")
        media = _MEDIA_TYPES[path.rsplit(".", 1)[1]]
        return Response(
            data,
            media_type=media,
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
        )

    # -- queue --------------------------------------------------------------------------
    @app.get("/v1/queue", summary="Queue state")
    async def queue() -> dict[str, Any]:
        counts = await asyncio.to_thread(service.store.counts)
        return {
            "paused": service.store.get_flag("paused"),
            "depth": counts["queued"],
            "running": service.running(),
            "counts": counts,
            "max_queue": settings.max_queue,
        }

    @app.post("/v1/queue/pause", summary="Stop starting jobs (running ones finish)")
    async def pause() -> dict[str, bool]:
        service.store.set_flag("paused", True)
        return {"paused": True}

    @app.post("/v1/queue/resume", summary="Start jobs again")
    async def resume() -> dict[str, bool]:
        service.store.set_flag("paused", False)
        return {"paused": False}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, host)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def _openapi(app: FastAPI, host: Host) -> dict[str, Any]:
    """FastAPI's document plus every node's input model, so a generated client is typed.

    ``POST /v1/jobs`` and ``PUT /v1/jobs/{id}`` take a ``NodeJobRequest``: a union of
    one ``<Node>Job`` schema per node, discriminated by ``node``.  The node schemas come
    from pydantic (``models_json_schema``, one namespace, no name clashes) with the
    run-time ``choices`` the catalog adds.
    """
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    nodes = dict(sorted(host.nodes.items()))
    keys, defs = models_json_schema(
        [(cls.Input, "validation") for cls in nodes.values()],
        ref_template="#/components/schemas/{model}",
    )
    components.update(defs.get("$defs", {}))
    catalog = {entry["id"]: entry for entry in host.catalog()}
    variants: dict[str, str] = {}
    for node_id, cls in nodes.items():
        ref = keys[(cls.Input, "validation")]["$ref"]
        model_name = ref.rsplit("/", 1)[1]
        published = catalog[node_id]["input_schema"].get("properties", {})
        for name in cls.choices:  # the run-time enums of the catalog
            components[model_name]["properties"][name]["enum"] = published[name]["enum"]
        job_name = "".join(part.title() for part in node_id.replace("-", "_").split("_")) + "Job"
        components[job_name] = {
            "type": "object",
            "title": f"{node_id} job",
            "properties": {
                "node": {"type": "string", "enum": [node_id]},
                "inputs": {"$ref": ref},
                "connections": {
                    "anyOf": [
                        {"type": "object", "additionalProperties": {"type": "string"}},
                        {"type": "null"},
                    ]
                },
                "webhook": {"anyOf": [{"type": "string", "maxLength": 2048}, {"type": "null"}]},
                "webhook_events": {
                    "anyOf": [
                        {"type": "array", "items": {"enum": list(WEBHOOK_EVENT_TYPES)}},
                        {"type": "null"},
                    ]
                },
            },
            "required": ["node"],
            "additionalProperties": False,
        }
        variants[node_id] = f"#/components/schemas/{job_name}"
    components["NodeJobRequest"] = {
        "oneOf": [{"$ref": target} for target in variants.values()],
        "discriminator": {"propertyName": "node", "mapping": variants},
    }
    components["Envelope"] = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    events = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    events["description"] = "The job's events; each SSE data line is one Envelope."
    events["content"] = {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Envelope"}}}
    body = {"$ref": "#/components/schemas/NodeJobRequest"}
    for path, method in (("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "put")):
        schema["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"] = body
    return schema


# -- the builder page -----------------------------------------------------------------------
#: The builder page's files (package data): index.html, its ES modules, vendored baklavajs.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The page runs only its own files; images come from the API as blobs (they need the token).
_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class BuilderPage:
    """Serves the builder page at ``/`` and its files under ``/web/`` (docs/builder.md).

    It sits in front of the security middleware on purpose: the page and its scripts
    hold no secret, and with ``--token`` they must load before the user has typed the
    token, which the page then sends on every API call.  Only GET and HEAD of those
    paths are answered here; everything else goes on to the API untouched.
    ``/web/config.json`` tells the page whether to ask for a token (never the token), so
    it asks before its first call instead of after a 401.
    """

    def __init__(self, app: Any, *, token_required: bool) -> None:
        from starlette.staticfiles import StaticFiles

        self.app = app
        self.files = StaticFiles(directory=WEB_DIR)
        self.config = {"token_required": token_required}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        root = str(scope.get("root_path", ""))
        path = str(scope.get("path", ""))
        route = path[len(root) :] if root and path.startswith(root) else path
        if route == "/web/config.json":
            response = JSONResponse(self.config, headers={"cache-control": "no-store"})
            await response(scope, receive, send)
            return
        if route == "/":
            inner = "/index.html"
        elif route.startswith("/web/"):
            inner = route[len("/web") :]
        else:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_PAGE_HEADERS]}
            await send(message)

        try:
            await self.files({**scope, "path": inner, "root_path": ""}, receive, with_headers)
        except StarletteHTTPException as exc:  # no such file: the API's coded 404
            error = NotFound(f"{scope.get('method')} {path}: {exc.detail}", field=None)
            response = JSONResponse({"error": error.to_dict()}, status_code=exc.status_code)
            await response(scope, receive, send)


# -- helpers ------------------------------------------------------------------------------
def _default_state_dir(host: Host) -> Path:
    root = getattr(host.workspace, "root", None)
    if host.workspace.is_local and root:
        return Path(root) / ".server"
    return Path(".imagenodes-server")


def _uuid(value: str) -> str:
    import uuid

    try:
        return uuid.UUID(value).hex
    except ValueError:
        raise InputError(
            f"job id must be a UUID such as 4716c93e-03bc-49cf-921d-203971fe5866 (got {value!r})",
            field="id",
        ) from None


def _int(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


async def _wait_for(service: JobService, job_id: str, seconds: float) -> JobRecord:
    """The job once it is finished, or as it is after ``seconds``."""
    wake = service.listeners.add(job_id, final_only=True)
    deadline = time.monotonic() + seconds
    try:
        while True:
            job = service.job(job_id)
            remaining = deadline - time.monotonic()
            if job.status in TERMINAL or remaining <= 0:
                return job
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=remaining)
            except TimeoutError:
                pass
    finally:
        service.listeners.remove(job_id, wake)


async def _follow(service: JobService, job_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    """A job's stored events after ``after``, then new ones as they happen, until its
    ``job.completed`` (a job re-queued by a retry goes on after it)."""
    wake = service.listeners.add(job_id)
    try:
        while True:
            wake.clear()
            events = await asyncio.to_thread(service.store.events, job_id, after=after)
            for event in events:
                after = event.seq
                yield event.to_dict()
            job = service.store.get(job_id)
            if job is None or (
                job.status in TERMINAL and events and events[-1].type == "job.completed"
            ):
                return
            if job.status in TERMINAL and not events:
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=5.0)
            except TimeoutError:
                pass
    finally:
        service.listeners.remove(job_id, wake)


def _store_upload(host: Host, service: JobService, data: bytes) -> Upload:
    from PIL import Image

    from imagenodes.workspace import decode_image

    image = decode_image(data, field="file")  # allowed formats, pixel cap, full decode
    with Image.open(io.BytesIO(data)) as probe:
        fmt = str(probe.format or "")
    ext = _FORMAT_EXT.get(fmt)
    if ext is None:
        raise SourceImageError(f"unsupported image format {fmt or 'unknown'}", field="file")
    digest = hashlib.sha256(data).hexdigest()
    path = f"uploads/{digest}.{ext}"
    if not host.workspace.exists(path):
        host.workspace.write_bytes(path, data)
    service.store.record_file(path, None)
    return Upload(
        ref=host.workspace.ref(path),
        path=path,
        url=f"/v1/files/{path}",
        sha256=digest,
        format=fmt,
        width=image.width,
        height=image.height,
        bytes=len(data),
    )
