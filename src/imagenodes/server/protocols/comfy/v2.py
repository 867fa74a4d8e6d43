"""Comfy API v2 under ``/comfy/api/v2`` — the protocol of PyPI ``comfy-sdk``.

The contract is Comfy-Org/comfy-api-proxy's ``spec/openapi.yaml`` (jobs, assets, the
error envelope, the SSE catalogue); where it and the official client disagree, the
client wins, since it is what callers run:

* **Idempotency** — ``comfy-sdk`` sends a fresh ``Idempotency-Key`` with every submit
  and documents a reused key as *rejected, not replayed* (``IdempotencyKeyReuse``: "on
  reuse, catch the error and poll/list for the job the first attempt already
  created").  So any second ``POST /jobs`` under a key — an exact resend, a concurrent
  duplicate, another body — is ``422 idempotency_key_reuse`` naming the first job, and
  no second job exists.  The key → job mapping is the store's own: the job id is
  ``uuid5(key)``, and every submission carries a nonce in its body, so the store's
  insert (one transaction, id unique, a different body hash is ``JOB_CONFLICT``) is
  what refuses a duplicate — in this process or any other on a shared queue — with no
  table of ours that could drift from the jobs.  A key lives as long as its job.
* **Jobs** are the one service's flow jobs
  (:func:`~imagenodes.server.protocols.comfy.jobs.submit_graph`): same queue,
  executor, limits, auth, Origin and trusted-host rules, listed by ``GET /v1/jobs``.
  ``GET /jobs/{id}`` is a projection of the job record and its stored events (the
  outputs committed so far, node-count progress), plus the bus's latest step.
* **Events** (SSE) are the job's typed events (:mod:`imagenodes.registry.events`),
  followed exactly as ``/v1`` follows them
  (:func:`~imagenodes.server.routers.events.follow`) and rewritten in the spec's
  vocabulary (:class:`Tracker`): ``status`` (queued, running, the end), ``progress``
  (a node starting, each step, a node done), ``output`` (each image committed),
  ``log`` (model loading, a failure).  Never a second event system.
* **Assets** are the service's files — uploads (stored by sha256 under ``uploads/``
  through :func:`~imagenodes.server.routers.files.store_upload`, the same decoding
  rules and caps as ``/v1/uploads``) and job outputs (``runs/…``).  An asset id is the
  file's workspace path, base64url (``asset_…``): stable, resolvable by every process
  that shares the workspace and the queue, and checked against the files the service
  recorded, as ``/v1/files`` checks it.  The blake3 index the dedup routes need is kept
  in the workspace (``.comfy/blake3/<hex>.json``, written only for bytes the server
  hashed itself), next to the blobs it points at, so every process sharing the
  workspace shares it; a missing entry only costs the client an upload.
* **Asset references in a graph**: the spec's ``{"__type": "core/ASSET", "info":
  {"id": …}}`` object — what ``comfy-sdk`` puts where an asset handle was set — may
  stand for any image input (``ImageToImage``'s ``source_image``, ``LoadImage``'s
  ``image``); it is replaced by the file's workspace reference (``uploads/<sha>.png``),
  which every image input takes, before the graph is checked.  An id that names no
  file of the service is ``422 missing_asset``.

Errors are the spec's envelope ``{"error": {code, message, details}}`` with its codes
(``not_found``, ``invalid_workflow`` …); a refusal the spec has no code for keeps ours,
lower-cased, with the full coded error in ``details``.  Refusals of the app's own
middleware (token, Origin, Host, body caps) keep the service's shape.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagenodes.errors import (
    FileNotFound,
    ImageNodesError,
    InputError,
    JobConflict,
    PayloadTooLarge,
    SourceImageError,
)
from imagenodes.registry.events import Event, StreamEnd
from imagenodes.server import pools
from imagenodes.server.protocols.comfy.jobs import comfy_of, submit_graph
from imagenodes.server.routers.events import follow
from imagenodes.server.routers.files import FILE_PATH, MEDIA_TYPES, read_file, store_upload
from imagenodes.server.routers.jobs import decode_cursor, encode_cursor
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings
from imagenodes.server.store import TERMINAL, JobRecord

log = logging.getLogger(__name__)

#: Where the API is mounted (``COMFY_BASE_URL=http://host:port/comfy`` for comfy-sdk,
#: which appends ``/api/v2``).
PREFIX = "/comfy/api/v2"

#: The namespace of job ids derived from an ``Idempotency-Key`` (uuid5).
KEY_NAMESPACE = uuid.UUID("6f1c3e0a-54b2-4c47-9a0e-2b9d0c6e7a31")

#: Our record in a job's ``extra_data``: the key, the request's nonce, labels, and the
#: graph as sent when asset references were resolved in it.
EXTRA = "comfy_api_v2"

#: ``extra_data`` keys never stored: the partner-node key comfy-sdk may send (this
#: service runs no partner nodes; a secret is not kept in a job body).
SECRET_EXTRA = frozenset({"api_key_comfy_org"})

#: Where the blake3 → file index lives in the workspace.
INDEX_DIR = ".comfy/blake3"

#: Jobs and assets are kept until deleted: the spec's required deadlines say "never".
NEVER = "9999-12-31T23:59:59Z"

#: How long a content URL is announced as valid (it never stops working here; the
#: spec wants a short-lived one and re-fetching the object gives a fresh one).
URL_TTL_S = 3600

#: Labels on a job (``metadata``): at most this many pairs, keys and values this long.
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 512
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.:/-]+")

#: Cached file descriptions (size, blake3) — files never change once stored.
MAX_CACHED_BLOBS = 4096

_STATUS = {
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "canceled",
}
#: The spec's codes of ours; any other keeps ours, lower-cased.
_SPEC_CODES = {
    "UNKNOWN_JOB": "not_found",
    "FILE_NOT_FOUND": "not_found",
    "NOT_FOUND": "not_found",
    "QUEUE_FULL": "queue_full",
    "UNAUTHORIZED": "unauthorized",
    "FORBIDDEN": "forbidden",
}
_BLAKE3 = re.compile(r"blake3:([0-9a-fA-F]{64})")
_STEP_FIELD = re.compile(r"^steps\.([^.]+)\.parameters\.?(.*)$")
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


# -- errors ----------------------------------------------------------------------------
class V2Error(Exception):
    """A refusal in the spec's envelope: ``{"error": {code, message, details}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message, "details": self.details}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def from_coded(request: Request, exc: ImageNodesError) -> V2Error:
    """One of our coded errors in the spec's envelope: the spec's code where it has
    one, else ours lower-cased (the spec's codes are lower snake case); the HTTP status
    and headers (``Retry-After``) the app answers it with everywhere else — asked of the
    app's own handler, the one table of statuses, which this package cannot import (the
    app imports it); the whole coded error (code, field, solution) in ``details``."""
    status, headers = 500, {}
    handler = request.app.exception_handlers.get(ImageNodesError)
    if handler is not None:
        answer = await handler(request, exc)
        status = answer.status_code
        headers = {k: v for k, v in answer.headers.items() if k.lower() == "retry-after"}
    code = _SPEC_CODES.get(exc.code, exc.code.lower())
    return V2Error(status, code, exc.message, {"imagenodes": exc.to_dict()}, headers)


