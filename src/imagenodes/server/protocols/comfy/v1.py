"""ComfyUI's own server protocol under ``/comfy`` (and ``/comfy/api``, as ComfyUI
registers every route twice): what the ComfyUI editor and v1 API clients call.

Everything here is a projection of the one service:

* ``POST /prompt`` turns the API-format graph into a flow job
  (:func:`~imagenodes.server.protocols.comfy.jobs.submit_graph`); a graph that cannot
  run is answered in ComfyUI's ``{error, node_errors}`` shape, carrying our codes;
* ``/queue``, ``/history``, ``/api/jobs`` and ``/interrupt`` read and change the same
  queue as ``/v1/jobs`` (a ``/v1`` job is listed here too, as a one-node prompt);
* the ``/ws`` socket's messages are the job's typed events
  (:mod:`imagenodes.registry.events`) rewritten in ComfyUI's vocabulary by
  :func:`project` — ``run.started`` → ``executing``, ``node.progress`` → ``progress``
  and ``progress_state``, ``run.finished`` → ``executed`` … — followed exactly as SSE
  follows them (:func:`~imagenodes.server.routers.events.follow`), never a second
  event system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from imagenodes.errors import ImageNodesError, InputError, UnknownJob
from imagenodes.registry.events import Event
from imagenodes.server import pools
from imagenodes.server.protocols.comfy.jobs import (
    INPUT,
    comfy_of,
    image_entry,
    submit_graph,
    view_path,
)
from imagenodes.server.routers.events import follow
from imagenodes.server.routers.files import MEDIA_TYPES, read_file, store_upload
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import TERMINAL, JobRecord

log = logging.getLogger(__name__)

#: Where ComfyUI's routes answer: under ``/comfy`` (the editor calls ``/comfy/api/…``)
#: and at the root, for v1 clients that assume ComfyUI's own root.
PREFIXES = ("/comfy", "/comfy/api", "")

#: ComfyUI's job states (its ``/api/jobs``) of ours.
_JOB_STATUS = {
    "queued": "pending",
    "running": "in_progress",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


# -- projections -----------------------------------------------------------------------
def job_graph(job: JobRecord) -> dict[str, Any]:
    """The job as an API-format graph: the one a ComfyUI client sent, else (a ``/v1``
    job) its node as a one-node graph or its flow's steps."""
    prompt = comfy_of(job).get("prompt")
    if isinstance(prompt, dict):
        return prompt
    from imagenodes.flows.comfy import class_type

    if job.kind == "node":
        return {"1": {"class_type": class_type(job.node), "inputs": job.body.get("inputs") or {}}}
    steps = (job.body.get("flow") or {}).get("steps") or []
    return {
        str(s.get("id")): {"class_type": str(s.get("type")), "inputs": s.get("parameters") or {}}
        for s in steps
        if isinstance(s, dict)
    }


def _images(outputs: Any, workspace_url: str) -> list[dict[str, str]]:
    """ComfyUI's ``{filename, subfolder, type}`` of every image reference in
    ``outputs`` (relative references, or our workspace's own URLs)."""
    found: list[dict[str, str]] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            ref = value.removeprefix(workspace_url.rstrip("/") + "/")
            entry = image_entry(ref)
            if entry is not None:
                found.append(entry)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(outputs)
    return found


def node_outputs(job: JobRecord, workspace_url: str) -> dict[str, dict[str, Any]]:
    """ComfyUI's ``outputs`` of a finished job: the images of each graph node."""
    result = job.result or {}
    if job.kind == "node":
        images = _images(result.get("outputs"), workspace_url)
        return {"1": {"images": images}} if images else {}
    out: dict[str, dict[str, Any]] = {}
    for step, outputs in (result.get("results") or {}).items():
        images = _images(outputs, workspace_url)
        if images:
            out[str(step)] = {"images": images}
    return out


def _number(job: JobRecord) -> float:
    return float(getattr(job, "ord", None) or 0)


def queue_item(job: JobRecord) -> list[Any]:
    """``[number, prompt_id, prompt, extra_data, outputs_to_execute]``, ComfyUI's queue
    entry."""
    comfy = comfy_of(job)
    extra = dict(comfy.get("extra_data") or {})
    if comfy.get("client_id"):
        extra["client_id"] = comfy["client_id"]
    graph = job_graph(job)
    return [_number(job), job.id, graph, extra, list(graph)]


def history_entry(job: JobRecord, workspace_url: str) -> dict[str, Any]:
    ok = job.status == "succeeded"
    messages: list[list[Any]] = []
    if job.started:
        messages.append(["execution_start", {"prompt_id": job.id, "timestamp": _ms(job.started)}])
    if job.finished:
        kind = {"succeeded": "execution_success", "cancelled": "execution_interrupted"}
        messages.append(
            [
                kind.get(job.status, "execution_error"),
                {"prompt_id": job.id, "timestamp": _ms(job.finished)},
            ]
        )
    return {
        "prompt": queue_item(job),
        "outputs": node_outputs(job, workspace_url),
        "status": {
            "status_str": "success" if ok else "error",
            "completed": ok,
            "messages": messages,
        },
        "meta": {
            node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
            for node in node_outputs(job, workspace_url)
        },
    }


def _ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds is not None else None


def job_summary(job: JobRecord, workspace_url: str) -> dict[str, Any]:
    """One job as the ComfyUI editor's queue and history panels list it."""
    outputs = node_outputs(job, workspace_url)
    previews = [
        {**image, "nodeId": node, "mediaType": "images"}
        for node, out in outputs.items()
        for image in out["images"]
    ]
    error = _execution_error(job.error, job_graph(job)) if job.error else None
    return {
        "id": job.id,
        "status": _JOB_STATUS.get(job.status, job.status),
        "priority": _number(job),
        "create_time": _ms(job.created),
        "execution_start_time": _ms(job.started),
        "execution_end_time": _ms(job.finished),
        "outputs_count": len(previews),
        "previewable_outputs_count": len(previews),
        "preview_output": previews[0] if previews else None,
        "outputs": outputs,
        "execution_error": error,
        "workflow_id": None,
    }


def project(event: Event, job: JobRecord, workspace_url: str) -> list[dict[str, Any]]:
    """The ComfyUI socket messages of one of our events (none for the events ComfyUI
    has no word for).  ``node`` is the graph node — the flow step — the event is of."""
    prompt_id = job.id
    graph = job_graph(job)
    node = event.step_id if job.kind == "flow" else "1"
    now = int(time.time() * 1000)
    data = event.data
    kind = event.type
    if kind == "job.started":
        return [{"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": now}}]
    if kind == "run.started":
        return [
            {
                "type": "executing",
                "data": {"node": node, "display_node": node, "prompt_id": prompt_id},
            }
        ]
    if kind == "node.progress":
        state = {
            "value": data["step"],
            "max": data["total"],
            "state": "running",
            "node_id": node,
            "prompt_id": prompt_id,
            "display_node_id": node,
            "parent_node_id": None,
            "real_node_id": node,
        }
        return [
            {
                "type": "progress",
                "data": {
                    "value": data["step"],
                    "max": data["total"],
                    "prompt_id": prompt_id,
                    "node": node,
                },
            },
            {"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": {node: state}}},
        ]
    if kind == "run.finished":
        outputs = data.get("outputs") or {}
        messages: list[dict[str, Any]] = []
        if outputs.get("cached") is True:  # the result cache answered this node
            messages.append(
                {
                    "type": "execution_cached",
                    "data": {"nodes": [node], "prompt_id": prompt_id, "timestamp": now},
                }
            )
        images = _images(outputs, workspace_url)
        messages.append(
            {
                "type": "executed",
                "data": {
                    "node": node,
                    "display_node": node,
                    "prompt_id": prompt_id,
                    "output": {"images": images} if images else {},
                },
            }
        )
        return messages
    if kind == "job.completed":
        status = data.get("status")
        error = data.get("error") or {}
        if status == "succeeded":
            return [
                {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}},
                {"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": now}},
            ]
        failed = _execution_error(error, graph)
        base = {
            "prompt_id": prompt_id,
            "node_id": failed["node_id"],
            "node_type": failed["node_type"],
            "timestamp": now,
        }
        if status == "cancelled":
            return [{"type": "execution_interrupted", "data": {**base, "executed": []}}]
        return [
            {
                "type": "execution_error",
                "data": {
                    **base,
                    **failed,
                    "executed": [],
                    "current_inputs": {},
                    "current_outputs": {},
                },
            }
        ]
    return []