class _Route(APIRoute):
    """Every v2 route answers its refusals in the spec's envelope, including the
    request validation FastAPI does before the handler runs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except V2Error as exc:
                return exc.response()
            except ImageNodesError as exc:
                return (await from_coded(request, exc)).response()
            except StarletteHTTPException as exc:  # a body Starlette could not parse
                code = "invalid_request" if exc.status_code < 500 else "internal_error"
                return V2Error(exc.status_code, code, str(exc.detail)).response()
            except RequestValidationError as exc:
                errors = [
                    {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                    for e in exc.errors()
                ]
                first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
                message = f"{'.'.join(first['loc'])}: {first['msg']}".lstrip(": ")
                return V2Error(422, "invalid_request", message, {"errors": errors}).response()

        return guarded


# -- time and links ----------------------------------------------------------------------
def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC (``…Z``) of a Unix time."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Links:
    """Where the API is as the client reached it: host-relative links (with any mount
    prefix, as the spec asks) and absolute URLs (the spec's ``url`` fields are URIs)."""

    root: str  # e.g. /comfy/api/v2, under the app's root_path
    origin: str  # e.g. http://127.0.0.1:8188

    @classmethod
    def of(cls, request: Request) -> Links:
        root = request.scope.get("root_path", "").rstrip("/") + PREFIX
        base = str(request.base_url).rstrip("/")
        origin = base.removesuffix(request.scope.get("root_path", "").rstrip("/"))
        return cls(root=root, origin=origin)

    def job(self, job_id: str) -> dict[str, str]:
        base = f"{self.root}/jobs/{job_id}"
        return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}

    def content(self, asset: str) -> str:
        return f"{self.origin}{self.root}/assets/{asset}/content"


# -- assets ------------------------------------------------------------------------------
def asset_id(path: str) -> str:
    """The asset id of a workspace file: its path, base64url (one spelling per path)."""
    return "asset_" + base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def asset_path(value: str) -> str | None:
    """The workspace path an asset id names — only a path ``/v1/files`` could serve
    (an upload or a run's image), spelt exactly as :func:`asset_id` spells it; else
    None."""
    if not value.startswith("asset_") or len(value) > 400:
        return None
    raw = value.removeprefix("asset_")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", raw):
        return None
    try:
        path = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    if not FILE_PATH.match(path) or asset_id(path) != value:
        return None
    return path