def _execution_error(error: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's description of a failed execution (the socket's ``execution_error``,
    the jobs panel's ``execution_error``): the node our error names, our code as its
    exception type."""
    node = _failed_node(error, graph)
    code = str(error.get("code") or "GENERATION_FAILED")
    return {
        "node_id": node,
        "node_type": (graph.get(node or "", {}) or {}).get("class_type"),
        "exception_message": f"{code}: {error.get('message')}",
        "exception_type": code,
        "traceback": [],
    }


def _failed_node(error: dict[str, Any], graph: dict[str, Any]) -> str | None:
    """The graph node an error names (a flow step's error carries ``details.step``)."""
    step = (error.get("details") or {}).get("step")
    if step is not None:
        return str(step)
    return next(iter(graph), None) if len(graph) == 1 else None


# -- the socket's sessions -------------------------------------------------------------
class Session:
    """One ``/ws`` connection: the jobs it follows, each a task over ``follow``."""

    def __init__(self, socket: WebSocket, client_id: str, service: JobService) -> None:
        self.socket = socket
        self.client_id = client_id
        self.service = service
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            await self.socket.send_json(message)

    async def status(self) -> None:
        counts = await pools.read(self.service, self.service.store.counts)
        remaining = int(counts.get("queued", 0)) + int(counts.get("running", 0))
        await self.send(
            {
                "type": "status",
                "data": {
                    "status": {"exec_info": {"queue_remaining": remaining}},
                    "sid": self.client_id,
                },
            }
        )

    def follow(self, job_id: str) -> None:
        if job_id not in self.tasks:
            self.tasks[job_id] = asyncio.create_task(self._pump(job_id))

    async def _pump(self, job_id: str) -> None:
        service = self.service
        url = service.host.workspace.url
        job = await pools.read(service, service.store.get, job_id)
        if job is None:
            return
        try:
            async for event in follow(service, job_id, 0):
                if event.type in ("job.queued", "job.started", "job.completed"):
                    fresh = await pools.read(service, service.store.get, job_id)
                    job = fresh or job
                for message in project(event, job, url):
                    await self.send(message)
                if event.type in ("job.queued", "job.completed"):
                    await self.status()
                if event.type == "stream.reconnect":
                    return
        except (WebSocketDisconnect, RuntimeError):
            return
        except Exception:  # one job's projection must not end the socket
            log.exception("ComfyUI socket of %s: following job %s failed", self.client_id, job_id)

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()


class Sessions:
    """Open sockets by client id: a prompt queued with a ``client_id`` is followed by
    that client's sockets, one without by every socket (as ComfyUI broadcasts)."""

    def __init__(self) -> None:
        self.by_client: dict[str, set[Session]] = {}

    def add(self, session: Session) -> None:
        self.by_client.setdefault(session.client_id, set()).add(session)

    def remove(self, session: Session) -> None:
        group = self.by_client.get(session.client_id, set())
        group.discard(session)
        if not group:
            self.by_client.pop(session.client_id, None)

    def for_client(self, client_id: str | None) -> Iterable[Session]:
        if client_id:
            return list(self.by_client.get(client_id, ()))
        return [s for group in self.by_client.values() for s in group]


# -- routes --------------------------------------------------------------------------------
def router(service: JobService, settings: ServerSettings) -> APIRouter:
    """ComfyUI's routes under ``/comfy`` and ``/comfy/api``."""
    api = APIRouter(tags=["comfyui"], include_in_schema=False)
    sessions = Sessions()
    host = service.host

    def route(method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``path`` under ComfyUI's two prefixes, and at the root: ComfyUI's
        v1 API clients join ``/prompt`` to the server's root whatever URL they are given
        (none of these paths is one of ours)."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            for prefix in PREFIXES:
                api.add_api_route(f"{prefix}{path}", fn, methods=[method])
            return fn

        return register

    @route("GET", "/object_info")
    async def object_info() -> dict[str, Any]:
        from imagenodes.flows.comfy import object_info as info

        return await pools.read(service, info, host)

    @route("GET", "/object_info/{node_class}")
    async def object_info_one(node_class: str) -> dict[str, Any]:
        from imagenodes.flows.comfy import object_info as info

        every = await pools.read(service, info, host)
        return {node_class: every[node_class]} if node_class in every else {}

    @route("POST", "/prompt")
    async def post_prompt(request: Request) -> JSONResponse:
        from imagenodes.flows.comfy import ComfyGraphError

        body = await request.json()
        if not isinstance(body, dict) or "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return JSONResponse({"error": error, "node_errors": {}}, status_code=400)
        client_id = body.get("client_id")
        client_id = str(client_id)[:128] if client_id else None
        extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        prompt_id = body.get("prompt_id")
        try:
            job = await pools.work(
                service,
                submit_graph,
                service,
                body["prompt"],
                client_id=client_id,
                extra=extra,
                job_id=str(prompt_id) if prompt_id else None,
            )
        except ComfyGraphError as exc:
            return JSONResponse(
                {"error": exc.comfy_error, "node_errors": exc.node_errors}, status_code=400
            )
        except ImageNodesError as exc:  # a coded refusal not about one node
            error = {
                "type": "invalid_prompt",
                "message": exc.message,
                "details": f"{exc.code}: {exc.message}",
                "extra_info": {"code": exc.code, "field": exc.field},
            }
            return JSONResponse({"error": error, "node_errors": {}}, status_code=400)
        for session in sessions.for_client(client_id):
            session.follow(job.id)
        return JSONResponse({"prompt_id": job.id, "number": _number(job), "node_errors": {}})

    @route("GET", "/prompt")
    async def get_prompt() -> dict[str, Any]:
        counts = await pools.read(service, service.store.counts)
        remaining = int(counts.get("queued", 0)) + int(counts.get("running", 0))
        return {"exec_info": {"queue_remaining": remaining}}

    def _listed(status: str | None, limit: int) -> list[JobRecord]:
        return service.store.list_jobs(status=status, after=None, limit=limit)

    @route("GET", "/queue")
    async def get_queue() -> dict[str, Any]:
        running = await pools.read(service, _listed, "running", 500)
        pending = await pools.read(service, _listed, "queued", 500)
        return {
            "queue_running": [queue_item(j) for j in running],
            "queue_pending": [queue_item(j) for j in reversed(pending)],  # oldest first
        }

    @route("POST", "/queue")
    async def post_queue(request: Request) -> Response:
        body = await _json_or_empty(request)
        ids: list[str] = []
        if body.get("clear"):
            ids += [j.id for j in await pools.read(service, _listed, "queued", 500)]
        ids += [str(i) for i in body.get("delete") or [] if isinstance(i, str)]
        for job_id in ids[:500]:
            with contextlib.suppress(UnknownJob):
                await pools.work(service, service.cancel, job_id)
        return Response(status_code=200)

    @route("POST", "/interrupt")
    async def interrupt(request: Request) -> Response:
        body = await _json_or_empty(request)
        wanted = body.get("prompt_id")
        targets = [str(wanted)] if wanted else service.running()
        for job_id in targets:
            with contextlib.suppress(UnknownJob):
                await pools.work(service, service.cancel, job_id)
        return Response(status_code=200)

    @route("GET", "/history")
    async def history(max_items: int | None = Query(default=None, ge=1, le=10_000)) -> Any:
        limit = max_items or 200

        def finished() -> list[JobRecord]:
            jobs = service.store.list_jobs(status=None, after=None, limit=limit * 2 + 50)
            return [j for j in jobs if j.status in TERMINAL][:limit]

        url = host.workspace.url
        jobs = await pools.read(service, finished)
        return {j.id: history_entry(j, url) for j in jobs}

    @route("GET", "/history/{prompt_id}")
    async def history_one(prompt_id: str) -> Any:
        job = await pools.read(service, service.store.get, prompt_id)
        if job is None or job.status not in TERMINAL:
            return {}
        return {job.id: history_entry(job, host.workspace.url)}

    @route("POST", "/history")
    async def post_history(request: Request) -> Response:
        body = await _json_or_empty(request)
        ids = [str(i) for i in body.get("delete") or [] if isinstance(i, str)]
        if body.get("clear"):
            ids += [
                j.id for j in await pools.read(service, _listed, None, 500) if j.status in TERMINAL
            ]
        for job_id in ids[:500]:
            with contextlib.suppress(ImageNodesError):
                await pools.work(service, service.delete, job_id)
        return Response(status_code=200)

    @route("GET", "/view")
    async def view(
        filename: str = Query(max_length=256),
        subfolder: str = Query(default="", max_length=256),
        type: str = Query(default="output", max_length=16),
    ) -> Response:
        path = view_path(filename, subfolder, type)
        data = await pools.work(service, read_file, service, path)
        ext = path.rsplit(".", 1)[-1]
        return Response(
            data,
            media_type=MEDIA_TYPES.get(ext, "application/octet-stream"),
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
        )

    async def _upload(request: Request) -> dict[str, str]:
        form = await request.form(max_files=1, max_fields=8)
        item = form.get("image")
        if item is None or isinstance(item, str):
            raise InputError("multipart upload needs a file field named 'image'", field="image")
        data = await item.read()  # the client's file name is never used
        if len(data) > settings.max_upload_bytes:
            from imagenodes.errors import PayloadTooLarge

            raise PayloadTooLarge(f"upload exceeds {settings.max_upload_bytes} bytes")
        upload = await pools.work(service, store_upload, service, data)
        return {"name": upload.path.removeprefix("uploads/"), "subfolder": "", "type": INPUT}

    route("POST", "/upload/image")(_upload)
    route("POST", "/upload/mask")(_upload)

    @api.get("/comfy/api/jobs")
    async def jobs(
        status: str | None = Query(default=None, max_length=200),
        limit: int = Query(default=100, ge=1, le=500),
        offset: int = Query(default=0, ge=0, le=100_000),
    ) -> dict[str, Any]:
        ours = {v: k for k, v in _JOB_STATUS.items()}
        wanted = {ours.get(s.strip(), s.strip()) for s in (status or "").split(",") if s.strip()}

        def page() -> list[JobRecord]:
            every = service.store.list_jobs(status=None, after=None, limit=offset + limit + 1)
            return [j for j in every if not wanted or j.status in wanted]

        url = host.workspace.url
        found = await pools.read(service, page)
        chosen = found[offset : offset + limit]
        return {
            "jobs": [job_summary(j, url) for j in chosen],
            "pagination": {
                "offset": offset,
                "limit": limit,
                "total": len(found),
                "has_more": len(found) > offset + limit,
            },
        }

    @api.get("/comfy/api/jobs/{job_id}")
    async def job_one(job_id: str) -> dict[str, Any]:
        job = await pools.read(service, service.job, job_id)
        return {**job_summary(job, host.workspace.url), "workflow": job_graph(job)}

    @api.post("/comfy/api/jobs/{job_id}/cancel")
    async def job_cancel(job_id: str) -> dict[str, Any]:
        return {"cancelled": await pools.work(service, service.cancel, job_id)}

    @api.post("/comfy/api/jobs/cancel")
    async def jobs_cancel(request: Request) -> dict[str, Any]:
        body = await _json_or_empty(request)
        ids = [str(i) for i in body.get("job_ids") or body.get("ids") or [] if isinstance(i, str)]
        done = {}
        for job_id in ids[:500]:
            try:
                done[job_id] = await pools.work(service, service.cancel, job_id)
            except UnknownJob:
                done[job_id] = False
        return {"cancelled": done}

    @route("GET", "/system_stats")
    async def system_stats() -> dict[str, Any]:
        import imagenodes

        return {
            "system": {
                "os": os.name if os.name != "posix" else sys.platform,
                "python_version": sys.version,
                "embedded_python": False,
                "comfyui_version": f"imagenodes {imagenodes.__version__}",
                "imagenodes_version": imagenodes.__version__,
                "platform": platform.platform(terse=True),
                # The editor skips its api.comfy.org features for such a server.
                "argv": ["imagenodes", "serve", "--disable-api-nodes"],
                "ram_total": 0,
                "ram_free": 0,
            },
            "devices": [],
        }

    @route("GET", "/features")
    async def features() -> dict[str, Any]:
        return {"supports_preview_metadata": False, "max_upload_size": settings.max_upload_bytes}

    for empty in ("/embeddings", "/extensions", "/models"):
        route("GET", empty)(_empty_list)

    @route("GET", "/models/{folder}")
    async def models_folder(folder: str) -> list[str]:
        return []

    async def ws(socket: WebSocket, clientId: str | None = None) -> None:
        """ComfyUI's socket: ``status`` at once, then the followed jobs' messages."""
        await socket.accept()
        client_id = (clientId or "")[:128] or os.urandom(16).hex()
        session = Session(socket, client_id, service)
        sessions.add(session)
        end = service.bus.watch()  # a goodbye at shutdown, even while it follows nothing
        try:
            await session.status()
            # A client often queues first and connects after: follow its unfinished jobs.
            for job_id in await pools.read(service, _active_for, service, client_id):
                session.follow(job_id)
            reader = asyncio.create_task(_drain(socket))
            ender = asyncio.create_task(end.queue.get())
            done, _ = await asyncio.wait({reader, ender}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, ender):
                task.cancel()
            if ender in done:  # the service stops: ComfyUI clients reconnect on 1012
                await socket.close(code=1012)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            service.bus.unsubscribe(end)
            sessions.remove(session)
            session.close()

    for prefix in PREFIXES:
        api.add_api_websocket_route(f"{prefix}/ws", ws)
    return api


def _active_for(service: JobService, client_id: str) -> list[str]:
    """Queued and running ComfyUI jobs of ``client_id`` (oldest first)."""
    jobs = [
        job
        for status in ("running", "queued")
        for job in service.store.list_jobs(status=status, after=None, limit=500)
    ]
    return [j.id for j in reversed(jobs) if comfy_of(j).get("client_id") == client_id]


async def _empty_list() -> list[Any]:
    return []


async def _drain(socket: WebSocket) -> None:
    """Read (and ignore) what the client sends — ComfyUI's ``feature_flags`` first —
    until it goes away."""
    while True:
        message = await socket.receive()
        if message.get("type") == "websocket.disconnect":
            return


async def _json_or_empty(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