def blake3_hex(data: bytes) -> str:
    """The blake3 of ``data`` (hex).  Imported here: a server installed before the
    ``server`` extra required blake3 still starts; only the asset routes need it."""
    from blake3 import blake3

    return blake3(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """A stored file as the API describes it."""

    path: str
    size: int
    hash: str  # blake3:<hex>
    content_type: str


class Assets:
    """The service's files as assets: descriptions (cached), the blake3 index, uploads.

    Blocking methods: call them on the service's ``work`` pool.
    """

    def __init__(self, service: JobService) -> None:
        self.service = service
        self._blobs: dict[str, Blob] = {}
        self._lock = threading.Lock()

    # -- descriptions --------------------------------------------------------------
    def describe(
        self, path: str, *, job_id: str | None = None, created: float | None = None
    ) -> Blob:
        """Size, blake3 and media type of a file the service produced or received
        (FILE_NOT_FOUND otherwise; read once, then cached: stored files never change).
        A job's output (``job_id``, committed at ``created``) is entered in the blake3
        index the first time, so its asset record names the job and its bytes can be
        minted from by hash."""
        with self._lock:
            cached = self._blobs.get(path)
        if cached is not None:
            return cached
        data = read_file(self.service, path)
        blob = Blob(
            path=path,
            size=len(data),
            hash="blake3:" + blake3_hex(data),
            content_type=MEDIA_TYPES.get(path.rsplit(".", 1)[-1], "application/octet-stream"),
        )
        with self._lock:
            if len(self._blobs) >= MAX_CACHED_BLOBS:
                for old in list(self._blobs)[: MAX_CACHED_BLOBS // 4]:
                    del self._blobs[old]
            self._blobs[path] = blob
        if job_id is not None:
            self.remember(blob, job_id=job_id, created=created)
        return blob

    def usable(self, path: str) -> bool:
        """Whether ``path`` is a file of the service that is still there."""
        workspace = self.service.host.workspace
        try:
            return self.service.store.has_file(path) and workspace.exists(path)
        except ImageNodesError:
            return False

    # -- the blake3 index ------------------------------------------------------------
    def _entry_path(self, digest: str) -> str:
        return f"{INDEX_DIR}/{digest.removeprefix('blake3:').lower()}.json"

    def entry(self, digest: str) -> dict[str, Any] | None:
        """The index entry of a ``blake3:<hex>`` whose file is still the service's."""
        match = _BLAKE3.fullmatch(digest)
        if match is None:
            return None
        workspace = self.service.host.workspace
        rel = self._entry_path(digest)
        try:
            if not workspace.exists(rel):
                return None
            entry = workspace.read_json(rel)
        except ImageNodesError:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return None
        path = entry["path"]
        return entry if FILE_PATH.match(path) and self.usable(path) else None

    def remember(
        self,
        blob: Blob,
        *,
        file_path: str | None = None,
        job_id: str | None = None,
        created: float | None = None,
    ) -> dict[str, Any]:
        """The index entry of ``blob``'s bytes: the one there (the first file stored with
        them keeps them), else a new one — written only for bytes this server hashed
        itself: a client's hash is a lookup key, never an authority."""
        existing = self.entry(blob.hash)
        if existing is not None:  # these bytes are known (maybe under another file)
            return existing
        entry = {
            "path": blob.path,
            "size": blob.size,
            "content_type": blob.content_type,
            "file_path": file_path,
            "job_id": job_id,
            "created": created if created is not None else time.time(),
        }
        try:
            self.service.host.workspace.write_json(self._entry_path(blob.hash), entry)
        except OSError as exc:  # the index is a cache: a miss only costs an upload
            log.warning("blake3 index entry of %s not written: %s", blob.path, exc)
        return entry

    # -- uploads -------------------------------------------------------------------
    def upload(
        self, data: bytes, *, file_path: str | None, expected: str | None
    ) -> tuple[Blob, dict[str, Any], bool]:
        """Store uploaded bytes (``store_upload``'s decoding rules), or find them:
        (blob, index entry, created_new).  A declared ``expected_hash`` that is not the
        bytes' blake3 is ``409 hash_mismatch`` and nothing is stored."""
        digest = "blake3:" + blake3_hex(data)
        if expected is not None and expected.strip().lower() != digest:
            raise V2Error(
                409,
                "hash_mismatch",
                f"the bytes hash to {digest}, not the declared {expected[:80]!r}",
            )
        found = self.entry(digest)
        if found is not None:
            return self.describe(found["path"]), found, False
        stored = store_upload(self.service, data)
        blob = Blob(
            path=stored.path,
            size=len(data),
            hash=digest,
            content_type=MEDIA_TYPES.get(stored.path.rsplit(".", 1)[-1], "image/png"),
        )
        with self._lock:
            self._blobs[blob.path] = blob
        return blob, self.remember(blob, file_path=file_path), True

    # -- graphs --------------------------------------------------------------------
    def resolve_references(self, graph: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``graph`` with every ``core/ASSET`` reference replaced by its file's workspace
        reference; (graph, whether anything was replaced).  ``422 missing_asset`` for a
        reference that is malformed or names no file of the service."""
        changed = False

        def walk(value: Any, where: str) -> Any:
            nonlocal changed
            if isinstance(value, dict) and value.get("__type") == "core/ASSET":
                changed = True
                return self._reference(value, where)
            if isinstance(value, dict):
                return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v, f"{where}.{i}") for i, v in enumerate(value)]
            return value

        resolved = walk(graph, "")
        return resolved, changed

    def _reference(self, value: dict[str, Any], where: str) -> str:
        info = value.get("info")
        ident = info.get("id") if isinstance(info, dict) else None
        node, _, rest = where.partition(".")
        field_name = rest.removeprefix("inputs.")
        details = {"node_id": node, "field": field_name, "asset_id": ident}
        if not isinstance(ident, str):
            raise V2Error(
                422,
                "missing_asset",
                f"node {node} input {field_name!r}: a core/ASSET reference needs info.id",
                details,
            )
        path = asset_path(ident)
        if path is None or not self.usable(path):
            raise V2Error(
                422,
                "missing_asset",
                f"node {node} input {field_name!r}: no asset {ident[:80]!r}",
                details,
            )
        return path


def asset_object(
    blob: Blob,
    entry: Mapping[str, Any] | None,
    links: Links,
    *,
    created_new: bool | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """The spec's ``Asset``."""
    entry = entry if entry is not None and entry.get("path") == blob.path else None
    ident = asset_id(blob.path)
    created = entry.get("created") if entry else None
    return {
        "id": ident,
        "hash": blob.hash,
        "size_bytes": blob.size,
        "content_type": blob.content_type,
        "file_path": (entry or {}).get("file_path") or blob.path.rsplit("/", 1)[-1],
        "created_new": created_new,
        "created_at": iso(created if isinstance(created, int | float) else time.time()),
        "url": links.content(ident),
        "url_expires_at": iso(time.time() + URL_TTL_S),
        "expires_at": None,
        "job_id": job_id or (entry or {}).get("job_id"),
    }


def output_object(node_id: str, blob: Blob, job_id: str, links: Links) -> dict[str, Any]:
    """The spec's ``Output``: an image a job committed, as an asset."""
    ident = asset_id(blob.path)
    return {
        "node_id": node_id,
        "name": blob.path.rsplit("/", 1)[-1],
        "type": "image",
        "content_type": blob.content_type,
        "size_bytes": blob.size,
        "id": ident,
        "hash": blob.hash,
        "url": links.content(ident),
        "url_expires_at": iso(time.time() + URL_TTL_S),
        "job_id": job_id,
    }


# -- a job's state from its events ----------------------------------------------------------
def spec_status(status: str, cancel_requested: bool = False) -> str:
    """The spec's job status of ours: ``cancelled`` is spelt ``canceled``, and a running
    job asked to stop is ``canceling`` until it reaches a step boundary."""
    if status == "running" and cancel_requested:
        return "canceling"
    return _STATUS.get(status, status)


@dataclass
class Tracker:
    """A job as the spec sees it, fed with the job's typed events in order: status,
    node-count progress, the images committed so far.  The same projection serves
    ``GET /jobs/{id}`` (fed the stored events and the latest step) and the SSE stream
    (fed live; :meth:`feed` says what to send for each event)."""

    job: JobRecord
    status: str = "queued"
    position: int | None = None
    done: set[str] = field(default_factory=set)
    current: str | None = None
    step: int | None = None
    steps: int | None = None
    #: (node id, workspace reference, when) of every image committed, in order.
    outputs: list[tuple[str, str, float]] = field(default_factory=list)
    #: The error ``job.completed`` carried (a job cancelled while queued has it there).
    error: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.status = self.job.status

    # -- the graph -------------------------------------------------------------------
    @property
    def steps_of_flow(self) -> list[dict[str, Any]]:
        flow = self.job.body.get("flow") if self.job.kind == "flow" else None
        steps = flow.get("steps") if isinstance(flow, dict) else None
        return [s for s in steps or [] if isinstance(s, dict)]

    @property
    def total(self) -> int:
        return max(1, len(self.steps_of_flow)) if self.job.kind == "flow" else 1

    def node_of(self, event: Event) -> str | None:
        """The graph node an event is of: its flow step (ComfyUI node ids are the step
        ids), ``"1"`` for a one-node ``/v1`` job, None for the job's own events."""
        if self.job.kind != "flow":
            return "1" if event.run_id is not None or event.type == "image.stored" else None
        return event.step_id

    def class_of(self, node: str | None) -> str | None:
        if node is None:
            return None
        graph = comfy_of(self.job).get("prompt")
        entry = graph.get(node) if isinstance(graph, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("class_type"), str):
            return str(entry["class_type"])
        for step in self.steps_of_flow:
            if str(step.get("id")) == node:
                return str(step.get("type"))
        return self.job.node if self.job.kind != "flow" else None

    # -- feeding ---------------------------------------------------------------------
    def feed(self, event: Event) -> list[str | tuple[str, Any]]:
        """Take one event; what the SSE stream sends for it: ``"status"``,
        ``"progress"``, ``("output", (node, ref))`` or ``("log", (level, text))``."""
        data = event.data
        kind = event.type
        node = self.node_of(event)
        if kind == "job.queued":
            self.status, self.position = "queued", data.get("position")
            self.error = None  # queued again (a retry, a restart): a new attempt
            self.done.clear()
            self.current = self.step = self.steps = None
            return ["status"]
        if kind == "job.started":
            self.status, self.position = "running", None
            return ["status", "progress"]
        if kind == "run.started" and node is not None:
            self.current, self.step, self.steps = node, None, None
            return ["progress"]
        if kind == "node.progress":
            if node is not None:
                self.current = node
            self.step, self.steps = data.get("step"), data.get("total")
            return ["progress"]
        if kind == "model.loading":
            return [("log", ("info", f"loading model {data.get('model')}"))]
        if kind == "model.loaded":
            how = "from the cache" if data.get("cached") else f"in {data.get('load_ms', 0):.0f} ms"
            return [("log", ("info", f"model {data.get('model')} loaded {how}"))]
        if kind == "image.stored" and node is not None and isinstance(data.get("ref"), str):
            self.outputs.append((node, data["ref"], event.ts))
            return [("output", (node, data["ref"], event.ts))]
        if kind == "run.finished" and node is not None:
            self.done.add(node)
            if self.current == node:
                self.current = self.step = self.steps = None
            return ["progress"]
        if kind in ("run.failed", "run.cancelled"):
            error = data.get("error") or {}
            level = "error" if kind == "run.failed" else "warning"
            where = f"node {node}: " if node else ""
            return [("log", (level, f"{where}{error.get('code')}: {error.get('message')}"))]
        if kind == "job.completed":
            self.status = str(data.get("status") or self.status)
            self.current = self.step = self.steps = None
            self.error = data.get("error") or self.error
            return ["progress", "status"]
        return []

    # -- the spec's objects -----------------------------------------------------------
    def spec_status(self, cancel_requested: bool = False) -> str:
        return spec_status(self.status, cancel_requested)

    def progress(self) -> dict[str, Any] | None:
        """The spec's ``Progress`` (None while queued): nodes done of the graph's, the
        running node's sampler steps weighted in."""
        if self.status == "queued":
            return None
        total = self.total
        done = min(len(self.done), total)
        value = 1.0 if self.status == "succeeded" else done / total
        if self.status == "running" and self.current not in self.done and self.step and self.steps:
            value = min(1.0, (done + min(self.step, self.steps) / self.steps) / total)
        cls = self.class_of(self.current)
        message = None
        if self.current is not None:
            message = cls or self.current
            if self.step is not None and self.steps:
                message = f"{message} {self.step}/{self.steps}"
        return {
            "value": round(value, 4),
            "nodes_done": total if self.status == "succeeded" else done,
            "nodes_total": total,
            "current_node": self.current,
            "current_node_class": cls,
            "step": self.step,
            "steps": self.steps,
            "message": message,
        }

    def status_event(self) -> dict[str, Any]:
        return {
            "status": self.spec_status(self.job.cancel_requested),
            "queue_position": self.position if self.status == "queued" else None,
        }


def job_error(job: JobRecord, tracker: Tracker) -> dict[str, Any] | None:
    """The spec's ``JobError`` of a failed or cancelled job: our code (lower-cased),
    message, and the graph node a flow step's error names."""
    error = job.error or tracker.error
    if not error:
        return None
    step = (error.get("details") or {}).get("step")
    node = str(step) if step is not None else ("1" if job.kind != "flow" else None)
    return {
        "code": str(error.get("code") or "generation_failed").lower(),
        "message": str(error.get("message") or ""),
        "node_id": node,
        "class_type": tracker.class_of(node),
        "traceback": None,
    }


def labels_of(job: JobRecord) -> dict[str, str]:
    record = (comfy_of(job).get("extra_data") or {}).get(EXTRA) or {}
    labels = record.get("metadata") if isinstance(record, dict) else None
    return dict(labels) if isinstance(labels, dict) else {}


def job_object(
    job: JobRecord,
    tracker: Tracker,
    blobs: Mapping[str, Blob],
    links: Links,
) -> dict[str, Any]:
    """The spec's ``Job``: status, progress, the outputs committed so far (each an
    asset), the error, the links to follow."""
    metrics: dict[str, int | None] = {
        "queue_ms": int((job.started - job.created) * 1000) if job.started else None,
        "execution_ms": (
            int((job.finished - job.started) * 1000) if job.started and job.finished else None
        ),
    }
    outputs = [
        output_object(node, blobs[ref], job.id, links)
        for node, ref, _ in tracker.outputs
        if ref in blobs
    ]
    status = tracker.status  # the events' word (read after the record: never behind it)
    return {
        "id": job.id,
        "status": tracker.spec_status(job.cancel_requested),
        "created_at": iso(job.created),
        "started_at": iso(job.started),
        "completed_at": iso(job.finished) if status in TERMINAL else None,
        "expires_at": NEVER,
        "queue_position": tracker.position if status == "queued" else None,
        "progress": tracker.progress(),
        "outputs": outputs,
        "error": job_error(job, tracker) if status in ("failed", "cancelled") else None,
        "metrics": metrics,
        "urls": links.job(job.id),
        "metadata": labels_of(job),
    }


# -- submission ----------------------------------------------------------------------------
def job_id_for(key: str | None) -> str:
    """A key's job id (uuid5: the same key always names the same job); a fresh one
    without a key."""
    return str(uuid.uuid5(KEY_NAMESPACE, key)) if key is not None else str(uuid.uuid4())


def check_key(key: str | None) -> str | None:
    """An ``Idempotency-Key`` as comfy-sdk's contract has it: 1-255 printable ASCII."""
    if key is None:
        return None
    if not 0 < len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise V2Error(
            422,
            "invalid_request",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            {"field": "Idempotency-Key"},
        )
    return key


def check_labels(value: Any) -> dict[str, str]:
    """A job's ``metadata``: string labels, bounded (``422 metadata_invalid``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(422, "metadata_invalid", "metadata must be an object of string labels")
    if len(value) > MAX_LABELS:
        raise V2Error(
            422, "metadata_invalid", f"metadata has {len(value)} pairs; at most {MAX_LABELS}"
        )
    for key, label in value.items():
        if not (0 < len(key) <= MAX_LABEL_KEY and _LABEL_KEY.fullmatch(key)):
            raise V2Error(
                422,
                "metadata_invalid",
                f"metadata key {key[:80]!r}: 1 to {MAX_LABEL_KEY} of A-Z a-z 0-9 _ . : / -",
                {"key": key[:80]},
            )
        if not isinstance(label, str) or len(label) > MAX_LABEL_VALUE:
            raise V2Error(
                422,
                "metadata_invalid",
                f"metadata value of {key!r} must be a string of at most {MAX_LABEL_VALUE} "
                "characters",
                {"key": key},
            )
    return dict(value)


def invalid_workflow(exc: ImageNodesError) -> V2Error:
    """A graph that cannot run, in the spec's shape: ``invalid_workflow`` with
    ``details.node_errors`` = {node: [{field, reason, message}]}, ``reason`` being our
    code (``INVALID_STEPS`` …).  Read from ComfyUI's ``node_errors`` of a
    :class:`~imagenodes.flows.comfy.ComfyGraphError` (kept as they are in
    ``details.comfyui``, for clients that know ComfyUI's shape), or from a coded error
    naming a flow step's field (``steps.<node>.parameters.<input>``, the preflight's)."""
    node_errors: dict[str, list[dict[str, Any]]] = {}
    classes: dict[str, str] = {}
    raw = getattr(exc, "node_errors", None)
    comfy = getattr(exc, "comfy_error", None)
    if isinstance(raw, dict):
        for node, entry in raw.items():
            entry = entry if isinstance(entry, dict) else {}
            if isinstance(entry.get("class_type"), str):
                classes[str(node)] = entry["class_type"]
            node_errors[str(node)] = [
                {
                    "field": (error.get("extra_info") or {}).get("input_name"),
                    "reason": (error.get("extra_info") or {}).get("code") or error.get("type"),
                    "message": error.get("message"),
                }
                for error in entry.get("errors") or []
                if isinstance(error, dict)
            ]
    else:
        match = _STEP_FIELD.match(exc.field or "")
        if match:
            node_errors[match.group(1)] = [
                {"field": match.group(2) or None, "reason": exc.code, "message": exc.message}
            ]
    problems = [(node, item) for node, items in node_errors.items() for item in items]
    if problems:
        node, item = problems[0]
        where = f"Node {node} ({classes[node]})" if node in classes else f"Node {node}"
        message = f"{where}: {item['message']}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more)"
    else:
        message = exc.message
    details: dict[str, Any] = {
        "node_errors": node_errors,
        "imagenodes": {k: v for k, v in exc.to_dict().items() if k != "details"},
    }
    if isinstance(comfy, dict):
        details["comfyui"] = {"error": comfy, "node_errors": raw or {}}
    return V2Error(422, "invalid_workflow", message, details)


def reuse(existing: JobRecord, key: str, links: Links) -> V2Error:
    return V2Error(
        422,
        "idempotency_key_reuse",
        f"Idempotency-Key {key[:80]!r} was already used, by job {existing.id}; keys are "
        "single-use — poll that job instead of resubmitting",
        {"job_id": existing.id, "urls": links.job(existing.id)},
    )


# -- the routes ------------------------------------------------------------------------------
def router(service: JobService, settings: ServerSettings) -> APIRouter:
    """Comfy API v2: jobs and assets under ``/comfy/api/v2`` (left out of ``/v1``'s
    OpenAPI document: its refusals are the spec's envelope, not ours)."""
    api = APIRouter(
        prefix=PREFIX, tags=["comfy-api-v2"], include_in_schema=False, route_class=_Route
    )
    assets = Assets(service)
    store = service.store
    workspace = service.host.workspace

    def state(job_id: str) -> tuple[JobRecord, Tracker, int]:
        """The job, its tracker fed with every stored event, and the last event's
        position (one read-pool trip; the record first: once it says finished, every
        event of the job is stored)."""
        job = service.job(job_id)
        tracker = Tracker(job)
        last = 0
        for event in service.events(job_id):
            tracker.feed(event)
            last = event.seq or last
        if job.status == "queued":
            tracker.position = store.position(job_id)
        return job, tracker, last

    def blobs_of(job_id: str, outputs: Iterable[tuple[str, str, float]]) -> dict[str, Blob]:
        """Descriptions of the images a job committed (one gone since is left out)."""
        found: dict[str, Blob] = {}
        for _, ref, ts in outputs:
            if ref not in found:
                try:
                    found[ref] = assets.describe(ref, job_id=job_id, created=ts)
                except ImageNodesError:
                    continue
        return found

    async def view(job_id: str, links: Links) -> dict[str, Any]:
        job, tracker, _ = await pools.read(service, state, job_id)
        latest = service.bus.latest(job_id)
        if latest is not None and job.status == "running":
            tracker.feed(latest)
        blobs = await pools.work(service, blobs_of, job_id, tracker.outputs)
        return job_object(job, tracker, blobs, links)

    # -- jobs --------------------------------------------------------------------------
    @api.post("/jobs", status_code=201)
    async def post_job(
        request: Request,
        idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
    ) -> JSONResponse:
        """Submit an API-format graph; ``Idempotency-Key``: single-use (see module)."""
        links = Links.of(request)
        key = check_key(idempotency_key)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise V2Error(
                422, "invalid_request", 'the body must be a JSON object {"workflow": {…}}'
            )
        for reserved in ("webhook_url", "inputs"):
            if reserved in body:
                raise V2Error(
                    422,
                    "invalid_request",
                    f"{reserved!r} is reserved by the API and not accepted yet",
                    {"field": reserved},
                )
        workflow = body.get("workflow")
        if not isinstance(workflow, dict):
            raise V2Error(
                422, "invalid_workflow", "'workflow' must be the API-format graph (an object)"
            )
        if isinstance(workflow.get("nodes"), list) and "links" in workflow:
            raise V2Error(
                422,
                "workflow_format_ui",
                "this is the editor's UI-format export (nodes/links); submit the API-format "
                "graph (Save (API Format)) instead",
            )
        extra = body.get("extra_data")
        if extra is not None and not isinstance(extra, dict):
            raise V2Error(422, "invalid_request", "'extra_data' must be an object")
        labels = check_labels(body.get("metadata"))
        job_id = job_id_for(key)

        def submit() -> JobRecord:
            from imagenodes.flows.comfy import ComfyGraphError

            if key is not None:
                existing = store.get(job_id)
                if existing is not None:
                    raise reuse(existing, key, links)
            graph, changed = assets.resolve_references(workflow)
            record: dict[str, Any] = {
                "idempotency_key": key,
                # A nonce: two requests under one key never have one body, so the
                # store's insert refuses the second (JOB_CONFLICT) wherever it runs.
                "request": uuid.uuid4().hex,
                "metadata": labels,
            }
            if changed:
                record["workflow"] = workflow  # the graph as sent (asset references)
            kept = {k: v for k, v in (extra or {}).items() if k not in SECRET_EXTRA}
            try:
                return submit_graph(service, graph, extra={**kept, EXTRA: record}, job_id=job_id)
            except ComfyGraphError as exc:
                raise invalid_workflow(exc) from None
            except JobConflict:
                existing = store.get(job_id)
                if key is not None and existing is not None:
                    raise reuse(existing, key, links) from None
                raise
            except ImageNodesError as exc:
                if exc.is_user_error:
                    raise invalid_workflow(exc) from None
                raise

        job = await pools.work(service, submit)
        content = await view(job.id, links)
        return JSONResponse(content, status_code=201, headers={"Location": content["urls"]["self"]})

    @api.get("/jobs")
    async def list_jobs(
        request: Request,
        limit: int = Query(default=50, ge=1, le=100),
        cursor: str | None = Query(default=None, max_length=64),
    ) -> dict[str, Any]:
        """Jobs, newest first (every job of the queue, ``/v1``'s too); ``metadata[k]=v``
        keeps those labelled so (on the page read)."""
        wanted = {
            key[len("metadata[") : -1]: value
            for key, value in request.query_params.multi_items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        position = decode_cursor(cursor) if cursor else None

        def page() -> tuple[list[JobRecord], bool]:
            jobs = store.list_jobs(status=None, after=position, limit=limit + 1)
            return jobs[:limit], len(jobs) > limit

        jobs, more = await pools.read(service, page)
        items = []
        for job in jobs:
            labels = labels_of(job)
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            items.append(
                {
                    "id": job.id,
                    "status": spec_status(job.status, job.cancel_requested),
                    "create_time": iso(job.created),
                    "update_time": iso(job.finished or job.started or job.created),
                    "metadata": labels,
                }
            )
        last = jobs[-1].ord if jobs else None
        return {"jobs": items, "next_cursor": encode_cursor(last) if more and last else None}

    @api.get("/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        """The job: the authoritative, pollable view."""
        return await view(job_id, Links.of(request))

    @api.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        """Ask for cancellation (idempotent): the job as it is then — ``canceling``
        while a running one reaches a step boundary, or its terminal state."""
        await pools.work(service, service.cancel, job_id)
        return await view(job_id, Links.of(request))

    @api.get("/jobs/{job_id}/workflow")
    async def get_workflow(job_id: str) -> dict[str, Any]:
        """The graph as sent (``format: api``)."""
        job = await pools.read(service, service.job, job_id)
        comfy = comfy_of(job)
        record = (comfy.get("extra_data") or {}).get(EXTRA) or {}
        graph = record.get("workflow") if isinstance(record, dict) else None
        graph = graph if isinstance(graph, dict) else comfy.get("prompt")
        if not isinstance(graph, dict):
            raise V2Error(404, "not_found", f"job {job_id} was not submitted as a ComfyUI graph")
        return {"workflow": graph, "format": "api"}

    @api.get("/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> EventSourceResponse:
        """Live SSE: the current ``status`` (and ``progress``) on connect, then each
        change, until the terminal ``status``.  No ids, no replay (the spec's rule): a
        client that reconnects gets a fresh snapshot."""
        links = Links.of(request)
        _, tracker, after = await pools.read(service, state, job_id)  # 404 first
        shutdown = anyio.Event()

        async def render(item: str | tuple[str, Any]) -> dict[str, Any] | None:
            if item == "status":
                payload: Any = tracker.status_event()
            elif item == "progress":
                payload = tracker.progress()
                if payload is None:
                    return None
            elif isinstance(item, tuple) and item[0] == "output":
                node, ref, ts = item[1]
                try:
                    blob = await pools.work(
                        service, assets.describe, ref, job_id=job_id, created=ts
                    )
                except ImageNodesError:
                    return None
                payload = output_object(node, blob, job_id, links)
            elif isinstance(item, tuple) and item[0] == "log":
                level, text = item[1]
                payload = {"level": level, "message": workspace.relative_refs(text)}
            else:
                return None
            name = item if isinstance(item, str) else item[0]
            return {"event": name, "data": json.dumps(payload, separators=(",", ":"))}

        async def stream() -> AsyncIterator[dict[str, Any]]:
            watcher = asyncio.create_task(_end_streams_on(shutdown, service))
            try:
                latest = service.bus.latest(job_id)
                if latest is not None and tracker.status == "running":
                    tracker.feed(latest)
                for item in ("status", "progress"):
                    message = await render(item)
                    if message is not None:
                        yield message
                if tracker.status in TERMINAL:
                    return
                async for event in follow(service, job_id, after):
                    if isinstance(event, StreamEnd) or await request.is_disconnected():
                        return
                    if event.type in ("job.queued", "job.started", "job.completed"):
                        fresh = await pools.read(service, store.get, job_id)
                        tracker.job = fresh or tracker.job
                    for change in tracker.feed(event):
                        message = await render(change)
                        if message is not None:
                            yield message
                    if event.type == "job.completed":
                        return
            finally:
                watcher.cancel()

        return EventSourceResponse(
            stream(), ping=15, shutdown_event=shutdown, shutdown_grace_period=2.0
        )

    # -- assets --------------------------------------------------------------------------
    @api.post("/assets")
    async def post_asset(request: Request) -> JSONResponse:
        """Upload (multipart ``file``, ``content_type``, ``file_path``, optional
        ``expected_hash`` and ``tags``; or the raw image as the body): stored as
        ``/v1/uploads`` stores it, deduplicated by blake3 (201 new, 200 known bytes)."""
        ctype = request.headers.get("content-type", "")
        file_path: str | None = None
        expected: str | None = None
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=40)
            item = form.get("file")
            if item is None or isinstance(item, str):
                raise InputError("multipart upload needs a file field named 'file'", field="file")
            data = await item.read()  # the client's name is a label (file_path), not a path
            named = form.get("file_path")
            file_path = _label(named) if isinstance(named, str) else None
            declared = form.get("expected_hash")
            expected = declared if isinstance(declared, str) and declared else None
        else:
            data = await request.body()
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"upload exceeds {settings.max_upload_bytes} bytes")
        blob, entry, created = await pools.work(
            service, assets.upload, data, file_path=file_path, expected=expected
        )
        content = asset_object(blob, entry, Links.of(request), created_new=created)
        return JSONResponse(content, status_code=201 if created else 200)

    @api.post("/assets/from-hash")
    async def asset_from_hash(request: Request) -> JSONResponse:
        """An asset over bytes the server already hashed (``404 blob_not_found``
        otherwise); ids are the files', so it is the one asset there is (200)."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        digest = body.get("hash") if isinstance(body, dict) else None
        if not isinstance(digest, str):
            raise V2Error(422, "invalid_request", 'the body must be {"hash": "blake3:<hex>"}')
        entry = await pools.work(service, assets.entry, digest.lower())
        if entry is None:
            raise V2Error(404, "blob_not_found", f"no blob {digest[:80]!r} on this server")
        blob = await pools.work(service, assets.describe, entry["path"])
        return JSONResponse(asset_object(blob, entry, Links.of(request), created_new=False))

    @api.head("/assets/by-hash/{digest}")
    async def asset_by_hash(digest: str) -> Response:
        """200 when the server has these bytes (then from-hash works), else 404."""
        entry = await pools.work(service, assets.entry, digest.lower())
        return Response(status_code=200 if entry is not None else 404)

    async def _asset(asset: str) -> str:
        path = asset_path(asset)
        if path is None or not await pools.work(service, assets.usable, path):
            raise V2Error(404, "not_found", f"no asset {asset[:80]!r}")
        return path

    @api.get("/assets/{asset}")
    async def get_asset(asset: str, request: Request) -> dict[str, Any]:
        """The asset, with a fresh content URL."""
        path = await _asset(asset)

        def describe() -> tuple[Blob, dict[str, Any] | None]:
            blob = assets.describe(path)
            return blob, assets.entry(blob.hash)

        blob, entry = await pools.work(service, describe)
        return asset_object(blob, entry, Links.of(request))

    @api.get("/assets/{asset}/content")
    async def get_asset_content(
        asset: str, range_: str | None = Header(default=None, alias="Range")
    ) -> Response:
        """The bytes (one ``Range: bytes=a-b`` honoured: 206, or 416)."""
        path = await _asset(asset)
        try:
            data = await pools.work(service, read_file, service, path)
        except (FileNotFound, SourceImageError):
            raise V2Error(404, "not_found", f"no asset {asset[:80]!r}") from None
        headers = {
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
            "Accept-Ranges": "bytes",
        }
        media = MEDIA_TYPES.get(path.rsplit(".", 1)[-1], "application/octet-stream")
        wanted = byte_range(range_, len(data))
        if wanted is None:
            return Response(data, media_type=media, headers=headers)
        if isinstance(wanted, str):  # "unsatisfiable"
            headers["Content-Range"] = f"bytes */{len(data)}"
            return Response(status_code=416, headers=headers)
        start, end = wanted
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(data[start : end + 1], status_code=206, media_type=media, headers=headers)

    return api


# -- helpers ---------------------------------------------------------------------------------
def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=a-b`` range as (first, last) inclusive; ``"unsatisfiable"`` for one
    past the end; None to send everything (no header, several ranges, or one we cannot
    read — RFC 9110 lets a server ignore it)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        if count == 0:
            return "unsatisfiable"
        return max(0, size - count), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return start, end


def _label(value: str) -> str | None:
    """A client's file name as a label: printable, bounded; never used as a path."""
    text = "".join(ch for ch in value if ch.isprintable())[:512].strip()
    return text or None


async def _end_streams_on(shutdown: anyio.Event, service: JobService) -> None:
    """sse-starlette saw the server stop (a server other than ``imagenodes serve``):
    end every stream as the service's own shutdown does."""
    await shutdown.wait()
    service.bus.end_streams()
